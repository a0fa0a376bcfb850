//! `cache`: a tenant's binary cache.

use sea_orm::entity::prelude::*;

/// One cache.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cache")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The name in URLs.
    pub name: String,
    /// Signing key, Nix secret-key form. Never leaves the server.
    pub keypair: String,
    /// Whether anyone may pull.
    pub is_public: bool,
    /// Store directory of its paths.
    pub store_dir: String,
    /// Substituter priority.
    pub priority: i32,
    /// JSON array of upstream key names.
    pub upstream_cache_key_names: String,
    /// Seconds to keep unread paths; `None` for the server default.
    pub retention_period: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds when destroyed; destroyed caches are invisible.
    pub deleted_at: Option<i64>,
    /// Largest size of its paths' NARs (stored bytes) before GC evicts the
    /// least recently read; `None` for no limit.
    pub quota: Option<i64>,
    /// The key it signed with before its last rotation, Nix secret-key
    /// form; it signs too until `previous_key_until`. Never leaves the
    /// server.
    pub previous_keypair: Option<String>,
    /// Unix second from which `previous_keypair` signs nothing.
    pub previous_key_until: Option<i64>,
    /// JSON array of the upstream caches it pulls through from, in
    /// priority order: `[{"url", "public_key"}]`.
    pub upstreams: String,
}

/// No navigable relations: queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
