//! Which paths leave a cache: retention, quotas and destroyed caches, and
//! how much a cache stores.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, JoinType, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait,
};

use super::super::entity::{build_log, cache, nar, object, staged_nar};
use super::super::ids::{CacheId, NarId, ObjectId};
use super::super::pins::not_pinned;
use super::super::{BATCH, Database, DatabaseError};
use super::*;

impl Database {
    /// The backend, whose concurrency the collector's cutoffs depend on.
    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// A page of a cache's objects as `(id, NAR, NAR size, last used)`,
    /// least recently used first.
    fn lru_page(cache_id: CacheId, limit: u64) -> sea_orm::Select<object::Entity> {
        object::Entity::find()
            .select_only()
            .column(object::Column::Id)
            .column(object::Column::NarId)
            .column_as(nar::Column::FileSize, "file_size")
            .column_as(Expr::cust(OBJECT_LAST_USED), "last_used")
            .join(JoinType::InnerJoin, object::Relation::Nar.def())
            .filter(object::Column::CacheId.eq(cache_id))
            .order_by_asc(Expr::cust(OBJECT_LAST_USED))
            .order_by_asc(object::Column::Id)
            .limit(limit)
    }

    /// A page of a cache's objects last used before `cutoff` that no other
    /// path of the cache references and no pin protects, least recently
    /// used first.
    pub async fn expired_roots(
        &self,
        cache_id: CacheId,
        cutoff: i64,
        limit: u64,
    ) -> Result<Vec<LruObject>, DatabaseError> {
        Self::lru_page(cache_id, limit)
            .filter(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
            .filter(referenced_by_no_other_path(self.backend(), cache_id))
            .filter(not_pinned(self.backend(), cache_id))
            .into_model::<LruObject>()
            .all(&self.conn)
            .await
            .map_err(DatabaseError::from)
    }

    /// How many of a cache's objects were last used before `cutoff`: after
    /// expiry, those kept because pins protect them or paths kept reference
    /// them.
    pub async fn count_last_used_before(
        &self,
        cache_id: CacheId,
        cutoff: i64,
    ) -> Result<u64, DatabaseError> {
        use sea_orm::PaginatorTrait;
        object::Entity::find()
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
            .count(&self.conn)
            .await
            .map_err(DatabaseError::from)
    }

    /// A page of a cache's objects, least recently read first, whether
    /// other paths reference them or not.
    pub async fn least_recent_objects(
        &self,
        cache_id: CacheId,
        limit: u64,
    ) -> Result<Vec<LruObject>, DatabaseError> {
        Self::lru_page(cache_id, limit)
            .into_model::<LruObject>()
            .all(&self.conn)
            .await
            .map_err(DatabaseError::from)
    }

    /// A page of a cache's objects no pin protects, least recently read
    /// first, whether other paths reference them or not: where a quota
    /// breaks a reference cycle.
    pub async fn least_recent_unpinned_objects(
        &self,
        cache_id: CacheId,
        limit: u64,
    ) -> Result<Vec<LruObject>, DatabaseError> {
        Self::lru_page(cache_id, limit)
            .filter(not_pinned(self.backend(), cache_id))
            .into_model::<LruObject>()
            .all(&self.conn)
            .await
            .map_err(DatabaseError::from)
    }

    /// A page of the objects a quota may evict: those no other path of the
    /// cache references (the roots of its reference graph) and no pin
    /// protects, least recently read first, each with the paths it
    /// references.
    pub async fn evictable_objects(
        &self,
        cache_id: CacheId,
        limit: u64,
    ) -> Result<Vec<EvictableObject>, DatabaseError> {
        Self::lru_page(cache_id, limit)
            .column(object::Column::StorePath)
            .column(object::Column::References)
            .filter(referenced_by_no_other_path(self.backend(), cache_id))
            .filter(not_pinned(self.backend(), cache_id))
            .into_model::<EvictableRow>()
            .all(&self.conn)
            .await?
            .into_iter()
            .map(EvictableObject::try_from)
            .collect()
    }

    /// Of these store paths, those a cache holds and no pin protects, with
    /// what each references.
    pub async fn objects_at_paths(
        &self,
        cache_id: CacheId,
        store_paths: &[String],
    ) -> Result<Vec<EvictableObject>, DatabaseError> {
        let mut found = Vec::new();
        for batch in store_paths.chunks(BATCH) {
            // The hash part is indexed with the cache; the full path is
            // compared too, so a path with a forged name is not confused.
            let hashes = batch
                .iter()
                .filter_map(|p| p.strip_prefix("/nix/store/").and_then(|p| p.get(..32)))
                .map(str::to_owned);
            let rows = Self::lru_page(cache_id, BATCH as u64)
                .column(object::Column::StorePath)
                .column(object::Column::References)
                .filter(object::Column::StorePathHash.is_in(hashes))
                .filter(object::Column::StorePath.is_in(batch.iter().cloned()))
                .filter(not_pinned(self.backend(), cache_id))
                .into_model::<EvictableRow>()
                .all(&self.conn)
                .await?;
            for row in rows {
                found.push(EvictableObject::try_from(row)?);
            }
        }
        Ok(found)
    }

    /// How many other paths of a cache reference each of these store paths
    /// (those no path references are left out). One pass over the cache's
    /// references, however many paths are asked about.
    pub async fn referrer_counts(
        &self,
        cache_id: CacheId,
        store_paths: &[String],
    ) -> Result<Vec<(String, i64)>, DatabaseError> {
        use sea_orm::Statement;
        #[derive(FromQueryResult)]
        struct Count {
            path: String,
            referrers: i64,
        }
        if store_paths.is_empty() {
            return Ok(Vec::new());
        }
        let backend = self.backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "SELECT reference.path AS path, COUNT(*) AS referrers FROM object AS referrer \
                 CROSS JOIN LATERAL jsonb_array_elements_text(CAST(referrer.\"references\" AS jsonb)) \
                 AS reference(path) \
                 WHERE referrer.cache_id = $1 AND reference.path <> referrer.store_path \
                 AND reference.path IN (SELECT jsonb_array_elements_text(CAST($2 AS jsonb))) \
                 GROUP BY reference.path"
            }
            _ => {
                "SELECT reference.value AS path, COUNT(*) AS referrers FROM object AS referrer, \
                 json_each(referrer.\"references\") AS reference \
                 WHERE referrer.cache_id = $1 AND reference.type = 'text' \
                 AND reference.value <> referrer.store_path \
                 AND reference.value IN (SELECT value FROM json_each($2)) \
                 GROUP BY reference.value"
            }
        };
        let asked = serde_json::to_string(store_paths)
            .map_err(|e| DbErr::Custom(format!("store paths as JSON: {e}")))?;
        let rows = Count::find_by_statement(Statement::from_sql_and_values(
            backend,
            sql,
            [cache_id.into(), asked.into()],
        ))
        .all(&self.conn)
        .await?;
        Ok(rows.into_iter().map(|c| (c.path, c.referrers)).collect())
    }

    /// Removes these objects of a cache, as one of the listings above gave
    /// them, unless the statement's own re-check for `why` now spares one;
    /// what went and what their NARs weigh.
    pub async fn remove_objects(
        &self,
        cache_id: CacheId,
        listed: &[LruObject],
        why: Removal,
    ) -> Result<RemovedPaths, DatabaseError> {
        let Some(latest) = listed.iter().map(|o| o.last_used).max() else {
            return Ok(RemovedPaths::default());
        };
        let mut delete = object::Entity::delete_many()
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::Id.is_in(listed.iter().map(|o| o.id)));
        // A path pinned since the listing stays, whatever the reason.
        delete = match why {
            Removal::Expired { cutoff } => delete
                .filter(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
                .filter(referenced_by_no_other_path(self.backend(), cache_id))
                .filter(not_pinned(self.backend(), cache_id)),
            // Read or pushed again since the listing: its last use is then
            // later than any listed.
            Removal::Evicted => delete
                .filter(Expr::cust(OBJECT_LAST_USED).lte(latest))
                .filter(referenced_by_no_other_path(self.backend(), cache_id))
                .filter(not_pinned(self.backend(), cache_id)),
            Removal::EvictedFromCycle => delete
                .filter(Expr::cust(OBJECT_LAST_USED).lte(latest))
                .filter(not_pinned(self.backend(), cache_id)),
            Removal::Destroyed => delete,
        };
        let gone = delete.exec(&self.conn).await?.rows_affected;
        let removed: Vec<LruObject> = if gone == listed.len() as u64 {
            listed.to_vec()
        } else {
            let stayed: std::collections::HashSet<ObjectId> = object::Entity::find()
                .select_only()
                .column(object::Column::Id)
                .filter(object::Column::Id.is_in(listed.iter().map(|o| o.id)))
                .into_tuple()
                .all(&self.conn)
                .await?
                .into_iter()
                .collect();
            listed
                .iter()
                .filter(|o| !stayed.contains(&o.id))
                .copied()
                .collect()
        };
        let mut nars: Vec<NarId> = removed.iter().map(|o| o.nar_id).collect();
        nars.sort_unstable();
        nars.dedup();
        let held = rows_pointing_at(
            object::Entity,
            (object::Entity, object::Column::NarId),
            (nar::Entity, nar::Column::Id),
        );
        let held_elsewhere: Vec<i64> = nar::Entity::find()
            .select_only()
            .column(nar::Column::FileSize)
            .filter(nar::Column::Id.is_in(nars))
            .filter(Expr::exists(held))
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(RemovedPaths {
            paths: gone,
            nar_bytes: removed.iter().map(|o| o.file_size).sum(),
            held_elsewhere_bytes: held_elsewhere.into_iter().sum(),
        })
    }

    /// Removes a destroyed cache's row (its objects must be gone), with
    /// its logs and staged NARs; returns how many logs went (their blobs
    /// are left to the orphan sweep).
    pub async fn forget_destroyed_cache(&self, cache_id: CacheId) -> Result<u64, DatabaseError> {
        let txn = self.begin_write().await?;
        let logs = build_log::Entity::delete_many()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?
            .rows_affected;
        staged_nar::Entity::delete_many()
            .filter(staged_nar::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?;
        cache::Entity::delete_many()
            .filter(cache::Column::Id.eq(cache_id))
            .filter(cache::Column::DeletedAt.is_not_null())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(logs)
    }

    /// Drops `nix copy` uploads no narinfo claimed since before `cutoff`.
    pub async fn expire_staged(&self, cutoff: i64) -> Result<u64, DatabaseError> {
        let result = staged_nar::Entity::delete_many()
            .filter(staged_nar::Column::CreatedAt.lt(cutoff))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }
}
