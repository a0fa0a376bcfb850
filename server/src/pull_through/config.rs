//! Where paths are pulled through from: a cache's own upstreams (set with
//! `attic cache configure --upstream`, kept with the cache) and the
//! server-wide ones of `[pull-through]` in `server.toml`, with the
//! timeout and negative-answer lifetime that bound every upstream request.

use std::fmt;
use std::time::Duration;

use attic::api::v1::cache_config::UpstreamCacheConfig;
use attic::cache::CacheName;
use attic::signing::PublicKey;
use attic_token::CacheNamePattern;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{ConfigError, duration};

/// Most upstreams one cache may name: each miss may ask all of them.
pub const MAX_UPSTREAMS_PER_CACHE: usize = 8;

/// Why an upstream as given cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// Not an `http://` or `https://` URL with a host and nothing after
    /// its path.
    #[error(
        "{0:?} is not an http:// or https:// URL of a binary cache (no user, query or fragment)"
    )]
    BadUrl(String),
    /// Not a Nix public key.
    #[error("{key:?} is not a public key like name:base64 ({reason})")]
    BadKey {
        /// As given.
        key: String,
        /// Why.
        reason: String,
    },
    /// More upstreams than [`MAX_UPSTREAMS_PER_CACHE`].
    #[error("a cache may name at most {MAX_UPSTREAMS_PER_CACHE} upstreams")]
    TooMany,
}

/// An upstream binary cache: where to ask, and the key whose signature a
/// path must carry to be taken from it.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The base URL, without a trailing `/`.
    url: String,
    public_key: PublicKey,
}

impl Upstream {
    /// Checks an upstream as a client or the config gives it.
    pub fn new(url: &str, public_key: &str) -> Result<Self, UpstreamError> {
        let bad_url = || UpstreamError::BadUrl(url.to_owned());
        let parsed = reqwest::Url::parse(url).map_err(|_| bad_url())?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none_or(str::is_empty)
            || !parsed.username().is_empty()
            || parsed.password().is_some()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
            || url.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad_url());
        }
        let public_key = public_key
            .parse()
            .map_err(|e: attic::signing::SigningError| UpstreamError::BadKey {
                key: public_key.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            url: parsed.as_str().trim_end_matches('/').to_owned(),
            public_key,
        })
    }

    /// The list a client sent, checked; `[]` is no upstream.
    pub fn list(given: &[UpstreamCacheConfig]) -> Result<Vec<Self>, UpstreamError> {
        if given.len() > MAX_UPSTREAMS_PER_CACHE {
            return Err(UpstreamError::TooMany);
        }
        given
            .iter()
            .map(|u| Self::new(&u.url, &u.public_key))
            .collect()
    }

    /// The base URL, without a trailing `/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key its narinfos must be signed with.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// As the API and the database column write it.
    pub fn to_config(&self) -> UpstreamCacheConfig {
        UpstreamCacheConfig {
            url: self.url.clone(),
            public_key: self.public_key.to_string(),
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Upstream({} signed by {})",
            self.url,
            self.public_key.name()
        )
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.url, self.public_key)
    }
}

/// `[pull-through]`: server-wide upstreams and the bounds on asking them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PullThroughConfig {
    /// How long an upstream may take to connect, to answer a narinfo
    /// request, and between two pieces of a NAR; past it the path is a
    /// miss.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// How long a path no upstream had (or none could serve) is answered
    /// 404 without asking again; `0s` asks every time.
    #[serde(default = "default_negative_ttl", with = "duration")]
    pub negative_ttl: Duration,
    /// Upstreams for every cache whose name matches, asked after the
    /// cache's own, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<ServerUpstreamConfig>,
}

/// One `[[pull-through.upstreams]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerUpstreamConfig {
    /// The upstream's base URL.
    pub url: String,
    /// The key its narinfos must be signed with, `name:base64`.
    pub public_key: String,
    /// Cache-name patterns (`*` any run of characters) of the caches that
    /// pull through from it; every cache if absent.
    #[serde(default = "every_cache")]
    pub caches: Vec<String>,
}

fn every_cache() -> Vec<String> {
    vec!["*".to_owned()]
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Default for PullThroughConfig {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            negative_ttl: default_negative_ttl(),
            upstreams: Vec::new(),
        }
    }
}

/// A server-wide upstream, checked, and the caches it serves.
#[derive(Debug, Clone)]
pub struct ServerUpstream {
    /// The upstream.
    pub upstream: Upstream,
    /// The caches that pull through from it.
    pub caches: Vec<CacheNamePattern>,
}

impl PullThroughConfig {
    /// Whether the defaults are all there is (so a written config omits it).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The server-wide upstreams, checked; the error names the key.
    pub fn resolve(&self) -> Result<Vec<ServerUpstream>, ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "pull-through.timeout",
                reason: "must be longer than zero".into(),
            });
        }
        self.upstreams
            .iter()
            .enumerate()
            .map(|(i, given)| {
                let invalid = |field: &str, reason: String| ConfigError::InvalidAt {
                    key: format!("pull-through.upstreams[{i}].{field}"),
                    reason,
                };
                let upstream =
                    Upstream::new(&given.url, &given.public_key).map_err(|e| match e {
                        UpstreamError::BadKey { .. } => invalid("public-key", e.to_string()),
                        _ => invalid("url", e.to_string()),
                    })?;
                let caches = given
                    .caches
                    .iter()
                    .map(|p| p.parse().map_err(|e| invalid("caches", format!("{e}"))))
                    .collect::<Result<_, _>>()?;
                Ok(ServerUpstream { upstream, caches })
            })
            .collect()
    }
}

/// The upstreams `cache` asks, in order: its own, then the server's that
/// serve it.
pub fn upstreams_of<'a>(
    own: &'a [Upstream],
    server: &'a [ServerUpstream],
    cache: &CacheName,
) -> Vec<&'a Upstream> {
    own.iter()
        .chain(
            server
                .iter()
                .filter(|s| s.caches.iter().any(|p| p.matches(cache)))
                .map(|s| &s.upstream),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "test-1:bR3j9av1ru5m5WjCqemfJlH+N+qGOfOunvH5M2XeZ6Y=";

    #[test]
    fn upstream_urls_lose_their_trailing_slash_and_keep_their_path() {
        let upstream = Upstream::new("https://cache.example.org/team/", KEY).expect("valid");
        assert_eq!(upstream.url(), "https://cache.example.org/team");
        assert_eq!(upstream.to_config().public_key, KEY);
    }

    #[test]
    fn refuses_urls_that_are_no_binary_cache_base() {
        for url in [
            "file:///srv/cache",
            "cache.example.org",
            "https://user:secret@cache.example.org",
            "https://cache.example.org/?x=1",
            "https://cache.example.org/#top",
            "https://cache.example.org/a b",
        ] {
            assert!(
                matches!(Upstream::new(url, KEY), Err(UpstreamError::BadUrl(_))),
                "{url}"
            );
        }
        assert!(matches!(
            Upstream::new("https://cache.example.org", "nokey"),
            Err(UpstreamError::BadKey { .. })
        ));
    }

    #[test]
    fn a_cache_asks_its_own_upstreams_then_the_servers_that_match_it() {
        let own = vec![Upstream::new("http://own.example", KEY).expect("valid")];
        let config: PullThroughConfig = toml::from_str(&format!(
            r#"
            [[upstreams]]
            url = "http://team.example"
            public-key = "{KEY}"
            caches = ["team-*"]
            [[upstreams]]
            url = "http://all.example"
            public-key = "{KEY}"
            "#
        ))
        .expect("parses");
        let server = config.resolve().expect("valid");
        let urls = |name: &str| -> Vec<String> {
            upstreams_of(&own, &server, &name.parse().expect("a name"))
                .into_iter()
                .map(|u| u.url().to_owned())
                .collect()
        };
        assert_eq!(
            urls("team-a"),
            [
                "http://own.example",
                "http://team.example",
                "http://all.example"
            ]
        );
        assert_eq!(urls("other"), ["http://own.example", "http://all.example"]);
    }

    #[test]
    fn a_bad_server_upstream_names_its_key() {
        let config: PullThroughConfig = toml::from_str(&format!(
            r#"
            [[upstreams]]
            url = "http://all.example"
            public-key = "{KEY}"
            caches = ["bad pattern"]
            "#
        ))
        .expect("parses");
        let error = config.resolve().expect_err("a bad pattern").to_string();
        assert!(
            error.contains("pull-through.upstreams[0].caches"),
            "{error}"
        );
    }
}
