//! The push pipeline: closure, upstream filter, missing-path query, then
//! parallel streaming uploads with retries.
//!
//! Each NAR is serialised from the filesystem on a blocking thread into a
//! short queue of pieces that the HTTP body reads from, so memory per upload
//! is about a megabyte, whatever the size of the path.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use attic::api::v1::upload_path::{UploadPathNarInfo, UploadPathResult, UploadPathResultKind};
use attic::cache::CacheName;
use attic::nar::{NarError, dump_path};
use attic::store_path::{StoreDir, StorePathHash};
use futures::StreamExt;
use indicatif::HumanBytes;
use thiserror::Error;

use crate::api::{ApiClient, ApiError};
use crate::nix_store::{self, PathInfo};
use crate::progress::{PathProgress, Progress, label};
use crate::report::{Outcome, OutputMode, PathReport, SummaryReport, count};
use crate::upload_encoding::{CompressionChoice, UploadCompression};

/// Hashes per get-missing-paths request, well under the server's limit.
const HASHES_PER_QUERY: usize = 10_000;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Uploads at once.
    pub jobs: usize,
    /// Push the paths' closures (the default), not just the paths.
    pub closure: bool,
    /// Push paths even when signed by one of the cache's upstream keys.
    pub ignore_upstream_cache_filter: bool,
    /// Attempts after the first for a path that failed transiently.
    pub retries: u32,
    /// Delay before the first retry; doubles each time.
    pub retry_delay: Duration,
    /// How to report: for people, as JSON lines, or errors only.
    pub output: OutputMode,
    /// Whether NARs go compressed.
    pub compression: UploadCompression,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            jobs: 5,
            closure: true,
            ignore_upstream_cache_filter: false,
            retries: 3,
            retry_delay: Duration::from_secs(1),
            output: OutputMode::default(),
            compression: UploadCompression::default(),
        }
    }
}

/// What a push did.
#[derive(Debug, Default, Clone)]
pub struct PushSummary {
    /// Paths uploaded (or attached after proof) now.
    pub pushed: usize,
    /// NAR bytes of those paths.
    pub pushed_bytes: u64,
    /// NAR bytes (not compressed ones) of those paths that the server
    /// already held, as it reports them.
    pub deduplicated_bytes: u64,
    /// Paths the cache already had.
    pub already_present: usize,
    /// Paths skipped because an upstream cache signed them.
    pub skipped_upstream: usize,
    /// Paths that failed, with why.
    pub failed: Vec<(String, String)>,
    /// Bytes sent for the pushed paths' NARs: fewer than `pushed_bytes`
    /// when the server takes them compressed.
    pub wire_bytes: u64,
    /// The whole push, from reading the paths to the last reply.
    pub elapsed: Duration,
}

impl PushSummary {
    /// The totals, as reported to the user.
    pub fn report(&self) -> SummaryReport {
        SummaryReport {
            pushed: self.pushed,
            already_present: self.already_present,
            skipped_upstream: self.skipped_upstream,
            failed: self.failed.len(),
            nar_bytes: self.pushed_bytes,
            deduplicated_bytes: self.deduplicated_bytes,
            bytes_sent: self.wire_bytes,
            seconds: self.elapsed.as_secs_f64(),
        }
    }
}

/// Why one path could not be pushed.
#[derive(Debug, Error)]
pub enum PushError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The path could not be read from the store.
    #[error("cannot read the path from the local store: {0}")]
    Read(#[source] NarError),
    /// A path it refers to failed, so it was not tried.
    #[error("not pushed because its reference {0} failed")]
    ReferenceFailed(String),
}

impl PushError {
    fn is_transient(&self) -> bool {
        match self {
            PushError::Api(e) => e.is_transient(),
            PushError::Read(_) | PushError::ReferenceFailed(_) => false,
        }
    }
}

/// What a push will do.
#[derive(Debug, Clone)]
pub struct PushPlan {
    /// Paths to upload, dependencies first.
    pub to_push: Vec<PathInfo>,
    /// Paths the cache already holds.
    pub already_present: Vec<PathInfo>,
    /// Paths skipped because an upstream cache signed them.
    pub skipped_upstream: Vec<PathInfo>,
}

/// Splits paths (dependencies first) into layers: each path's references
/// among them are all in earlier layers.
fn layers(paths: Vec<PathInfo>) -> Vec<Vec<PathInfo>> {
    let mut depth: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut layers: Vec<Vec<PathInfo>> = Vec::new();
    for info in paths {
        let layer = info
            .references
            .iter()
            .filter(|r| **r != info.path)
            .filter_map(|r| depth.get(r))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(info.path.clone(), layer);
        if layers.len() <= layer {
            layers.resize_with(layer + 1, Vec::new);
        }
        layers[layer].push(info);
    }
    layers
}

/// NAR bytes the server did not have to store for this upload. Counted in
/// NAR bytes, like everything else in the summary: never the compressed
/// `file_size` or `bytes_stored` of the reply.
fn deduplicated_bytes(reply: &UploadPathResult, nar_size: u64) -> u64 {
    match reply.kind {
        UploadPathResultKind::Deduplicated => nar_size,
        UploadPathResultKind::Uploaded => {
            let fraction = reply.frac_deduplicated.unwrap_or(0.0).clamp(0.0, 1.0);
            (nar_size as f64 * fraction) as u64
        }
    }
}

/// Calls `f` until it succeeds, fails for good, or runs out of retries,
/// waiting twice as long after each transient failure; `before_retry` is
/// told the error, the wait and the number of the coming attempt.
async fn with_retries<T, E, F, Fut>(
    options: &PushOptions,
    is_transient: impl Fn(&E) -> bool,
    mut before_retry: impl FnMut(&E, Duration, u32),
    mut f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = options.retry_delay;
    for attempt in 1.. {
        match f().await {
            Err(e) if is_transient(&e) && attempt <= options.retries => {
                before_retry(&e, delay, attempt + 1);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => return result,
        }
    }
    unreachable!("the loop returns")
}

/// [`with_retries`] for an API call, reporting retries on stderr unless
/// quiet.
pub async fn retry_transient<T, F, Fut>(
    options: &PushOptions,
    what: &str,
    f: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let report = |e: &ApiError, delay: Duration, attempt: u32| {
        if options.output == OutputMode::Quiet {
            return;
        }
        eprintln!(
            "warning: {what} failed: {e}; retrying in {:.0}s (attempt {attempt} of {})",
            delay.as_secs_f32(),
            options.retries + 1
        );
    };
    with_retries(options, ApiError::is_transient, report, f).await
}

/// Pushes to one cache.
pub struct Pusher {
    api: ApiClient,
    cache: CacheName,
    store_dir: StoreDir,
    upstream_key_names: Vec<String>,
    /// Whether NARs go zstd-compressed: only if the server said it takes
    /// them so (an older server does not say, and gets them plain).
    compression: Arc<CompressionChoice>,
    /// Bytes sent in successful uploads.
    wire_bytes: AtomicU64,
}

impl Pusher {
    /// Looks the cache up (checking the token works, retrying while the
    /// server is unreachable) and prepares to push.
    pub async fn connect(api: ApiClient, cache: CacheName, options: &PushOptions) -> Result<Self> {
        let config = retry_transient(options, &format!("looking up cache {cache}"), || {
            api.get_cache_config(&cache)
        })
        .await
        .with_context(|| format!("cannot use cache {cache}"))?;
        let store_dir = match &config.store_dir {
            Some(dir) => StoreDir::new(dir)
                .with_context(|| format!("cache {cache} has store dir {dir:?}"))?,
            None => StoreDir::default(),
        };
        let takes_zstd = config
            .upload_encodings
            .as_ref()
            .is_some_and(|encodings| encodings.iter().any(|e| e == "zstd"));
        let host = reqwest::Url::parse(api.endpoint())
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default();
        let compression = Arc::new(CompressionChoice::new(
            options.compression,
            takes_zstd,
            &host,
        ));
        Ok(Self {
            api,
            cache,
            store_dir,
            upstream_key_names: config.upstream_cache_key_names.unwrap_or_default(),
            compression,
            wire_bytes: AtomicU64::new(0),
        })
    }

    /// The cache's store directory.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Pushes `paths` (full store paths) and, by default, their closures.
    pub async fn push(&self, paths: &[String], options: &PushOptions) -> Result<PushSummary> {
        let started = Instant::now();
        let plan = self.plan(paths, options).await?;
        let mut summary = self.upload_all(plan, options).await;
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    /// Decides what to upload: the closure, less what upstream signed,
    /// less what the cache has.
    pub async fn plan(&self, paths: &[String], options: &PushOptions) -> Result<PushPlan> {
        let infos = nix_store::path_infos(&self.store_dir, paths, options.closure).await?;
        let (upstream, candidates): (Vec<PathInfo>, Vec<PathInfo>) = infos
            .into_iter()
            .partition(|info| !options.ignore_upstream_cache_filter && self.signed_upstream(info));
        let hashes: Vec<StorePathHash> = candidates
            .iter()
            .map(|i| i.store_path.hash().clone())
            .collect();
        let mut missing: HashSet<StorePathHash> = HashSet::new();
        for batch in hashes.chunks(HASHES_PER_QUERY) {
            let answer = retry_transient(options, "asking which paths are missing", || {
                self.api.get_missing_paths(&self.cache, batch.to_vec())
            })
            .await
            .with_context(|| format!("cannot ask cache {} which paths it lacks", self.cache))?;
            missing.extend(answer);
        }
        let (to_push, already_present): (Vec<PathInfo>, Vec<PathInfo>) = candidates
            .into_iter()
            .partition(|info| missing.contains(info.store_path.hash()));
        Ok(PushPlan {
            to_push,
            already_present,
            skipped_upstream: upstream,
        })
    }

    /// Uploads a plan's paths, `options.jobs` at a time.
    pub async fn upload_all(&self, plan: PushPlan, options: &PushOptions) -> PushSummary {
        let started = Instant::now();
        let total_bytes: u64 = plan.to_push.iter().map(|i| i.nar_size).sum();
        let progress = Progress::for_stdout(options.output, plan.to_push.len() as u64, total_bytes);
        progress.println(&format!(
            "{} to push to {} ({}); {} already there; {} signed upstream",
            count(plan.to_push.len(), "path", "paths"),
            self.cache,
            HumanBytes(total_bytes),
            plan.already_present.len(),
            plan.skipped_upstream.len()
        ));
        for (infos, outcome) in [
            (&plan.already_present, Outcome::AlreadyPresent),
            (&plan.skipped_upstream, Outcome::SkippedUpstream),
        ] {
            for info in infos {
                progress.record(&PathReport {
                    path: info.path.clone(),
                    outcome,
                    nar_size: info.nar_size,
                    bytes_sent: 0,
                    deduplicated_bytes: 0,
                    seconds: 0.0,
                    error: None,
                });
            }
        }
        let wire_before = self.wire_bytes.load(Ordering::Relaxed);
        let mut summary = PushSummary {
            already_present: plan.already_present.len(),
            skipped_upstream: plan.skipped_upstream.len(),
            ..PushSummary::default()
        };
        // A path is uploaded only after the paths it refers to, so that a
        // cache never holds a path whose references it lacks; paths of one
        // layer go up in parallel.
        let mut failed: HashSet<String> = HashSet::new();
        let mut results = Vec::with_capacity(plan.to_push.len());
        for layer in layers(plan.to_push) {
            let (blocked, ready): (Vec<PathInfo>, Vec<PathInfo>) = layer
                .into_iter()
                .partition(|info| info.references.iter().any(|r| failed.contains(r)));
            for info in blocked {
                let reference = info
                    .references
                    .iter()
                    .find(|r| failed.contains(*r))
                    .cloned()
                    .unwrap_or_default();
                let error = PushError::ReferenceFailed(reference);
                progress.path_done(
                    &label(&info.store_path),
                    &PathReport {
                        path: info.path.clone(),
                        outcome: Outcome::Failed,
                        nar_size: info.nar_size,
                        bytes_sent: 0,
                        deduplicated_bytes: 0,
                        seconds: 0.0,
                        error: Some(error.to_string()),
                    },
                );
                failed.insert(info.path.clone());
                results.push((info, Err(error)));
            }
            let layer_results: Vec<(PathInfo, Result<UploadPathResult, PushError>)> =
                futures::stream::iter(ready)
                    .map(|info| {
                        let progress = &progress;
                        async move {
                            let result = self.upload_and_report(&info, progress, options).await;
                            (info, result)
                        }
                    })
                    .buffer_unordered(options.jobs.max(1))
                    .collect()
                    .await;
            for (info, result) in layer_results {
                if result.is_err() {
                    failed.insert(info.path.clone());
                }
                results.push((info, result));
            }
        }
        progress.finish();
        for (info, result) in results {
            match result {
                Ok(reply) => {
                    summary.pushed += 1;
                    summary.pushed_bytes += info.nar_size;
                    summary.deduplicated_bytes += deduplicated_bytes(&reply, info.nar_size);
                }
                Err(e) => summary.failed.push((info.path, e.to_string())),
            }
        }
        summary.wire_bytes = self.wire_bytes.load(Ordering::Relaxed) - wire_before;
        summary.elapsed = started.elapsed();
        summary
    }

    /// Uploads one path with its own progress bar.
    async fn upload_and_report(
        &self,
        info: &PathInfo,
        progress: &Progress,
        options: &PushOptions,
    ) -> Result<UploadPathResult, PushError> {
        let bar = progress.start_path(&info.store_path, info.nar_size);
        let result = self
            .upload_with_retries(info, &bar, options, progress)
            .await;
        let mut report = PathReport {
            path: info.path.clone(),
            outcome: Outcome::Pushed,
            nar_size: info.nar_size,
            bytes_sent: 0,
            deduplicated_bytes: 0,
            seconds: bar.elapsed().as_secs_f64(),
            error: None,
        };
        match &result {
            Ok((reply, sent)) => {
                report.bytes_sent = *sent;
                report.deduplicated_bytes = deduplicated_bytes(reply, info.nar_size);
            }
            Err(e) => {
                report.outcome = Outcome::Failed;
                report.error = Some(e.to_string());
            }
        }
        bar.done(progress, &report);
        progress.finish_path();
        result.map(|(reply, _)| reply)
    }

    async fn upload_with_retries(
        &self,
        info: &PathInfo,
        bar: &PathProgress,
        options: &PushOptions,
        progress: &Progress,
    ) -> Result<(UploadPathResult, u64), PushError> {
        let report = |e: &PushError, delay: Duration, attempt: u32| {
            progress.println(&format!(
                "retrying {} in {}s (attempt {attempt} of {}): {e}",
                info.store_path,
                delay.as_secs_f32(),
                options.retries + 1
            ));
            bar.reset();
        };
        with_retries(options, PushError::is_transient, report, || {
            self.upload_once(info, bar)
        })
        .await
    }

    /// One attempt; the reply and the bytes sent for it.
    async fn upload_once(
        &self,
        info: &PathInfo,
        bar: &PathProgress,
    ) -> Result<(UploadPathResult, u64), PushError> {
        let upload_info = UploadPathNarInfo {
            cache: self.cache.clone(),
            store_path_hash: info.store_path.hash().clone(),
            store_path: info.path.clone(),
            references: info.references.clone(),
            system: None,
            deriver: info.deriver.clone(),
            sigs: info.sigs.clone(),
            ca: info.ca.clone(),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
        };
        // The NAR streams from the filesystem; if reading fails, the body
        // ends in an error and that failure, not the server's, is reported.
        let read_failure: Arc<Mutex<Option<NarError>>> = Arc::default();
        let failure_slot = read_failure.clone();
        let counter = bar.counter();
        let finished = bar.counter();
        let nar = dump_path(&info.path).map(move |piece| match piece {
            Ok(piece) => {
                counter.inc(piece.len() as u64);
                Ok(piece)
            }
            Err(e) => {
                *failure_slot.lock().expect("never poisoned") = Some(e);
                Err(std::io::Error::other("cannot read the path"))
            }
        });
        // Once the body has ended, the wait is the server verifying the NAR.
        let nar = nar.chain(
            futures::stream::once(async move {
                finished.all_sent();
                None
            })
            .filter_map(futures::future::ready),
        );
        // What goes on the wire, counted after compression.
        let sent = Arc::new(AtomicU64::new(0));
        let reply = self
            .api
            .upload_path(&upload_info, nar, &self.compression, sent.clone())
            .await;
        if let Some(e) = read_failure.lock().expect("never poisoned").take() {
            return Err(PushError::Read(e));
        }
        let reply = reply?;
        let sent = sent.load(Ordering::Relaxed);
        self.wire_bytes.fetch_add(sent, Ordering::Relaxed);
        Ok((reply, sent))
    }

    fn signed_upstream(&self, info: &PathInfo) -> bool {
        info.sigs.iter().any(|sig| {
            sig.split_once(':')
                .is_some_and(|(name, _)| self.upstream_key_names.iter().any(|u| u == name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attic::hash::Sha256Hash;

    fn info(hash_char: char, references: &[char]) -> PathInfo {
        let path_of = |c: char| format!("/nix/store/{}-p", c.to_string().repeat(32));
        let path = path_of(hash_char);
        PathInfo {
            store_path: StoreDir::default().parse_path(&path).expect("path"),
            path,
            nar_hash: Sha256Hash::digest(b"x"),
            nar_size: 1,
            references: references.iter().map(|c| path_of(*c)).collect(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        }
    }

    #[test]
    fn deduplication_counts_nar_bytes() {
        let mib = 1024 * 1024;
        let uploaded = UploadPathResult {
            kind: UploadPathResultKind::Uploaded,
            file_size: Some(4 * 1024),
            bytes_stored: Some(2 * 1024),
            frac_deduplicated: Some(0.5),
        };
        assert_eq!(deduplicated_bytes(&uploaded, 40 * mib), 20 * mib);
        let attached = UploadPathResult {
            kind: UploadPathResultKind::Deduplicated,
            file_size: Some(4 * 1024),
            bytes_stored: Some(0),
            frac_deduplicated: Some(1.0),
        };
        assert_eq!(deduplicated_bytes(&attached, 40 * mib), 40 * mib);
        let old_server = UploadPathResult {
            kind: UploadPathResultKind::Uploaded,
            file_size: None,
            bytes_stored: None,
            frac_deduplicated: None,
        };
        assert_eq!(deduplicated_bytes(&old_server, 40 * mib), 0);
    }

    #[test]
    fn the_summary_line_gives_nar_bytes() {
        let summary = PushSummary {
            pushed: 2,
            pushed_bytes: 40 * 1024 * 1024,
            deduplicated_bytes: 20 * 1024 * 1024,
            already_present: 1,
            wire_bytes: 12 * 1024 * 1024,
            elapsed: Duration::from_millis(2300),
            ..PushSummary::default()
        };
        assert_eq!(
            summary.report().human().replace('\u{a0}', " "),
            "pushed 2 paths (40.00 MiB, 20.00 MiB of it deduplicated, 12.00 MiB sent) in 2.3s; \
             1 already in the cache"
        );
    }

    #[test]
    fn references_go_in_earlier_layers() {
        // a <- b <- d, a <- c; c refers to itself, as some paths do.
        let paths = vec![
            info('a', &[]),
            info('b', &['a']),
            info('c', &['a', 'c']),
            info('d', &['b', 'z']),
        ];
        let layers: Vec<Vec<char>> = layers(paths)
            .iter()
            .map(|l| {
                l.iter()
                    .map(|i| i.store_path.hash().as_str().chars().next().expect("hash"))
                    .collect()
            })
            .collect();
        assert_eq!(layers, vec![vec!['a'], vec!['b', 'c'], vec!['d']]);
    }
}
