//! `pack`: one stored blob, holding the chunks one upload brought new.

use sea_orm::entity::prelude::*;

use super::BlobState;

/// One pack.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pack")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Storage key of the blob.
    #[sea_orm(unique)]
    pub key: String,
    /// Bytes of the blob as written.
    pub size: i64,
    /// `valid` once durable; `deleting` while GC removes it.
    pub state: BlobState,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds when GC marked it `deleting`: its blob is deleted a
    /// grace period later, so reads in flight finish.
    pub deleting_since: Option<i64>,
    /// The zstd level compaction rewrote its chunks at; `None` for a pack
    /// an upload wrote, at the ingest level.
    pub level: Option<i32>,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
