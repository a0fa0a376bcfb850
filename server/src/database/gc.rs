//! What the garbage collector asks of the database. Every query works on
//! one page of rows (by id, or `LIMIT`), so memory never grows with the
//! store, and every deletion is one statement whose own `WHERE` re-checks
//! that the row is still unreferenced: a row an upload or a read began to
//! use meanwhile is left alone.

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, IntoColumnRef, IntoTableRef, Query, SelectStatement,
};
use sea_orm::{
    ColumnTrait, DbErr, EntityTrait, FromQueryResult, JoinType, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait,
};

use super::entity::{
    BlobState, StoredCompression, build_log, cache, chunk, chunkref, gc_lease, nar, object, pack,
    staged_nar,
};
use super::{Database, now};
use crate::pack::write::WrittenPack;

/// An object in least-recently-read order, for quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub struct LruObject {
    /// The object's id.
    pub id: i64,
    /// Its NAR's stored size.
    pub file_size: i64,
    /// When it was last read, or pushed if never read (epoch seconds).
    pub last_used: i64,
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

    /// Deletes up to `limit` objects of a cache last read (or, never read,
    /// created) before `cutoff`; how many.
    pub async fn expire_objects(
        &self,
        cache_id: i64,
        cutoff: i64,
        limit: u64,
    ) -> Result<u64, DbErr> {
        let page = Query::select()
            .column(object::Column::Id)
            .from(object::Entity)
            .and_where(Expr::col(object::Column::CacheId).eq(cache_id))
            .and_where(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
            .limit(limit)
            .to_owned();
        let result = object::Entity::delete_many()
            .filter(object::Column::Id.in_subquery(page))
            .filter(Expr::cust(OBJECT_LAST_USED).lt(cutoff))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// Stored bytes of a cache's paths' NARs.
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
        Ok(usage.and_then(|u| u.bytes).unwrap_or(0))
    }

    /// A page of a cache's objects, least recently read first.
    pub async fn least_recent_objects(
        &self,
        cache_id: i64,
        limit: u64,
    ) -> Result<Vec<LruObject>, DbErr> {
        object::Entity::find()
            .select_only()
            .column(object::Column::Id)
            .column_as(nar::Column::FileSize, "file_size")
            .column_as(Expr::cust(OBJECT_LAST_USED), "last_used")
            .join(JoinType::InnerJoin, object::Relation::Nar.def())
            .filter(object::Column::CacheId.eq(cache_id))
            .order_by_asc(Expr::cust(OBJECT_LAST_USED))
            .order_by_asc(object::Column::Id)
            .limit(limit)
            .into_model::<LruObject>()
            .all(&self.conn)
            .await
    }

    /// Evicts these objects, as [`Self::least_recent_objects`] listed
    /// them, unless one was read or pushed again since (its last use is
    /// then later than any `listed`); how many went.
    pub async fn evict_objects(&self, listed: &[LruObject]) -> Result<u64, DbErr> {
        let Some(latest) = listed.iter().map(|o| o.last_used).max() else {
            return Ok(0);
        };
        let result = object::Entity::delete_many()
            .filter(object::Column::Id.is_in(listed.iter().map(|o| o.id)))
            .filter(Expr::cust(OBJECT_LAST_USED).lte(latest))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// Removes a destroyed cache's row (its objects must be gone), with
    /// its logs and staged NARs.
    pub async fn forget_destroyed_cache(&self, cache_id: i64) -> Result<(), DbErr> {
        let txn = self.begin_write().await?;
        build_log::Entity::delete_many()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?;
        staged_nar::Entity::delete_many()
            .filter(staged_nar::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?;
        cache::Entity::delete_many()
            .filter(cache::Column::Id.eq(cache_id))
            .filter(cache::Column::DeletedAt.is_not_null())
            .exec(&txn)
            .await?;
        txn.commit().await
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

    /// Of the NARs after `after` (one page), deletes those no object holds,
    /// no `nix copy` upload has staged, and no upload attached since
    /// `cutoff`. The largest id looked at (or `None` past the end), and
    /// how many went.
    pub async fn delete_unheld_nars(
        &self,
        after: i64,
        limit: u64,
        cutoff: i64,
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
        let result = nar::Entity::delete_many()
            .filter(nar::Column::Id.is_in(page))
            .filter(Expr::exists(held).not())
            .filter(Expr::exists(staged).not())
            .filter(Expr::cust("COALESCE(nar.last_referenced_at, nar.created_at)").lt(cutoff))
            .exec(&self.conn)
            .await?;
        Ok((Some(last), result.rows_affected))
    }

    /// Of the chunks after `after` (one page), deletes those no NAR
    /// references and none did since `cutoff`. An upload that meant to
    /// reuse one finds it gone when it commits, and is retried.
    pub async fn delete_unreferenced_chunks(
        &self,
        after: i64,
        limit: u64,
        cutoff: i64,
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
        let result = chunk::Entity::delete_many()
            .filter(chunk::Column::Id.is_in(page))
            .filter(Expr::exists(referenced).not())
            .filter(Expr::cust("COALESCE(chunk.last_referenced_at, chunk.created_at)").lt(cutoff))
            .exec(&self.conn)
            .await?;
        Ok((Some(last), result.rows_affected))
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

    async fn database(dir: &tempfile::TempDir) -> Database {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let database = Database::connect(&url, &DatabaseConfig::default(), true)
            .await
            .expect("connect");
        database.migrate().await.expect("migrate");
        database
    }

    /// A path of `cache` on a NAR of its own, pushed at `created_at`.
    async fn push(database: &Database, cache: i64, n: u8, created_at: i64) -> i64 {
        let nar = nar::ActiveModel {
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
        .expect("nar");
        let hash = format!("{n:0>32}");
        object::ActiveModel {
            cache_id: Set(cache),
            nar_id: Set(nar.id),
            store_path: Set(format!("/nix/store/{hash}-p")),
            store_path_hash: Set(hash),
            references: Set("[]".into()),
            sigs: Set("[]".into()),
            created_at: Set(created_at),
            ..Default::default()
        }
        .insert(database.connection())
        .await
        .expect("object")
        .id
    }

    #[tokio::test]
    async fn eviction_spares_a_path_read_after_it_was_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = database(&dir).await;
        let cache = database
            .create_cache(NewCache {
                name: "c".into(),
                keypair: String::new(),
                is_public: false,
                store_dir: "/nix/store".into(),
                priority: 40,
                upstream_cache_key_names: "[]".into(),
            })
            .await
            .expect("cache")
            .id;
        let old = push(&database, cache, 1, 1_000).await;
        let older = push(&database, cache, 2, 500).await;
        let newest = push(&database, cache, 3, 2_000).await;

        let page = database.least_recent_objects(cache, 2).await.expect("page");
        assert_eq!(
            page.iter().map(|o| (o.id, o.last_used)).collect::<Vec<_>>(),
            [(older, 500), (old, 1_000)]
        );
        // Read between the listing and the eviction: no longer least recent.
        database.touch_objects(&[old], 3_000).await.expect("touch");

        assert_eq!(database.evict_objects(&page).await.expect("evict"), 1);
        let left = database
            .least_recent_objects(cache, 10)
            .await
            .expect("left");
        assert_eq!(left.iter().map(|o| o.id).collect::<Vec<_>>(), [newest, old]);
        assert_eq!(database.evict_objects(&[]).await.expect("nothing"), 0);
    }
}
