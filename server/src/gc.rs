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
    CacheId, Database, DatabaseError, EvictableObject, LruObject, MovedChunk, Removal, RemovedPaths,
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

/// What a run reclaimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Objects expired by retention.
    pub objects_expired: u64,
    /// Objects evicted by quotas.
    pub objects_evicted: u64,
    /// Objects of destroyed caches.
    pub objects_of_destroyed_caches: u64,
    /// Objects past retention kept because paths kept reference them.
    pub objects_kept_for_closures: u64,
    /// Stored bytes of the NARs of the objects removed.
    pub removed_nar_bytes: i64,
    /// Of those, bytes of NARs other paths still hold (the same path in
    /// another cache, most often): removing these objects frees none of it.
    pub held_elsewhere_bytes: i64,
    /// Destroyed caches forgotten.
    pub caches_forgotten: u64,
    /// Build logs removed: past retention, evicted by quotas (before any
    /// path), or of destroyed caches. Their blobs go with the orphan sweep.
    pub logs_removed: u64,
    /// `nix copy` uploads never claimed.
    pub staged_expired: u64,
    /// NARs deleted.
    pub nars: u64,
    /// Chunks deleted.
    pub chunks: u64,
    /// Packs left without chunks, marked for deletion.
    pub packs_marked: u64,
    /// Packs compacted.
    pub packs_compacted: u64,
    /// Packs deleted from storage.
    pub packs_deleted: u64,
    /// Blobs and temporary files no row knew of, swept.
    pub orphans_swept: u64,
    /// Bytes freed in storage (deleted packs and orphans, less what
    /// compaction wrote).
    pub bytes_freed: i64,
    /// Packs marked for deletion whose blobs wait for the grace period.
    pub packs_awaiting_deletion: u64,
    /// Their stored bytes.
    pub bytes_awaiting_deletion: i64,
    /// When the first of them may go (epoch seconds): a run from then on
    /// deletes it.
    pub deletable_from: Option<i64>,
}

impl GcReport {
    /// Each count with its name, for logs and metrics.
    pub fn counts(&self) -> [(&'static str, u64); 12] {
        [
            ("objects_expired", self.objects_expired),
            ("objects_evicted", self.objects_evicted),
            (
                "objects_of_destroyed_caches",
                self.objects_of_destroyed_caches,
            ),
            ("caches_forgotten", self.caches_forgotten),
            ("logs_removed", self.logs_removed),
            ("staged_expired", self.staged_expired),
            ("nars", self.nars),
            ("chunks", self.chunks),
            ("packs_marked", self.packs_marked),
            ("packs_compacted", self.packs_compacted),
            ("packs_deleted", self.packs_deleted),
            ("orphans_swept", self.orphans_swept),
        ]
    }

    fn removed(&self) -> u64 {
        self.objects_expired + self.objects_evicted + self.objects_of_destroyed_caches
    }

    /// Why the objects removed freed fewer bytes than their NARs weigh, in
    /// words, or `None` when there is nothing to explain.
    pub fn why_not_freed(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if self.held_elsewhere_bytes > 0 {
            reasons.push(format!(
                "{} bytes of the removed paths' NARs are still held by other paths \
                 (the same paths in other caches)",
                self.held_elsewhere_bytes
            ));
        }
        if self.bytes_awaiting_deletion > 0 {
            reasons.push(format!(
                "{} bytes in {} packs wait for the grace period{}",
                self.bytes_awaiting_deletion,
                self.packs_awaiting_deletion,
                self.deletable_from
                    .map(|t| format!(" (deletable from {})", format_time(t)))
                    .unwrap_or_default()
            ));
        }
        if self.removed() > 0 && self.removed_nar_bytes > self.held_elsewhere_bytes {
            reasons.push(
                "chunks other NARs share stay, and dead chunks inside packs still \
                 partly live stay until compaction rewrites the pack"
                    .to_owned(),
            );
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// Epoch seconds as an RFC 3339 UTC time.
pub fn format_time(epoch: i64) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(epoch).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects expired ({} more kept: paths kept reference them), \
             {} evicted by quotas, {} of destroyed caches ({} bytes of NARs, {} of them \
             held elsewhere); {} logs removed; {} NARs, {} chunks; {} packs marked, \
             {} compacted, {} deleted; {} orphans swept; {} bytes freed",
            self.objects_expired,
            self.objects_kept_for_closures,
            self.objects_evicted,
            self.objects_of_destroyed_caches,
            self.removed_nar_bytes,
            self.held_elsewhere_bytes,
            self.logs_removed,
            self.nars,
            self.chunks,
            self.packs_marked,
            self.packs_compacted,
            self.packs_deleted,
            self.orphans_swept,
            self.bytes_freed
        )?;
        if let Some(why) = self.why_not_freed() {
            write!(f, "; {why}")?;
        }
        Ok(())
    }
}

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
                        .get_or_create(&crate::metrics::Outcome {
                            outcome: kind.to_owned(),
                        })
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

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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

    /// Expires each live cache's paths past its retention, from the roots
    /// down: a page of expired paths no other path references at a time,
    /// until none is left; an expired path a kept path references stays.
    async fn expire(&mut self) -> Result<(), GcError> {
        let default = self.config.default_retention_period;
        for cache in self.database.live_caches().await? {
            let retention = match cache.retention_period {
                Some(seconds) => seconds,
                None => secs(default),
            };
            // Zero keeps paths for ever.
            if retention <= 0 {
                continue;
            }
            // A log is kept for the retention period from when it was
            // stored: nothing records its reads, and no path needs it.
            self.report.logs_removed += self
                .database
                .expire_logs(cache.id, now().saturating_sub(retention))
                .await?;
            loop {
                // Counted from when the reads are settled, not before.
                let cutoff = now().saturating_sub(retention);
                let page = self.database.expired_roots(cache.id, cutoff, PAGE).await?;
                if page.is_empty() {
                    self.report.objects_kept_for_closures += self
                        .database
                        .count_last_used_before(cache.id, cutoff)
                        .await?;
                    break;
                }
                if !self.reads_settled {
                    self.settle_reads().await;
                    continue;
                }
                let removed = self
                    .database
                    .remove_objects(cache.id, &page, Removal::Expired { cutoff })
                    .await?;
                self.report.objects_expired += removed.paths;
                self.count_removed(removed);
                self.renew().await?;
                if removed.paths == 0 {
                    // Every one was read or newly referenced meanwhile;
                    // the next run looks again.
                    break;
                }
            }
        }
        Ok(())
    }

    /// Evicts from each over-quota cache the least recently read of the
    /// paths no other path of the cache references, until the cache fits.
    /// Evicting a path can let what it references go in turn: such a path,
    /// if read before the next root, goes before it (see
    /// [`Collector::plan_evictions`]).
    async fn enforce_quotas(&mut self) -> Result<(), GcError> {
        for cache in self.database.live_caches().await? {
            let Some(quota) = cache.quota else {
                continue;
            };
            let quota = i64::try_from(quota).unwrap_or(i64::MAX);
            let mut usage = self.database.cache_usage(cache.id).await?;
            if usage > quota && !self.reads_settled {
                self.settle_reads().await;
                usage = self.database.cache_usage(cache.id).await?;
            }
            if usage > quota {
                usage = self.evict_logs(cache.id, usage, quota).await?;
            }
            let mut stalled = 0;
            while usage > quota {
                let page = self.database.evictable_objects(cache.id, PAGE).await?;
                let (waves, why) = if page.is_empty() {
                    // Every path left is referenced by another: a cycle,
                    // which real store paths cannot form (only forged
                    // references do). Break it at its least recently read
                    // path rather than let the cache exceed its quota.
                    let page = self.database.least_recent_objects(cache.id, 1).await?;
                    let Some(object) = page.first() else { break };
                    tracing::warn!(
                        cache = %cache.name,
                        object = object.id,
                        "every path of an over-quota cache is referenced by another: \
                         evicting the least recently read of a reference cycle"
                    );
                    (vec![page], Removal::EvictedFromCycle)
                } else {
                    let waves = self.plan_evictions(cache.id, page, usage, quota).await?;
                    (waves, Removal::Evicted)
                };
                let mut evicted = 0;
                // Referrers before what they reference: each statement
                // re-checks that nothing left references what it removes.
                for wave in waves {
                    for batch in wave.chunks(PAGE as usize) {
                        let removed = self.database.remove_objects(cache.id, batch, why).await?;
                        evicted += removed.paths;
                        self.report.objects_evicted += removed.paths;
                        self.count_removed(removed);
                        self.renew().await?;
                    }
                }
                stalled = if evicted == 0 { stalled + 1 } else { 0 };
                if stalled > 3 {
                    // Each plan was read, pushed or referenced again
                    // before its eviction: leave the cache to the next run.
                    break;
                }
                usage = self.database.cache_usage(cache.id).await?;
            }
        }
        Ok(())
    }

    /// Plans, from a page of roots (least recently read first), which
    /// paths to evict, in exactly least-recently-read order among the paths
    /// that may go at each moment, until the cache would fit: evicting a
    /// root may let the paths only it references go, and one read before
    /// the next root goes before it.
    ///
    /// Below the page, the paths its roots reference are looked up level
    /// by level (one pass over the cache's references per level, however
    /// many paths), each with how many paths of the cache reference it; at
    /// most `PLAN_LIMIT` of them, so memory stays bounded. The order is then
    /// worked out in memory. It stops where a root beyond the page could
    /// come first, or where a path's references were not looked up: the
    /// next listing carries on.
    ///
    /// Returns the paths in waves: no path references one of its own wave
    /// or a later one, so evicting wave by wave never removes a path while
    /// one referencing it remains.
    async fn plan_evictions(
        &self,
        cache_id: CacheId,
        page: Vec<EvictableObject>,
        mut usage: i64,
        quota: i64,
    ) -> Result<Vec<Vec<LruObject>>, GcError> {
        const PLAN_LIMIT: usize = 20_000;
        struct Below {
            object: EvictableObject,
            referrers: i64,
            wave: usize,
        }
        let key = |o: &LruObject| (o.last_used, o.id);
        // Roots past the page may come before anything past its last.
        let frontier = match page.last() {
            Some(last) if page.len() as u64 >= PAGE => key(&last.object),
            _ => (i64::MAX, i64::MAX),
        };
        let mut below: HashMap<String, Below> = HashMap::new();
        let mut outside: HashSet<String> = HashSet::new();
        let mut level: Vec<String> = page
            .iter()
            .flat_map(|root| root.references.iter().cloned())
            .collect();
        level.sort_unstable();
        level.dedup();
        while !level.is_empty() && below.len() < PLAN_LIMIT {
            let found = self.database.objects_at_paths(cache_id, &level).await?;
            let counts: HashMap<String, i64> = self
                .database
                .referrer_counts(cache_id, &level)
                .await?
                .into_iter()
                .collect();
            let mut next = Vec::new();
            for object in found {
                next.extend(object.references.iter().cloned());
                let referrers = counts.get(&object.store_path).copied().unwrap_or(0);
                below.insert(
                    object.store_path.clone(),
                    Below {
                        object,
                        referrers,
                        wave: 0,
                    },
                );
            }
            for path in level {
                if !below.contains_key(&path) {
                    // Not in this cache (or gone meanwhile).
                    outside.insert(path);
                }
            }
            next.retain(|p| !below.contains_key(p) && !outside.contains(p));
            next.sort_unstable();
            next.dedup();
            level = next;
        }
        let unknown: HashSet<String> = level.into_iter().collect();

        let mut queue: BTreeMap<(i64, i64), (EvictableObject, usize)> = page
            .into_iter()
            .map(|root| (key(&root.object), (root, 0)))
            .collect();
        let mut waves: Vec<Vec<LruObject>> = Vec::new();
        while usage > quota {
            let Some(entry) = queue.first_entry() else {
                break;
            };
            if *entry.key() > frontier {
                break;
            }
            let (object, wave) = entry.remove();
            usage -= object.object.file_size;
            if waves.len() <= wave {
                waves.resize_with(wave + 1, Vec::new);
            }
            waves[wave].push(object.object);
            let mut unexplored = false;
            for reference in &object.references {
                unexplored |= unknown.contains(reference);
                let Some(node) = below.get_mut(reference) else {
                    continue;
                };
                node.referrers -= 1;
                node.wave = node.wave.max(wave + 1);
                if node.referrers <= 0
                    && let Some(node) = below.remove(reference)
                {
                    queue.insert(key(&node.object.object), (node.object, node.wave));
                }
            }
            if unexplored {
                // What this path alone references was not looked up, and
                // may come next: the next listing decides.
                break;
            }
        }
        Ok(waves)
    }

    /// Evicts a cache's build logs, oldest first, until it fits its quota
    /// or has none: no path needs a log, so logs go before any path.
    /// Returns the usage left.
    async fn evict_logs(
        &mut self,
        cache_id: CacheId,
        mut usage: i64,
        quota: i64,
    ) -> Result<i64, GcError> {
        while usage > quota {
            let page = self.database.oldest_logs(cache_id, PAGE).await?;
            if page.is_empty() {
                break;
            }
            let mut chosen = Vec::new();
            for log in &page {
                if usage <= quota {
                    break;
                }
                usage -= log.stored_size;
                chosen.push(log.id);
            }
            self.report.logs_removed += self.database.delete_logs(&chosen).await?;
            self.renew().await?;
        }
        Ok(usage)
    }

    async fn destroyed_caches(&mut self) -> Result<(), GcError> {
        for cache_id in self.database.destroyed_caches().await? {
            loop {
                let page = self.database.least_recent_objects(cache_id, PAGE).await?;
                if page.is_empty() {
                    break;
                }
                let removed = self
                    .database
                    .remove_objects(cache_id, &page, Removal::Destroyed)
                    .await?;
                self.report.objects_of_destroyed_caches += removed.paths;
                self.count_removed(removed);
                self.renew().await?;
            }
            self.report.logs_removed += self.database.forget_destroyed_cache(cache_id).await?;
            self.report.caches_forgotten += 1;
        }
        Ok(())
    }

    async fn nars(&mut self) -> Result<(), GcError> {
        let mut after = 0;
        while let (Some(last), gone) = self.database.delete_unheld_nars(after, PAGE).await? {
            self.report.nars += gone;
            after = last;
            self.renew().await?;
        }
        Ok(())
    }

    async fn chunks(&mut self) -> Result<(), GcError> {
        let mut after = 0;
        while let (Some(last), gone) = self
            .database
            .delete_unreferenced_chunks(after, PAGE)
            .await?
        {
            self.report.chunks += gone;
            after = last;
            self.renew().await?;
        }
        Ok(())
    }

    async fn mark_packs(&mut self) -> Result<(), GcError> {
        let mut after = 0;
        // A committed pack has its chunk rows from the start, so any pack
        // without one is dead: no grace needed here.
        while let (Some(last), marked) = self
            .database
            .mark_dead_packs(after, PAGE, now() + 1)
            .await?
        {
            self.report.packs_marked += marked;
            after = last;
            self.renew().await?;
        }
        Ok(())
    }

    async fn compact(&mut self, grace_cutoff: i64) -> Result<(), GcError> {
        if self.config.compact_below <= 0.0 {
            return Ok(());
        }
        let mut after = 0;
        loop {
            let (last, candidates) = self
                .database
                .compaction_candidates(after, PAGE, grace_cutoff, self.config.compact_below)
                .await?;
            let Some(last) = last else { break };
            after = last;
            for candidate in candidates {
                self.compact_pack(candidate.pack.id).await?;
                self.renew().await?;
            }
        }
        Ok(())
    }

    /// Copies a pack's live chunks into a new pack, recompressed at the
    /// compaction level, and repoints them. A chunk that fails its check
    /// is marked damaged and left where it is.
    async fn compact_pack(&mut self, pack_id: PackId) -> Result<(), GcError> {
        let chunks = self.database.pack_chunks(pack_id).await?;
        let mut writer = PackWriter::new(self.storage.clone());
        let mut moved = Vec::new();
        let level = self.config.compaction_level;
        for run in runs(chunks) {
            let mut checked = read_run(self.storage.clone(), run);
            while let Some(result) = checked.next().await {
                let chunk = match result {
                    Ok(chunk) => chunk,
                    Err(ReadError::Damaged(damage)) => {
                        crate::nar_stream::mark(self.database, &damage).await;
                        continue;
                    }
                    // Try again next run; the pack stays as it is.
                    Err(ReadError::Storage(e)) => return Err(e.into()),
                };
                let frame = recompress(&chunk.chunk, chunk.stored, level).await?;
                let stored_size = frame.len() as u64;
                let checksum = StoredChecksum::of(&frame).to_string();
                let offset = writer.append(frame).await?;
                moved.push(MovedChunk {
                    id: chunk.chunk.id,
                    offset,
                    stored_size,
                    checksum,
                });
            }
        }
        let Some(written) = writer.finish().await? else {
            return Ok(());
        };
        crash_point("compact-written");
        self.database
            .repoint_compacted(pack_id, &written, &moved)
            .await?;
        self.report.packs_compacted += 1;
        self.report.bytes_freed -= written.size as i64;
        Ok(())
    }

    async fn delete_packs(&mut self) -> Result<(), GcError> {
        // Packs marked at least a grace period ago, this run's included
        // when there is no grace.
        let cutoff = now() - secs(self.config.grace_period) + 1;
        loop {
            let page = self.database.packs_to_delete(cutoff, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for pack in page {
                self.storage.delete(pack.key.storage_key()).await?;
                crash_point("pack-blob-deleted");
                self.database.delete_pack_row(pack.id).await?;
                self.report.packs_deleted += 1;
                self.report.bytes_freed += i64::try_from(pack.size).unwrap_or(i64::MAX);
            }
            self.renew().await?;
        }
        Ok(())
    }

    /// Deletes blobs no pack row names, and temporary files, older than
    /// `grace`. Lists one key prefix at a time (packs are spread over 256),
    /// so memory stays a small part of the store.
    async fn sweep(&mut self, grace: Duration) -> Result<(), GcError> {
        let cutoff = SystemTime::now() - grace;
        let shards = |top: &'static str, kind: BlobKind| {
            (0..=255u8).map(move |b| (format!("{top}/{b:02x}/"), kind))
        };
        let prefixes = shards("packs", BlobKind::Pack)
            // Blobs of the layout before packs, one chunk each.
            .chain(shards("chunks", BlobKind::Pack))
            .chain(shards("logs", BlobKind::Log));
        for (prefix, kind) in prefixes {
            let listed = self.storage.list(&prefix).await?;
            for batch in listed.chunks(PAGE as usize) {
                let keys: Vec<String> = batch
                    .iter()
                    .filter(|b| b.modified < cutoff)
                    .map(|b| b.key.as_str().to_owned())
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let known = match kind {
                    BlobKind::Pack => self.database.known_pack_keys(&keys).await?,
                    BlobKind::Log => self.database.log_keys_in_use(&keys).await?,
                };
                let known: std::collections::HashSet<String> = known.into_iter().collect();
                for blob in batch {
                    if blob.modified < cutoff && !known.contains(blob.key.as_str()) {
                        self.storage.delete(&blob.key).await?;
                        self.report.orphans_swept += 1;
                        self.report.bytes_freed += blob.size as i64;
                    }
                }
            }
            self.renew().await?;
        }
        let (files, bytes) = self.storage.sweep_temporary(cutoff).await?;
        self.report.orphans_swept += files;
        self.report.bytes_freed += bytes as i64;
        Ok(())
    }
}

/// A chunk's stored bytes, compressed at `level`, or as they were if that
/// is no smaller (or they are not zstd).
async fn recompress(
    chunk: &crate::pack::read::StoredChunk,
    stored: Bytes,
    level: i32,
) -> Result<Bytes, GcError> {
    let compression = chunk.compression;
    let size = chunk.chunk_size as usize;
    tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
        let raw = match compression {
            StoredCompression::Zstd => zstd::bulk::decompress(&stored, size)?,
            StoredCompression::None => return Ok(stored),
        };
        let frame = zstd::bulk::compress(&raw, level)?;
        Ok(if frame.len() < stored.len() {
            Bytes::from(frame)
        } else {
            stored
        })
    })
    .await
    .map_err(|e| GcError::Recompress(std::io::Error::other(e)))?
    .map_err(GcError::Recompress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::CacheChanges;
    use crate::storage::MemoryStorage;

    fn store_path(name: &str) -> String {
        format!("/nix/store/{:a>32}-{name}", name)
    }

    /// Path `name` of `cache`, last used at `used`, on a NAR of 100 bytes
    /// of its own, referencing `references` (and itself).
    async fn push(
        database: &Database,
        cache: CacheId,
        name: &str,
        used: i64,
        references: &[&str],
    ) -> i64 {
        let nar = database.seed_nar(name, used).await;
        let mut references: Vec<String> = references.iter().map(|r| store_path(r)).collect();
        references.push(store_path(name));
        let hash = format!("{:a>32}", name);
        database
            .seed_path(cache, nar, (&hash, &store_path(name)), &references, used)
            .await
            .get()
    }

    /// A diamond (top -> a, b -> leaf), an unrelated root, and a kept root
    /// (used last) over the oldest path of all. Over quota by four paths:
    /// the unrelated root goes first (least recently used root), then the
    /// top, then a and b as they become roots, each before anything newer;
    /// the leaf (still needed by nothing, but not needed to fit) and the
    /// oldest path (a kept path references it) stay.
    #[tokio::test]
    async fn a_quota_evicts_in_lru_order_among_the_paths_that_may_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("c").await;
        let id = cache.id;
        let oldest = push(&database, id, "oldest", 50, &[]).await;
        let leaf = push(&database, id, "leaf", 100, &[]).await;
        push(&database, id, "a", 200, &["leaf"]).await;
        push(&database, id, "b", 300, &["leaf"]).await;
        push(&database, id, "unrelated", 350, &[]).await;
        push(&database, id, "top", 400, &["a", "b", "leaf"]).await;
        let kept = push(&database, id, "kept", 1000, &["oldest"]).await;
        database
            .configure_cache(
                &cache,
                CacheChanges {
                    quota: Some(Some(300)),
                    ..CacheChanges::default()
                },
            )
            .await
            .expect("quota");

        let config = GcConfig {
            default_retention_period: Duration::ZERO,
            grace_period: Duration::ZERO,
            ..GcConfig::default()
        };
        let report = Collector::new(&database, Arc::new(MemoryStorage::new()), &config, &Quiet)
            .run()
            .await
            .expect("collect");
        assert_eq!(report.objects_evicted, 4, "{report}");
        assert_eq!(report.removed_nar_bytes, 400);
        let mut left: Vec<i64> = database
            .least_recent_objects(id, 10)
            .await
            .expect("left")
            .iter()
            .map(|o| o.id)
            .collect();
        left.sort_unstable();
        assert_eq!(left, [oldest, leaf, kept]);
    }
}
