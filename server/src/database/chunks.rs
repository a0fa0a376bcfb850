//! Where chunks are, for reads and scrubs, and what they find: damage
//! recorded, checksums earned, packs listed for verification.
//!
//! Damage found by a read or a scrub is recorded by
//! [`Database::mark_damaged`]: the chunks, and every NAR that holds one,
//! stop being served until an upload brings the bytes again and its commit
//! repoints the chunks to the fresh copy (self-healing).

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, JoinType, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait,
};

use super::entity::{BlobState, chunk, chunkref, nar, object, pack};
use super::ids::{CacheId, NarId};
use super::records::{PackRecord, corrupt, size};
use super::{Database, DatabaseError};
use crate::pack::read::{Damage, Fault, StoredChunk};
use crate::pack::{PackId, StoredChecksum, StoredChunkId};

/// Where a chunk is, as a NAR read or a scrub needs it.
#[derive(Debug, FromQueryResult)]
struct ChunkLocation {
    id: i64,
    chunk_hash: String,
    chunk_size: i64,
    compression: super::entity::StoredCompression,
    pack_id: i64,
    offset: i64,
    stored_size: i64,
    stored_checksum: Option<String>,
    pack_key: String,
}

impl TryFrom<ChunkLocation> for StoredChunk {
    type Error = DatabaseError;

    fn try_from(row: ChunkLocation) -> Result<Self, Self::Error> {
        let bad = corrupt("chunk", row.id);
        Ok(StoredChunk {
            id: StoredChunkId::new(row.id),
            hash: row
                .chunk_hash
                .parse()
                .map_err(|e| bad(format!("chunk_hash: {e}")))?,
            chunk_size: size(row.chunk_size, "chunk_size").map_err(&bad)?,
            compression: row.compression.into(),
            pack_id: PackId::new(row.pack_id),
            pack_key: row
                .pack_key
                .parse()
                .map_err(|e| bad(format!("pack key: {e}")))?,
            offset: size(row.offset, "offset").map_err(&bad)?,
            stored_size: size(row.stored_size, "stored_size").map_err(&bad)?,
            checksum: row
                .stored_checksum
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| bad(format!("stored_checksum: {e}")))?,
        })
    }
}

/// A select of chunk locations: chunk joined to its pack.
fn chunk_locations() -> sea_orm::Select<chunk::Entity> {
    chunk::Entity::find()
        .select_only()
        .columns([
            chunk::Column::Id,
            chunk::Column::ChunkHash,
            chunk::Column::ChunkSize,
            chunk::Column::Compression,
            chunk::Column::PackId,
            chunk::Column::Offset,
            chunk::Column::StoredSize,
            chunk::Column::StoredChecksum,
        ])
        .column_as(pack::Column::Key, "pack_key")
        .join(JoinType::InnerJoin, chunk::Relation::Pack.def())
}

/// Totals of the packs to scrub.
#[derive(Debug, Clone, Copy, Default, FromQueryResult)]
pub struct PackTotals {
    /// Packs.
    pub packs: i64,
    /// Their bytes.
    pub bytes: Option<i64>,
}

impl Database {
    /// The chunks of a NAR, in order, with where they are stored.
    pub async fn nar_chunks(&self, nar_id: NarId) -> Result<Vec<StoredChunk>, DatabaseError> {
        let rows = chunk_locations()
            .join(JoinType::InnerJoin, chunk::Relation::ChunkRef.def())
            .filter(chunkref::Column::NarId.eq(nar_id))
            .order_by_asc(chunkref::Column::Seq)
            .into_model::<ChunkLocation>()
            .all(&self.conn)
            .await?;
        rows.into_iter().map(StoredChunk::try_from).collect()
    }

    /// The valid chunks of a pack, by offset.
    pub async fn pack_chunks(&self, pack_id: PackId) -> Result<Vec<StoredChunk>, DatabaseError> {
        let rows = chunk_locations()
            .filter(chunk::Column::PackId.eq(pack_id))
            .filter(chunk::Column::State.eq(BlobState::Valid))
            .order_by_asc(chunk::Column::Offset)
            .into_model::<ChunkLocation>()
            .all(&self.conn)
            .await?;
        rows.into_iter().map(StoredChunk::try_from).collect()
    }

    /// Up to `limit` valid packs after `after` (from the first when
    /// `None`), by id.
    pub async fn packs_after(
        &self,
        after: Option<PackId>,
        limit: u64,
    ) -> Result<Vec<PackRecord>, DatabaseError> {
        pack::Entity::find()
            .filter(pack::Column::Id.gt(after.map_or(0, PackId::get)))
            .filter(pack::Column::State.eq(BlobState::Valid))
            .order_by_asc(pack::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(PackRecord::try_from)
            .collect()
    }

    /// The packs holding chunks of a cache's NARs.
    pub async fn cache_packs(&self, cache_id: CacheId) -> Result<Vec<PackRecord>, DatabaseError> {
        let pack_ids = Query::select()
            .distinct()
            .column((chunk::Entity, chunk::Column::PackId))
            .from(chunk::Entity)
            .inner_join(
                chunkref::Entity,
                Expr::col((chunkref::Entity, chunkref::Column::ChunkId))
                    .equals((chunk::Entity, chunk::Column::Id)),
            )
            .inner_join(
                object::Entity,
                Expr::col((object::Entity, object::Column::NarId))
                    .equals((chunkref::Entity, chunkref::Column::NarId)),
            )
            .and_where(Expr::col((object::Entity, object::Column::CacheId)).eq(cache_id))
            .to_owned();
        pack::Entity::find()
            .filter(pack::Column::Id.in_subquery(pack_ids))
            .filter(pack::Column::State.eq(BlobState::Valid))
            .order_by_asc(pack::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(PackRecord::try_from)
            .collect()
    }

    /// How many packs, and bytes, `packs` would be.
    pub async fn pack_totals(&self) -> Result<PackTotals, DatabaseError> {
        let totals = pack::Entity::find()
            .select_only()
            .column_as(pack::Column::Id.count(), "packs")
            // SUM of a BIGINT is NUMERIC on PostgreSQL.
            .expr_as(
                Expr::col(pack::Column::Size)
                    .sum()
                    .cast_as(sea_orm::sea_query::Alias::new("BIGINT")),
                "bytes",
            )
            .filter(pack::Column::State.eq(BlobState::Valid))
            .into_model::<PackTotals>()
            .one(&self.conn)
            .await?;
        Ok(totals.unwrap_or_default())
    }

    /// Chunks currently marked damaged.
    pub async fn count_damaged_chunks(&self) -> Result<u64, DatabaseError> {
        Ok(chunk::Entity::find()
            .filter(chunk::Column::State.eq(BlobState::Damaged))
            .count(&self.conn)
            .await?)
    }

    /// Records the checksum a chunk earned by passing a content check.
    pub async fn record_checksum(
        &self,
        chunk_id: StoredChunkId,
        checksum: StoredChecksum,
    ) -> Result<(), DatabaseError> {
        chunk::Entity::update_many()
            .col_expr(
                chunk::Column::StoredChecksum,
                Expr::value(checksum.to_string()),
            )
            .filter(chunk::Column::Id.eq(chunk_id))
            .filter(chunk::Column::StoredChecksum.is_null())
            .exec(&self.conn)
            .await?;
        Ok(())
    }

    /// Whether a chunk is still stored at `pack_id`, `offset`.
    pub async fn chunk_is_at(
        &self,
        id: StoredChunkId,
        pack_id: PackId,
        offset: u64,
    ) -> Result<bool, DatabaseError> {
        Ok(chunk::Entity::find_by_id(id.get())
            .filter(chunk::Column::PackId.eq(pack_id))
            .filter(chunk::Column::Offset.eq(offset as i64))
            .one(&self.conn)
            .await?
            .is_some())
    }

    /// Marks what `damage` found as damaged: the chunk (or, for a short or
    /// missing pack, every chunk of the pack past where it ends), and every
    /// NAR holding one of them. Returns how many chunks were newly marked.
    /// A chunk that was repointed since the read (healed) is left alone.
    pub async fn mark_damaged(&self, damage: &Damage) -> Result<u64, DatabaseError> {
        let txn = self.begin_write().await?;
        let chunk = &damage.chunk;
        let mut chunks = chunk::Entity::update_many()
            .col_expr(chunk::Column::State, Expr::value(BlobState::Damaged))
            .filter(chunk::Column::PackId.eq(chunk.pack_id))
            .filter(chunk::Column::State.eq(BlobState::Valid));
        chunks = match damage.fault {
            Fault::Corrupt => chunks
                .filter(chunk::Column::Id.eq(chunk.id))
                .filter(chunk::Column::Offset.eq(chunk.offset as i64)),
            Fault::Truncated { pack_len } => chunks.filter(
                Expr::col(chunk::Column::Offset)
                    .add(Expr::col(chunk::Column::StoredSize))
                    .gt(pack_len as i64),
            ),
            Fault::Missing => chunks,
        };
        let marked = chunks.exec(&txn).await?.rows_affected;
        if marked > 0 {
            let damaged_nars = Query::select()
                .column((chunkref::Entity, chunkref::Column::NarId))
                .from(chunkref::Entity)
                .inner_join(
                    chunk::Entity,
                    Expr::col((chunk::Entity, chunk::Column::Id))
                        .equals((chunkref::Entity, chunkref::Column::ChunkId)),
                )
                .and_where(Expr::col((chunk::Entity, chunk::Column::PackId)).eq(chunk.pack_id))
                .and_where(Expr::col((chunk::Entity, chunk::Column::State)).eq(BlobState::Damaged))
                .to_owned();
            nar::Entity::update_many()
                .col_expr(nar::Column::State, Expr::value(BlobState::Damaged))
                .col_expr(nar::Column::PackId, Expr::value(Option::<i64>::None))
                .filter(nar::Column::State.eq(BlobState::Valid))
                .filter(nar::Column::Id.in_subquery(damaged_nars))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(marked)
    }
}
