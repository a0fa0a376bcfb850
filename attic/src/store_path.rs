//! Nix store paths: `/nix/store/<hash>-<name>`.
//!
//! A [`StorePath`] is kept relative to its store directory (its base name), so
//! the same path can be printed under any [`StoreDir`]. Parsing applies Nix's
//! rules, which also keep a name from ever escaping its directory.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::nix_base32;

/// Characters in the hash part of a store path (20 bytes in nix-base32).
pub const STORE_PATH_HASH_LEN: usize = 32;

/// Longest name Nix accepts after the hash and dash.
pub const MAX_STORE_PATH_NAME_LEN: usize = 211;

/// The store directory Nix uses unless configured otherwise.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";

/// Why a string is not a valid store path or part of one.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorePathError {
    /// The hash part is not 32 nix-base32 characters.
    #[error("store path hash {0:?} is not 32 nix-base32 characters")]
    BadHash(String),
    /// The name part breaks Nix's naming rules.
    #[error("store path name {name:?} is invalid: {reason}")]
    BadName {
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The base name lacks the `<hash>-<name>` shape.
    #[error("{0:?} is not of the form <32-char hash>-<name>")]
    BadBaseName(String),
    /// The full path is not directly inside the store directory.
    #[error("{path:?} is not a path directly inside the store directory {store_dir:?}")]
    NotInStore {
        /// The offending path.
        path: String,
        /// The store directory it was checked against.
        store_dir: String,
    },
    /// The store directory itself is unusable.
    #[error(
        "store directory {0:?} must be an absolute path without a trailing slash or control characters"
    )]
    BadStoreDir(String),
}

/// The hash part of a store path: 32 nix-base32 characters.
///
/// It names a path in the binary cache protocol (`<hash>.narinfo`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash(String);

impl StorePathHash {
    /// The 32 characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StorePathHash {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == STORE_PATH_HASH_LEN && s.bytes().all(nix_base32::is_valid_char) {
            Ok(Self(s.to_owned()))
        } else {
            Err(StorePathError::BadHash(s.to_owned()))
        }
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathHash({})", self.0)
    }
}

/// Checks a store path name against Nix's rules: 1 to 211 characters from
/// `[A-Za-z0-9+-._?=]`, and neither `.` nor `..`.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    let bad = |reason| {
        Err(StorePathError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_STORE_PATH_NAME_LEN {
        return bad("it is longer than 211 characters");
    }
    if name == "." || name == ".." {
        return bad("it is `.` or `..`");
    }
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
    if !name.bytes().all(allowed) {
        return bad("it has a character outside [A-Za-z0-9+-._?=]");
    }
    Ok(())
}

/// A store path, without its store directory.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: StorePathHash,
    name: String,
}

impl StorePath {
    /// Builds a store path from its parts, checking the name.
    pub fn new(hash: StorePathHash, name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        Ok(Self {
            hash,
            name: name.to_owned(),
        })
    }

    /// Parses a base name: `<hash>-<name>`.
    pub fn from_base_name(base_name: &str) -> Result<Self, StorePathError> {
        let bad = || StorePathError::BadBaseName(base_name.to_owned());
        let (hash, name) = base_name
            .split_at_checked(STORE_PATH_HASH_LEN)
            .ok_or_else(bad)?;
        let name = name.strip_prefix('-').ok_or_else(bad)?;
        Self::new(hash.parse()?, name)
    }

    /// The hash part.
    pub fn hash(&self) -> &StorePathHash {
        &self.hash
    }

    /// The name part, after the hash and dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`, as in narinfo `References:` and `Deriver:`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
}

impl fmt::Display for StorePath {
    /// Prints the base name; use [`StoreDir::display`] for the full path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({}-{})", self.hash, self.name)
    }
}

/// A store directory such as `/nix/store`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> Self {
        Self(DEFAULT_STORE_DIR.to_owned())
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StoreDir {
    /// Checks and wraps a store directory: absolute, no trailing slash.
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        // No control characters: the directory is written into
        // `nix-cache-info` and narinfos, which are line formats.
        let valid = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && !dir.chars().any(char::is_control)
            && !dir.split('/').any(|part| part == "." || part == "..");
        if valid {
            Ok(Self(dir.to_owned()))
        } else {
            Err(StorePathError::BadStoreDir(dir.to_owned()))
        }
    }

    /// The directory as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a full store path inside this directory. Paths below a store
    /// path (`/nix/store/<hash>-<name>/bin`) are rejected.
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        let not_in_store = || StorePathError::NotInStore {
            path: path.to_owned(),
            store_dir: self.0.clone(),
        };
        let base_name = path
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        if base_name.contains('/') {
            return Err(not_in_store());
        }
        StorePath::from_base_name(base_name)
    }

    /// The full path of `path` in this directory.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }
}

impl Serialize for StorePathHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StorePathHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd-top";

    #[test]
    fn parses_a_real_store_path() {
        let store = StoreDir::default();
        let path = store.parse_path(PATH).expect("real path parses");
        assert_eq!(path.hash().as_str(), "ywnwmg5zvmlcpvjwq2954829721gl7nd");
        assert_eq!(path.name(), "top");
        assert_eq!(store.display(&path), PATH);
        assert_eq!(path.base_name(), "ywnwmg5zvmlcpvjwq2954829721gl7nd-top");
    }

    #[test]
    fn accepts_every_allowed_character() {
        // As a store path's name, kept as it is.
        let store = StoreDir::default();
        for name in ["a-Z_0.9+?=".to_owned(), "x".repeat(211)] {
            let path = format!("/nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd-{name}");
            let parsed = store.parse_path(&path).expect(&name);
            assert_eq!(parsed.name(), name);
            assert_eq!(store.display(&parsed), path);
        }
    }

    #[test]
    fn rejects_names_nix_rejects() {
        for name in ["", ".", "..", "a/b", "a b", "caf\u{e9}", "a\0b"] {
            assert!(validate_name(name).is_err(), "{name:?} must be rejected");
        }
        assert!(validate_name(&"x".repeat(212)).is_err());
    }

    #[test]
    fn rejects_paths_outside_or_below_the_store() {
        let store = StoreDir::default();
        for path in [
            "/nix/storex/ywnwmg5zvmlcpvjwq2954829721gl7nd-top",
            "/tmp/ywnwmg5zvmlcpvjwq2954829721gl7nd-top",
            "/nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd-top/bin",
            "/nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd",
            "/nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd-",
            "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-top",
            "/nix/store/../etc/passwd",
        ] {
            assert!(store.parse_path(path).is_err(), "{path:?} must be rejected");
        }
    }

    #[test]
    fn rejects_bad_store_dirs() {
        for dir in ["", "/", "nix/store", "/nix/store/", "/nix/../store"] {
            assert!(StoreDir::new(dir).is_err(), "{dir:?} must be rejected");
        }
        StoreDir::new("/custom/store").expect("absolute dir is fine");
    }
}
