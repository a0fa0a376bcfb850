//! Garbage collection: keeps storage bounded without ever losing a path
//! someone can still see, or racing an upload.
//!
//! One run, holding the database lease so one collector runs at a time
//! across replicas, goes through stages, each of which a crash at any
//! point leaves for the next run to finish:
//!
//! 1. objects past their cache's retention (from last access), unless a
//!    path kept references them;
//! 2. over-quota caches lose their least recently read objects among those
//!    no other path of the cache references;
//! 3. destroyed caches lose their objects, logs and staged uploads;
//! 4. `nix copy` uploads no narinfo claimed within the grace period;
//! 5. NARs no object holds and no upload has staged;
//! 6. chunks no NAR references (an upload about to reuse one finds it gone
//!    at commit, and is retried: the commit re-checks every chunk);
//! 7. packs with no chunk left are marked `deleting`;
//! 8. packs mostly dead are compacted: live chunks recompressed into a
//!    new pack, rows repointed, the old pack marked `deleting`;
//! 9. packs marked `deleting` for longer than the grace period (so reads
//!    in flight finish) lose their blob, then their row;
//! 10. blobs no row knows of, and temporary files, older than the grace
//!     period (left by uploads that died) are swept.
//!
//! Every stage works in pages, so memory does not grow with the store
//! (quota eviction also holds the paths below one page of roots, at most
//! 20,000, to order them).
//!
//! One run takes everything as far as it can go: paths, the NARs and chunks
//! only they used, and the packs left empty are all reclaimed by the same
//! run; only the blobs of marked packs wait for the grace period, and the
//! report says how many bytes wait and from when they can go.
//!
//! Paths leave a cache from the roots of its reference graph (paths no
//! other path of the cache references), so every path left in a cache
//! keeps its whole closure there and Nix can substitute it.
//!
//! Reads reach `last_accessed_at` in batches, once every
//! [`ACCESS_LOG_FLUSH_INTERVAL`] in every server. Before its first
//! retention or quota decision a run waits out one such interval (and a
//! second for the write itself), so every read made before the run began
//! counts, whichever process collects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use thiserror::Error;

use crate::config::GcConfig;
use crate::database::{
    CacheId, CompactionRule, Database, DatabaseError, EvictableObject, LruObject, MovedChunk,
    ObjectId, Removal, RemovedPaths, now,
};
use crate::pack::read::{ReadError, read_run, runs};
use crate::pack::write::PackWriter;
use crate::pack::{PackId, StoredChecksum, StoredCompression};
use crate::state::ACCESS_LOG_FLUSH_INTERVAL;
use crate::storage::{StorageBackend, StorageError};

/// Rows per page.
const PAGE: u64 = 1000;

/// What a stored blob is, so the orphan sweep asks the right table.
#[derive(Debug, Clone, Copy)]
enum BlobKind {
    Pack,
    Log,
}

/// How long the lease lasts without renewal; each page renews it.
const LEASE_SECS: i64 = 600;

/// Why a run failed.
#[derive(Debug, Error)]
pub enum GcError {
    /// Another collector holds the lease.
    #[error("another garbage collector is running (it holds the lease in the database)")]
    Busy,
    /// The database failed, or holds a row the collector cannot read.
    #[error("database error")]
    Database(#[from] DatabaseError),
    /// Storage failed.
    #[error("storage error")]
    Storage(#[from] StorageError),
    /// A chunk could not be recompressed.
    #[error("recompressing a chunk failed")]
    Recompress(#[source] std::io::Error),
}

mod reclaim;
mod report;
mod retention;
#[cfg(test)]
mod tests;

pub use report::{GcReport, format_time};

/// Runs a collection for a server: flushes pending access times first (so
/// paths read lately are seen as read), counts the run in the metrics and
/// logs what it reclaimed.
pub async fn collect(state: &crate::state::AppState) -> Result<GcReport, GcError> {
    state.access_log.flush(&state.database).await;
    let config = state.config.garbage_collection;
    let result = Collector::new(&state.database, state.storage.clone(), &config, &Quiet)
        .run()
        .await;
    let metrics = &state.metrics;
    match &result {
        Ok(report) => {
            crate::metrics::Metrics::count(&metrics.gc_runs, "ok");
            for (kind, count) in report.counts() {
                if count > 0 {
                    metrics
                        .gc_reclaimed
                        .get_or_create(&crate::metrics::Outcome { outcome: kind })
                        .inc_by(count);
                }
            }
            metrics
                .gc_freed_bytes
                .inc_by(u64::try_from(report.bytes_freed).unwrap_or(0));
            tracing::info!(%report, "garbage collection finished");
        }
        Err(GcError::Busy) => {
            crate::metrics::Metrics::count(&metrics.gc_runs, "busy");
            tracing::info!("garbage collection skipped: another collector holds the lease");
        }
        Err(e) => {
            crate::metrics::Metrics::count(&metrics.gc_runs, "failed");
            tracing::error!(error = %attic::error::format_chain(e), "garbage collection failed");
        }
    }
    result
}

/// Collects every `interval` for as long as `state` lives (the first run
/// one interval after start). A zero interval never collects.
pub fn spawn_periodic(state: std::sync::Arc<crate::state::AppState>) {
    let interval = state.config.garbage_collection.interval;
    if interval.is_zero() {
        return;
    }
    let weak = std::sync::Arc::downgrade(&state);
    drop(state);
    tokio::spawn(async move {
        let mut wait = interval;
        loop {
            tokio::time::sleep(wait).await;
            let Some(state) = weak.upgrade() else { break };
            wait = next_run_after(&collect(&state).await, interval);
        }
    });
}

/// How long after a run the next one starts: a whole `interval` after one
/// that finished; sooner after one skipped (another collector held the
/// lease, perhaps a dead one's, which lapses) or failed (the database or
/// storage was away), so a restart or an outage does not cost an interval.
pub fn next_run_after(result: &Result<GcReport, GcError>, interval: Duration) -> Duration {
    const RETRY: Duration = Duration::from_secs(60);
    match result {
        Ok(_) => interval,
        Err(_) => interval.min(RETRY),
    }
}

/// Reports progress: a stage's name as it starts.
pub trait Progress: Sync {
    /// A stage begins.
    fn stage(&self, name: &'static str);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _name: &'static str) {}
}

/// A test hook: with `ATTIC_GC_CRASH_AT=<point>` in the environment, the
/// process aborts at that point, as a crash or SIGKILL would. Only in
/// builds with the `fault-injection` feature, which the end-to-end tests'
/// binaries have and a release `atticd` has not.
#[cfg(feature = "fault-injection")]
fn crash_point(point: &str) {
    if std::env::var("ATTIC_GC_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("ATTIC_GC_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

/// Without the `fault-injection` feature the hook does nothing and
/// compiles away: no environment can make a collector abort.
#[cfg(not(feature = "fault-injection"))]
fn crash_point(_point: &str) {}

/// This machine's name, as the kernel knows it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether a lease holder (`host:pid:start`) ran on this machine, in a
/// process that no longer exists.
fn holder_is_dead_here(holder: &str) -> bool {
    let mut parts = holder.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    host == hostname()
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// One collection.
pub struct Collector<'a> {
    database: &'a Database,
    storage: Arc<dyn StorageBackend>,
    config: &'a GcConfig,
    holder: String,
    progress: &'a dyn Progress,
    report: GcReport,
    /// Whether every read made before the run began is in the database.
    reads_settled: bool,
}

impl<'a> Collector<'a> {
    /// A collection over `database` and `storage` as `config` says.
    pub fn new(
        database: &'a Database,
        storage: Arc<dyn StorageBackend>,
        config: &'a GcConfig,
        progress: &'a dyn Progress,
    ) -> Self {
        let holder = format!("{}:{}:{}", hostname(), std::process::id(), now());
        Self {
            database,
            storage,
            config,
            holder,
            progress,
            report: GcReport::default(),
            reads_settled: false,
        }
    }

    /// Runs every stage once, holding the lease; what was reclaimed.
    pub async fn run(mut self) -> Result<GcReport, GcError> {
        if !self
            .database
            .acquire_gc_lease(&self.holder, LEASE_SECS)
            .await?
        {
            self.take_over_from_the_dead().await?;
        }
        let result = self.stages().await;
        if let Err(e) = self.database.release_gc_lease(&self.holder).await {
            tracing::warn!(error = %e, "could not release the garbage collector's lease");
        }
        result.map(|()| self.report)
    }

    /// When the lease is held by a collector of this machine that died,
    /// takes it over rather than waiting for it to lapse; otherwise `Busy`.
    async fn take_over_from_the_dead(&self) -> Result<(), GcError> {
        let Some(dead) = self
            .database
            .gc_lease_holder()
            .await?
            .filter(|holder| holder_is_dead_here(holder))
        else {
            return Err(GcError::Busy);
        };
        if !self
            .database
            .take_over_gc_lease(&dead, &self.holder, LEASE_SECS)
            .await?
        {
            return Err(GcError::Busy);
        }
        tracing::warn!(dead, "took over the lease of a garbage collector that died");
        Ok(())
    }

    async fn renew(&self) -> Result<(), GcError> {
        if self
            .database
            .acquire_gc_lease(&self.holder, LEASE_SECS)
            .await?
        {
            Ok(())
        } else {
            Err(GcError::Busy)
        }
    }

    /// Folds the usage rows this run's expiry, evictions and compaction
    /// added to each cache (see [`crate::database::Database::cache_usage`]).
    async fn fold_usage(&mut self) -> Result<(), GcError> {
        for cache in self.database.live_caches().await? {
            self.database.fold_usage_if_many(cache.id).await?;
        }
        Ok(())
    }

    async fn stages(&mut self) -> Result<(), GcError> {
        let start = now();
        let grace_cutoff = start - secs(self.config.grace_period);
        self.progress.stage("expiring paths past retention");
        self.expire().await?;
        crash_point("expire");
        self.progress.stage("enforcing quotas");
        self.enforce_quotas().await?;
        crash_point("quota");
        self.progress.stage("reclaiming destroyed caches");
        self.destroyed_caches().await?;
        crash_point("destroyed");
        self.report.staged_expired = self.database.expire_staged(grace_cutoff).await?;
        if !self.config.audit_retention_period.is_zero() {
            let cutoff = start - secs(self.config.audit_retention_period);
            self.report.audit_events_trimmed = self.database.trim_audit(cutoff).await?;
        }
        self.progress.stage("deleting unheld NARs");
        self.nars().await?;
        crash_point("nars");
        self.progress.stage("deleting unreferenced chunks");
        self.chunks().await?;
        crash_point("chunks");
        self.progress.stage("marking empty packs");
        self.mark_packs().await?;
        crash_point("mark-packs");
        self.progress.stage("compacting packs");
        self.compact(grace_cutoff).await?;
        crash_point("compact");
        self.progress.stage("folding usage rows");
        self.fold_usage().await?;
        self.progress.stage("deleting packs");
        self.delete_packs().await?;
        crash_point("delete-packs");
        self.progress.stage("sweeping orphans");
        self.sweep(self.config.grace_period).await?;
        let waiting = self.database.packs_awaiting_deletion().await?;
        self.report.packs_awaiting_deletion = waiting.packs;
        self.report.bytes_awaiting_deletion = waiting.bytes;
        self.report.deletable_from = waiting
            .first_marked_at
            .map(|marked| marked + secs(self.config.grace_period));
        Ok(())
    }

    /// Before the first retention or quota decision, waits until every
    /// server has written the reads it gathered before now: each writes
    /// them once every [`ACCESS_LOG_FLUSH_INTERVAL`], and the write itself
    /// is given a second. Runs that have nothing to expire or evict never
    /// wait.
    async fn settle_reads(&mut self) {
        if self.reads_settled {
            return;
        }
        self.progress
            .stage("waiting for servers to record recent reads");
        tokio::time::sleep(ACCESS_LOG_FLUSH_INTERVAL + Duration::from_secs(1)).await;
        self.reads_settled = true;
    }

    fn count_removed(&mut self, removed: RemovedPaths) {
        self.report.removed_nar_bytes += removed.nar_bytes;
        self.report.held_elsewhere_bytes += removed.held_elsewhere_bytes;
    }
}
