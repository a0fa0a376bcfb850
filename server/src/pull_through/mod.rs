//! Pull-through: a narinfo a cache misses is asked of its upstream caches
//! in priority order; the first that has it, signed by the key configured
//! for it, has its NAR fetched and stored through the same ingest as any
//! upload (decompressed within the upload path's bounds, verified against
//! the signed `NarHash` and `NarSize`, chunked, deduplicated, counted
//! against the cache's quota), and the path is then served like any
//! other, signed with the cache's own key. A NAR that does not verify is
//! stored nowhere.
//!
//! The first clients do not wait for the whole NAR: once the upstream's
//! narinfo verifies they are answered a narinfo of their own
//! ([`streaming_narinfo`]: the upstream's signed hash and size, signed
//! with the cache's key, the NAR uncompressed) and are sent its bytes as
//! they arrive ([`tee`]) at the upstream's pace ([`read_ahead`]), ended
//! abnormally unless it verifies; the ingest stores it meanwhile. Clients
//! that ask once the bytes flow are replayed the start. Many clients asking for one path at once cause one fetch
//! ([`in_flight`]); a path no upstream gave is a miss for a while
//! ([`negative`]). Every failure is a miss, logged with its reason, never
//! an error to the client.

pub mod config;
pub mod in_flight;
pub mod negative;
pub mod read_ahead;
pub mod tee;
pub mod upstream;

use std::sync::Arc;

use attic::api::v1::upload_path::UploadPathNarInfo;
use attic::narinfo::NarInfo;
use attic::store_path::{StorePath, StorePathHash};
use tokio::sync::watch;

pub use config::{
    PullThroughConfig, ServerUpstream, ServerUpstreamConfig, Upstream,
    UpstreamError as BadUpstream, upstreams_of,
};
use in_flight::{InFlight, Progress, Stage, Streaming};
use negative::NegativeCache;
use read_ahead::read_ahead;
use upstream::{UpstreamClient, UpstreamError};

use crate::compressed::{DecodedBody, DecodedSize};
use crate::config::ConfigError;
use crate::database::{Actor, AuditAction, AuditEvent, Cache, CacheId, NewObject};
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
    in_flight: InFlight<(CacheId, StorePathHash)>,
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
            in_flight: InFlight::default(),
            misses: NegativeCache::new(config.negative_ttl),
        })
    }

    /// Forgets what was a miss in a cache, after its upstreams changed.
    pub fn forget_cache(&self, cache: CacheId) {
        self.misses.forget_cache(cache);
    }
}

/// What a pull gave a narinfo request.
#[derive(Debug)]
pub enum Pulled {
    /// The path is stored: serve it as any other.
    Stored,
    /// The path's NAR is on its way: answer [`streaming_narinfo`].
    Streaming(Arc<Streaming>),
    /// No upstream gave it.
    Missed,
}

/// Tries to bring `hash` into `cache` from its upstreams, on behalf of a
/// caller allowed to pull from it (`subject` names it in the audit log).
/// Answers as soon as an upstream's narinfo verified, while its NAR is
/// still on its way; every failure is logged and [`Pulled::Missed`].
pub async fn pull(
    state: &Arc<AppState>,
    cache: &Cache,
    hash: &StorePathHash,
    subject: Option<String>,
) -> Pulled {
    let pull_through = &state.pull_through;
    let upstreams = upstreams_of(
        &cache.upstreams,
        &pull_through.server_upstreams,
        &cache.name,
    );
    if upstreams.is_empty() || pull_through.misses.is_miss(cache.id, hash) {
        return Pulled::Missed;
    }
    let upstreams: Vec<Upstream> = upstreams.into_iter().cloned().collect();
    let work = |progress: Progress| {
        let (state, cache, hash) = (Arc::clone(state), cache.clone(), hash.clone());
        async move {
            let mut outcome = "not_found";
            for upstream in &upstreams {
                let pulled = pull_from(&state, &cache, upstream, &hash, subject.clone(), &progress);
                match pulled.await {
                    Ok(()) => {
                        Metrics::count(&state.metrics.pull_through, "pulled");
                        return true;
                    }
                    Err(PullError::Upstream(UpstreamError::NotFound))
                        if !progress.has_streamed() => {}
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
                // Clients were given this upstream's narinfo: another's
                // NAR would not match it.
                if progress.has_streamed() {
                    break;
                }
            }
            Metrics::count(&state.metrics.pull_through, outcome);
            state.pull_through.misses.record(cache.id, &hash);
            false
        }
    };
    let stages = pull_through
        .in_flight
        .start_or_join((cache.id, hash.clone()), work);
    match in_flight::answered(stages).await {
        Stage::Streaming(streaming) => Pulled::Streaming(streaming),
        Stage::Done(true) => Pulled::Stored,
        Stage::Done(false) | Stage::Asking => Pulled::Missed,
    }
}

/// The stages of the pull of `hash` into `cache`, if one is running.
pub fn in_flight(
    state: &AppState,
    cache: CacheId,
    hash: &StorePathHash,
) -> Option<watch::Receiver<Stage>> {
    state.pull_through.in_flight.find(&(cache, hash.clone()))
}

/// The narinfo a client is answered while the NAR of `upstream` (a
/// verified narinfo) is on its way: the upstream's signed path, hash,
/// size and references, signed with the cache's keys as they sign at
/// `now`, naming the NAR uncompressed (`nar/{hash}.nar`), the one form
/// served as it arrives, and for good once stored.
pub fn streaming_narinfo(cache: &Cache, upstream: &NarInfo, now: i64) -> NarInfo {
    let mut narinfo = upstream.clone();
    narinfo.url = format!("nar/{}.nar", upstream.store_path.hash().as_str());
    narinfo.compression = Some("none".to_owned());
    narinfo.file_hash = None;
    narinfo.file_size = None;
    narinfo.extra_fields = Vec::new();
    cache.drop_previous_key_signatures(&mut narinfo.sigs);
    for key in cache.signing_keys(now) {
        narinfo.sign(key);
    }
    narinfo
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
/// through the upload path's checks, teed to the clients waiting for it.
async fn pull_from(
    state: &Arc<AppState>,
    cache: &Cache,
    upstream: &Upstream,
    hash: &StorePathHash,
    subject: Option<String>,
    progress: &Progress,
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
    Uploads::new(state)
        .check_pins_fit(cache)
        .await
        .map_err(refused)?;
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
    let streaming = Arc::new(Streaming {
        narinfo,
        tee: Arc::default(),
    });
    progress.streaming(Arc::clone(&streaming));
    // The client that asked for the narinfo asks for the NAR next: wait
    // for it (within the upstream timeout), so it is sent every byte.
    streaming
        .tee
        .wait_for_a_client(state.pull_through.client.timeout())
        .await;
    // The tee's clients hear whether the NAR verified as soon as it is
    // read, and whether it is stored once the pull is over
    // ([`InFlight::start_or_join`]).
    store_from(state, upstream, &streaming, object).await
}

/// Fetches the NAR of a verified narinfo through `streaming`'s tee and
/// stores it in the cache as `object`.
async fn store_from(
    state: &Arc<AppState>,
    upstream: &Upstream,
    streaming: &Streaming,
    object: NewObject,
) -> Result<(), PullError> {
    let refused = PullError::Refused;
    let narinfo = &streaming.narinfo;
    let uploads = Uploads::new(state);
    let (body, compression) = state.pull_through.client.nar(upstream, narinfo).await?;
    // Room for a NAR that compresses badly; the decoded bytes are bounded
    // by the signed NarSize. The upstream's FileHash goes unchecked: no
    // signature covers it, the signed NarHash vouches for the content, and
    // hashing the compressed bytes too would cost the first clients time.
    let limit = narinfo.nar_size.saturating_mul(2).saturating_add(1 << 20);
    let body = DecodedBody::new(body, compression, limit, None, DecodedSize::Declared);
    let declared = Declared {
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
    };
    // Read at the upstream's pace for the tee's clients, who are answered
    // once it verifies; stored at the ingest's.
    let body = read_ahead(body, declared, Arc::clone(&streaming.tee));
    // As for uploads: a NAR the store holds is attached only once its
    // content came in full and verified, so an upstream that a tenant
    // controls cannot name another tenant's NAR into its cache. Clients
    // of the tee need the whole NAR anyway.
    if let Some(existing) = state
        .database
        .find_nar(&narinfo.nar_hash)
        .await
        .map_err(|e| refused(e.into()))?
    {
        let listing = (uploads
            .prove_possession(&existing, body, Expect::Vouched(declared))
            .await)
            .map_err(refused)?;
        return uploads
            .attach_existing(&existing, object, listing)
            .await
            .map_err(refused);
    }
    let stored = ingest::store_nar(state, body, Expect::Vouched(declared))
        .await
        .map_err(refused)?;
    uploads.commit_path(stored, object).await.map_err(refused)?;
    Ok(())
}
