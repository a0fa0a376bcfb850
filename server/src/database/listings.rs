//! NAR listings (`.ls`), one per NAR: the JSON directory listing made from
//! the NAR as it was uploaded, kept zstd-compressed in the row (a few
//! kilobytes for most paths), and deleted with its NAR by the foreign key;
//! and the DWARF debug info files each NAR holds, found through a cache's
//! paths for `debuginfo/{build id}`, deleted with their NAR the same way.

use attic::nar::DebugInfoFile;
use attic::store_path::StorePathHash;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
};

use super::entity::{nar_debug_info, nar_listing, object};
use super::ids::{CacheId, NarId};
use super::records::{corrupt, size};
use super::{Database, DatabaseError};

/// A NAR's listing, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredListing {
    /// Bytes of the JSON.
    pub size: u64,
    /// The JSON as one zstd frame.
    pub zstd: Vec<u8>,
}

impl TryFrom<nar_listing::Model> for StoredListing {
    type Error = DatabaseError;

    fn try_from(row: nar_listing::Model) -> Result<Self, Self::Error> {
        Ok(Self {
            size: size(row.size, "size").map_err(corrupt("nar_listing", row.nar_id))?,
            zstd: row.data,
        })
    }
}

impl Database {
    /// Records a NAR's listing, unless it has one: the listing of a NAR
    /// depends on its bytes alone, so whichever upload wrote it first
    /// wrote the same one.
    pub async fn put_listing(
        &self,
        nar_id: NarId,
        listing: StoredListing,
    ) -> Result<(), DatabaseError> {
        let row = nar_listing::ActiveModel {
            nar_id: Set(nar_id.get()),
            size: Set(listing.size as i64),
            data: Set(listing.zstd),
        };
        nar_listing::Entity::insert(row)
            .on_conflict(
                OnConflict::column(nar_listing::Column::NarId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.conn)
            .await?;
        Ok(())
    }

    /// Whether a NAR has its listing, without reading it.
    pub async fn has_listing(&self, nar_id: NarId) -> Result<bool, DatabaseError> {
        let found = nar_listing::Entity::find_by_id(nar_id.get())
            .select_only()
            .column(nar_listing::Column::NarId)
            .into_tuple::<i64>()
            .one(&self.conn)
            .await?;
        Ok(found.is_some())
    }

    /// A NAR's listing, if it has one (NARs stored before listings, or
    /// with a listing past the bound, have none).
    pub async fn find_listing(
        &self,
        nar_id: NarId,
    ) -> Result<Option<StoredListing>, DatabaseError> {
        nar_listing::Entity::find_by_id(nar_id.get())
            .one(&self.conn)
            .await?
            .map(StoredListing::try_from)
            .transpose()
    }
}

/// A debug info file found through a cache's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugInfoMember {
    /// The path whose NAR holds it.
    pub store_path_hash: StorePathHash,
    /// Its path in the NAR.
    pub member: String,
}

impl Database {
    /// Records the debug info files a NAR holds (what is there already
    /// stays: a NAR's files depend on its bytes alone).
    pub async fn put_debug_info(
        &self,
        nar_id: NarId,
        files: &[DebugInfoFile],
    ) -> Result<(), DatabaseError> {
        // Bounded batches: a statement takes a limited number of values.
        for batch in files.chunks(1000) {
            let rows = batch.iter().map(|file| nar_debug_info::ActiveModel {
                nar_id: Set(nar_id.get()),
                build_id: Set(file.build_id.clone()),
                member: Set(file.member.clone()),
            });
            nar_debug_info::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::columns([
                        nar_debug_info::Column::NarId,
                        nar_debug_info::Column::BuildId,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&self.conn)
                .await?;
        }
        Ok(())
    }

    /// The debug info file of `build_id` in a path of `cache_id`, if any
    /// path of the cache holds one (the first by path, if several do).
    pub async fn find_debug_info(
        &self,
        cache_id: CacheId,
        build_id: &str,
    ) -> Result<Option<DebugInfoMember>, DatabaseError> {
        let found: Option<(i64, String, String)> = object::Entity::find()
            .select_only()
            .column(object::Column::Id)
            .column(object::Column::StorePathHash)
            .column(nar_debug_info::Column::Member)
            .join(
                JoinType::InnerJoin,
                object::Entity::belongs_to(nar_debug_info::Entity)
                    .from(object::Column::NarId)
                    .to(nar_debug_info::Column::NarId)
                    .into(),
            )
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(nar_debug_info::Column::BuildId.eq(build_id))
            .order_by_asc(object::Column::StorePathHash)
            .into_tuple()
            .one(&self.conn)
            .await?;
        let Some((id, hash, member)) = found else {
            return Ok(None);
        };
        let store_path_hash = hash
            .parse()
            .map_err(|_| corrupt("object", id)("store_path_hash is not a hash".to_owned()))?;
        Ok(Some(DebugInfoMember {
            store_path_hash,
            member,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listing_is_kept_once_and_its_presence_is_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let nar = database.seed_nar("1", 0).await;
        assert!(!database.has_listing(nar).await.expect("ask"));
        let first = StoredListing {
            size: 2,
            zstd: zstd::bulk::compress(b"{}", 3).expect("compress"),
        };
        database.put_listing(nar, first.clone()).await.expect("put");
        assert!(database.has_listing(nar).await.expect("ask"));
        // A second upload's listing leaves the first in place.
        let second = StoredListing {
            size: 3,
            zstd: zstd::bulk::compress(b"{ }", 3).expect("compress"),
        };
        database.put_listing(nar, second).await.expect("put");
        assert_eq!(database.find_listing(nar).await.expect("find"), Some(first));
    }
}
