//! `chunk`: a content-defined chunk, stored once as a blob.

use sea_orm::entity::prelude::*;

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
    /// Bytes of the stored blob.
    pub file_size: i64,
    /// `zstd` or `none`.
    pub compression: String,
    /// Storage key of the blob.
    pub remote_file: String,
    /// `valid` once durable.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Reached from chunkrefs.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
