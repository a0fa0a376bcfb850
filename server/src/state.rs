//! What every request handler shares.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attic::chunking::FastCdcChunker;
use attic_token::RootPublicKey;

use crate::config::ServerConfig;
use crate::database::{Database, now};
use crate::metrics::Metrics;
use crate::storage::StorageBackend;

/// The shared state, behind `State<Arc<AppState>>`.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: ServerConfig,
    /// Metadata.
    pub database: Database,
    /// Blobs.
    pub storage: Arc<dyn StorageBackend>,
    /// Verifies tokens.
    pub token_key: RootPublicKey,
    /// Cuts uploads into chunks.
    pub chunker: FastCdcChunker,
    /// Reads not yet written to `last_accessed_at`.
    pub access_log: AccessLog,
    /// Counters served at `/metrics`.
    pub metrics: Metrics,
}

/// Object reads, gathered in memory and written in batches so that serving a
/// narinfo never waits on a database write. Losing a batch in a crash only
/// makes some paths look older to GC's retention, never breaks anything.
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: Mutex<HashSet<i64>>,
}

impl AccessLog {
    /// Notes that an object was read.
    pub fn record(&self, object_id: i64) {
        self.pending
            .lock()
            .expect("access log lock is never poisoned")
            .insert(object_id);
    }

    /// Writes what was gathered.
    pub async fn flush(&self, database: &Database) {
        let ids: Vec<i64> = std::mem::take(
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
