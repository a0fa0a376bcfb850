//! NAR listings (`.ls`), one per NAR: the JSON directory listing made from
//! the NAR as it was uploaded, kept zstd-compressed in the row (a few
//! kilobytes for most paths), and deleted with its NAR by the foreign key.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, EntityTrait};

use super::entity::nar_listing;
use super::ids::NarId;
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
