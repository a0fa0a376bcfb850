//! The JSON of a JWT's header and payload, read with the types and
//! leniencies of Attic's own reader (jwt-simple 0.11 and serde), never
//! more lenient: a value Attic's reader refuses is refused here too.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::pattern::glob_match;
use crate::{CacheName, Permission};

/// Attic's namespace for its claims (a namespaced key, as Auth0 requires).
pub const CLAIM_NAMESPACE: &str = "https://jwt.attic.rs/v1";

/// The JOSE header. Fields other than these are ignored, as jwt-simple
/// ignores them (`kid` among them: there is one key).
#[derive(Debug, Deserialize)]
pub(super) struct Header {
    pub(super) alg: String,
    #[serde(default)]
    pub(super) typ: Option<String>,
    /// RFC 7515: a recipient must refuse a token whose `crit` names an
    /// extension it does not understand, and we understand none.
    #[serde(default)]
    pub(super) crit: Option<IgnoredAny>,
}

/// The registered claims jwt-simple reads, with its types, and Attic's.
#[derive(Debug, Deserialize)]
pub(super) struct Payload {
    #[serde(default, deserialize_with = "timestamp")]
    pub(super) iat: Option<u64>,
    #[serde(default, deserialize_with = "timestamp")]
    pub(super) exp: Option<u64>,
    #[serde(default, deserialize_with = "timestamp")]
    pub(super) nbf: Option<u64>,
    #[serde(default)]
    pub(super) iss: Option<String>,
    #[serde(default)]
    pub(super) sub: Option<String>,
    #[serde(default)]
    pub(super) aud: Option<Audiences>,
    // Not used, but typed as jwt-simple types them, so that a token it
    // refuses is refused here too.
    #[serde(default)]
    #[allow(dead_code)]
    jti: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    nonce: Option<String>,
    #[serde(rename = "https://jwt.attic.rs/v1")]
    pub(super) attic: AtticAccess,
}

/// `aud`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Audiences {
    pub(super) fn contains_any_of<'a>(
        &self,
        mut allowed: impl Iterator<Item = &'a String>,
    ) -> bool {
        match self {
            Audiences::One(audience) => allowed.any(|a| a == audience),
            Audiences::Many(audiences) => allowed.any(|a| audiences.contains(a)),
        }
    }
}

/// The Attic claim: `{"caches": {pattern: permissions, ...}}`; `caches`
/// is required, other keys are ignored.
#[derive(Debug, Deserialize)]
pub(super) struct AtticAccess {
    pub(super) caches: CacheGrants,
}

/// The `caches` map in the token's own order, which decides between
/// wildcard patterns (see [`CacheGrants::permissions_for`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheGrants(Vec<(AtticCacheNamePattern, CachePermissions)>);

impl CacheGrants {
    /// What the token grants on `cache`, as Attic decides it: the entry
    /// whose key is exactly the cache's name if there is one, else the
    /// first entry, in the token's order, whose pattern matches, else
    /// nothing. Entries are never combined, so an entry granting little
    /// shadows a later one granting more.
    pub fn permissions_for(&self, cache: &CacheName) -> CachePermissions {
        let exact = self
            .0
            .iter()
            .find(|(pattern, _)| pattern.0 == cache.as_str());
        let first_match = || self.0.iter().find(|(pattern, _)| pattern.matches(cache));
        exact
            .or_else(first_match)
            .map(|(_, permissions)| *permissions)
            .unwrap_or_default()
    }

    /// The entries, in the token's order.
    pub fn entries(&self) -> &[(AtticCacheNamePattern, CachePermissions)] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for CacheGrants {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GrantsVisitor;
        impl<'de> Visitor<'de> for GrantsVisitor {
            type Value = CacheGrants;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of cache-name patterns to permissions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CacheGrants, A::Error> {
                let mut grants: Vec<(AtticCacheNamePattern, CachePermissions)> = Vec::new();
                while let Some(pattern) = map.next_key::<AtticCacheNamePattern>()? {
                    // Attic's map would keep the first position and the
                    // last value; a token that says two things about one
                    // pattern is refused instead.
                    if grants.iter().any(|(seen, _)| *seen == pattern) {
                        return Err(de::Error::custom(format!(
                            "the pattern {:?} appears twice",
                            pattern.0
                        )));
                    }
                    let permissions = map.next_value()?;
                    grants.push((pattern, permissions));
                }
                Ok(CacheGrants(grants))
            }
        }
        deserializer.deserialize_map(GrantsVisitor)
    }
}

/// A key of Attic's `caches` map: a cache name that may hold `*`, which
/// matches any run of characters. Attic's rule: a letter, digit or `*`,
/// then up to 49 of those, `-`, `_` and `+`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtticCacheNamePattern(String);

impl AtticCacheNamePattern {
    /// Parses a pattern by Attic's rule.
    pub fn parse(s: &str) -> Option<Self> {
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'*');
        let rest_ok = bytes.all(|c| c.is_ascii_alphanumeric() || b"-_+*".contains(&c));
        (first_ok && rest_ok && s.len() <= 50).then(|| Self(s.to_owned()))
    }

    /// Whether `cache` matches.
    pub fn matches(&self, cache: &CacheName) -> bool {
        glob_match(self.0.as_bytes(), cache.as_str().as_bytes())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AtticCacheNamePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s)
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not a cache-name pattern")))
    }
}

/// The permissions of one `caches` entry: Attic's short keys, each `0` or
/// `1` (nothing else, not even `true`), absent meaning `0`. Unknown keys
/// are ignored, as Attic ignores them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CachePermissions {
    /// `r`: pull.
    #[serde(rename = "r", default, deserialize_with = "bool_from_int")]
    pub pull: bool,
    /// `w`: push.
    #[serde(rename = "w", default, deserialize_with = "bool_from_int")]
    pub push: bool,
    /// `d`: delete paths.
    #[serde(rename = "d", default, deserialize_with = "bool_from_int")]
    pub delete: bool,
    /// `cc`: create the cache.
    #[serde(rename = "cc", default, deserialize_with = "bool_from_int")]
    pub create_cache: bool,
    /// `cr`: configure the cache.
    #[serde(rename = "cr", default, deserialize_with = "bool_from_int")]
    pub configure_cache: bool,
    /// `cq`: configure its retention (and, in Attic, quota).
    #[serde(rename = "cq", default, deserialize_with = "bool_from_int")]
    pub configure_cache_retention: bool,
    /// `cd`: destroy the cache.
    #[serde(rename = "cd", default, deserialize_with = "bool_from_int")]
    pub destroy_cache: bool,
}

impl CachePermissions {
    /// Whether these include `permission`: each of Attic's seven maps to
    /// the one of ours with the same meaning.
    pub fn allows(&self, permission: Permission) -> bool {
        match permission {
            Permission::Pull => self.pull,
            Permission::Push => self.push,
            Permission::Delete => self.delete,
            Permission::CreateCache => self.create_cache,
            Permission::ConfigureCache => self.configure_cache,
            Permission::ConfigureCacheRetention => self.configure_cache_retention,
            Permission::DestroyCache => self.destroy_cache,
        }
    }

    /// The short key Attic writes for `permission`.
    pub fn attic_key(permission: Permission) -> &'static str {
        match permission {
            Permission::Pull => "r",
            Permission::Push => "w",
            Permission::Delete => "d",
            Permission::CreateCache => "cc",
            Permission::ConfigureCache => "cr",
            Permission::ConfigureCacheRetention => "cq",
            Permission::DestroyCache => "cd",
        }
    }
}

/// serde_with's strict `BoolFromInt`: the integers 0 and 1 only.
fn bool_from_int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct IntVisitor;
    impl Visitor<'_> for IntVisitor {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("0 or 1")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
    }
    deserializer.deserialize_any(IntVisitor)
}

/// A NumericDate: whole seconds, or a fraction (rounded down) as
/// jwt-simple reads it; never negative.
fn timestamp<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct SecondsVisitor;
    impl Visitor<'_> for SecondsVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("seconds since the Unix epoch")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                // Truncation is the rounding down meant.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(v as u64)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
    }
    deserializer.deserialize_any(SecondsVisitor).map(Some)
}
