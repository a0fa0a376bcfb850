//! `pin_target`: a store path a pin points at (one of its last `keep`).

use sea_orm::entity::prelude::*;

/// One target of one pin.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pin_target")]
pub struct Model {
    /// Row id: later targets have larger ids.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The pin.
    pub pin_id: i64,
    /// The 32-character hash part.
    pub store_path_hash: String,
    /// The full store path, as the cache's object holds it.
    pub store_path: String,
    /// Unix seconds.
    pub pinned_at: i64,
}

/// None that queries follow.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
