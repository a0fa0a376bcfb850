//! `attic watch-store CACHE`: push new store paths as they appear, until
//! interrupted. Paths go through a durable queue first, which a Nix
//! `post-build-hook` can fill (`--enqueue`) without waiting on the network;
//! a path leaves the queue only once pushed, so a crash of this process or
//! an outage of the server loses nothing.
//!
//! Watching starts before any server contact, and every path seen is
//! queued at once by its own task: a path built while the server is down
//! (or while this process is still connecting) is queued, then pushed once
//! the server answers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use attic::store_path::StoreDir;
use clap::Args;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};

use super::client_for;
use crate::cache_ref::CacheRef;
use crate::nix_store;
use crate::push::{PushOptions, Pusher};
use crate::queue::{Queue, default_queue_path};

/// Paths pushed per round.
const BATCH: u32 = 500;

/// Arguments of `attic watch-store`.
#[derive(Debug, Args)]
pub struct WatchStore {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// Only add paths to the queue and exit: the given paths, or those in
    /// `$OUT_PATHS` (as a Nix post-build-hook receives them), or when that
    /// is empty the built outputs of `$DRV_PATH`.
    #[arg(long)]
    enqueue: bool,
    /// Paths to enqueue, with `--enqueue`.
    paths: Vec<String>,
    /// Push what is queued, then exit instead of watching.
    #[arg(long, conflicts_with = "enqueue")]
    once: bool,
    /// Uploads at once.
    #[arg(short = 'j', long, default_value_t = 5, value_parser = super::parse_jobs)]
    jobs: usize,
    /// Push paths even if an upstream cache of the cache signed them.
    #[arg(long)]
    ignore_upstream_cache_filter: bool,
    /// Push the new paths only, not their closures.
    #[arg(long, hide = true)]
    no_closure: bool,
    /// Accepted for Attic's command lines; this client always sends a
    /// path's description ahead of its NAR.
    #[arg(long, hide = true)]
    force_preamble: bool,
    /// Print one JSON object per line on stdout: one per path, then a
    /// summary per round of pushes.
    #[arg(long)]
    json: bool,
    /// The queue database [default: $XDG_STATE_HOME/attic/watch-store-queue.db].
    #[arg(long)]
    queue: Option<PathBuf>,
}

pub async fn run(args: WatchStore) -> Result<ExitCode> {
    let queue_path = match &args.queue {
        Some(path) => path.clone(),
        None => default_queue_path()?,
    };
    let queue = Queue::open(&queue_path).await?;
    let key = args.cache.to_string();

    if args.enqueue {
        let mut paths = args.paths.clone();
        if paths.is_empty() {
            paths = hook_paths().await;
        }
        queue.enqueue(&key, &paths).await?;
        eprintln!("queued {} paths for {}", paths.len(), args.cache);
        return Ok(ExitCode::SUCCESS);
    }

    let options = PushOptions {
        jobs: args.jobs,
        closure: !args.no_closure,
        ignore_upstream_cache_filter: args.ignore_upstream_cache_filter,
        output: super::push::output_mode(args.json, false),
        ..PushOptions::default()
    };
    // Watch and queue before contacting the server, so nothing built in
    // the meantime is missed.
    let queued = Arc::new(Notify::new());
    let watching = if args.once {
        None
    } else {
        let store_dir = nix_store::local_store_dir()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = watch_store(&store_dir, tx)?;
        tokio::spawn(queue_seen_paths(
            rx,
            queue.clone(),
            key.clone(),
            queued.clone(),
        ));
        eprintln!(
            "watching {} for new paths to push to {}; queue {}",
            store_dir.as_str(),
            args.cache,
            queue_path.display()
        );
        Some((watcher, store_dir))
    };

    let pusher = tokio::select! {
        pusher = connect(&args, &options) => pusher?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; queued paths stay queued");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some((_, store_dir)) = &watching
        && store_dir != pusher.store_dir()
    {
        eprintln!(
            "warning: cache {} holds paths of {}, but the local store is {}",
            args.cache,
            pusher.store_dir().as_str(),
            store_dir.as_str()
        );
    }

    let mut backoff = Duration::from_secs(1);
    loop {
        let pending = queue.pending(&key, BATCH).await?;
        let mut pushed_all = true;
        if !pending.is_empty() {
            pushed_all = push_batch(&queue, &key, &pusher, &pending, &options).await;
            backoff = if pushed_all {
                Duration::from_secs(1)
            } else {
                (backoff * 2).min(Duration::from_secs(60))
            };
        }
        if args.once && (pending.is_empty() || !pushed_all) {
            let left = queue.pending(&key, u32::MAX).await?.len();
            if left > 0 {
                eprintln!("error: {left} paths are still queued for {}", args.cache);
                return Ok(ExitCode::FAILURE);
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !pending.is_empty() && pushed_all {
            continue;
        }
        let wait = if pushed_all {
            Duration::from_secs(3600)
        } else {
            backoff
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted; queued paths stay queued");
                return Ok(ExitCode::SUCCESS);
            }
            () = queued.notified(), if pushed_all => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a post-build hook was handed: `$OUT_PATHS`, or when Nix left it
/// empty (Nix 2.8 always does, NixOS/nix#6446) the built outputs of
/// `$DRV_PATH`. A failure to ask Nix is a warning, never a failed hook:
/// Nix stops building when its hook fails.
async fn hook_paths() -> Vec<String> {
    let out_paths: Vec<String> = std::env::var("OUT_PATHS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !out_paths.is_empty() {
        return out_paths;
    }
    let drv = std::env::var("DRV_PATH").unwrap_or_default();
    if drv.is_empty() {
        return Vec::new();
    }
    match nix_store::derivation_outputs(&drv).await {
        Ok(outputs) => outputs,
        Err(e) => {
            eprintln!("warning: OUT_PATHS is empty and {e:#}; nothing queued");
            Vec::new()
        }
    }
}

/// Queues each path the watcher names once Nix holds it, and wakes the
/// pusher. Runs on its own so that queueing never waits on the server.
async fn queue_seen_paths(
    mut seen: mpsc::UnboundedReceiver<String>,
    queue: Queue,
    key: String,
    queued: Arc<Notify>,
) {
    while let Some(path) = seen.recv().await {
        if !nix_store::is_valid(&path).await {
            continue;
        }
        match queue.enqueue(&key, std::slice::from_ref(&path)).await {
            Ok(()) => {
                eprintln!("queued {path}");
                queued.notify_one();
            }
            Err(e) => eprintln!("warning: cannot queue {path}: {e:#}"),
        }
    }
}

/// Connects, waiting out an unreachable server instead of giving up.
async fn connect(args: &WatchStore, options: &PushOptions) -> Result<Pusher> {
    let mut delay = Duration::from_secs(1);
    loop {
        let api = client_for(&args.cache)?;
        match Pusher::connect(api, args.cache.cache.clone(), options).await {
            Ok(pusher) => return Ok(pusher),
            Err(e) if args.once => return Err(e),
            Err(e) => {
                eprintln!("warning: {e:#}; trying again in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Pushes queued paths; removes those that made it (or that Nix no longer
/// has). Returns whether all made it.
async fn push_batch(
    queue: &Queue,
    key: &str,
    pusher: &Pusher,
    pending: &[String],
    options: &PushOptions,
) -> bool {
    let mut valid = Vec::new();
    let mut gone = Vec::new();
    for path in pending {
        if nix_store::is_valid(path).await {
            valid.push(path.clone());
        } else {
            gone.push(path.clone());
        }
    }
    if !gone.is_empty() {
        eprintln!(
            "warning: dropping {} queued paths that are no longer in the store",
            gone.len()
        );
        if let Err(e) = queue.remove(key, &gone).await {
            eprintln!("warning: {e:#}");
        }
    }
    if valid.is_empty() {
        return true;
    }
    match pusher.push(&valid, options).await {
        Ok(summary) => {
            crate::progress::print_summary(options.output, &summary.report());
            let failed: std::collections::HashSet<&str> =
                summary.failed.iter().map(|(p, _)| p.as_str()).collect();
            for (path, reason) in &summary.failed {
                eprintln!("warning: {path} stays queued: {reason}");
            }
            // A queued path's closure was pushed with it; only queued
            // paths that failed themselves stay.
            let done: Vec<String> = valid
                .iter()
                .filter(|p| !failed.contains(p.as_str()))
                .cloned()
                .collect();
            if let Err(e) = queue.remove(key, &done).await {
                eprintln!("warning: {e:#}");
                return false;
            }
            failed.is_empty()
        }
        Err(e) => {
            eprintln!("warning: pushing queued paths failed: {e:#}; they stay queued");
            false
        }
    }
}

/// Watches the store directory: Nix deletes `<path>.lock` once a new path is
/// registered, so each such removal names a candidate.
fn watch_store(
    store_dir: &StoreDir,
    tx: mpsc::UnboundedSender<String>,
) -> Result<notify::RecommendedWatcher> {
    let dir = store_dir.as_str().to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(event.kind, EventKind::Remove(_)) {
            return;
        }
        for path in event.paths {
            if let Some(path) = path.to_str().and_then(|p| p.strip_suffix(".lock")) {
                let _ = tx.send(path.to_owned());
            }
        }
    })
    .context("cannot watch the Nix store")?;
    watcher
        .watch(std::path::Path::new(&dir), RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {dir}"))?;
    Ok(watcher)
}
