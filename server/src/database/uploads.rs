//! Uploads: what a push asks before it sends (the NAR, the chunks the
//! store has), and the commit that makes a verified NAR a path of a cache
//! or stages it for `nix copy`'s narinfo.
//!
//! An upload is committed in one transaction ([`Database::commit_upload`])
//! only after its pack is durable; the rows it writes are in
//! `upload_rows`.

use std::collections::HashMap;

use attic::chunking::ChunkId;
use attic::hash::Sha256Hash;
use attic::store_path::StorePathHash;
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, JoinType, QueryFilter, QuerySelect, RelationTrait,
};

use super::attach::{NewObject, attach_object, stage_nar};
use super::entity::{self, BlobState, chunk, chunkref, nar, object, staged_nar};
use super::ids::{CacheId, NarId};
use super::records::{NarRecord, StagedNar};
use super::upload_rows::{
    NarFields, UploadedChunk, heal_nars, insert_pack, is_whole_pack, stamp_reused_chunks,
    stored_forms, upsert_nar, upsert_new_chunks,
};
use super::{BATCH, Database, DatabaseError, now};
use crate::pack::StoredChunkId;
use crate::pack::write::WrittenPack;

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
        nar_id: NarId,
        cache_id: CacheId,
        except_path: Option<&StorePathHash>,
    ) -> Result<HeldByCache, DatabaseError> {
        let mut holders = object::Entity::find()
            .filter(object::Column::NarId.eq(nar_id))
            .filter(object::Column::CacheId.eq(cache_id));
        if let Some(path) = except_path {
            holders = holders.filter(object::Column::StorePathHash.ne(path.as_str()));
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
    pub async fn find_nar(
        &self,
        nar_hash: &Sha256Hash,
    ) -> Result<Option<NarRecord>, DatabaseError> {
        nar::Entity::find()
            .filter(nar::Column::NarHash.eq(nar_hash.to_typed_hex()))
            .filter(nar::Column::State.eq(BlobState::Valid))
            .one(&self.conn)
            .await?
            .map(NarRecord::try_from)
            .transpose()
    }

    /// The row ids of the valid chunks among `hashes`.
    pub async fn find_chunks(
        &self,
        hashes: &[ChunkId],
    ) -> Result<HashMap<ChunkId, StoredChunkId>, DatabaseError> {
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
                    found.insert(hash, StoredChunkId::new(id));
                }
            }
        }
        Ok(found)
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
    ) -> Result<NarRecord, DatabaseError> {
        let txn = self.begin_write().await?;
        let when = now();
        let pack_id = match &upload.pack {
            Some(written) => Some(insert_pack(&txn, written, when, None).await?),
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
                UploadedChunk::Reused { id } => id.get(),
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
            .all(|(compression, _)| *compression == entity::StoredCompression::Zstd)
        {
            entity::StoredCompression::Zstd
        } else {
            entity::StoredCompression::None
        };
        let file_size = match compression {
            entity::StoredCompression::Zstd => chunk_ids.iter().map(|id| stored[id].1).sum(),
            entity::StoredCompression::None
            | entity::StoredCompression::Xz
            | entity::StoredCompression::Brotli => upload.nar_size as i64,
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
        let nar = NarRecord::try_from(nar_row)?;
        match claim {
            Claim::Object(new) => attach_object(&txn, nar.id, *new).await?,
            Claim::Staged { cache_id, file } => {
                stage_nar(&txn, cache_id, file, nar.id, when).await?;
            }
        }
        txn.commit().await?;
        Ok(nar)
    }

    /// The NAR staged in a cache under `file`, if it is there and valid.
    pub async fn find_staged(
        &self,
        cache_id: CacheId,
        file: &str,
    ) -> Result<Option<(StagedNar, NarRecord)>, DatabaseError> {
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
        match nar {
            Some(nar) => Ok(Some((staged.into(), nar.try_into()?))),
            None => Ok(None),
        }
    }

    /// Makes a staged NAR a path of its cache, in one transaction: the
    /// staged row goes, the object comes. `ChunkGone` if the staged row was
    /// claimed or reclaimed meanwhile.
    pub async fn claim_staged(
        &self,
        staged: &StagedNar,
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
        let (cache_id, hash) = (new.cache_id, new.info.store_path_hash.clone());
        attach_object(&txn, staged.nar_id, new).await?;
        object::Entity::update_many()
            .col_expr(
                object::Column::NixUploadFile,
                Expr::value(staged.file.clone()),
            )
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::StorePathHash.eq(hash.as_str()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Where a committed NAR goes.
#[derive(Debug)]
pub enum Claim {
    /// A path of a cache (`upload-path`).
    Object(Box<NewObject>),
    /// Staged in a cache under the file name Nix uploaded it as, until a
    /// narinfo claims it (`nix copy`).
    Staged {
        /// The cache.
        cache_id: CacheId,
        /// `<file hash>.nar[.ext]`.
        file: String,
    },
}
