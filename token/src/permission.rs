//! What a token may do on a cache.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// One right on a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read narinfos and NARs (and the cache's public settings).
    Pull,
    /// Upload paths and ask which are missing.
    Push,
    /// Remove paths.
    Delete,
    /// Create a cache.
    CreateCache,
    /// Change a cache's settings.
    ConfigureCache,
    /// Change a cache's retention period.
    ConfigureCacheRetention,
    /// Destroy a cache.
    DestroyCache,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 7] = [
        Permission::Pull,
        Permission::Push,
        Permission::Delete,
        Permission::CreateCache,
        Permission::ConfigureCache,
        Permission::ConfigureCacheRetention,
        Permission::DestroyCache,
    ];

    /// The name used in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Pull => "pull",
            Permission::Push => "push",
            Permission::Delete => "delete",
            Permission::CreateCache => "create_cache",
            Permission::ConfigureCache => "configure_cache",
            Permission::ConfigureCacheRetention => "configure_cache_retention",
            Permission::DestroyCache => "destroy_cache",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no permission.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "unknown permission {0:?}; known: pull, push, delete, create_cache, configure_cache, configure_cache_retention, destroy_cache"
)]
pub struct BadPermission(String);

impl FromStr for Permission {
    type Err = BadPermission;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalised = s.replace('-', "_");
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == normalised)
            .ok_or_else(|| BadPermission(s.to_owned()))
    }
}
