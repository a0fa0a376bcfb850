//! `chunk`: a content-defined chunk, stored once, as a zstd frame (or raw
//! bytes) at an offset in a pack.

use sea_orm::entity::prelude::*;

use super::{BlobState, StoredCompression};

/// One chunk.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chunk")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// blake3 of the uncompressed bytes, hex.
    #[sea_orm(unique)]
    pub chunk_hash: String,
    /// Uncompressed bytes.
    pub chunk_size: i64,
    /// Bytes as stored in the pack.
    pub stored_size: i64,
    /// How the stored bytes are encoded.
    pub compression: StoredCompression,
    /// The pack holding it (every row has one; nullable only because
    /// SQLite cannot tighten a column added by a migration).
    pub pack_id: Option<i64>,
    /// Where its stored bytes start in the pack.
    pub offset: i64,
    /// blake3 of the stored bytes, hex; `None` for a chunk from before
    /// packs, until its first check against `chunk_hash` records one.
    pub stored_checksum: Option<String>,
    /// `damaged` once its stored bytes failed a check.
    pub state: BlobState,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds when an upload last committed a reference to it.
    pub last_referenced_at: Option<i64>,
}

/// A chunk lives in a pack and is referenced by chunkrefs.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The pack holding its stored bytes.
    #[sea_orm(
        belongs_to = "super::pack::Entity",
        from = "Column::PackId",
        to = "super::pack::Column::Id"
    )]
    Pack,
    /// The NAR positions it fills.
    #[sea_orm(has_many = "super::chunkref::Entity")]
    ChunkRef,
}

impl ActiveModelBehavior for ActiveModel {}
