//! `gc_lease`: one row saying which collector runs, until when.

use sea_orm::entity::prelude::*;

/// The lease.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "gc_lease")]
pub struct Model {
    /// Always 1.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    /// Who holds it, if anyone.
    pub holder: Option<String>,
    /// Unix seconds when it lapses unless renewed.
    pub expires_at: i64,
}

/// None.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
