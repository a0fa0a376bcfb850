//! `audit_event`: one state change, who made it, where.

use sea_orm::entity::prelude::*;

/// One recorded change.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_event")]
pub struct Model {
    /// Row id: the order events were recorded in.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// What happened (`AuditAction`'s name).
    pub action: String,
    /// Who: `token` (a request's token) or `atticadm`.
    pub actor: String,
    /// The token's subject, if it has one.
    pub subject: Option<String>,
    /// The cache's row, if the change was to one; kept after the cache
    /// goes, so a cache of the same name made later has a log of its own.
    pub cache_id: Option<i64>,
    /// The cache's name when the change was made.
    pub cache_name: Option<String>,
    /// The store path, for a change to one path.
    pub store_path: Option<String>,
    /// Free text: what changed, the revoked token's id.
    pub detail: Option<String>,
}

/// No navigable relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
