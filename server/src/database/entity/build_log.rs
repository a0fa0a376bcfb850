//! `build_log`: a derivation's build log, as `nix store copy-log` sent it.

use sea_orm::entity::prelude::*;

/// One log.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "build_log")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The cache it belongs to.
    pub cache_id: i64,
    /// The derivation's file name, `<hash>-<name>.drv`.
    pub drv: String,
    /// Uncompressed bytes.
    pub size: i64,
    /// The log as one zstd frame, for rows written before logs moved to
    /// blob storage; empty when `storage_key` is set.
    pub data: Vec<u8>,
    /// The blob holding the log (one zstd stream), `logs/<2 hex>/<32 hex>`.
    pub storage_key: Option<String>,
    /// Bytes the log takes where it is stored, counted in the cache's usage.
    pub stored_size: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
