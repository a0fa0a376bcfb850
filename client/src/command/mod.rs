//! The `attic` command line: one module per subcommand.

mod cache;
mod get_closure;
mod login;
mod oidc;
mod pin;
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
    /// Keep a store path's closure in a cache whatever retention and
    /// quotas say: add, list or remove named pins.
    #[command(subcommand)]
    Pin(pin::PinCommand),
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
        Command::Pin(args) => pin::run(args).await,
        Command::WatchStore(args) => watch_store::run(args).await,
        Command::GetClosure(args) => get_closure::run(args).await,
    }
}

/// The client for a cache argument, from the user's config.
fn client_for(cache: &crate::cache_ref::CacheRef) -> Result<crate::api::ApiClient> {
    let config = crate::config::ClientConfig::load()?;
    let (name, server) = cache.resolve(&config)?;
    crate::token_expiry::warn_once(name, &server.endpoint, server.token.as_deref());
    Ok(crate::api::ApiClient::new(server))
}

/// The client for a server argument: a login name, or the default server.
fn client_for_server(server: Option<&str>) -> Result<crate::api::ApiClient> {
    let config = crate::config::ClientConfig::load()?;
    let (name, entry) = match server {
        Some(name) => {
            let entry = config.servers.get(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "no server named {name:?}: run `attic login {name} URL TOKEN` first"
                )
            })?;
            if let Some(error) = &entry.token_file_error {
                anyhow::bail!("{error}");
            }
            (name, entry)
        }
        None => {
            // Any cache name resolves the default server the same way.
            let any: crate::cache_ref::CacheRef = "x".parse()?;
            any.resolve(&config)?
        }
    };
    crate::token_expiry::warn_once(name, &entry.endpoint, entry.token.as_deref());
    Ok(crate::api::ApiClient::new(entry))
}

/// `--jobs`: a count of uploads at once, at least one.
fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(jobs) => Ok(jobs),
        Err(e) => Err(e.to_string()),
    }
}
