//! Paths as caches hold them: what a push attaches, what a pull finds,
//! which of a client's paths a cache lacks, and when each was last read.

use std::collections::HashSet;

use attic::store_path::StorePathHash;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, JoinType, QueryFilter,
    QuerySelect, RelationTrait,
};

use super::entity::{BlobState, nar, object};
use super::ids::{CacheId, NarId, ObjectId};
use super::json::Json;
use super::records::{NarRecord, StoredPath};
use super::uploads::stamp_nar;
use super::{BATCH, Database, DatabaseError, now};

/// What a path's narinfo says besides its NAR: the uploader's word,
/// checked where it entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The hash part of the store path.
    pub store_path_hash: StorePathHash,
    /// The full store path.
    pub store_path: String,
    /// Full paths it references.
    pub references: Vec<String>,
    /// Platform it was built for.
    pub system: Option<String>,
    /// Full path of its derivation.
    pub deriver: Option<String>,
    /// Signatures the uploader supplied.
    pub sigs: Vec<String>,
    /// Content address.
    pub ca: Option<String>,
}

/// A path to attach to a cache.
#[derive(Debug, Clone)]
pub struct NewObject {
    /// The cache.
    pub cache_id: CacheId,
    /// What its narinfo says.
    pub info: PathInfo,
    /// Subject of the token that uploaded it.
    pub created_by: Option<String>,
}

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
        // One round trip: this is on every narinfo and NAR request.
        let found = object::Entity::find()
            .find_also_related(nar::Entity)
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::StorePathHash.eq(store_path_hash.as_str()))
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

/// Makes NAR `nar_id` the path `new` of its cache, replacing what the path
/// was (an upsert, so concurrent pushes of one path both succeed), after
/// re-checking and stamping the NAR so a collector cannot take it away.
pub(super) async fn attach_object(
    txn: &DatabaseTransaction,
    nar_id: NarId,
    new: NewObject,
) -> Result<(), DatabaseError> {
    let when = now();
    stamp_nar(txn, nar_id, when).await?;
    let info = new.info;
    let row = object::ActiveModel {
        cache_id: Set(new.cache_id.get()),
        nar_id: Set(nar_id.get()),
        store_path_hash: Set(info.store_path_hash.as_str().to_owned()),
        store_path: Set(info.store_path),
        references: Set(Json(info.references).encode()),
        system: Set(info.system),
        deriver: Set(info.deriver),
        sigs: Set(Json(info.sigs).encode()),
        ca: Set(info.ca),
        created_at: Set(when),
        last_accessed_at: Set(None),
        created_by: Set(new.created_by),
        ..Default::default()
    };
    object::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([object::Column::CacheId, object::Column::StorePathHash])
                .update_columns([
                    object::Column::NarId,
                    object::Column::StorePath,
                    object::Column::References,
                    object::Column::System,
                    object::Column::Deriver,
                    object::Column::Sigs,
                    object::Column::Ca,
                    object::Column::CreatedAt,
                    object::Column::LastAccessedAt,
                    object::Column::CreatedBy,
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}
