//! `CACHE` arguments: `server:cache`, or a bare cache name on the default server.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
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
    /// The server this cache lives on: the one named, else the default
    /// server, else the only server there is (as Attic falls back to).
    pub fn resolve<'c>(&self, config: &'c ClientConfig) -> Result<(&'c str, &'c ServerEntry)> {
        let name = match (&self.server, config.default_server.as_deref()) {
            (Some(name), _) => name.as_str(),
            (None, Some(default)) => default,
            (None, None) if config.servers.len() == 1 => {
                config.servers.keys().next().expect("one server").as_str()
            }
            (None, None) if config.servers.is_empty() => bail!(
                "no server given and none logged in to: run `attic login NAME URL TOKEN` first"
            ),
            (None, None) => bail!(
                "no server given and no default server among {}: write SERVER:CACHE, or run \
                 `attic login NAME URL TOKEN --set-default`",
                config
                    .servers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let (name, entry) = config.servers.get_key_value(name).with_context(|| {
            format!("no server named {name:?}: run `attic login {name} URL TOKEN` first")
        })?;
        if let Some(error) = &entry.token_file_error {
            bail!("{error}");
        }
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
        let mut config = ClientConfig::default();
        config
            .login("only", "http://a/", None, false)
            .expect("login");
        config.default_server = None;
        let bare: CacheRef = "demo".parse().expect("ref");
        let (name, _) = bare.resolve(&config).expect("the only server");
        assert_eq!(name, "only");
        config
            .login("second", "http://b/", None, false)
            .expect("login");
        config.default_server = None;
        let err = bare.resolve(&config).expect_err("ambiguous");
        assert!(err.to_string().contains("only, second"), "{err}");
    }
}
