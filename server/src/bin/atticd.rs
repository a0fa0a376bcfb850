//! `atticd`: the server. With no arguments it runs on SQLite and local disk
//! under `$XDG_DATA_HOME/attic`, creating its config on first start.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use server::setup;

/// A multi-tenant, chunk-deduplicating Nix binary cache server.
#[derive(Debug, Parser)]
#[command(name = "atticd", version)]
struct Options {
    /// Config file [default: $XDG_CONFIG_HOME/attic/server.toml, created on first start].
    #[arg(short = 'f', long)]
    config: Option<PathBuf>,
    /// Data directory for the default SQLite database and blob storage
    /// [default: $XDG_DATA_HOME/attic].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address, overriding the config's `listen` (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Mode::Monolithic)]
    mode: Mode,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The API and binary cache server, with migrations applied first.
    Monolithic,
    /// The API and binary cache server without migrations (for replicas
    /// behind a load balancer; run `--mode db-migrations` once first).
    ApiServer,
    /// Apply database migrations, then exit.
    DbMigrations,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let options = Options::parse();
    let loaded = setup::load_or_create_config(options.config.as_deref())?;
    if options.check_config {
        println!("{}: configuration is valid", loaded.path.display());
        return Ok(());
    }
    let mut config = loaded.config;
    if let Some(listen) = options.listen {
        config.listen = listen;
    }
    let data_dir = match options.data_dir {
        Some(dir) => dir,
        None => setup::default_data_dir()?,
    };

    if options.mode == Mode::DbMigrations {
        setup::open_database(&config, &data_dir, true).await?;
        println!("database migrations applied");
        return Ok(());
    }

    let listener = setup::bind(config.listen).await?;
    let address = listener.local_addr()?;
    let root_token = loaded
        .created
        .then(|| setup::root_token(&config))
        .transpose()?;
    // Replicas leave migrations to one `--mode db-migrations` run, so that
    // they never race each other over the schema.
    let migrate = options.mode == Mode::Monolithic;
    let state = setup::build_state(config, &data_dir, migrate).await?;
    if let Some(token) = root_token {
        println!(
            "First start: wrote {}.\nRoot token (every permission on every cache; keep it secret):\n\n{token}\n\n\
             Make narrower tokens with `atticadm make-token`.\n",
            loaded.path.display()
        );
    }
    println!("atticd listening on http://{address}/");
    setup::serve(state, listener).await
}
