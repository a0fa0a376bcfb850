//! What the garbage collector asks of the database. Every query works on
//! one page of rows (by id, or `LIMIT`), so memory never grows with the
//! store, and every deletion is one statement whose own `WHERE` re-checks
//! that the row is still unreferenced: a row an upload or a read began to
//! use meanwhile is left alone.
//!
//! Paths leave a cache from the roots of its reference graph: a path goes
//! only while no other path of the same cache references it, so every path
//! left keeps its whole closure. References are stored per object, as the
//! JSON array of full store paths in `object.references`; the reverse look-up
//! ("does any other path of this cache reference this one?") is one SQL
//! condition per backend, evaluated by the database per page.

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, IntoColumnRef, IntoTableRef, Query, SelectStatement,
};
use sea_orm::{
    ColumnTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, JoinType, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait,
};

use super::entity::{
    BlobState, StoredCompression, build_log, cache, chunk, chunkref, gc_lease, nar, object, pack,
    staged_nar,
};
use super::{Database, now};
use crate::pack::write::WrittenPack;

/// An object in least-recently-read order, for retention and quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub struct LruObject {
    /// The object's id.
    pub id: i64,
    /// Its NAR.
    pub nar_id: i64,
    /// Its NAR's stored size.
    pub file_size: i64,
    /// When it was last read, or pushed if never read (epoch seconds).
    pub last_used: i64,
}

/// A path a quota may evict, with what it references (itself left out):
/// evicting it may make those evictable in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictableObject {
    /// The path.
    pub object: LruObject,
    /// Its full store path.
    pub store_path: String,
    /// Full store paths it references, other than itself.
    pub references: Vec<String>,
}

#[derive(FromQueryResult)]
struct EvictableRow {
    id: i64,
    nar_id: i64,
    file_size: i64,
    last_used: i64,
    store_path: String,
    references: String,
}

impl TryFrom<EvictableRow> for EvictableObject {
    type Error = DbErr;

    fn try_from(row: EvictableRow) -> Result<Self, DbErr> {
        let references: Vec<String> = serde_json::from_str(&row.references)
            .map_err(|e| DbErr::Custom(format!("object {} has bad references: {e}", row.id)))?;
        Ok(Self {
            object: LruObject {
                id: row.id,
                nar_id: row.nar_id,
                file_size: row.file_size,
                last_used: row.last_used,
            },
            references: references
                .into_iter()
                .filter(|r| *r != row.store_path)
                .collect(),
            store_path: row.store_path,
        })
    }
}

/// Why listed objects are being removed: what the deleting statement
/// re-checks, so that a path read, pushed or newly referenced since it was
/// listed stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Past retention: still last used before `cutoff`, and no other path
    /// of the cache references it.
    Expired {
        /// Epoch seconds.
        cutoff: i64,
    },
    /// Over quota: not used since it was listed, and no other path of the
    /// cache references it.
    Evicted,
    /// Over quota, in a cache where every path is referenced by another
    /// (a reference cycle, which only forged references make): not used
    /// since it was listed, referenced or not.
    EvictedFromCycle,
    /// Its cache was destroyed: unconditionally.
    Destroyed,
}

/// What removing some paths did, for the collector's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemovedPaths {
    /// Paths removed.
    pub paths: u64,
    /// Stored bytes of their NARs.
    pub nar_bytes: i64,
    /// Of those, the bytes of NARs another path still holds (most often
    /// the same path in another cache): removing these paths frees none
    /// of it.
    pub held_elsewhere_bytes: i64,
}

/// Packs marked for deletion whose blobs wait for the grace period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacksAwaitingDeletion {
    /// How many.
    pub packs: u64,
    /// Their stored bytes.
    pub bytes: i64,
    /// When the first of them was marked (epoch seconds).
    pub first_marked_at: Option<i64>,
}

/// When an object was last read, or pushed if never read.
const OBJECT_LAST_USED: &str = "COALESCE(object.last_accessed_at, object.created_at)";

/// A pack whose live chunks are a small part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionCandidate {
    /// The pack.
    pub pack: pack::Model,
    /// Stored bytes of its valid chunks.
    pub live_bytes: i64,
}

#[derive(Debug, FromQueryResult)]
struct PackLive {
    id: i64,
    live: Option<i64>,
}

/// One chunk moved by compaction: its new place.
#[derive(Debug, Clone)]
pub struct MovedChunk {
    /// The chunk's id.
    pub id: i64,
    /// Offset in the new pack.
    pub offset: u64,
    /// Stored size there.
    pub stored_size: u64,
    /// Checksum of the stored bytes there.
    pub checksum: String,
}

/// A condition on `object`: no other path of its cache references it.
///
/// SQLite cannot decorrelate a subquery, so there the referenced paths of
/// the cache are one uncorrelated `NOT IN` set, built once per statement
/// (self-references dropped by comparing with the referrer's own path).
/// PostgreSQL plans the correlated `NOT EXISTS` as a hash anti-join, which
/// spills to disk rather than degrade as a large `NOT IN` set would.
fn referenced_by_no_other_path(backend: DbBackend, cache_id: i64) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust(
            "NOT EXISTS (SELECT 1 FROM object AS referrer \
             CROSS JOIN LATERAL jsonb_array_elements_text(CAST(referrer.\"references\" AS jsonb)) \
             AS reference(path) \
             WHERE referrer.cache_id = object.cache_id \
             AND reference.path = object.store_path AND referrer.id <> object.id)",
        ),
        _ => Expr::cust(format!(
            "object.store_path NOT IN (SELECT reference.value FROM object AS referrer, \
             json_each(referrer.\"references\") AS reference \
             WHERE referrer.cache_id = {cache_id} AND reference.type = 'text' \
             AND reference.value <> referrer.store_path)"
        )),
    }
}

/// `SELECT 1 FROM table WHERE reference = target`, correlated with the
/// outer statement's `target`: under `EXISTS`, whether any row of `table`
/// still points at the row being reclaimed.
fn rows_pointing_at(
    table: impl IntoTableRef,
    reference: impl IntoColumnRef,
    target: impl IntoColumnRef,
) -> SelectStatement {
    Query::select()
        .expr(Expr::val(1))
        .from(table)
        .and_where(Expr::col(reference).equals(target))
        .to_owned()
}

impl Database {
    /// Takes (or renews) the collector's lease for `ttl_secs`, unless
    /// another holder's is unexpired; whether this holder has it now.
    pub async fn acquire_gc_lease(&self, holder: &str, ttl_secs: i64) -> Result<bool, DbErr> {
        let when = now();
        let result = gc_lease::Entity::update_many()
            .col_expr(gc_lease::Column::Holder, Expr::value(holder))
            .col_expr(gc_lease::Column::ExpiresAt, Expr::value(when + ttl_secs))
            .filter(gc_lease::Column::Id.eq(1))
            .filter(
                gc_lease::Column::Holder
                    .is_null()
                    .or(gc_lease::Column::ExpiresAt.lt(when))
                    .or(gc_lease::Column::Holder.eq(holder)),
            )
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Who holds the lease, unexpired.
    pub async fn gc_lease_holder(&self) -> Result<Option<String>, DbErr> {
        Ok(gc_lease::Entity::find_by_id(1)
            .one(&self.conn)
            .await?
            .filter(|lease| lease.expires_at >= now())
            .and_then(|lease| lease.holder))
    }

    /// Takes the lease from `dead`, a holder known to have died, unless
    /// someone else took it meanwhile; whether `holder` has it now.
    pub async fn take_over_gc_lease(
        &self,
        dead: &str,
        holder: &str,
        ttl_secs: i64,
    ) -> Result<bool, DbErr> {
        let result = gc_lease::Entity::update_many()
            .col_expr(gc_lease::Column::Holder, Expr::value(holder))
            .col_expr(gc_lease::Column::ExpiresAt, Expr::value(now() + ttl_secs))
            .filter(gc_lease::Column::Id.eq(1))
            .filter(gc_lease::Column::Holder.eq(dead))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Gives the lease up, if this holder has it.
    pub async fn release_gc_lease(&self, holder: &str) -> Result<(), DbErr> {
        gc_lease::Entity::update_many()
            .col_expr(
                gc_lease::Column::Holder,
                Expr::value(Option::<String>::None),
            )
            .col_expr(gc_lease::Column::ExpiresAt, Expr::value(0))
            .filter(gc_lease::Column::Id.eq(1))
            .filter(gc_lease::Column::Holder.eq(holder))
            .exec(&self.conn)
            .await?;
        Ok(())
    }

    /// Every cache, live or destroyed (few rows: one per tenant cache).
    pub async fn all_caches(&self) -> Result<Vec<cache::Model>, DbErr> {
        cache::Entity::find()
            .order_by_asc(cache::Column::Id)
            .all(&self.conn)
            .await
    }

    /// The backend, whose concurrency the collector's cutoffs depend on.
    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// A page of a cache's objects as `(id, NAR, NAR size, last used)`,
    /// least recently used first.
    fn lru_page(cache_id: i64, limit: u64) -> sea_orm::Select<object::Entity> {
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
    /// path of the cache references, least recently used first.
    pub async fn expired_roots(
        &self,
        cache_id: i64,
        cutoff: i64,
        limit: u64,
    ) -> Result<Vec<LruObject>, DbErr> {
        Self::lru_page(cache_id, limit)
            .filter(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
            .filter(referenced_by_no_other_path(self.backend(), cache_id))
            .into_model::<LruObject>()
            .all(&self.conn)
            .await
    }

    /// How many of a cache's objects were last used before `cutoff`: after
    /// expiry, those kept because paths kept reference them.
    pub async fn count_last_used_before(&self, cache_id: i64, cutoff: i64) -> Result<u64, DbErr> {
        use sea_orm::PaginatorTrait;
        object::Entity::find()
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
            .count(&self.conn)
            .await
    }

    /// Stored bytes of a cache: its paths' NARs, its build logs and the NARs
    /// staged for it.
    pub async fn cache_usage(&self, cache_id: i64) -> Result<i64, DbErr> {
        #[derive(FromQueryResult)]
        struct Usage {
            bytes: Option<i64>,
        }
        let usage = object::Entity::find()
            .select_only()
            .join(JoinType::InnerJoin, object::Relation::Nar.def())
            .expr_as(
                Expr::col((nar::Entity, nar::Column::FileSize))
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
                "bytes",
            )
            .filter(object::Column::CacheId.eq(cache_id))
            .into_model::<Usage>()
            .one(&self.conn)
            .await?;
        let paths = usage.and_then(|u| u.bytes).unwrap_or(0);
        Ok(paths + self.log_usage(cache_id).await? + self.staged_usage(cache_id).await?)
    }

    /// Stored bytes of the NARs `nix copy` staged for a cache and no
    /// narinfo has claimed yet: the uploader's, until claimed or reclaimed.
    async fn staged_usage(&self, cache_id: i64) -> Result<i64, DbErr> {
        #[derive(FromQueryResult)]
        struct Usage {
            bytes: Option<i64>,
        }
        let usage = staged_nar::Entity::find()
            .select_only()
            .join(
                JoinType::InnerJoin,
                staged_nar::Entity::belongs_to(nar::Entity)
                    .from(staged_nar::Column::NarId)
                    .to(nar::Column::Id)
                    .into(),
            )
            .expr_as(
                Expr::col((nar::Entity, nar::Column::FileSize))
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
                "bytes",
            )
            .filter(staged_nar::Column::CacheId.eq(cache_id))
            .into_model::<Usage>()
            .one(&self.conn)
            .await?;
        Ok(usage.and_then(|u| u.bytes).unwrap_or(0))
    }

    /// A page of a cache's objects, least recently read first, whether
    /// other paths reference them or not.
    pub async fn least_recent_objects(
        &self,
        cache_id: i64,
        limit: u64,
    ) -> Result<Vec<LruObject>, DbErr> {
        Self::lru_page(cache_id, limit)
            .into_model::<LruObject>()
            .all(&self.conn)
            .await
    }

    /// A page of the objects a quota may evict: those no other path of the
    /// cache references (the roots of its reference graph), least recently
    /// read first, each with the paths it references.
    pub async fn evictable_objects(
        &self,
        cache_id: i64,
        limit: u64,
    ) -> Result<Vec<EvictableObject>, DbErr> {
        Self::lru_page(cache_id, limit)
            .column(object::Column::StorePath)
            .column(object::Column::References)
            .filter(referenced_by_no_other_path(self.backend(), cache_id))
            .into_model::<EvictableRow>()
            .all(&self.conn)
            .await?
            .into_iter()
            .map(EvictableObject::try_from)
            .collect()
    }

    /// Of these store paths, those a cache holds, with what each
    /// references.
    pub async fn objects_at_paths(
        &self,
        cache_id: i64,
        store_paths: &[String],
    ) -> Result<Vec<EvictableObject>, DbErr> {
        let mut found = Vec::new();
        for batch in store_paths.chunks(super::BATCH) {
            // The hash part is indexed with the cache; the full path is
            // compared too, so a path with a forged name is not confused.
            let hashes = batch
                .iter()
                .filter_map(|p| p.strip_prefix("/nix/store/").and_then(|p| p.get(..32)))
                .map(str::to_owned);
            let rows = Self::lru_page(cache_id, super::BATCH as u64)
                .column(object::Column::StorePath)
                .column(object::Column::References)
                .filter(object::Column::StorePathHash.is_in(hashes))
                .filter(object::Column::StorePath.is_in(batch.iter().cloned()))
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
        cache_id: i64,
        store_paths: &[String],
    ) -> Result<Vec<(String, i64)>, DbErr> {
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
        cache_id: i64,
        listed: &[LruObject],
        why: Removal,
    ) -> Result<RemovedPaths, DbErr> {
        let Some(latest) = listed.iter().map(|o| o.last_used).max() else {
            return Ok(RemovedPaths::default());
        };
        let mut delete = object::Entity::delete_many()
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::Id.is_in(listed.iter().map(|o| o.id)));
        delete = match why {
            Removal::Expired { cutoff } => delete
                .filter(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
                .filter(referenced_by_no_other_path(self.backend(), cache_id)),
            // Read or pushed again since the listing: its last use is then
            // later than any listed.
            Removal::Evicted => delete
                .filter(Expr::cust(OBJECT_LAST_USED).lte(latest))
                .filter(referenced_by_no_other_path(self.backend(), cache_id)),
            Removal::EvictedFromCycle => delete.filter(Expr::cust(OBJECT_LAST_USED).lte(latest)),
            Removal::Destroyed => delete,
        };
        let gone = delete.exec(&self.conn).await?.rows_affected;
        let removed: Vec<LruObject> = if gone == listed.len() as u64 {
            listed.to_vec()
        } else {
            let stayed: std::collections::HashSet<i64> = object::Entity::find()
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
        let mut nars: Vec<i64> = removed.iter().map(|o| o.nar_id).collect();
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
    pub async fn forget_destroyed_cache(&self, cache_id: i64) -> Result<u64, DbErr> {
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
    pub async fn expire_staged(&self, cutoff: i64) -> Result<u64, DbErr> {
        let result = staged_nar::Entity::delete_many()
            .filter(staged_nar::Column::CreatedAt.lt(cutoff))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// Ids of a table's rows after `after`, in order: one page.
    async fn id_page<E: EntityTrait>(
        &self,
        id: E::Column,
        after: i64,
        limit: u64,
    ) -> Result<Vec<i64>, DbErr> {
        E::find()
            .select_only()
            .column(id)
            .filter(id.gt(after))
            .order_by_asc(id)
            .limit(limit)
            .into_tuple()
            .all(&self.conn)
            .await
    }

    /// Of the NARs after `after` (one page), deletes those no object holds
    /// and no `nix copy` upload has staged. The largest id looked at (or
    /// `None` past the end), and how many went.
    ///
    /// An upload attaching one of these NARs re-checks and stamps its row
    /// (`UPDATE … WHERE state = 'valid'`) in its own transaction. See
    /// [`Self::lock_for_deletion`] for why that never races this.
    pub async fn delete_unheld_nars(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<(Option<i64>, u64), DbErr> {
        let page = self
            .id_page::<nar::Entity>(nar::Column::Id, after, limit)
            .await?;
        let Some(&last) = page.last() else {
            return Ok((None, 0));
        };
        let held = rows_pointing_at(
            object::Entity,
            (object::Entity, object::Column::NarId),
            (nar::Entity, nar::Column::Id),
        );
        let staged = rows_pointing_at(
            staged_nar::Entity,
            (staged_nar::Entity, staged_nar::Column::NarId),
            (nar::Entity, nar::Column::Id),
        );
        let txn = self.begin_write().await?;
        self.lock_for_deletion::<nar::Entity>(&txn, nar::Column::Id, &page)
            .await?;
        let result = nar::Entity::delete_many()
            .filter(nar::Column::Id.is_in(page))
            .filter(Expr::exists(held).not())
            .filter(Expr::exists(staged).not())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok((Some(last), result.rows_affected))
    }

    /// Of the chunks after `after` (one page), deletes those no NAR
    /// references. An upload that meant to reuse one re-checks it when it
    /// commits, finds it gone and is retried (see
    /// [`Self::lock_for_deletion`]).
    pub async fn delete_unreferenced_chunks(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<(Option<i64>, u64), DbErr> {
        let page = self
            .id_page::<chunk::Entity>(chunk::Column::Id, after, limit)
            .await?;
        let Some(&last) = page.last() else {
            return Ok((None, 0));
        };
        let referenced = rows_pointing_at(
            chunkref::Entity,
            (chunkref::Entity, chunkref::Column::ChunkId),
            (chunk::Entity, chunk::Column::Id),
        );
        let txn = self.begin_write().await?;
        self.lock_for_deletion::<chunk::Entity>(&txn, chunk::Column::Id, &page)
            .await?;
        let result = chunk::Entity::delete_many()
            .filter(chunk::Column::Id.is_in(page))
            .filter(Expr::exists(referenced).not())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok((Some(last), result.rows_affected))
    }

    /// Before a page's deleting statement, in its transaction: on
    /// PostgreSQL, locks the page's rows (`SELECT … FOR UPDATE`, in id
    /// order, as uploads lock them).
    ///
    /// An upload references a NAR or chunk in a transaction that first
    /// re-checks and stamps its row, which locks it. If the upload got
    /// there first, this waits for its commit, and the `DELETE` that
    /// follows, a new statement with a new snapshot under READ COMMITTED,
    /// sees the reference it committed and leaves the row. Without the
    /// lock, a `DELETE` that waited on the row would re-check only the row
    /// itself, not its `NOT EXISTS` (that keeps the statement's snapshot),
    /// and delete a row just referenced. If this got there first, the
    /// upload's re-check waits, then finds the row gone and the upload is
    /// retried. On SQLite writers take turns, so the statement always sees
    /// every committed reference and needs no lock.
    async fn lock_for_deletion<E: EntityTrait>(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        id: E::Column,
        page: &[i64],
    ) -> Result<(), DbErr> {
        if self.backend() != DbBackend::Postgres {
            return Ok(());
        }
        let _: Vec<i64> = E::find()
            .select_only()
            .column(id)
            .filter(id.is_in(page.iter().copied()))
            .order_by_asc(id)
            .lock_exclusive()
            .into_tuple()
            .all(txn)
            .await?;
        Ok(())
    }

    /// Of the packs after `after` (one page), marks `deleting` those no
    /// chunk row points into, written before `cutoff`.
    pub async fn mark_dead_packs(
        &self,
        after: i64,
        limit: u64,
        cutoff: i64,
    ) -> Result<(Option<i64>, u64), DbErr> {
        let page = self
            .id_page::<pack::Entity>(pack::Column::Id, after, limit)
            .await?;
        let Some(&last) = page.last() else {
            return Ok((None, 0));
        };
        let used = rows_pointing_at(
            chunk::Entity,
            (chunk::Entity, chunk::Column::PackId),
            (pack::Entity, pack::Column::Id),
        );
        let result = pack::Entity::update_many()
            .col_expr(pack::Column::State, Expr::value(BlobState::Deleting))
            .col_expr(pack::Column::DeletingSince, Expr::value(now()))
            .filter(pack::Column::Id.is_in(page))
            .filter(pack::Column::State.eq(BlobState::Valid))
            .filter(pack::Column::CreatedAt.lt(cutoff))
            .filter(Expr::exists(used).not())
            .exec(&self.conn)
            .await?;
        Ok((Some(last), result.rows_affected))
    }

    /// A page of packs marked `deleting` before `cutoff`, whose blobs may go.
    pub async fn packs_to_delete(
        &self,
        cutoff: i64,
        limit: u64,
    ) -> Result<Vec<pack::Model>, DbErr> {
        pack::Entity::find()
            .filter(pack::Column::State.eq(BlobState::Deleting))
            .filter(pack::Column::DeletingSince.lt(cutoff))
            .order_by_asc(pack::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await
    }

    /// Packs marked `deleting` whose blobs are still stored.
    pub async fn packs_awaiting_deletion(&self) -> Result<PacksAwaitingDeletion, DbErr> {
        #[derive(FromQueryResult)]
        struct Waiting {
            packs: i64,
            bytes: Option<i64>,
            first: Option<i64>,
        }
        let waiting = pack::Entity::find()
            .select_only()
            .expr_as(Expr::col(pack::Column::Id).count(), "packs")
            .expr_as(
                Expr::col(pack::Column::Size)
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
                "bytes",
            )
            .expr_as(Expr::col(pack::Column::DeletingSince).min(), "first")
            .filter(pack::Column::State.eq(BlobState::Deleting))
            .into_model::<Waiting>()
            .one(&self.conn)
            .await?;
        Ok(
            waiting.map_or_else(PacksAwaitingDeletion::default, |w| PacksAwaitingDeletion {
                packs: u64::try_from(w.packs).unwrap_or(0),
                bytes: w.bytes.unwrap_or(0),
                first_marked_at: w.first,
            }),
        )
    }

    /// Deletes a pack's row once its blob is gone.
    pub async fn delete_pack_row(&self, pack_id: i64) -> Result<(), DbErr> {
        pack::Entity::delete_many()
            .filter(pack::Column::Id.eq(pack_id))
            .filter(pack::Column::State.eq(BlobState::Deleting))
            .exec(&self.conn)
            .await?;
        Ok(())
    }

    /// Which of `keys` have a pack row.
    pub async fn known_pack_keys(&self, keys: &[String]) -> Result<Vec<String>, DbErr> {
        pack::Entity::find()
            .select_only()
            .column(pack::Column::Key)
            .filter(pack::Column::Key.is_in(keys.iter().cloned()))
            .into_tuple()
            .all(&self.conn)
            .await
    }

    /// Of the valid packs after `after` written before `cutoff` (one
    /// page), those whose valid chunks hold less than `live_fraction` of
    /// their bytes. The largest id looked at, or `None` past the end.
    pub async fn compaction_candidates(
        &self,
        after: i64,
        limit: u64,
        cutoff: i64,
        live_fraction: f64,
    ) -> Result<(Option<i64>, Vec<CompactionCandidate>), DbErr> {
        let packs = pack::Entity::find()
            .filter(pack::Column::Id.gt(after))
            .order_by_asc(pack::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await?;
        let Some(last) = packs.last().map(|p| p.id) else {
            return Ok((None, Vec::new()));
        };
        let ids: Vec<i64> = packs.iter().map(|p| p.id).collect();
        let live: Vec<PackLive> = chunk::Entity::find()
            .select_only()
            .column_as(chunk::Column::PackId, "id")
            .expr_as(
                Expr::col(chunk::Column::StoredSize)
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
                "live",
            )
            .filter(chunk::Column::PackId.is_in(ids))
            .filter(chunk::Column::State.eq(BlobState::Valid))
            .group_by(chunk::Column::PackId)
            .into_model::<PackLive>()
            .all(&self.conn)
            .await?;
        let live: std::collections::HashMap<i64, i64> = live
            .into_iter()
            .map(|l| (l.id, l.live.unwrap_or(0)))
            .collect();
        let candidates = packs
            .into_iter()
            .filter(|p| p.state == BlobState::Valid && p.created_at < cutoff)
            .filter_map(|pack| {
                let live_bytes = *live.get(&pack.id)?;
                ((live_bytes as f64) < pack.size as f64 * live_fraction)
                    .then_some(CompactionCandidate { pack, live_bytes })
            })
            .collect();
        Ok((Some(last), candidates))
    }

    /// After compaction wrote `written`: in one transaction, records the
    /// new pack, points the moved chunks into it (those still in `old`
    /// and valid), drops the whole-pack mark of NARs that had `old`, and
    /// marks `old` deleting if nothing points into it any more.
    pub async fn repoint_compacted(
        &self,
        old: i64,
        written: &WrittenPack,
        moved: &[MovedChunk],
    ) -> Result<(), DbErr> {
        let txn = self.begin_write().await?;
        let when = now();
        let new_pack = super::store::insert_pack(&txn, written, when).await?;
        for chunk in moved {
            chunk::Entity::update_many()
                .col_expr(chunk::Column::PackId, Expr::value(Some(new_pack)))
                .col_expr(chunk::Column::Offset, Expr::value(chunk.offset as i64))
                .col_expr(
                    chunk::Column::StoredSize,
                    Expr::value(chunk.stored_size as i64),
                )
                .col_expr(
                    chunk::Column::StoredChecksum,
                    Expr::value(Some(chunk.checksum.clone())),
                )
                .filter(chunk::Column::Id.eq(chunk.id))
                .filter(chunk::Column::PackId.eq(old))
                .filter(chunk::Column::State.eq(BlobState::Valid))
                .exec(&txn)
                .await?;
        }
        nar::Entity::update_many()
            .col_expr(nar::Column::PackId, Expr::value(Option::<i64>::None))
            .filter(nar::Column::PackId.eq(old))
            .exec(&txn)
            .await?;
        // The NARs holding moved chunks are now smaller as served.
        let ids: Vec<i64> = moved.iter().map(|c| c.id).collect();
        for batch in ids.chunks(super::BATCH) {
            let holding = Query::select()
                .column((chunkref::Entity, chunkref::Column::NarId))
                .from(chunkref::Entity)
                .and_where(
                    Expr::col((chunkref::Entity, chunkref::Column::ChunkId))
                        .is_in(batch.iter().copied()),
                )
                .to_owned();
            nar::Entity::update_many()
                .col_expr(
                    nar::Column::FileSize,
                    Expr::cust(
                        "(SELECT COALESCE(SUM(chunk.stored_size), 0) FROM chunk_ref \
                         JOIN chunk ON chunk.id = chunk_ref.chunk_id \
                         WHERE chunk_ref.nar_id = nar.id)",
                    ),
                )
                .filter(nar::Column::Compression.eq(StoredCompression::Zstd))
                .filter(nar::Column::Id.in_subquery(holding))
                .exec(&txn)
                .await?;
        }
        let used = Query::select()
            .expr(Expr::val(1))
            .from(chunk::Entity)
            .and_where(Expr::col((chunk::Entity, chunk::Column::PackId)).eq(old))
            .to_owned();
        pack::Entity::update_many()
            .col_expr(pack::Column::State, Expr::value(BlobState::Deleting))
            .col_expr(pack::Column::DeletingSince, Expr::value(when))
            .filter(pack::Column::Id.eq(old))
            .filter(Expr::exists(used).not())
            .exec(&txn)
            .await?;
        txn.commit().await
    }

    /// Rows of each table, for the collector's summary and tests.
    pub async fn count_rows(&self) -> Result<[u64; 4], DbErr> {
        use sea_orm::PaginatorTrait;
        Ok([
            object::Entity::find().count(&self.conn).await?,
            nar::Entity::find().count(&self.conn).await?,
            chunk::Entity::find().count(&self.conn).await?,
            pack::Entity::find().count(&self.conn).await?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveModelTrait, Set};

    use super::*;
    use crate::config::DatabaseConfig;
    use crate::database::NewCache;

    /// A fresh database: SQLite in `dir`, or, with `ATTIC_TEST_POSTGRES`
    /// set to a server's URL, a new database on that PostgreSQL server, so
    /// the same queries are checked on both backends.
    async fn database(dir: &tempfile::TempDir) -> Database {
        use sea_orm::ConnectionTrait;
        let url = match std::env::var("ATTIC_TEST_POSTGRES") {
            Ok(server) => {
                let name = format!(
                    "gc_{}_{}",
                    std::process::id(),
                    dir.path()
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("db")
                        .to_lowercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                );
                let admin = sea_orm::Database::connect(format!("{server}/postgres"))
                    .await
                    .expect("connect to PostgreSQL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create database");
                format!("{server}/{name}")
            }
            Err(_) => format!("sqlite://{}?mode=rwc", dir.path().join("db").display()),
        };
        let database = Database::connect(&url, &DatabaseConfig::default(), true)
            .await
            .expect("connect");
        database.migrate().await.expect("migrate");
        database
    }

    async fn new_cache(database: &Database, name: &str) -> i64 {
        database
            .create_cache(NewCache {
                name: name.into(),
                keypair: String::new(),
                is_public: false,
                store_dir: "/nix/store".into(),
                priority: 40,
                upstream_cache_key_names: "[]".into(),
            })
            .await
            .expect("cache")
            .id
    }

    fn store_path(n: u8) -> String {
        format!("/nix/store/{n:0>32}-p")
    }

    async fn new_nar(database: &Database, n: u8, created_at: i64) -> i64 {
        nar::ActiveModel {
            nar_hash: Set(format!("sha256:{n:0>52}")),
            nar_size: Set(1000),
            compression: Set(StoredCompression::Zstd),
            file_size: Set(100),
            state: Set(BlobState::Valid),
            num_chunks: Set(1),
            created_at: Set(created_at),
            ..Default::default()
        }
        .insert(database.connection())
        .await
        .expect("nar")
        .id
    }

    /// Path `n` of `cache` on NAR `nar`, pushed at `created_at`,
    /// referencing the paths `references` (itself among them if listed).
    async fn attach(
        database: &Database,
        cache: i64,
        n: u8,
        nar: i64,
        created_at: i64,
        references: &[u8],
    ) -> i64 {
        let references: Vec<String> = references.iter().map(|&r| store_path(r)).collect();
        object::ActiveModel {
            cache_id: Set(cache),
            nar_id: Set(nar),
            store_path: Set(store_path(n)),
            store_path_hash: Set(format!("{n:0>32}")),
            references: Set(serde_json::to_string(&references).expect("json")),
            sigs: Set("[]".into()),
            created_at: Set(created_at),
            ..Default::default()
        }
        .insert(database.connection())
        .await
        .expect("object")
        .id
    }

    /// Path `n` of `cache` on a NAR of its own.
    async fn push_referencing(
        database: &Database,
        cache: i64,
        n: u8,
        created_at: i64,
        references: &[u8],
    ) -> i64 {
        let nar = new_nar(database, n, created_at).await;
        attach(database, cache, n, nar, created_at, references).await
    }

    /// A path of `cache` on a NAR of its own, pushed at `created_at`.
    async fn push(database: &Database, cache: i64, n: u8, created_at: i64) -> i64 {
        push_referencing(database, cache, n, created_at, &[]).await
    }

    async fn roots(database: &Database, cache: i64) -> Vec<LruObject> {
        database
            .evictable_objects(cache, 10)
            .await
            .expect("roots")
            .into_iter()
            .map(|e| e.object)
            .collect()
    }

    fn ids(objects: &[LruObject]) -> Vec<i64> {
        objects.iter().map(|o| o.id).collect()
    }

    #[tokio::test]
    async fn eviction_spares_a_path_read_after_it_was_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = database(&dir).await;
        let cache = new_cache(&database, "c").await;
        let old = push(&database, cache, 1, 1_000).await;
        let older = push(&database, cache, 2, 500).await;
        let newest = push(&database, cache, 3, 2_000).await;

        let page = roots(&database, cache).await[..2].to_vec();
        assert_eq!(
            page.iter().map(|o| (o.id, o.last_used)).collect::<Vec<_>>(),
            [(older, 500), (old, 1_000)]
        );
        // Read between the listing and the eviction: no longer least recent.
        database.touch_objects(&[old], 3_000).await.expect("touch");

        let removed = database
            .remove_objects(cache, &page, Removal::Evicted)
            .await
            .expect("evict");
        assert_eq!(removed.paths, 1);
        assert_eq!(removed.nar_bytes, 100, "only the evicted path's NAR");
        let left = database
            .least_recent_objects(cache, 10)
            .await
            .expect("left");
        assert_eq!(ids(&left), [newest, old]);
        let nothing = database
            .remove_objects(cache, &[], Removal::Evicted)
            .await
            .expect("nothing");
        assert_eq!(nothing, RemovedPaths::default());
    }

    /// top -> middle -> leaf (each also referencing itself, as Nix paths
    /// often do), and an unrelated path: only roots may be evicted, least
    /// recently used first, however old the leaf is; a path of another
    /// cache referencing the leaf does not protect it here.
    #[tokio::test]
    async fn eviction_takes_only_roots_so_closures_stay_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = database(&dir).await;
        let cache = new_cache(&database, "c").await;
        let other_cache = new_cache(&database, "other").await;
        let leaf = push_referencing(&database, cache, 3, 1_000, &[3]).await;
        let middle = push_referencing(&database, cache, 2, 2_000, &[2, 3]).await;
        let top = push_referencing(&database, cache, 1, 3_000, &[1, 2, 3]).await;
        let unrelated = push(&database, cache, 4, 2_500).await;
        push_referencing(&database, other_cache, 5, 100, &[3]).await;

        let page = roots(&database, cache).await;
        assert_eq!(
            ids(&page),
            [unrelated, top],
            "the leaf is least recently used, yet referenced"
        );
        let listed = database.evictable_objects(cache, 10).await.expect("roots");
        assert_eq!(
            listed[1].references,
            [store_path(2), store_path(3)],
            "what the top references, itself left out"
        );
        let below = database
            .objects_at_paths(cache, &listed[1].references)
            .await
            .expect("below");
        let mut below: Vec<(i64, String)> = below
            .into_iter()
            .map(|o| (o.object.id, o.store_path))
            .collect();
        below.sort();
        assert_eq!(below, [(leaf, store_path(3)), (middle, store_path(2))]);
        let mut counts = database
            .referrer_counts(cache, &[store_path(2), store_path(3), store_path(1)])
            .await
            .expect("counts");
        counts.sort();
        // The leaf has two referrers here (the top and the middle), not
        // counting itself or the other cache's path; nothing references
        // the top.
        assert_eq!(counts, [(store_path(2), 1), (store_path(3), 2)]);

        let removed = database
            .remove_objects(cache, &page[1..], Removal::Evicted)
            .await
            .expect("evict top");
        assert_eq!(removed.paths, 1);
        let page = roots(&database, cache).await;
        assert_eq!(ids(&page), [middle, unrelated], "the middle is a root now");
        database
            .remove_objects(cache, &page[..1], Removal::Evicted)
            .await
            .expect("evict middle");
        let page = roots(&database, cache).await;
        assert_eq!(ids(&page), [leaf, unrelated]);
    }

    /// A root listed for eviction that a path pushed meanwhile references
    /// is no longer a root when the eviction runs: it stays.
    #[tokio::test]
    async fn eviction_spares_a_path_referenced_after_it_was_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = database(&dir).await;
        let cache = new_cache(&database, "c").await;
        let dependency = push(&database, cache, 1, 1_000).await;
        let page = roots(&database, cache).await;
        assert_eq!(ids(&page), [dependency]);
        push_referencing(&database, cache, 2, 2_000, &[1]).await;
        let removed = database
            .remove_objects(cache, &page, Removal::Evicted)
            .await
            .expect("evict");
        assert_eq!(removed.paths, 0);
    }

    /// An expired path a kept path references stays; an expired path only
    /// expired paths reference goes once they have gone.
    #[tokio::test]
    async fn expiry_keeps_what_kept_paths_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = database(&dir).await;
        let cache = new_cache(&database, "c").await;
        let cutoff = 5_000;
        let needed = push(&database, cache, 1, 1_000).await;
        push_referencing(&database, cache, 2, 9_000, &[1, 2]).await;
        let old_dependency = push(&database, cache, 3, 1_000).await;
        let old_top = push_referencing(&database, cache, 4, 2_000, &[3, 4]).await;

        let page = database
            .expired_roots(cache, cutoff, 10)
            .await
            .expect("page");
        assert_eq!(ids(&page), [old_top]);
        let removed = database
            .remove_objects(cache, &page, Removal::Expired { cutoff })
            .await
            .expect("expire");
        assert_eq!(removed.paths, 1);
        let page = database
            .expired_roots(cache, cutoff, 10)
            .await
            .expect("page");
        assert_eq!(ids(&page), [old_dependency]);
        database
            .remove_objects(cache, &page, Removal::Expired { cutoff })
            .await
            .expect("expire");
        assert!(
            database
                .expired_roots(cache, cutoff, 10)
                .await
                .expect("page")
                .is_empty()
        );
        assert_eq!(
            database
                .count_last_used_before(cache, cutoff)
                .await
                .expect("count"),
            1,
            "the kept path's dependency stays"
        );
        let left = database
            .least_recent_objects(cache, 10)
            .await
            .expect("left");
        assert!(ids(&left).contains(&needed));
    }

    /// Removing a path whose NAR another cache holds frees none of it, and
    /// the report's numbers say so.
    #[tokio::test]
    async fn removing_a_path_another_cache_holds_counts_its_nar_as_held_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = database(&dir).await;
        let cache = new_cache(&database, "c").await;
        let other = new_cache(&database, "other").await;
        let shared = new_nar(&database, 1, 1_000).await;
        attach(&database, cache, 1, shared, 1_000, &[]).await;
        attach(&database, other, 1, shared, 1_000, &[]).await;
        push(&database, cache, 2, 1_000).await;

        let page = database
            .least_recent_objects(cache, 10)
            .await
            .expect("page");
        let removed = database
            .remove_objects(cache, &page, Removal::Destroyed)
            .await
            .expect("remove");
        assert_eq!(
            removed,
            RemovedPaths {
                paths: 2,
                nar_bytes: 200,
                held_elsewhere_bytes: 100,
            }
        );
    }

    /// Unheld NARs go in the run that removed their last path, however
    /// recently an upload attached them: no time cutoff, the row lock (on
    /// PostgreSQL) is what keeps an upload in flight safe.
    #[tokio::test]
    async fn unheld_nars_go_at_once_and_held_ones_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = database(&dir).await;
        let cache = new_cache(&database, "c").await;
        let held = push(&database, cache, 1, now()).await;
        let unheld = new_nar(&database, 2, now()).await;
        assert_eq!(
            database.delete_unheld_nars(0, 10,).await.expect("delete"),
            (Some(unheld), 1)
        );
        let left: Vec<i64> = database
            .least_recent_objects(cache, 10)
            .await
            .expect("left")
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(left, [held]);
        assert_eq!(
            database
                .delete_unreferenced_chunks(0, 10)
                .await
                .expect("chunks"),
            (None, 0)
        );
    }
}
