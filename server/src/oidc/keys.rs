//! An issuer's signing keys, fetched from its discovery document's
//! `jwks_uri` and held in memory: refetched when older than [`KEYS_TTL`],
//! or when a token names a `kid` not held (the issuer rotated its key),
//! but for unknown kids at most once per [`UNKNOWN_KID_REFETCH_INTERVAL`],
//! so that a flood of tokens with made-up kids costs the issuer one
//! request, not one each. Concurrent requests wait for one fetch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attic_token::oidc::{Jwk, JwkSetError, parse_jwk_set};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::Mutex;

use crate::config::OidcIssuer;

/// How long fetched keys are trusted before they are fetched again.
pub const KEYS_TTL: Duration = Duration::from_secs(10 * 60);

/// Least time between two refetches caused by tokens naming unknown kids.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Longest a discovery or JWKS request may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest discovery document or JWKS read; real ones are a few KiB.
pub const MAX_DOCUMENT_SIZE: usize = 64 * 1024;

/// Why an issuer's keys could not be had.
#[derive(Debug, Error)]
pub enum KeyFetchError {
    /// The request failed: unreachable, timed out, TLS.
    #[error("fetching {url} failed")]
    Request {
        /// What was fetched.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The issuer answered other than 200.
    #[error("{url} answered {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The document is over [`MAX_DOCUMENT_SIZE`].
    #[error("{url} is larger than {MAX_DOCUMENT_SIZE} bytes")]
    TooLarge {
        /// What was fetched.
        url: String,
    },
    /// The discovery document is not JSON with `issuer` and `jwks_uri`.
    #[error("the discovery document at {url} is malformed")]
    BadDiscovery {
        /// What was fetched.
        url: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The discovery document names another issuer (OpenID Connect
    /// Discovery 4.3 requires it to be the one asked).
    #[error("the discovery document names issuer {found:?}, not {expected:?}")]
    IssuerMismatch {
        /// What it names.
        found: String,
        /// What was configured.
        expected: String,
    },
    /// `jwks_uri` is not https (or http on loopback).
    #[error("the discovery document's jwks_uri is unusable: {0}")]
    BadJwksUri(String),
    /// The JWKS does not parse.
    #[error("the JWKS at {url} is unusable")]
    BadJwks {
        /// What was fetched.
        url: String,
        /// Why.
        #[source]
        source: JwkSetError,
    },
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// One issuer's keys, as last fetched.
#[derive(Debug)]
pub struct IssuerKeys {
    /// The issuer, checked.
    pub issuer: OidcIssuer,
    http: reqwest::Client,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    keys: Arc<Vec<Jwk>>,
    fetched_at: Option<Instant>,
    unknown_kid_refetch_at: Option<Instant>,
}

impl IssuerKeys {
    /// Keys for `issuer`, fetched on first use with `http`.
    pub fn new(issuer: OidcIssuer, http: reqwest::Client) -> Self {
        Self {
            issuer,
            http,
            held: Mutex::new(Held::default()),
        }
    }

    /// The keys to verify a token signed by `kid` with: those held if
    /// fresh and one of them is `kid`; else freshly fetched, within the
    /// rate limit on unknown kids (past it, those held, which then lack
    /// `kid` and refuse the token).
    pub async fn keys_for(&self, kid: &str) -> Result<Arc<Vec<Jwk>>, KeyFetchError> {
        let mut held = self.held.lock().await;
        let now = Instant::now();
        let fresh = held
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < KEYS_TTL);
        if fresh {
            if held.keys.iter().any(|key| key.kid() == Some(kid)) {
                return Ok(held.keys.clone());
            }
            let may_refetch = held
                .unknown_kid_refetch_at
                .is_none_or(|at| now.duration_since(at) >= UNKNOWN_KID_REFETCH_INTERVAL);
            if !may_refetch {
                return Ok(held.keys.clone());
            }
            held.unknown_kid_refetch_at = Some(now);
        }
        let keys = Arc::new(self.fetch().await?);
        tracing::info!(
            issuer = %self.issuer.issuer,
            kids = ?keys.iter().map(|k| k.kid().unwrap_or("-").to_owned()).collect::<Vec<_>>(),
            "fetched the OIDC issuer's keys"
        );
        held.keys = keys.clone();
        held.fetched_at = Some(Instant::now());
        Ok(keys)
    }

    async fn fetch(&self) -> Result<Vec<Jwk>, KeyFetchError> {
        let url = self.issuer.discovery_url();
        let discovery: Discovery = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|source| KeyFetchError::BadDiscovery { url, source })?;
        if discovery.issuer != self.issuer.issuer {
            return Err(KeyFetchError::IssuerMismatch {
                found: discovery.issuer,
                expected: self.issuer.issuer.clone(),
            });
        }
        crate::config::oidc::check_issuer_url(&discovery.jwks_uri)
            .map_err(KeyFetchError::BadJwksUri)?;
        let url = discovery.jwks_uri;
        parse_jwk_set(&self.get(&url).await?)
            .map_err(|source| KeyFetchError::BadJwks { url, source })
    }

    /// The body at `url`, at most [`MAX_DOCUMENT_SIZE`] bytes of it.
    async fn get(&self, url: &str) -> Result<Vec<u8>, KeyFetchError> {
        let request_error = |source| KeyFetchError::Request {
            url: url.to_owned(),
            source,
        };
        let mut response = self.http.get(url).send().await.map_err(request_error)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(KeyFetchError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_SIZE {
                return Err(KeyFetchError::TooLarge {
                    url: url.to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The HTTP client issuers are fetched with: time-limited, and never
/// following redirects (a discovery document or JWKS that moved is a
/// configuration to fix, not something to chase).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("atticd/", env!("CARGO_PKG_VERSION")))
        .build()
}
