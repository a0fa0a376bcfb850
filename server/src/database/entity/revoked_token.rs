//! `revoked_token`: revocation identifiers of tokens that no longer work.

use sea_orm::entity::prelude::*;

/// One revoked identifier.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revoked_token")]
pub struct Model {
    /// Hex revocation identifier of a token block.
    #[sea_orm(primary_key, auto_increment = false)]
    pub revocation_id: String,
    /// Unix seconds.
    pub revoked_at: i64,
}

/// None.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
