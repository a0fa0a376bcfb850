//! What every request handler shares.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attic::cache::CacheName;
use attic::chunking::FastCdcChunker;
use attic::store_path::StorePathHash;

use crate::access::TokenVerifier;
use crate::config::ServerConfig;
use crate::database::{Cache, CacheId, Database, NarId, NarRecord, ObjectId, now};
use crate::metrics::Metrics;
use crate::pack::read::StoredChunk;
use crate::recent::Recent;
use crate::storage::StorageBackend;

/// How long a replica may serve a cache's settings or a signed narinfo
/// from memory after another replica changed them. Changes made through
/// this process take effect at once.
pub const STALENESS_BOUND: Duration = Duration::from_secs(5);

/// Signed narinfos held in memory, at most.
const NARINFOS_HELD: usize = 16 * 1024;

/// Caches' settings held in memory, at most.
const CACHES_HELD: usize = 1024;

/// NARs whose chunk lists are held in memory, at most.
const CHUNK_LISTS_HELD: usize = 1024;

/// Longest chunk list held in memory (a 16 MiB NAR at the default chunk
/// size), so the lists held stay within a few tens of MiB.
pub const CHUNK_LIST_HELD_MAX: usize = 256;

/// A path as the read path serves it: its signed narinfo, ready to send,
/// and the rows behind it.
#[derive(Debug, Clone)]
pub struct SignedNarinfo {
    /// The narinfo text.
    pub text: bytes::Bytes,
    /// Unix second from which `text` carries a signature its cache's keys
    /// no longer make (a key rotation's overlap ended); `None` while the
    /// keys stay as they are. A rotation itself drops what is held.
    pub signed_until: Option<i64>,
    /// The object's row, for the access log.
    pub object_id: ObjectId,
    /// The NAR's row, for a NAR request that follows.
    pub nar: Arc<NarRecord>,
}

impl SignedNarinfo {
    /// Whether the text may still be served at `now` (Unix seconds): not
    /// once the overlap it was signed in has ended, though the memo would
    /// hold it a little longer.
    pub fn is_signed_for(&self, now: i64) -> bool {
        self.signed_until.is_none_or(|until| now < until)
    }
}

/// What the read path keeps in memory so that a hot narinfo costs no
/// database round trip and no signature: bounded, and dropped on any write
/// through this process to the path or its cache (or on damage), and after
/// [`STALENESS_BOUND`] in any case.
#[derive(Debug)]
pub struct ReadCache {
    /// Live caches by name.
    pub caches: Recent<CacheName, Arc<Cache>>,
    /// Signed narinfos by (cache id, store path hash).
    pub narinfos: Recent<(CacheId, StorePathHash), SignedNarinfo>,
    /// Object ids and NARs by (cache id, store path hash), for NAR
    /// requests without a narinfo request just before.
    pub path_nars: Recent<(CacheId, StorePathHash), (ObjectId, Arc<NarRecord>)>,
    /// Chunk lists of small NARs by NAR id.
    pub chunk_lists: Recent<NarId, Arc<Vec<StoredChunk>>>,
}

impl Default for ReadCache {
    fn default() -> Self {
        Self {
            caches: Recent::new(CACHES_HELD, STALENESS_BOUND),
            narinfos: Recent::new(NARINFOS_HELD, STALENESS_BOUND),
            path_nars: Recent::new(NARINFOS_HELD, STALENESS_BOUND),
            chunk_lists: Recent::new(CHUNK_LISTS_HELD, STALENESS_BOUND),
        }
    }
}

impl ReadCache {
    /// Forgets what is held of a cache, after its settings changed or it
    /// was destroyed.
    pub fn forget_cache(&self, name: &CacheName, cache_id: CacheId) {
        self.caches.remove(name);
        self.narinfos.remove_where(|(id, _)| *id == cache_id);
        self.path_nars.remove_where(|(id, _)| *id == cache_id);
    }

    /// Forgets what is held of a path, after an upload to it.
    pub fn forget_path(&self, cache_id: CacheId, store_path_hash: &StorePathHash) {
        let key = (cache_id, store_path_hash.clone());
        self.narinfos.remove(&key);
        self.path_nars.remove(&key);
    }

    /// Forgets every path and chunk list, after damage was found: which
    /// paths hold the damaged chunks is not known here, and damage is rare.
    pub fn forget_paths(&self) {
        self.narinfos.clear();
        self.path_nars.clear();
        self.chunk_lists.clear();
    }
}

/// The shared state, behind `State<Arc<AppState>>`.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: ServerConfig,
    /// Metadata.
    pub database: Database,
    /// Blobs.
    pub storage: Arc<dyn StorageBackend>,
    /// Verifies tokens: biscuit and Attic's JWTs.
    pub tokens: TokenVerifier,
    /// Cuts uploads into chunks.
    pub chunker: FastCdcChunker,
    /// Reads not yet written to `last_accessed_at`.
    pub access_log: AccessLog,
    /// Counters served at `/metrics`.
    pub metrics: Metrics,
    /// Hot reads, held in memory.
    pub read_cache: ReadCache,
    /// Exchanges CI jobs' ID tokens for ours (`[oidc]`).
    pub oidc: crate::oidc::OidcExchanger,
    /// What each cache holds, as the landing page shows it.
    pub cache_stats: crate::cache_stats::CacheStatsMemo,
    /// Upstreams asked on a narinfo miss, and what is in flight.
    pub pull_through: crate::pull_through::PullThrough,
}

/// Object reads, gathered in memory and written in batches so that serving a
/// narinfo never waits on a database write. Losing a batch in a crash only
/// makes some paths look older to GC's retention, never breaks anything.
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: Mutex<HashSet<ObjectId>>,
}

impl AccessLog {
    /// Notes that an object was read.
    pub fn record(&self, object_id: ObjectId) {
        self.pending
            .lock()
            .expect("access log lock is never poisoned")
            .insert(object_id);
    }

    /// Writes what was gathered.
    pub async fn flush(&self, database: &Database) {
        let ids: Vec<ObjectId> = std::mem::take(
            &mut *self
                .pending
                .lock()
                .expect("access log lock is never poisoned"),
        )
        .into_iter()
        .collect();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = database.touch_objects(&ids, now()).await {
            tracing::warn!(error = %e, "could not record {} object reads", ids.len());
        }
    }
}

/// How often a server writes the reads it gathered: often enough that a
/// collector, in this process or another, sees every read made before it
/// began once it has waited this long (and `last_accessed_at` counts whole
/// seconds, so a read is never older than this when it lands); seldom
/// enough that serving stays free of per-request writes.
pub const ACCESS_LOG_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Flushes the access log every `period` for as long as the state lives.
pub fn spawn_access_log_flusher(state: Arc<AppState>, period: Duration) {
    let weak = Arc::downgrade(&state);
    drop(state);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let Some(state) = weak.upgrade() else { break };
            state.access_log.flush(&state.database).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(signed_until: Option<i64>) -> SignedNarinfo {
        SignedNarinfo {
            text: bytes::Bytes::from_static(b"StorePath: x\n"),
            signed_until,
            object_id: ObjectId::new(1),
            nar: Arc::new(NarRecord {
                id: NarId::new(1),
                nar_hash: attic::hash::Sha256Hash::digest(b""),
                nar_size: 0,
                compression: crate::pack::StoredCompression::Zstd,
                file_size: 0,
                state: crate::pack::BlobState::Valid,
                pack_id: None,
            }),
        }
    }

    #[test]
    fn a_narinfo_signed_during_an_overlap_is_not_served_after_it() {
        let during = held(Some(1000));
        assert!(during.is_signed_for(999));
        assert!(!during.is_signed_for(1000));
        assert!(held(None).is_signed_for(i64::MAX));
    }
}
