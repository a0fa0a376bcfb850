//! `/_api/v1/cache-config/{cache}`: GET a cache's settings, POST to create
//! it, PATCH to change it, DELETE to destroy it.

use serde::{Deserialize, Serialize};

/// What key a cache signs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeypairConfig {
    /// Let the server generate one.
    Generate,
    /// Use this secret key, in Nix's `name:base64` form.
    Keypair(String),
}

/// A PATCH asking for a new, server-generated key while the current one
/// keeps signing beside it for `overlap_seconds` (0: stops at once). A
/// field Attic does not have: its clients never send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    /// How long the replaced key keeps signing, in seconds.
    pub overlap_seconds: u64,
}

/// How long a cache keeps paths nobody reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetentionPeriodConfig {
    /// The server's default.
    Global,
    /// This many seconds since last access; 0 keeps paths forever.
    Period(u32),
}

/// How much a cache may hold before the least recently read paths go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuotaConfig {
    /// No limit.
    Unlimited,
    /// At most this many stored bytes of its paths' NARs.
    Bytes(u64),
}

/// An upstream binary cache a cache pulls through from: on a narinfo miss
/// the server asks each in order, and takes a path only if its narinfo is
/// signed by `public_key`. A field Attic does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamCacheConfig {
    /// The cache's base URL, e.g. `https://cache.nixos.org`; the server
    /// asks `<url>/<hash>.narinfo`.
    pub url: String,
    /// The key the upstream signs with, Nix's `name:base64` form.
    pub public_key: String,
}

/// The body of POST (create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCacheRequest {
    /// The signing key.
    pub keypair: KeypairConfig,
    /// Whether anyone may pull without a token.
    pub is_public: bool,
    /// The store directory of the paths it holds, usually `/nix/store`.
    pub store_dir: String,
    /// Substituter priority; lower is preferred (cache.nixos.org is 40).
    pub priority: i32,
    /// Names of upstream keys whose paths clients need not push.
    pub upstream_cache_key_names: Vec<String>,
}

/// A cache's settings: the GET reply, and the PATCH body where `None`
/// leaves a setting as it is. The secret key is never sent back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// A new signing key (PATCH only), replacing every key at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypair: Option<KeypairConfig>,
    /// Rotate to a generated key with an overlap (PATCH only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_keypair: Option<KeyRotation>,
    /// The URL to use as a Nix substituter (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substituter_endpoint: Option<String>,
    /// The URL of the API (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
    /// The public key for Nix's `trusted-public-keys` (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// During a rotation's overlap, the key the cache signed with before,
    /// which signs every narinfo too until `previous_key_signs_until`
    /// (read-only; absent outside an overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_public_key: Option<String>,
    /// Unix seconds from which `previous_public_key` signs nothing
    /// (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_signs_until: Option<i64>,
    /// Whether anyone may pull without a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// The store directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_dir: Option<String>,
    /// Substituter priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Names of upstream keys whose paths clients need not push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cache_key_names: Option<Vec<String>>,
    /// Retention of unread paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_period: Option<RetentionPeriodConfig>,
    /// The `Content-Encoding`s `upload-path` accepts besides none
    /// (read-only). Older servers omit it and take plain NARs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_encodings: Option<Vec<String>>,
    /// The size limit enforced by garbage collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaConfig>,
    /// Stored bytes of the cache's paths' NARs now (read-only), what the
    /// quota is measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Upstream caches to pull through from, in priority order; in a PATCH,
    /// the whole list (`[]` clears it). Server-wide upstreams from the
    /// config are not listed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<UpstreamCacheConfig>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_like_attic() {
        let create = CreateCacheRequest {
            keypair: KeypairConfig::Generate,
            is_public: false,
            store_dir: "/nix/store".into(),
            priority: 41,
            upstream_cache_key_names: vec!["cache.nixos.org-1".into()],
        };
        assert_eq!(
            serde_json::to_string(&create).expect("serialises"),
            r#"{"keypair":"Generate","is_public":false,"store_dir":"/nix/store","priority":41,"upstream_cache_key_names":["cache.nixos.org-1"]}"#
        );
        let patch: CacheConfig = serde_json::from_str(
            r#"{"keypair":{"Keypair":"k:abc"},"retention_period":{"Period":3600}}"#,
        )
        .expect("parses");
        assert_eq!(patch.keypair, Some(KeypairConfig::Keypair("k:abc".into())));
        assert_eq!(
            patch.retention_period,
            Some(RetentionPeriodConfig::Period(3600))
        );
        let rotate: CacheConfig =
            serde_json::from_str(r#"{"rotate_keypair":{"overlap_seconds":604800}}"#)
                .expect("parses");
        assert_eq!(
            rotate.rotate_keypair,
            Some(KeyRotation {
                overlap_seconds: 604800
            })
        );
        let global: CacheConfig =
            serde_json::from_str(r#"{"retention_period":"Global"}"#).expect("parses");
        assert_eq!(global.retention_period, Some(RetentionPeriodConfig::Global));
    }
}
