//! The `attic` command line: one module per subcommand.

mod cache;
mod get_closure;
mod login;
mod oidc;
mod push;
mod use_cache;
mod watch_store;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The client of an Attic binary cache.
#[derive(Debug, Parser)]
#[command(name = "attic", version)]
pub struct Options {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Save a server's URL and token under a name.
    Login(login::Login),
    /// Make a cache a substituter of the local Nix.
    Use(use_cache::Use),
    /// Push store paths and their closures to a cache.
    Push(push::Push),
    /// Create, configure, inspect or destroy caches.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Push new store paths as they appear, until interrupted.
    WatchStore(watch_store::WatchStore),
    /// Print the closure of a store path, one path per line.
    GetClosure(get_closure::GetClosure),
}

/// Runs a parsed command line.
pub async fn run(options: Options) -> Result<ExitCode> {
    match options.command {
        Command::Login(args) => login::run(args).await,
        Command::Use(args) => use_cache::run(args).await,
        Command::Push(args) => push::run(args).await,
        Command::Cache(args) => cache::run(args).await,
        Command::WatchStore(args) => watch_store::run(args).await,
        Command::GetClosure(args) => get_closure::run(args).await,
    }
}

/// The client for a cache argument, from the user's config.
fn client_for(cache: &crate::cache_ref::CacheRef) -> Result<crate::api::ApiClient> {
    let config = crate::config::ClientConfig::load()?;
    let (_, server) = cache.resolve(&config)?;
    Ok(crate::api::ApiClient::new(server))
}

/// `--jobs`: a count of uploads at once, at least one.
fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(jobs) => Ok(jobs),
        Err(e) => Err(e.to_string()),
    }
}
