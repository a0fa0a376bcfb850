//! The `atticadm import-attic` command: its arguments, its progress
//! display (a bar on a terminal, plain lines otherwise, for logs), and the
//! report it prints at the end.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{AtticConfig, ImportOptions, ImportProgress, ImportReport, SourceTotals, import_attic};
use crate::config::ServerConfig;
use crate::setup::{self, OpenDatabase};

/// `atticadm import-attic`.
#[derive(Debug, clap::Args)]
pub struct ImportAttic {
    /// Attic's server config (`server.toml`): its `[database] url` (or
    /// `ATTIC_SERVER_DATABASE_URL`) and `[storage]` say what to read.
    #[arg(long = "attic-config", visible_alias = "from", value_name = "PATH")]
    pub attic_config: PathBuf,
    /// NARs read and stored at once.
    #[arg(short = 'j', long, default_value_t = 2)]
    pub jobs: usize,
    /// Data directory of this server's embedded database and storage [default: $XDG_DATA_HOME/attic].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs the import into the server `config` describes and prints its
/// report; whether every path was brought over.
pub async fn run(args: ImportAttic, config: ServerConfig) -> Result<bool> {
    let attic = AtticConfig::load(&args.attic_config)?;
    let data_dir = setup::data_dir(args.data_dir, &config)?;
    let state = setup::build_state(config, &data_dir, OpenDatabase::Existing).await?;
    let progress = Progress::new();
    let report = import_attic(&state, &attic, ImportOptions { jobs: args.jobs }, &progress)
        .await
        .context("the import stopped (run it again to resume)")?;
    progress.finish();
    print_report(&report);
    Ok(report.is_complete())
}

/// Prints what a run did.
fn print_report(report: &ImportReport) {
    println!(
        "caches: {} imported, {} refused; {} soft-deleted in Attic, not imported",
        report.caches,
        report.refused_caches.len(),
        report.deleted_caches
    );
    println!(
        "paths: {} imported, {} attached to NARs held here already, {} held already (skipped), \
         {} damaged, {} refused",
        report.paths_imported,
        report.paths_attached,
        report.paths_skipped,
        report.paths_damaged(),
        report.refused_paths.len()
    );
    println!(
        "read {} of NARs in {:.1} s: {:.1} MiB/s",
        HumanBytes(report.nar_bytes_read),
        report.elapsed.as_secs_f64(),
        report.mib_per_second()
    );
    if report.pending_nars > 0 {
        println!(
            "NARs stuck in PendingUpload in Attic: {} (never completed; paths needing one are listed as damaged)",
            report.pending_nars
        );
    }
    for nar in &report.damaged {
        println!("damaged NAR {}: {}", nar.nar_hash, nar.reason);
        for path in &nar.paths {
            println!("  not imported: {path}");
        }
    }
    for refusal in &report.refused_caches {
        println!("refused cache {}: {}", refusal.what, refusal.reason);
    }
    for refusal in &report.refused_paths {
        println!("refused {}: {}", refusal.what, refusal.reason);
    }
}

/// A bar on a terminal; on anything else a line per cache and per tenth
/// of the bytes, with the same counts.
struct Progress {
    bar: Option<ProgressBar>,
    lines: Mutex<Lines>,
}

#[derive(Default)]
struct Lines {
    started: Option<Instant>,
    total_paths: u64,
    total_bytes: u64,
    paths: u64,
    bytes: u64,
    last_tenth: u64,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "importing {msg} {wide_bar} {binary_bytes}/{binary_total_bytes} \
                     ({binary_bytes_per_sec}, {eta})",
                )
                .expect("a valid template"),
            );
            bar
        });
        Self {
            bar,
            lines: Mutex::new(Lines::default()),
        }
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl ImportProgress for Progress {
    fn begin(&self, totals: &SourceTotals) {
        {
            let mut lines = self.lines();
            lines.started = Some(Instant::now());
            lines.total_paths = totals.paths;
            lines.total_bytes = totals.nar_bytes;
        }
        match &self.bar {
            Some(bar) => bar.set_length(totals.nar_bytes),
            None => eprintln!(
                "importing {} paths, {} of NARs",
                totals.paths,
                HumanBytes(totals.nar_bytes)
            ),
        }
    }

    fn cache(&self, name: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(name.to_owned()),
            None => eprintln!("cache {name}"),
        }
    }

    fn path_done(&self, nar_bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(nar_bytes);
            return;
        }
        let mut lines = self.lines();
        lines.paths += 1;
        lines.bytes += nar_bytes;
        let tenth = (lines.bytes * 10)
            .checked_div(lines.total_bytes)
            .unwrap_or(10)
            .min(10);
        if tenth <= lines.last_tenth {
            return;
        }
        lines.last_tenth = tenth;
        let elapsed = lines.started.map(|s| s.elapsed()).unwrap_or_default();
        let eta = if lines.bytes > 0 && lines.total_bytes > lines.bytes {
            elapsed.mul_f64((lines.total_bytes - lines.bytes) as f64 / lines.bytes as f64)
        } else {
            std::time::Duration::ZERO
        };
        eprintln!(
            "{}/{} paths, {}/{} ({}%), ETA {}",
            lines.paths,
            lines.total_paths,
            HumanBytes(lines.bytes),
            HumanBytes(lines.total_bytes),
            tenth * 10,
            HumanDuration(eta)
        );
    }
}
