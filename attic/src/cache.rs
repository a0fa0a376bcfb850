//! Cache names: the tenant identifier that appears in URLs and tokens.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Longest cache name accepted.
pub const MAX_CACHE_NAME_LEN: usize = 50;

/// Why a string is not a cache name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "{0:?} is not a valid cache name: use 1 to 50 characters from [A-Za-z0-9_-], \
     starting with a letter or digit"
)]
pub struct BadCacheName(String);

/// The name of a cache, as in `https://host/<name>`.
///
/// It starts with a letter or digit, so it can never collide with the
/// server's own `_`-prefixed routes, and it holds nothing that could be read
/// as a path separator.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheName(String);

impl CacheName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CacheName {
    type Err = BadCacheName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= MAX_CACHE_NAME_LEN
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadCacheName(s.to_owned()))
        }
    }
}

impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheName({})", self.0)
    }
}

impl Serialize for CacheName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CacheName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["team-a", "ci_cache", "A1", &"x".repeat(50)] {
            // Kept as it is: it appears in URLs and tokens.
            let parsed = name.parse::<CacheName>().expect(name);
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.to_string(), name);
        }
    }

    #[test]
    fn rejects_names_that_could_escape_or_collide() {
        for name in [
            "",
            "_api",
            "-x",
            "a/b",
            "..",
            "a.b",
            "a b",
            "caf\u{e9}",
            &"x".repeat(51),
        ] {
            assert!(name.parse::<CacheName>().is_err(), "{name:?}");
        }
    }
}
