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

/// After a failed fetch, how long exchanges fail at once rather than
/// fetch again: an issuer that is down is not sent a request per exchange.
pub const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(5);

/// How long keys are still used, past [`KEYS_TTL`], when the issuer cannot
/// be reached to refresh them: an issuer's short outage does not stop CI.
pub const MAX_STALE: Duration = Duration::from_secs(60 * 60);

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
    /// A fetch failed less than [`FAILED_FETCH_BACKOFF`] ago.
    #[error("fetching the issuer's keys failed moments ago; not trying again yet")]
    BackingOff,
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
    failed_at: Option<Instant>,
}

impl Held {
    /// The keys held, if one is `kid` and they are within [`MAX_STALE`].
    fn usable_stale(&self, kid: &str, now: Instant) -> Option<Arc<Vec<Jwk>>> {
        let recent = self
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < MAX_STALE);
        (recent && self.keys.iter().any(|key| key.kid() == Some(kid))).then(|| self.keys.clone())
    }
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
        if held
            .failed_at
            .is_some_and(|at| now.duration_since(at) < FAILED_FETCH_BACKOFF)
        {
            return held.usable_stale(kid, now).ok_or(KeyFetchError::BackingOff);
        }
        let keys = match self.fetch().await {
            Ok(keys) => Arc::new(keys),
            Err(e) => {
                held.failed_at = Some(Instant::now());
                if let Some(keys) = held.usable_stale(kid, now) {
                    tracing::warn!(issuer = %self.issuer.issuer, error = %e,
                        "could not refresh the OIDC issuer's keys; using those held");
                    return Ok(keys);
                }
                return Err(e);
            }
        };
        held.failed_at = None;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use attic_token::oidc::mint::IdTokenSigner;
    use axum::Json;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use serde_json::{Value, json};

    use super::*;

    struct Served {
        url: String,
        jwks: std::sync::Mutex<Value>,
        fetches: AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
    }

    async fn discovery(State(s): State<Arc<Served>>) -> Json<Value> {
        Json(json!({"issuer": s.url, "jwks_uri": format!("{}/jwks", s.url)}))
    }

    async fn jwks(State(s): State<Arc<Served>>) -> Result<Json<Value>, StatusCode> {
        s.fetches.fetch_add(1, Ordering::SeqCst);
        if s.failing.load(Ordering::SeqCst) {
            return Err(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Ok(Json(s.jwks.lock().expect("lock").clone()))
    }

    async fn issuer(kids: &[&str]) -> (Arc<Served>, IssuerKeys) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let keys: Vec<Value> = kids
            .iter()
            .map(|k| IdTokenSigner::generate_es256(k).jwk())
            .collect();
        let served = Arc::new(Served {
            url: url.clone(),
            jwks: std::sync::Mutex::new(json!({ "keys": keys })),
            fetches: AtomicUsize::new(0),
            failing: false.into(),
        });
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(served.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = crate::config::OidcIssuer {
            issuer: url,
            audience: "a".into(),
            rules: Vec::new(),
        };
        (
            served,
            IssuerKeys::new(config, http_client().expect("client")),
        )
    }

    #[tokio::test]
    async fn keys_are_held_and_unknown_kids_refetch_at_most_once_per_interval() {
        let (served, keys) = issuer(&["one"]).await;
        keys.keys_for("one").await.expect("fetched");
        keys.keys_for("one").await.expect("held");
        assert_eq!(served.fetches.load(Ordering::SeqCst), 1);
        for kid in ["x", "y", "z"] {
            let held = keys.keys_for(kid).await.expect("the keys held");
            assert!(held.iter().all(|k| k.kid() != Some(kid)));
        }
        assert_eq!(
            served.fetches.load(Ordering::SeqCst),
            2,
            "one refetch for three unknown kids"
        );
    }

    #[tokio::test]
    async fn a_failing_issuer_is_not_asked_again_at_once_and_held_keys_carry_on() {
        let (served, keys) = issuer(&["one"]).await;
        served.failing.store(true, Ordering::SeqCst);
        assert!(keys.keys_for("one").await.is_err());
        assert!(matches!(
            keys.keys_for("one").await,
            Err(KeyFetchError::BackingOff)
        ));
        assert_eq!(served.fetches.load(Ordering::SeqCst), 1);
        // With keys held, an unknown kid's failed refetch fails that
        // exchange alone: the keys held still serve the kids they have.
        let (served, keys) = issuer(&["one"]).await;
        keys.keys_for("one").await.expect("fetched");
        served.failing.store(true, Ordering::SeqCst);
        assert!(keys.keys_for("two").await.is_err());
        keys.keys_for("one").await.expect("held");
        assert_eq!(served.fetches.load(Ordering::SeqCst), 2);
    }
}
