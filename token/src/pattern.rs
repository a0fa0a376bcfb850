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

/// Matches with one backtracking point, the last `*` seen: O(pattern ×
/// name) at worst, where trying every split at every `*` is exponential in
/// the number of stars (a 50-character pattern of `*a` pairs against a
/// name of `a`s would take years).
pub(crate) fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The position after the last `*`, and the name position it matched up to.
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                resume = Some((p, n));
            }
            Some(&c) if c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match resume {
                // Let the last `*` swallow one more character.
                Some((after_star, matched)) => {
                    p = after_star;
                    n = matched + 1;
                    resume = Some((after_star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
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
