//! Queries on the global store: NARs, chunks and packs.
//!
//! An upload is committed in one transaction ([`Database::commit_upload`])
//! only after its pack is durable. Damage found by a read or a scrub is
//! recorded by [`Database::mark_damaged`]: the chunks, and every NAR that
//! holds one, stop being served until an upload brings the bytes again and
//! the commit repoints the chunks to the fresh copy (self-healing).

use std::collections::{HashMap, HashSet};

use attic::chunking::ChunkId;
use attic::hash::Sha256Hash;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseTransaction, DbErr, EntityTrait,
    FromQueryResult, JoinType, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, RelationTrait,
};

use super::entity::{BlobState, StoredCompression, chunk, chunkref, nar, object, pack, staged_nar};
use super::{BATCH, Database, DatabaseError, NewObject, attach_object, now};
use crate::pack::StoredChecksum;
use crate::pack::read::{Damage, Fault, StoredChunk};
use crate::pack::write::WrittenPack;
use crate::storage::StorageKey;

/// A chunk of an upload, as the commit records it.
#[derive(Debug, Clone)]
pub enum UploadedChunk {
    /// Stored already and valid when looked up; the commit re-checks it.
    Reused {
        /// Its row.
        id: i64,
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
    pub compression: StoredCompression,
    /// Start of the stored bytes in the pack.
    pub offset: u64,
    /// Length of the stored bytes.
    pub stored_size: u64,
    /// Checksum of the stored bytes.
    pub checksum: StoredChecksum,
}

/// A verified NAR whose new chunks are durable in `pack`.
#[derive(Debug, Clone)]
pub struct NewNar {
    /// SHA-256 of the NAR.
    pub nar_hash: Sha256Hash,
    /// Bytes of the NAR.
    pub nar_size: u64,
    /// The pack this upload wrote, if it brought any new chunk.
    pub pack: Option<WrittenPack>,
    /// Its chunks in order.
    pub chunks: Vec<UploadedChunk>,
}

/// Where a chunk is, as a NAR read or a scrub needs it.
#[derive(Debug, FromQueryResult)]
struct ChunkLocation {
    id: i64,
    chunk_hash: String,
    chunk_size: i64,
    compression: StoredCompression,
    pack_id: i64,
    offset: i64,
    stored_size: i64,
    stored_checksum: Option<String>,
    pack_key: String,
}

impl ChunkLocation {
    fn into_stored(self) -> Result<StoredChunk, DbErr> {
        let corrupt = |what: &str| DbErr::Custom(format!("chunk {} has a bad {what}", self.id));
        Ok(StoredChunk {
            id: self.id,
            hash: self.chunk_hash.parse().map_err(|_| corrupt("hash"))?,
            chunk_size: self.chunk_size as u64,
            compression: self.compression,
            pack_id: self.pack_id,
            pack_key: StorageKey::new(self.pack_key.clone()).map_err(|_| corrupt("pack key"))?,
            offset: self.offset as u64,
            stored_size: self.stored_size as u64,
            checksum: self
                .stored_checksum
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|_| corrupt("checksum"))?,
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

/// How much of a NAR a cache held before an upload added it there: the
/// reply to an uploader speaks of its own cache only, never of what other
/// tenants store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldByCache {
    /// The cache holds this very NAR under another path already.
    pub whole: bool,
    /// Uncompressed NAR bytes whose chunks another NAR of the cache holds,
    /// counted at every position they occur.
    pub nar_bytes: u64,
    /// The same chunks' stored bytes.
    pub stored_bytes: u64,
}

#[derive(Debug, FromQueryResult)]
struct HeldSums {
    nar_bytes: Option<i64>,
    stored_bytes: Option<i64>,
}

impl Database {
    /// How much of NAR `nar_id` cache `cache_id` holds through its paths
    /// (but `except_path`, one just pointed at it).
    pub async fn held_by_cache(
        &self,
        nar_id: i64,
        cache_id: i64,
        except_path: Option<&str>,
    ) -> Result<HeldByCache, DbErr> {
        let mut holders = object::Entity::find()
            .filter(object::Column::NarId.eq(nar_id))
            .filter(object::Column::CacheId.eq(cache_id));
        if let Some(path) = except_path {
            holders = holders.filter(object::Column::StorePathHash.ne(path));
        }
        let whole = holders.one(&self.conn).await?.is_some();
        if whole {
            return Ok(HeldByCache {
                whole,
                ..HeldByCache::default()
            });
        }
        let other = sea_orm::sea_query::Alias::new("other");
        let holder = Query::select()
            .expr(Expr::val(1))
            .from_as(chunkref::Entity, other.clone())
            .inner_join(
                object::Entity,
                Expr::col((object::Entity, object::Column::NarId))
                    .equals((other.clone(), chunkref::Column::NarId)),
            )
            .and_where(
                Expr::col((other.clone(), chunkref::Column::ChunkId))
                    .equals((chunkref::Entity, chunkref::Column::ChunkId)),
            )
            .and_where(Expr::col((other.clone(), chunkref::Column::NarId)).ne(nar_id))
            .and_where(Expr::col((object::Entity, object::Column::CacheId)).eq(cache_id))
            .to_owned();
        let bigint = || sea_orm::sea_query::Alias::new("BIGINT");
        let sums = chunkref::Entity::find()
            .select_only()
            .join(JoinType::InnerJoin, chunkref::Relation::Chunk.def())
            .expr_as(
                Expr::col((chunk::Entity, chunk::Column::ChunkSize))
                    .sum()
                    .cast_as(bigint()),
                "nar_bytes",
            )
            .expr_as(
                Expr::col((chunk::Entity, chunk::Column::StoredSize))
                    .sum()
                    .cast_as(bigint()),
                "stored_bytes",
            )
            .filter(chunkref::Column::NarId.eq(nar_id))
            .filter(Expr::exists(holder))
            .into_model::<HeldSums>()
            .one(&self.conn)
            .await?;
        let sums = sums.unwrap_or(HeldSums {
            nar_bytes: None,
            stored_bytes: None,
        });
        Ok(HeldByCache {
            whole,
            nar_bytes: u64::try_from(sums.nar_bytes.unwrap_or(0)).unwrap_or(0),
            stored_bytes: u64::try_from(sums.stored_bytes.unwrap_or(0)).unwrap_or(0),
        })
    }

    /// A valid NAR in the global store.
    pub async fn find_nar(&self, nar_hash: &Sha256Hash) -> Result<Option<nar::Model>, DbErr> {
        nar::Entity::find()
            .filter(nar::Column::NarHash.eq(nar_hash.to_typed_hex()))
            .filter(nar::Column::State.eq(BlobState::Valid))
            .one(&self.conn)
            .await
    }

    /// The row ids of the valid chunks among `hashes`.
    pub async fn find_chunks(&self, hashes: &[ChunkId]) -> Result<HashMap<ChunkId, i64>, DbErr> {
        let mut found = HashMap::new();
        for batch in hashes.chunks(BATCH) {
            let rows: Vec<(i64, String)> = chunk::Entity::find()
                .select_only()
                .columns([chunk::Column::Id, chunk::Column::ChunkHash])
                .filter(chunk::Column::ChunkHash.is_in(batch.iter().map(ChunkId::to_string)))
                .filter(chunk::Column::State.eq(BlobState::Valid))
                .into_tuple()
                .all(&self.conn)
                .await?;
            for (id, hash) in rows {
                if let Ok(hash) = hash.parse() {
                    found.insert(hash, id);
                }
            }
        }
        Ok(found)
    }

    /// The chunks of a NAR, in order, with where they are stored.
    pub async fn nar_chunks(&self, nar_id: i64) -> Result<Vec<StoredChunk>, DbErr> {
        let rows = chunk_locations()
            .join(JoinType::InnerJoin, chunk::Relation::ChunkRef.def())
            .filter(chunkref::Column::NarId.eq(nar_id))
            .order_by_asc(chunkref::Column::Seq)
            .into_model::<ChunkLocation>()
            .all(&self.conn)
            .await?;
        rows.into_iter().map(ChunkLocation::into_stored).collect()
    }

    /// The valid chunks of a pack, by offset.
    pub async fn pack_chunks(&self, pack_id: i64) -> Result<Vec<StoredChunk>, DbErr> {
        let rows = chunk_locations()
            .filter(chunk::Column::PackId.eq(pack_id))
            .filter(chunk::Column::State.eq(BlobState::Valid))
            .order_by_asc(chunk::Column::Offset)
            .into_model::<ChunkLocation>()
            .all(&self.conn)
            .await?;
        rows.into_iter().map(ChunkLocation::into_stored).collect()
    }

    /// Up to `limit` packs with ids above `after`, by id.
    pub async fn packs_after(&self, after: i64, limit: u64) -> Result<Vec<pack::Model>, DbErr> {
        pack::Entity::find()
            .filter(pack::Column::Id.gt(after))
            .filter(pack::Column::State.eq(BlobState::Valid))
            .order_by_asc(pack::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await
    }

    /// The packs holding chunks of a cache's NARs.
    pub async fn cache_packs(&self, cache_id: i64) -> Result<Vec<pack::Model>, DbErr> {
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
            .await
    }

    /// How many packs, and bytes, `packs` would be.
    pub async fn pack_totals(&self) -> Result<PackTotals, DbErr> {
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
    pub async fn count_damaged_chunks(&self) -> Result<u64, DbErr> {
        chunk::Entity::find()
            .filter(chunk::Column::State.eq(BlobState::Damaged))
            .count(&self.conn)
            .await
    }

    /// Records the checksum a chunk earned by passing a content check.
    pub async fn record_checksum(
        &self,
        chunk_id: i64,
        checksum: StoredChecksum,
    ) -> Result<(), DbErr> {
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
    pub async fn chunk_is_at(&self, id: i64, pack_id: i64, offset: u64) -> Result<bool, DbErr> {
        Ok(chunk::Entity::find_by_id(id)
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
    pub async fn mark_damaged(&self, damage: &Damage) -> Result<u64, DbErr> {
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

    /// Records a verified upload in one transaction, once its pack is
    /// durable: the pack, its chunks (repointing damaged ones to the fresh
    /// copy; a chunk another upload committed meanwhile keeps that copy),
    /// the NAR (healing it if it was damaged, or joining a concurrent
    /// upload's row) and its chunkrefs, and the cache's object. Reused
    /// chunks are re-checked and stamped under the write lock, so a
    /// collector cannot reclaim one this commit references.
    pub async fn commit_upload(
        &self,
        upload: NewNar,
        claim: Claim,
    ) -> Result<nar::Model, DatabaseError> {
        let txn = self.begin_write().await?;
        let when = now();
        let pack_id = match &upload.pack {
            Some(written) => Some(insert_pack(&txn, written, when).await?),
            None => None,
        };
        let new_rows = match pack_id {
            Some(pack_id) => upsert_new_chunks(&txn, pack_id, &upload.chunks, when).await?,
            None => HashMap::new(),
        };
        stamp_reused_chunks(&txn, &upload.chunks, when).await?;

        let chunk_ids: Vec<i64> = upload
            .chunks
            .iter()
            .map(|chunk| match chunk {
                UploadedChunk::Reused { id } => *id,
                UploadedChunk::New(new_chunk) => {
                    new_rows
                        .get(&new_chunk.hash)
                        .expect("every new chunk has a row after the upsert")
                        .id
                }
            })
            .collect();
        let whole_pack = pack_id.filter(|&pack_id| {
            let size = upload.pack.as_ref().map_or(0, |pack| pack.size);
            is_whole_pack(pack_id, size, &upload.chunks, &new_rows)
        });
        let stored = stored_forms(&txn, &chunk_ids).await?;
        let compression = if stored
            .values()
            .all(|(compression, _)| *compression == StoredCompression::Zstd)
        {
            StoredCompression::Zstd
        } else {
            StoredCompression::None
        };
        let file_size = match compression {
            StoredCompression::Zstd => chunk_ids.iter().map(|id| stored[id].1).sum(),
            StoredCompression::None => upload.nar_size as i64,
        };
        let fields = NarFields {
            nar_size: upload.nar_size as i64,
            compression,
            file_size,
            num_chunks: chunk_ids.len() as i64,
            pack_id: whole_pack,
        };
        let nar_row = upsert_nar(&txn, &upload.nar_hash, &fields, &chunk_ids, when).await?;
        heal_nars(&txn, &new_rows).await?;
        match claim {
            Claim::Object(new) => attach_object(&txn, nar_row.id, new).await?,
            Claim::Staged { cache_id, file } => {
                stage_nar(&txn, cache_id, file, nar_row.id, when).await?;
            }
        }
        txn.commit().await?;
        Ok(nar_row)
    }

    /// The NAR staged in a cache under `file`, if it is there and valid.
    pub async fn find_staged(
        &self,
        cache_id: i64,
        file: &str,
    ) -> Result<Option<(staged_nar::Model, nar::Model)>, DbErr> {
        let Some(staged) = staged_nar::Entity::find()
            .filter(staged_nar::Column::CacheId.eq(cache_id))
            .filter(staged_nar::Column::File.eq(file))
            .one(&self.conn)
            .await?
        else {
            return Ok(None);
        };
        let nar = nar::Entity::find_by_id(staged.nar_id)
            .filter(nar::Column::State.eq(BlobState::Valid))
            .one(&self.conn)
            .await?;
        Ok(nar.map(|nar| (staged, nar)))
    }

    /// Makes a staged NAR a path of its cache, in one transaction: the
    /// staged row goes, the object comes. `ChunkGone` if the staged row was
    /// claimed or reclaimed meanwhile.
    pub async fn claim_staged(
        &self,
        staged: &staged_nar::Model,
        new: NewObject,
    ) -> Result<(), DatabaseError> {
        let txn = self.begin_write().await?;
        let removed = staged_nar::Entity::delete_many()
            .filter(staged_nar::Column::Id.eq(staged.id))
            .exec(&txn)
            .await?;
        if removed.rows_affected == 0 {
            return Err(DatabaseError::ChunkGone);
        }
        attach_object(&txn, staged.nar_id, new).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Where a committed NAR goes.
#[derive(Debug)]
pub enum Claim {
    /// A path of a cache (`upload-path`).
    Object(NewObject),
    /// Staged in a cache under the file name Nix uploaded it as, until a
    /// narinfo claims it (`nix copy`).
    Staged {
        /// The cache.
        cache_id: i64,
        /// `<file hash>.nar[.ext]`.
        file: String,
    },
}

async fn stage_nar(
    txn: &DatabaseTransaction,
    cache_id: i64,
    file: String,
    nar_id: i64,
    when: i64,
) -> Result<(), DatabaseError> {
    stamp_nar(txn, nar_id, when).await?;
    let row = staged_nar::ActiveModel {
        cache_id: Set(cache_id),
        file: Set(file),
        nar_id: Set(nar_id),
        created_at: Set(when),
        ..Default::default()
    };
    staged_nar::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([staged_nar::Column::CacheId, staged_nar::Column::File])
                .update_columns([staged_nar::Column::NarId, staged_nar::Column::CreatedAt])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// Re-checks, under the row's lock, that a NAR is still valid, and stamps
/// it as referenced now: a collector deleting it concurrently waits for
/// this transaction, then finds the stamp and leaves it. `ChunkGone` if it
/// was reclaimed or found damaged meanwhile.
pub(super) async fn stamp_nar(
    txn: &DatabaseTransaction,
    nar_id: i64,
    when: i64,
) -> Result<(), DatabaseError> {
    let stamped = nar::Entity::update_many()
        .col_expr(nar::Column::LastReferencedAt, Expr::value(when))
        .filter(nar::Column::Id.eq(nar_id))
        .filter(nar::Column::State.eq(BlobState::Valid))
        .exec(txn)
        .await?
        .rows_affected;
    if stamped == 1 {
        Ok(())
    } else {
        Err(DatabaseError::ChunkGone)
    }
}

/// Records a pack that is durable in storage; its id.
pub(super) async fn insert_pack(
    txn: &DatabaseTransaction,
    written: &WrittenPack,
    when: i64,
) -> Result<i64, DbErr> {
    let row = pack::ActiveModel {
        key: Set(written.key.as_str().to_owned()),
        size: Set(written.size as i64),
        state: Set(BlobState::Valid),
        created_at: Set(when),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(row.id)
}

/// A chunk row as the commit sees it after the upsert.
#[derive(Debug, FromQueryResult)]
struct ChunkRow {
    id: i64,
    chunk_hash: String,
    pack_id: Option<i64>,
    offset: i64,
    stored_size: i64,
    state: BlobState,
}

/// Inserts this upload's new chunks; a damaged row of the same hash is
/// repointed to the fresh copy, a valid one (another upload's, committed
/// meanwhile) is kept. Returns the rows as they now are, by hash.
async fn upsert_new_chunks(
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
            compression: Set(c.compression),
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
async fn stamp_reused_chunks(
    txn: &DatabaseTransaction,
    chunks: &[UploadedChunk],
    when: i64,
) -> Result<(), DatabaseError> {
    let reused: Vec<i64> = chunks
        .iter()
        .filter_map(|c| match c {
            UploadedChunk::Reused { id } => Some(*id),
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
fn is_whole_pack(
    pack_id: i64,
    pack_size: u64,
    chunks: &[UploadedChunk],
    new_rows: &HashMap<ChunkId, ChunkRow>,
) -> bool {
    let mut expected_offset = 0;
    for chunk in chunks {
        let UploadedChunk::New(new_chunk) = chunk else {
            return false;
        };
        let Some(row) = new_rows.get(&new_chunk.hash) else {
            return false;
        };
        if row.pack_id != Some(pack_id) || row.offset != expected_offset {
            return false;
        }
        expected_offset = row.offset + row.stored_size;
    }
    expected_offset as u64 == pack_size
}

/// The compression and stored size of each of `chunk_ids`.
async fn stored_forms(
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
struct NarFields {
    nar_size: i64,
    compression: StoredCompression,
    file_size: i64,
    num_chunks: i64,
    pack_id: Option<i64>,
}

/// Inserts the NAR with its chunkrefs. If a concurrent upload committed
/// it first, that row is used as it is; if it exists damaged, it is made
/// whole from this upload: its chunkrefs replaced, its fields updated.
async fn upsert_nar(
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
async fn heal_nars(
    txn: &DatabaseTransaction,
    new_rows: &HashMap<ChunkId, ChunkRow>,
) -> Result<(), DbErr> {
    let ids: Vec<i64> = new_rows.values().map(|row| row.id).collect();
    for batch in ids.chunks(BATCH) {
        let holding = Query::select()
            .column((chunkref::Entity, chunkref::Column::NarId))
            .from(chunkref::Entity)
            .and_where(
                Expr::col((chunkref::Entity, chunkref::Column::ChunkId))
                    .is_in(batch.iter().copied()),
            )
            .to_owned();
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
