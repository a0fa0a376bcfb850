//! A read-only view of the whole store, for tests and tools that check
//! what the server left behind: rows per table, rows nothing needs, and
//! every NAR, chunk, pack, path and log as a typed record. Each answer is
//! O(size of the store), so nothing on a request path or in the collector
//! calls these.

use std::collections::HashMap;

use attic::chunking::ChunkId;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

use super::entity::{build_log, cache, chunk, chunkref, nar, object, pack, staged_nar};
use super::ids::CacheId;
use super::logs::LogRecord;
use super::records::{NarRecord, PackRecord, StoredPath, corrupt, size};
use super::unheld::{chunk_is_unreferenced, nar_is_unheld, pack_holds_no_chunk};
use super::{Database, DatabaseError};
use crate::pack::{BlobState, PackId, StoredChecksum, StoredChunkId};

/// A path's history: when it came, when it was last read, who pushed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathHistory {
    /// The full store path.
    pub store_path: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last read recorded, if any.
    pub last_accessed_at: Option<i64>,
    /// Subject of the token that pushed it.
    pub created_by: Option<String>,
}

/// How many rows each table holds, whatever their state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Caches, destroyed ones the collector has not yet forgotten included.
    pub caches: u64,
    /// Paths, in every cache.
    pub paths: u64,
    /// NARs in the global store.
    pub nars: u64,
    /// NARs `nix copy` uploaded that no narinfo has claimed yet.
    pub staged_nars: u64,
    /// Chunks.
    pub chunks: u64,
    /// Packs, those being deleted included.
    pub packs: u64,
    /// Build logs, in every cache.
    pub build_logs: u64,
}

/// Rows nothing needs any more: what a collection without a grace period
/// leaves none of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Orphans {
    /// NARs no path holds and no `nix copy` upload staged.
    pub nars: u64,
    /// Chunks no NAR references.
    pub chunks: u64,
    /// Packs no chunk is stored in.
    pub packs: u64,
}

/// A chunk as the store holds it, with how much it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Its row.
    pub id: StoredChunkId,
    /// blake3 of its uncompressed bytes.
    pub hash: ChunkId,
    /// The pack its stored bytes are in.
    pub pack_id: PackId,
    /// Length of its stored bytes.
    pub stored_size: u64,
    /// Checksum of its stored bytes; `None` for a chunk from before packs
    /// until a check earns it one.
    pub checksum: Option<StoredChecksum>,
    /// Whether it may be served.
    pub state: BlobState,
    /// NAR positions it fills, over every NAR: 0 for a chunk no NAR uses.
    pub uses: u64,
}

/// A build log as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    /// The derivation's file name, `<hash>-<name>.drv`.
    pub drv: String,
    /// Its size and where its bytes are, as a reader finds them.
    pub log: LogRecord,
    /// Bytes of the log its row holds itself: all of it for a log stored
    /// before logs moved to blobs, none for one stored since.
    pub inline_bytes: u64,
}

impl Database {
    /// How many rows each table holds: what a test compares before and
    /// after an upload or a collection to see what it stored or removed.
    pub async fn row_counts(&self) -> Result<RowCounts, DatabaseError> {
        Ok(RowCounts {
            caches: cache::Entity::find().count(&self.conn).await?,
            paths: object::Entity::find().count(&self.conn).await?,
            nars: nar::Entity::find().count(&self.conn).await?,
            staged_nars: staged_nar::Entity::find().count(&self.conn).await?,
            chunks: chunk::Entity::find().count(&self.conn).await?,
            packs: pack::Entity::find().count(&self.conn).await?,
            build_logs: build_log::Entity::find().count(&self.conn).await?,
        })
    }

    /// Rows nothing needs any more: NARs no path or staged upload holds,
    /// chunks no NAR references, packs holding no chunk. After a collection
    /// without a grace period every count is 0; anything else is a leak.
    pub async fn orphans(&self) -> Result<Orphans, DatabaseError> {
        Ok(Orphans {
            nars: nar::Entity::find()
                .filter(nar_is_unheld())
                .count(&self.conn)
                .await?,
            chunks: chunk::Entity::find()
                .filter(chunk_is_unreferenced())
                .count(&self.conn)
                .await?,
            packs: pack::Entity::find()
                .filter(pack_holds_no_chunk())
                .count(&self.conn)
                .await?,
        })
    }

    /// Every NAR in the global store, in any state, by id: to check that
    /// each NAR is stored once however many uploads raced to store it.
    pub async fn all_nars(&self) -> Result<Vec<NarRecord>, DatabaseError> {
        nar::Entity::find()
            .order_by_asc(nar::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(NarRecord::try_from)
            .collect()
    }

    /// Every pack, in any state, by id: to compare the packs the database
    /// knows with the blobs storage holds.
    pub async fn all_packs(&self) -> Result<Vec<PackRecord>, DatabaseError> {
        pack::Entity::find()
            .order_by_asc(pack::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(PackRecord::try_from)
            .collect()
    }

    /// Every chunk, in any state, by id, with how many NAR positions use
    /// it: to check deduplication (one row per content), which packs hold
    /// chunks, and which chunks have earned a checksum.
    pub async fn all_chunks(&self) -> Result<Vec<ChunkRecord>, DatabaseError> {
        let uses: HashMap<i64, i64> = chunkref::Entity::find()
            .select_only()
            .column(chunkref::Column::ChunkId)
            .column_as(chunkref::Column::Id.count(), "uses")
            .group_by(chunkref::Column::ChunkId)
            .into_tuple::<(i64, i64)>()
            .all(&self.conn)
            .await?
            .into_iter()
            .collect();
        let rows = chunk::Entity::find()
            .order_by_asc(chunk::Column::Id)
            .all(&self.conn)
            .await?;
        rows.into_iter()
            .map(|row| {
                let bad = corrupt("chunk", row.id);
                Ok(ChunkRecord {
                    id: StoredChunkId::new(row.id),
                    hash: row
                        .chunk_hash
                        .parse()
                        .map_err(|e| bad(format!("chunk_hash: {e}")))?,
                    pack_id: PackId::new(row.pack_id.ok_or_else(|| bad("no pack_id".into()))?),
                    stored_size: size(row.stored_size, "stored_size").map_err(&bad)?,
                    checksum: row
                        .stored_checksum
                        .as_deref()
                        .map(str::parse)
                        .transpose()
                        .map_err(|e| bad(format!("stored_checksum: {e}")))?,
                    state: row.state.into(),
                    uses: uses.get(&row.id).map_or(0, |&n| n.unsigned_abs()),
                })
            })
            .collect()
    }

    /// A cache's paths, whatever the state of their NARs, by store path,
    /// read without counting as a read: to see what a collection kept
    /// without changing which path is least recently used.
    pub async fn cache_paths(&self, cache_id: CacheId) -> Result<Vec<StoredPath>, DatabaseError> {
        object::Entity::find()
            .filter(object::Column::CacheId.eq(cache_id))
            .order_by_asc(object::Column::StorePath)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(StoredPath::try_from)
            .collect()
    }

    /// When each of a cache's paths was created and last read, and by
    /// whom it was pushed, by store path: to check that an import kept
    /// what the old server knew.
    pub async fn path_history(&self, cache_id: CacheId) -> Result<Vec<PathHistory>, DatabaseError> {
        Ok(object::Entity::find()
            .filter(object::Column::CacheId.eq(cache_id))
            .order_by_asc(object::Column::StorePath)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|row| PathHistory {
                store_path: row.store_path,
                created_at: row.created_at,
                last_accessed_at: row.last_accessed_at,
                created_by: row.created_by,
            })
            .collect())
    }

    /// A cache's build logs, by derivation, with how many of their bytes
    /// their rows hold: to check that a log is stored as a blob and not in
    /// the database.
    pub async fn cache_logs(&self, cache_id: CacheId) -> Result<Vec<StoredLog>, DatabaseError> {
        build_log::Entity::find()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .order_by_asc(build_log::Column::Drv)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|row| {
                Ok(StoredLog {
                    drv: row.drv.clone(),
                    inline_bytes: row.data.len() as u64,
                    log: LogRecord::try_from(row)?,
                })
            })
            .collect()
    }

    /// The names of the tables in the database (its current schema on
    /// PostgreSQL), sorted: to check that something meant to only read a
    /// database, such as checking the config, created none.
    pub async fn table_names(&self) -> Result<Vec<String>, DatabaseError> {
        let backend = self.conn.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY 1"
            }
            _ => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY 1"
            }
        };
        self.conn
            .query_all_raw(Statement::from_string(backend, sql))
            .await?
            .iter()
            .map(|row| Ok(row.try_get_by_index::<String>(0)?))
            .collect()
    }
}

#[cfg(test)]
mod tests;
