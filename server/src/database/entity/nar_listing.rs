//! `nar_listing`: a NAR's `.ls` listing, zstd-compressed.

use sea_orm::entity::prelude::*;

/// One listing.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "nar_listing")]
pub struct Model {
    /// The NAR it lists; the row goes with it.
    #[sea_orm(primary_key, auto_increment = false)]
    pub nar_id: i64,
    /// Bytes of the JSON, uncompressed.
    pub size: i64,
    /// The JSON as one zstd frame.
    pub data: Vec<u8>,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
