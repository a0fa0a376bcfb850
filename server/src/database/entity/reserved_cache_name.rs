//! `reserved_cache_name`: names of caches destroyed with
//! `soft-delete-caches` on, which no new cache may take.

use sea_orm::entity::prelude::*;

/// One reserved name.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reserved_cache_name")]
pub struct Model {
    /// The cache name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// Unix seconds when its cache was destroyed.
    pub reserved_at: i64,
}

/// None: the destroyed cache's row may be gone.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
