//! `CACHE` arguments: `server:cache`, or a bare cache name on the default server.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow};
use attic::cache::CacheName;

use crate::config::{ClientConfig, ServerEntry};

/// A cache as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRef {
    /// The server's login name, if given.
    pub server: Option<String>,
    /// The cache.
    pub cache: CacheName,
}

impl FromStr for CacheRef {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (server, cache) = match s.split_once(':') {
            Some((server, cache)) => (Some(server.to_owned()), cache),
            None => (None, s),
        };
        let cache = cache.parse().map_err(|e| anyhow!("{e}"))?;
        Ok(Self { server, cache })
    }
}

impl fmt::Display for CacheRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Some(server) => write!(f, "{server}:{}", self.cache),
            None => write!(f, "{}", self.cache),
        }
    }
}

impl CacheRef {
    /// The server this cache lives on.
    pub fn resolve<'c>(&self, config: &'c ClientConfig) -> Result<(&'c str, &'c ServerEntry)> {
        let name = match &self.server {
            Some(name) => name.as_str(),
            None => config.default_server.as_deref().context(
                "no server given and no default server: run `attic login NAME URL TOKEN` first, or write SERVER:CACHE",
            )?,
        };
        let (name, entry) = config.servers.get_key_value(name).with_context(|| {
            format!("no server named {name:?}: run `attic login {name} URL TOKEN` first")
        })?;
        Ok((name.as_str(), entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let bare: CacheRef = "demo".parse().expect("bare");
        assert_eq!(bare.server, None);
        let full: CacheRef = "main:demo".parse().expect("full");
        assert_eq!(full.server.as_deref(), Some("main"));
        assert_eq!(full.cache.as_str(), "demo");
        assert!("main:../x".parse::<CacheRef>().is_err());
    }

    #[test]
    fn resolution_errors_say_what_to_do() {
        let config = ClientConfig::default();
        let err = "demo"
            .parse::<CacheRef>()
            .expect("ref")
            .resolve(&config)
            .expect_err("no default");
        assert!(err.to_string().contains("attic login"), "{err}");
    }
}
