//! The rows an upload writes, inside its transaction, and what they are
//! written from: the pack, new chunks (repointing damaged ones), the NAR
//! and its chunkrefs, the healing of NARs that were damaged, and the path
//! or staged NAR that makes it part of a cache.

use std::collections::{HashMap, HashSet};

use attic::chunking::ChunkId;
use attic::hash::Sha256Hash;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseTransaction, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QuerySelect,
};

use super::entity::{BlobState, StoredCompression, chunk, chunkref, nar, pack};
use super::{BATCH, DatabaseError, nars_holding};
use crate::pack::write::WrittenPack;
use crate::pack::{PackId, StoredChecksum, StoredChunkId};

/// A chunk of an upload, as the commit records it.
#[derive(Debug, Clone)]
pub enum UploadedChunk {
    /// Stored already and valid when looked up; the commit re-checks it.
    Reused {
        /// Its row.
        id: StoredChunkId,
    },
    /// Stored by this upload, in its pack.
    New(NewChunk),
}

/// A chunk this upload wrote into its pack.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// blake3 of the uncompressed bytes.
    pub hash: ChunkId,
    /// Uncompressed size.
    pub chunk_size: u64,
    /// How the stored bytes are encoded.
    pub compression: crate::pack::StoredCompression,
    /// Start of the stored bytes in the pack.
    pub offset: u64,
    /// Length of the stored bytes.
    pub stored_size: u64,
    /// Checksum of the stored bytes.
    pub checksum: StoredChecksum,
}

/// Records a pack that is durable in storage; its id. `level` is the zstd
/// level compaction wrote it at, `None` for an upload's pack.
pub(super) async fn insert_pack(
    txn: &DatabaseTransaction,
    written: &WrittenPack,
    when: i64,
    level: Option<i32>,
) -> Result<i64, DbErr> {
    let row = pack::ActiveModel {
        key: Set(written.key.as_str().to_owned()),
        size: Set(written.size as i64),
        state: Set(BlobState::Valid),
        created_at: Set(when),
        level: Set(level),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(row.id)
}

/// A chunk row as the commit sees it after the upsert.
#[derive(Debug, FromQueryResult)]
pub(super) struct ChunkRow {
    pub id: i64,
    chunk_hash: String,
    pack_id: Option<i64>,
    offset: i64,
    stored_size: i64,
    state: BlobState,
}

/// Inserts this upload's new chunks; a damaged row of the same hash is
/// repointed to the fresh copy, a valid one (another upload's, committed
/// meanwhile) is kept. Returns the rows as they now are, by hash.
pub(super) async fn upsert_new_chunks(
    txn: &DatabaseTransaction,
    pack_id: i64,
    chunks: &[UploadedChunk],
    when: i64,
) -> Result<HashMap<ChunkId, ChunkRow>, DatabaseError> {
    // A chunk that recurs in one NAR is written into the pack each time;
    // its first copy gets the row.
    let mut seen = HashSet::new();
    let new: Vec<&NewChunk> = chunks
        .iter()
        .filter_map(|c| match c {
            UploadedChunk::New(new) => Some(new),
            UploadedChunk::Reused { .. } => None,
        })
        .filter(|new| seen.insert(new.hash))
        .collect();
    let mut rows = HashMap::with_capacity(new.len());
    let mut theirs = Vec::new();
    for batch in new.chunks(BATCH) {
        let models = batch.iter().map(|c| chunk::ActiveModel {
            chunk_hash: Set(c.hash.to_string()),
            chunk_size: Set(c.chunk_size as i64),
            stored_size: Set(c.stored_size as i64),
            compression: Set(c.compression.into()),
            pack_id: Set(Some(pack_id)),
            offset: Set(c.offset as i64),
            stored_checksum: Set(Some(c.checksum.to_string())),
            state: Set(BlobState::Valid),
            created_at: Set(when),
            last_referenced_at: Set(Some(when)),
            ..Default::default()
        });
        chunk::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(chunk::Column::ChunkHash)
                    .update_columns([
                        chunk::Column::ChunkSize,
                        chunk::Column::StoredSize,
                        chunk::Column::Compression,
                        chunk::Column::PackId,
                        chunk::Column::Offset,
                        chunk::Column::StoredChecksum,
                        chunk::Column::State,
                        chunk::Column::LastReferencedAt,
                    ])
                    .action_and_where(
                        Expr::col((chunk::Entity, chunk::Column::State)).eq(BlobState::Damaged),
                    )
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        let found: Vec<ChunkRow> = chunk::Entity::find()
            .select_only()
            .columns([
                chunk::Column::Id,
                chunk::Column::ChunkHash,
                chunk::Column::PackId,
                chunk::Column::Offset,
                chunk::Column::StoredSize,
                chunk::Column::State,
            ])
            .filter(chunk::Column::ChunkHash.is_in(batch.iter().map(|c| c.hash.to_string())))
            .into_model()
            .all(txn)
            .await?;
        for row in found {
            if row.state != BlobState::Valid {
                // Being reclaimed, or damaged again, this very moment.
                return Err(DatabaseError::ChunkGone);
            }
            let hash = row
                .chunk_hash
                .parse()
                .map_err(|_| DbErr::Custom(format!("chunk {} has a bad hash", row.id)))?;
            // Ours, or a concurrent upload's committed copy: both valid.
            if row.pack_id != Some(pack_id) {
                theirs.push(row.id);
            }
            rows.insert(hash, row);
        }
    }
    // Copies other uploads committed meanwhile are still valid, so
    // referencing them is safe; stamping them keeps a collector off them.
    for batch in theirs.chunks(BATCH) {
        chunk::Entity::update_many()
            .col_expr(chunk::Column::LastReferencedAt, Expr::value(when))
            .filter(chunk::Column::Id.is_in(batch.iter().copied()))
            .exec(txn)
            .await?;
    }
    Ok(rows)
}

/// Re-checks, under the write lock, that every chunk this upload reuses
/// is still valid, and stamps it as referenced now.
pub(super) async fn stamp_reused_chunks(
    txn: &DatabaseTransaction,
    chunks: &[UploadedChunk],
    when: i64,
) -> Result<(), DatabaseError> {
    let reused: Vec<i64> = chunks
        .iter()
        .filter_map(|c| match c {
            UploadedChunk::Reused { id } => Some(id.get()),
            UploadedChunk::New(_) => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for batch in reused.chunks(BATCH) {
        let stamped = chunk::Entity::update_many()
            .col_expr(chunk::Column::LastReferencedAt, Expr::value(when))
            .filter(chunk::Column::Id.is_in(batch.iter().copied()))
            .filter(chunk::Column::State.eq(BlobState::Valid))
            .exec(txn)
            .await?
            .rows_affected;
        if stamped != batch.len() as u64 {
            return Err(DatabaseError::ChunkGone);
        }
    }
    Ok(())
}

/// Whether the pack this upload wrote is byte for byte the NAR's stored
/// form: every chunk was new and its row points into the pack, back to
/// back from the start to the end.
pub(super) fn is_whole_pack(
    pack_id: i64,
    pack_size: u64,
    chunks: &[UploadedChunk],
    new_rows: &HashMap<ChunkId, ChunkRow>,
) -> bool {
    let pieces: Option<Vec<_>> = chunks
        .iter()
        .map(|chunk| match chunk {
            UploadedChunk::New(new_chunk) => {
                let row = new_rows.get(&new_chunk.hash)?;
                Some((
                    PackId::new(row.pack_id?),
                    u64::try_from(row.offset).ok()?,
                    u64::try_from(row.stored_size).ok()?,
                ))
            }
            UploadedChunk::Reused { .. } => None,
        })
        .collect();
    pieces.is_some_and(|pieces| crate::pack::is_whole_pack(PackId::new(pack_id), pack_size, pieces))
}

/// The compression and stored size of each of `chunk_ids`.
pub(super) async fn stored_forms(
    txn: &DatabaseTransaction,
    chunk_ids: &[i64],
) -> Result<HashMap<i64, (StoredCompression, i64)>, DbErr> {
    let distinct: Vec<i64> = chunk_ids
        .iter()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut forms = HashMap::with_capacity(distinct.len());
    for batch in distinct.chunks(BATCH) {
        let rows: Vec<(i64, StoredCompression, i64)> = chunk::Entity::find()
            .select_only()
            .columns([
                chunk::Column::Id,
                chunk::Column::Compression,
                chunk::Column::StoredSize,
            ])
            .filter(chunk::Column::Id.is_in(batch.iter().copied()))
            .into_tuple()
            .all(txn)
            .await?;
        forms.extend(rows.into_iter().map(|(id, c, size)| (id, (c, size))));
    }
    Ok(forms)
}

/// What a NAR row records of its upload.
pub(super) struct NarFields {
    pub nar_size: i64,
    pub compression: StoredCompression,
    pub file_size: i64,
    pub num_chunks: i64,
    pub pack_id: Option<i64>,
}

/// Inserts the NAR with its chunkrefs. If a concurrent upload committed
/// it first, that row is used as it is; if it exists damaged, it is made
/// whole from this upload: its chunkrefs replaced, its fields updated.
pub(super) async fn upsert_nar(
    txn: &DatabaseTransaction,
    nar_hash: &Sha256Hash,
    fields: &NarFields,
    chunk_ids: &[i64],
    when: i64,
) -> Result<nar::Model, DbErr> {
    let inserted = nar::Entity::insert(nar::ActiveModel {
        nar_hash: Set(nar_hash.to_typed_hex()),
        nar_size: Set(fields.nar_size),
        compression: Set(fields.compression),
        file_size: Set(fields.file_size),
        state: Set(BlobState::Valid),
        num_chunks: Set(fields.num_chunks),
        created_at: Set(when),
        pack_id: Set(fields.pack_id),
        last_referenced_at: Set(Some(when)),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::column(nar::Column::NarHash)
            .do_nothing()
            .to_owned(),
    )
    .exec(txn)
    .await;
    let fresh = match inserted {
        Ok(_) => true,
        Err(DbErr::RecordNotInserted) => false,
        Err(e) => return Err(e),
    };
    let row = nar::Entity::find()
        .filter(nar::Column::NarHash.eq(nar_hash.to_typed_hex()))
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the NAR just upserted".into()))?;
    if !fresh && row.state == BlobState::Valid {
        return Ok(row);
    }
    if !fresh {
        chunkref::Entity::delete_many()
            .filter(chunkref::Column::NarId.eq(row.id))
            .exec(txn)
            .await?;
    }
    for (batch_index, batch) in chunk_ids.chunks(BATCH).enumerate() {
        let rows = batch
            .iter()
            .enumerate()
            .map(|(i, &chunk_id)| chunkref::ActiveModel {
                nar_id: Set(row.id),
                seq: Set((batch_index * BATCH + i) as i64),
                chunk_id: Set(chunk_id),
                ..Default::default()
            });
        chunkref::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    if fresh {
        return Ok(row);
    }
    let healed = nar::ActiveModel {
        id: Set(row.id),
        nar_size: Set(fields.nar_size),
        compression: Set(fields.compression),
        file_size: Set(fields.file_size),
        state: Set(BlobState::Valid),
        num_chunks: Set(fields.num_chunks),
        pack_id: Set(fields.pack_id),
        ..Default::default()
    };
    healed.update(txn).await
}

/// Damaged NARs holding a chunk this upload repointed become valid again
/// once none of their chunks is damaged.
pub(super) async fn heal_nars(
    txn: &DatabaseTransaction,
    new_rows: &HashMap<ChunkId, ChunkRow>,
) -> Result<(), DbErr> {
    let ids: Vec<i64> = new_rows.values().map(|row| row.id).collect();
    for batch in ids.chunks(BATCH) {
        let holding = nars_holding(batch);
        let still_damaged = Query::select()
            .expr(Expr::val(1))
            .from(chunkref::Entity)
            .inner_join(
                chunk::Entity,
                Expr::col((chunk::Entity, chunk::Column::Id))
                    .equals((chunkref::Entity, chunkref::Column::ChunkId)),
            )
            .and_where(
                Expr::col((chunkref::Entity, chunkref::Column::NarId))
                    .equals((nar::Entity, nar::Column::Id)),
            )
            .and_where(Expr::col((chunk::Entity, chunk::Column::State)).ne(BlobState::Valid))
            .to_owned();
        let statement = nar::Entity::update_many()
            .col_expr(nar::Column::State, Expr::value(BlobState::Valid))
            .filter(nar::Column::State.eq(BlobState::Damaged))
            .filter(nar::Column::Id.in_subquery(holding))
            .filter(Expr::exists(still_damaged).not());
        statement.exec(txn).await?;
    }
    Ok(())
}
