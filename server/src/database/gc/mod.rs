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

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter};

use super::entity::{BlobState, gc_lease, pack};
use super::ids::{CacheId, NarId, ObjectId};
use super::json::Json;
use super::records::{PackRecord, corrupt};
use super::{Database, DatabaseError, now, rows_pointing_at};
use crate::pack::StoredChunkId;

/// An object in least-recently-read order, for retention and quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub struct LruObject {
    /// The path's row.
    pub id: ObjectId,
    /// Its NAR.
    pub nar_id: NarId,
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
    id: ObjectId,
    nar_id: NarId,
    file_size: i64,
    last_used: i64,
    store_path: String,
    references: String,
}

impl TryFrom<EvictableRow> for EvictableObject {
    type Error = DatabaseError;

    fn try_from(row: EvictableRow) -> Result<Self, DatabaseError> {
        let references = Json::<Vec<String>>::decode(&row.references)
            .map_err(|e| corrupt("object", row.id.get())(format!("references: {e}")))?
            .0;
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

/// Which packs compaction rewrites: packs written before `grace_cutoff`
/// whose live chunks hold less than `live_fraction` of their bytes, and,
/// when `cold_cutoff` is set, packs written before it at a level below
/// `level` (an upload's, at the fast ingest level).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionRule {
    /// Unix seconds: only packs written before it.
    pub grace_cutoff: i64,
    /// Sparse packs: live bytes under this fraction of the pack.
    pub live_fraction: f64,
    /// Unix seconds: packs written before it are cold.
    pub cold_cutoff: Option<i64>,
    /// The level compaction writes at.
    pub level: i32,
}

impl CompactionRule {
    /// Whether a valid `pack` with `live_bytes` of live chunks is
    /// rewritten.
    pub(super) fn rewrites(&self, pack: &pack::Model, live_bytes: i64) -> bool {
        if pack.state != BlobState::Valid || pack.created_at >= self.grace_cutoff {
            return false;
        }
        let sparse = (live_bytes as f64) < pack.size as f64 * self.live_fraction;
        let cold = self
            .cold_cutoff
            .is_some_and(|cutoff| pack.created_at < cutoff)
            && pack.level.is_none_or(|level| level < self.level);
        sparse || cold
    }
}

/// A pack compaction rewrites: sparse, or cold at the ingest level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionCandidate {
    /// The pack.
    pub pack: PackRecord,
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
    /// The chunk's row.
    pub id: StoredChunkId,
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
fn referenced_by_no_other_path(backend: DbBackend, cache_id: CacheId) -> Expr {
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

mod paths;
mod reclaim;
#[cfg(test)]
mod tests;

impl Database {
    /// Takes (or renews) the collector's lease for `ttl_secs`, unless
    /// another holder's is unexpired; whether this holder has it now.
    pub async fn acquire_gc_lease(
        &self,
        holder: &str,
        ttl_secs: i64,
    ) -> Result<bool, DatabaseError> {
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
    pub async fn gc_lease_holder(&self) -> Result<Option<String>, DatabaseError> {
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
    ) -> Result<bool, DatabaseError> {
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
    pub async fn release_gc_lease(&self, holder: &str) -> Result<(), DatabaseError> {
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
}
