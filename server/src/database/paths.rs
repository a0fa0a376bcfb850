//! Paths as caches hold them: what a push attaches, what a pull finds,
//! which of a client's paths a cache lacks, and when each was last read.

use std::collections::HashSet;

use attic::store_path::StorePathHash;
use sea_orm::sea_query::SimpleExpr;
use sea_orm::{ColumnTrait, EntityTrait, JoinType, QueryFilter, QuerySelect, RelationTrait};

use super::attach::{NewObject, attach_object};
use super::entity::{BlobState, nar, object};
use super::ids::{CacheId, NarId, ObjectId};
use super::records::{NarRecord, StoredPath};
use super::{BATCH, Database, DatabaseError};

impl Database {
    /// Which of `hashes` the cache does not hold whole: paths whose NAR is
    /// damaged count as missing, so the next push stores them again.
    pub async fn find_missing_paths(
        &self,
        cache_id: CacheId,
        hashes: &[StorePathHash],
    ) -> Result<Vec<StorePathHash>, DatabaseError> {
        let mut present = HashSet::new();
        for batch in hashes.chunks(BATCH) {
            let found: Vec<String> = object::Entity::find()
                .select_only()
                .column(object::Column::StorePathHash)
                .join(JoinType::InnerJoin, object::Relation::Nar.def())
                .filter(object::Column::CacheId.eq(cache_id))
                .filter(object::Column::StorePathHash.is_in(batch.iter().map(|h| h.as_str())))
                .filter(nar::Column::State.eq(BlobState::Valid))
                .into_tuple()
                .all(&self.conn)
                .await?;
            present.extend(found);
        }
        Ok(hashes
            .iter()
            .filter(|h| !present.contains(h.as_str()))
            .cloned()
            .collect())
    }

    /// A path in a cache, with its NAR, if the NAR may be served.
    pub async fn find_object(
        &self,
        cache_id: CacheId,
        store_path_hash: &StorePathHash,
    ) -> Result<Option<(StoredPath, NarRecord)>, DatabaseError> {
        self.find_servable(
            cache_id,
            object::Column::StorePathHash.eq(store_path_hash.as_str()),
        )
        .await
    }

    /// The path of a cache whose NAR `nix copy` uploaded under `file`
    /// (`<file hash>.nar.xz`), with its NAR, if the NAR may be served.
    pub async fn find_by_nix_upload_file(
        &self,
        cache_id: CacheId,
        file: &str,
    ) -> Result<Option<(StoredPath, NarRecord)>, DatabaseError> {
        self.find_servable(cache_id, object::Column::NixUploadFile.eq(file))
            .await
    }

    /// A path of a cache matching `which`, with its NAR, if the NAR may be
    /// served: one round trip, as this is on every narinfo and NAR request.
    async fn find_servable(
        &self,
        cache_id: CacheId,
        which: SimpleExpr,
    ) -> Result<Option<(StoredPath, NarRecord)>, DatabaseError> {
        let found = object::Entity::find()
            .find_also_related(nar::Entity)
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(which)
            .filter(nar::Column::State.eq(BlobState::Valid))
            .one(&self.conn)
            .await?;
        match found {
            Some((object, Some(nar))) => Ok(Some((object.try_into()?, nar.try_into()?))),
            _ => Ok(None),
        }
    }

    /// Adds an existing NAR to a cache after the uploader proved it holds it.
    /// `ChunkGone` if the NAR was reclaimed (or found damaged) while the
    /// upload proving possession of it ran.
    pub async fn attach_existing_nar(
        &self,
        nar_id: NarId,
        new: NewObject,
    ) -> Result<(), DatabaseError> {
        let txn = self.begin_write().await?;
        attach_object(&txn, nar_id, new).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Marks paths as read at `when`.
    pub async fn touch_objects(&self, ids: &[ObjectId], when: i64) -> Result<(), DatabaseError> {
        for batch in ids.chunks(BATCH) {
            object::Entity::update_many()
                .col_expr(object::Column::LastAccessedAt, when.into())
                .filter(object::Column::Id.is_in(batch.iter().copied()))
                .exec(&self.conn)
                .await?;
        }
        Ok(())
    }
}

impl Database {
    /// Removes a path from a cache at once, as its admin asked; whether the
    /// cache held it. Its NAR stays for any other cache holding it, and is
    /// otherwise the garbage collector's to reclaim (as after an eviction).
    /// Paths of the cache that reference it keep their rows: their
    /// closures are broken, which is what deleting it means.
    pub async fn delete_path(
        &self,
        cache_id: CacheId,
        store_path_hash: &StorePathHash,
    ) -> Result<bool, DatabaseError> {
        let result = object::Entity::delete_many()
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::StorePathHash.eq(store_path_hash.as_str()))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected > 0)
    }
}
