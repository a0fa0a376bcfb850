//! `pin`: a named GC root of a cache.

use sea_orm::entity::prelude::*;

/// One pin.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pin")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The cache.
    pub cache_id: i64,
    /// Its name, unique in the cache (a valid `PinName`).
    pub name: String,
    /// How many of its latest targets it keeps.
    pub keep: i32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last re-pin.
    pub updated_at: i64,
}

/// None that queries follow.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
