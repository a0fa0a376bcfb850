//! `attic pin add|list|remove`: named GC roots of a cache.

use std::process::ExitCode;

use anyhow::{Context, Result};
use attic::api::v1::pins::{DEFAULT_KEEP, PinPathRequest};
use attic::pin::PinName;
use clap::{Args, Subcommand};

use super::client_for;
use crate::cache_ref::CacheRef;
use crate::nix_store::{local_store_dir, resolve_path_argument};

#[derive(Debug, Subcommand)]
pub enum PinCommand {
    /// Pin a path the cache holds under a name; its closure in the cache
    /// is then kept from retention and quota eviction.
    Add(Add),
    /// List a cache's pins and the paths each keeps.
    List {
        /// The cache: `server:cache` or a name on the default server.
        cache: CacheRef,
    },
    /// Remove a pin; what it kept is subject to retention and quotas again.
    Remove {
        /// The cache: `server:cache` or a name on the default server.
        cache: CacheRef,
        /// The pin's name.
        name: PinName,
    },
}

/// Arguments of `attic pin add`.
#[derive(Debug, Args)]
pub struct Add {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// The pin's name: letters, digits, `-`, `_` and `.`.
    name: PinName,
    /// The store path, or a link to it such as `./result`.
    path: String,
    /// How many of the pin's latest paths to keep, this one included:
    /// re-pinning the name to a new release keeps the previous N-1 too.
    #[arg(long, default_value_t = DEFAULT_KEEP)]
    keep: u32,
}

pub async fn run(command: PinCommand) -> Result<ExitCode> {
    match command {
        PinCommand::Add(args) => {
            let api = client_for(&args.cache)?;
            let store_path = resolve_path_argument(&local_store_dir()?, &args.path)?;
            let request = PinPathRequest {
                store_path,
                keep: Some(args.keep),
            };
            let pin = api
                .pin_path(&args.cache.cache, &args.name, &request)
                .await
                .with_context(|| format!("pinning {} in {}", args.path, args.cache))?;
            eprintln!(
                "pinned {} in {} as {} (keeping {})",
                request.store_path, args.cache, pin.name, pin.keep
            );
        }
        PinCommand::List { cache } => {
            let api = client_for(&cache)?;
            let pins = api.list_pins(&cache.cache).await?.pins;
            if pins.is_empty() {
                eprintln!("{cache} has no pins");
            }
            for pin in pins {
                println!("{} (keep {})", pin.name, pin.keep);
                for target in pin.targets {
                    println!("  {}  {}", target.store_path, format_time(target.pinned_at));
                }
            }
        }
        PinCommand::Remove { cache, name } => {
            let api = client_for(&cache)?;
            api.remove_pin(&cache.cache, &name).await?;
            eprintln!("removed pin {name} from {cache}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as an RFC 3339 UTC time.
pub(super) fn format_time(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}
