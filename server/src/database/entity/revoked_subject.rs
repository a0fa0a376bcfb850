//! `revoked_subject`: subjects whose tokens no longer work, whichever kind.

use sea_orm::entity::prelude::*;

/// One revoked subject.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revoked_subject")]
pub struct Model {
    /// A JWT's `sub` or a biscuit token's `subject`, exactly as signed.
    #[sea_orm(primary_key, auto_increment = false)]
    pub subject: String,
    /// Unix seconds.
    pub revoked_at: i64,
}

/// None.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
