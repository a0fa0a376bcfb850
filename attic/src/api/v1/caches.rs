//! `GET /_api/v1/caches`: the caches the caller's token may see.

use serde::{Deserialize, Serialize};

use crate::cache::CacheName;

/// The reply: every live cache on which the token holds any permission,
/// by name, and nothing about any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCachesResponse {
    /// The caches, ordered by name.
    pub caches: Vec<CacheSummary>,
}

/// One cache as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSummary {
    /// The name in URLs.
    pub name: CacheName,
    /// Whether anyone may pull without a token.
    pub is_public: bool,
    /// Bytes its paths' NARs take, as stored (compressed): what a quota
    /// counts of its paths. A NAR two caches hold counts in both.
    pub stored_bytes: u64,
    /// How many paths it holds.
    pub paths: u64,
    /// Its quota in bytes, if it has one.
    pub quota: Option<u64>,
    /// What the quota counts: `stored_bytes` plus its build logs and the
    /// NARs `nix copy` staged for it.
    pub quota_used_bytes: u64,
    /// When a path was last pushed to it (Unix seconds), if it holds any.
    pub last_push: Option<i64>,
}
