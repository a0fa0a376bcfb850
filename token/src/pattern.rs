//! Cache-name patterns: a cache name in which `*` matches any run of characters.

use std::fmt;
use std::str::FromStr;

use attic::cache::{CacheName, MAX_CACHE_NAME_LEN};
use thiserror::Error;

/// Why a string is not a cache-name pattern.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0:?} is not a cache-name pattern: use [A-Za-z0-9_-] and `*`, at most 50 characters")]
pub struct BadCacheNamePattern(String);

/// A pattern such as `team-a`, `team-*` or `*`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheNamePattern(String);

impl CacheNamePattern {
    /// The pattern that matches every cache.
    pub fn any() -> Self {
        Self("*".to_owned())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &CacheName) -> bool {
        glob_match(self.0.as_bytes(), name.as_str().as_bytes())
    }

    /// The anchored regular expression that tokens carry. Only `*` needs
    /// translating: every other allowed character is literal in a regex.
    pub fn to_regex(&self) -> String {
        format!("^{}$", self.0.replace('*', ".*"))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob_match(rest, &name[skip..])),
        Some((c, rest)) => name.first() == Some(c) && glob_match(rest, &name[1..]),
    }
}

impl FromStr for CacheNamePattern {
    type Err = BadCacheNamePattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= MAX_CACHE_NAME_LEN
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_*".contains(&c));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadCacheNamePattern(s.to_owned()))
        }
    }
}

impl fmt::Display for CacheNamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CacheNamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheNamePattern({})", self.0)
    }
}
