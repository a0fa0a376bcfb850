//! `nar_debug_info`: a DWARF debug info file a NAR holds.

use sea_orm::entity::prelude::*;

/// One file.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "nar_debug_info")]
pub struct Model {
    /// The NAR holding it; the row goes with it.
    #[sea_orm(primary_key, auto_increment = false)]
    pub nar_id: i64,
    /// The build id, 40 hex digits.
    #[sea_orm(primary_key, auto_increment = false)]
    pub build_id: String,
    /// Its path in the NAR.
    pub member: String,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
