//! `attic push CACHE PATH...`.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use super::client_for;
use crate::cache_ref::CacheRef;
use crate::nix_store::resolve_path_argument;
use crate::push::{PushOptions, Pusher};

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
        ..PushOptions::default()
    };
    let api = client_for(&args.cache)?;
    let pusher = Pusher::connect(api, args.cache.cache.clone(), &options).await?;
    let paths = arguments
        .iter()
        .map(|a| resolve_path_argument(pusher.store_dir(), a))
        .collect::<Result<Vec<_>>>()?;
    let summary = pusher.push(&paths, &options).await?;
    println!("{}", summary.line());
    if summary.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for (path, reason) in &summary.failed {
            eprintln!("error: {path} was not pushed: {reason}");
        }
        Ok(ExitCode::FAILURE)
    }
}
