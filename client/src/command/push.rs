//! `attic push CACHE PATH...`.
//!
//! Its exit code says how the push went, for scripts: see [`exit_code`].

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use super::client_for;
use crate::cache_ref::CacheRef;
use crate::nix_store::resolve_path_argument;
use crate::progress::print_summary;
use crate::push::{PushOptions, PushSummary, Pusher};
use crate::report::OutputMode;
use crate::upload_encoding::UploadCompression;

/// Exit code when some paths failed and others were pushed.
pub const EXIT_SOME_FAILED: u8 = 3;
/// Exit code when every path that needed pushing failed.
pub const EXIT_ALL_FAILED: u8 = 4;

/// Arguments of `attic push`.
#[derive(Debug, Args)]
pub struct Push {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// Store paths, or links to them such as `./result`.
    paths: Vec<String>,
    /// Also read paths from stdin, one per line.
    #[arg(long)]
    stdin: bool,
    /// Push only the paths given, not their closures.
    #[arg(long)]
    no_closure: bool,
    /// Uploads at once.
    #[arg(short = 'j', long, default_value_t = 5, value_parser = super::parse_jobs)]
    jobs: usize,
    /// Push paths even if an upstream cache of the cache signed them.
    #[arg(long)]
    ignore_upstream_cache_filter: bool,
    /// Times to retry a request that failed for a reason that may pass
    /// (server unreachable or failing), waiting 1 s, then 2 s, 4 s, ...
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Accepted for Attic's command lines; this client always sends a
    /// path's description ahead of its NAR.
    #[arg(long, hide = true)]
    force_preamble: bool,
    /// Print one JSON object per line on stdout: one per path, then a
    /// summary.
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
    /// Print nothing but errors (on stderr).
    #[arg(short, long)]
    quiet: bool,
    /// Compress NARs on the wire: `auto` sends the first megabytes
    /// compressed and keeps compressing only if the link, not the
    /// compressor, was the bottleneck (never to a loopback address).
    #[arg(long, value_enum, default_value_t = UploadCompression::Auto)]
    compression: UploadCompression,
}

pub async fn run(args: Push) -> Result<ExitCode> {
    let mut arguments = args.paths;
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            let line = line.trim();
            if !line.is_empty() {
                arguments.push(line.to_owned());
            }
        }
    }
    if arguments.is_empty() {
        bail!("no paths to push: give store paths as arguments, or --stdin");
    }
    let options = PushOptions {
        jobs: args.jobs,
        closure: !args.no_closure,
        ignore_upstream_cache_filter: args.ignore_upstream_cache_filter,
        retries: args.retries,
        output: output_mode(args.json, args.quiet),
        compression: args.compression,
        ..PushOptions::default()
    };
    let api = client_for(&args.cache)?;
    let pusher = Pusher::connect(api, args.cache.cache.clone(), &options).await?;
    let paths = arguments
        .iter()
        .map(|a| resolve_path_argument(pusher.store_dir(), a))
        .collect::<Result<Vec<_>>>()?;
    let summary = pusher.push(&paths, &options).await?;
    print_summary(options.output, &summary.report());
    for (path, reason) in &summary.failed {
        eprintln!("error: {path} was not pushed: {reason}");
    }
    Ok(ExitCode::from(exit_code(&summary)))
}

/// How the output flags choose the output.
pub(super) fn output_mode(json: bool, quiet: bool) -> OutputMode {
    match (json, quiet) {
        (true, _) => OutputMode::Json,
        (false, true) => OutputMode::Quiet,
        (false, false) => OutputMode::Human,
    }
}

/// 0 when every path is in the cache now; [`EXIT_SOME_FAILED`] when some
/// paths failed and others were pushed; [`EXIT_ALL_FAILED`] when every path
/// that needed pushing failed. An error before any upload (no such cache,
/// a refused token, a path not in the store) is 1, and a bad command line
/// 2, as for every command.
pub fn exit_code(summary: &PushSummary) -> u8 {
    match (summary.failed.len(), summary.pushed) {
        (0, _) => 0,
        (_, 0) => EXIT_ALL_FAILED,
        _ => EXIT_SOME_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_none_some_and_all_failed_apart() {
        let failure = || ("/nix/store/x-a".to_owned(), "refused".to_owned());
        let none = PushSummary {
            pushed: 2,
            already_present: 1,
            ..PushSummary::default()
        };
        assert_eq!(exit_code(&none), 0);
        assert_eq!(exit_code(&PushSummary::default()), 0);
        let some = PushSummary {
            pushed: 1,
            failed: vec![failure()],
            ..PushSummary::default()
        };
        assert_eq!(exit_code(&some), EXIT_SOME_FAILED);
        // Paths already present do not make a push whose uploads all
        // failed a partial success.
        let all = PushSummary {
            already_present: 5,
            failed: vec![failure(), failure()],
            ..PushSummary::default()
        };
        assert_eq!(exit_code(&all), EXIT_ALL_FAILED);
    }
}
