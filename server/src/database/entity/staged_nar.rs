//! `staged_nar`: a NAR `nix copy` uploaded to a cache, waiting for the
//! narinfo that claims it.

use sea_orm::entity::prelude::*;

/// One staged NAR.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "staged_nar")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The cache it was uploaded to: only that cache's narinfos claim it.
    pub cache_id: i64,
    /// The file name Nix uploaded it as, `<file hash>.nar[.zst|.xz|.bz2]`.
    pub file: String,
    /// The NAR, in the global table.
    pub nar_id: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
