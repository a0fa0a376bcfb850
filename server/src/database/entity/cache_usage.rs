//! `cache_usage`: signed byte counts whose sum for a cache is what it
//! stores. Triggers append them (see the `migration` crate's
//! `create_cache_usage`); readers fold them.

use sea_orm::entity::prelude::*;

/// One change to a cache's stored bytes, or several folded into one.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cache_usage")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The cache whose bytes changed.
    pub cache_id: i64,
    /// By how much: negative when something left.
    pub bytes: i64,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
