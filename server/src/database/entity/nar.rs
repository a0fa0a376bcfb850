//! `nar`: a NAR in the global store, held once however many caches have it.

use sea_orm::entity::prelude::*;

use super::{BlobState, StoredCompression};

/// One NAR.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "nar")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// SHA-256 of the NAR, `sha256:<hex>`.
    #[sea_orm(unique)]
    pub nar_hash: String,
    /// Bytes of the NAR.
    pub nar_size: i64,
    /// `zstd` when every chunk is a zstd frame (served concatenated), else `none`.
    pub compression: StoredCompression,
    /// Bytes served for `compression`: the sum of the chunk files, or `nar_size`.
    pub file_size: i64,
    /// `valid` once whole; `damaged` while a chunk of it is.
    pub state: BlobState,
    /// How many chunkrefs it has.
    pub num_chunks: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// The pack that is byte for byte this NAR's `.nar.zst`, when one is
    /// (every chunk was new when it was uploaded).
    pub pack_id: Option<i64>,
    /// Unix seconds when an upload last attached it to a path or staged
    /// it; the collector leaves it alone for a grace period after.
    pub last_referenced_at: Option<i64>,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
