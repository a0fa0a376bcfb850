//! Pull-through: a narinfo a cache misses is asked of its upstream caches
//! in priority order; the first that has it, signed by the key configured
//! for it, has its NAR fetched and stored through the same ingest as any
//! upload (decompressed within the upload path's bounds, verified against
//! the signed `NarHash` and `NarSize`, chunked, deduplicated, counted
//! against the cache's quota), and the path is then served like any
//! other, signed with the cache's own key. A NAR that does not verify is
//! stored nowhere.
//!
//! The path is stored first and served after ("ingest then serve"): the
//! first client waits for the whole NAR to arrive. Many clients asking for
//! one path at once cause one fetch ([`single_flight`]); a path no
//! upstream gave is a miss for a while ([`negative`]). Every failure is a
//! miss, logged with its reason, never an error to the client.

pub mod config;
pub mod negative;
pub mod single_flight;
pub mod upstream;

use std::sync::Arc;

use attic::api::v1::upload_path::UploadPathNarInfo;
use attic::store_path::{StorePath, StorePathHash};

pub use config::{
    PullThroughConfig, ServerUpstream, ServerUpstreamConfig, Upstream,
    UpstreamError as BadUpstream, upstreams_of,
};
use negative::NegativeCache;
use single_flight::SingleFlight;
use upstream::{UpstreamClient, UpstreamError};

use crate::compressed::{DecodedBody, DecodedSize};
use crate::config::ConfigError;
use crate::database::{Actor, AuditAction, AuditEvent, Cache, CacheId};
use crate::error::ServerError;
use crate::ingest::{self, Declared, Expect};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::uploads::{Uploads, new_object};

/// What pull-through keeps between requests.
#[derive(Debug)]
pub struct PullThrough {
    client: UpstreamClient,
    server_upstreams: Vec<ServerUpstream>,
    in_flight: SingleFlight<(CacheId, StorePathHash), bool>,
    misses: NegativeCache,
}

/// Why a path was not taken from an upstream that was asked.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the NAR was refused: {0}")]
    Refused(#[source] ServerError),
}

impl PullThrough {
    /// Pull-through as `[pull-through]` configures it.
    pub fn new(config: &PullThroughConfig) -> Result<Self, ConfigError> {
        let client = UpstreamClient::new(config.timeout).map_err(|e| ConfigError::Invalid {
            key: "pull-through",
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(Self {
            client,
            server_upstreams: config.resolve()?,
            in_flight: SingleFlight::default(),
            misses: NegativeCache::new(config.negative_ttl),
        })
    }

    /// Forgets what was a miss in a cache, after its upstreams changed.
    pub fn forget_cache(&self, cache: CacheId) {
        self.misses.forget_cache(cache);
    }
}

/// Tries to bring `hash` into `cache` from its upstreams, on behalf of a
/// caller allowed to pull from it (`subject` names it in the audit log).
/// Whether the path is now stored; every failure is logged and `false`.
pub async fn pull(
    state: &Arc<AppState>,
    cache: &Cache,
    hash: &StorePathHash,
    subject: Option<String>,
) -> bool {
    let pull_through = &state.pull_through;
    let upstreams = upstreams_of(
        &cache.upstreams,
        &pull_through.server_upstreams,
        &cache.name,
    );
    if upstreams.is_empty() || pull_through.misses.is_miss(cache.id, hash) {
        return false;
    }
    let upstreams: Vec<Upstream> = upstreams.into_iter().cloned().collect();
    let work = {
        let (state, cache, hash) = (Arc::clone(state), cache.clone(), hash.clone());
        async move {
            let mut outcome = "not_found";
            for upstream in &upstreams {
                match pull_from(&state, &cache, upstream, &hash, subject.clone()).await {
                    Ok(()) => {
                        Metrics::count(&state.metrics.pull_through, "pulled");
                        return true;
                    }
                    Err(PullError::Upstream(UpstreamError::NotFound)) => {}
                    Err(e) => {
                        outcome = "failed";
                        tracing::warn!(
                            cache = %cache.name,
                            path = %hash.as_str(),
                            upstream = upstream.url(),
                            reason = %error_chain(&e),
                            "pull-through: not taking the path from this upstream"
                        );
                    }
                }
            }
            Metrics::count(&state.metrics.pull_through, outcome);
            state.pull_through.misses.record(cache.id, &hash);
            false
        }
    };
    pull_through
        .in_flight
        .run((cache.id, hash.clone()), work)
        .await
        .unwrap_or(false)
}

/// An error and its sources, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Takes the path from one upstream: its signed narinfo, then its NAR
/// through the upload path's checks.
async fn pull_from(
    state: &Arc<AppState>,
    cache: &Cache,
    upstream: &Upstream,
    hash: &StorePathHash,
    subject: Option<String>,
) -> Result<(), PullError> {
    let client = &state.pull_through.client;
    let narinfo = client
        .narinfo(upstream, hash, &cache.store_dir)
        .await?
        .narinfo;
    let refused = PullError::Refused;
    if narinfo.nar_size > state.config.max_nar_size {
        return Err(refused(ServerError::TooLarge(format!(
            "the NAR is {} bytes; this server accepts at most {}",
            narinfo.nar_size, state.config.max_nar_size
        ))));
    }
    let uploads = Uploads::new(state);
    uploads.check_pins_fit(cache).await.map_err(refused)?;
    let full = |path: &StorePath| narinfo.store_dir.display(path);
    let info = UploadPathNarInfo {
        cache: cache.name.clone(),
        store_path_hash: hash.clone(),
        store_path: narinfo.full_store_path(),
        references: narinfo.references.iter().map(full).collect(),
        system: narinfo.system.clone(),
        deriver: narinfo.deriver.as_ref().map(full),
        sigs: narinfo.sigs.clone(),
        ca: narinfo.ca.clone(),
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
    };
    let mut object = new_object(&info, cache, subject.clone()).map_err(refused)?;
    object.audit = Some(
        AuditEvent::new(AuditAction::PullThrough, Actor::Token(subject))
            .on_cache(cache)
            .on_path(info.store_path.clone())
            .with_detail(format!("from {}", upstream.url())),
    );
    let (body, compression) = client.nar(upstream, &narinfo).await?;
    // Room for a NAR that compresses badly; the decoded bytes are bounded
    // by the signed NarSize.
    let limit = narinfo.nar_size.saturating_mul(2).saturating_add(1 << 20);
    let body = DecodedBody::new(
        body,
        compression,
        limit,
        narinfo.file_hash,
        DecodedSize::Declared,
    );
    let declared = Declared {
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
    };
    // As for uploads: a NAR the store holds is attached only once its
    // content came in full and verified, so an upstream that a tenant
    // controls cannot name another tenant's NAR into its cache.
    if let Some(existing) = state
        .database
        .find_nar(&narinfo.nar_hash)
        .await
        .map_err(|e| refused(e.into()))?
    {
        if state.config.require_proof_of_possession {
            ingest::verify_only(body, declared).await.map_err(refused)?;
        }
        return uploads
            .attach_existing(&existing, object)
            .await
            .map_err(refused);
    }
    let stored = ingest::store_nar(state, body, Expect::Declared(declared))
        .await
        .map_err(refused)?;
    uploads.commit_path(stored, object).await.map_err(refused)?;
    Ok(())
}
