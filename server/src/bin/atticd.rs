//! `atticd`: the server. With no arguments it runs on SQLite and local disk
//! under `$XDG_DATA_HOME/attic`, creating its config on first start.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use server::setup::{self, OpenDatabase};

/// A multi-tenant, chunk-deduplicating Nix binary cache server.
#[derive(Debug, Parser)]
#[command(name = "atticd", version)]
struct Options {
    /// Config file [default: $ATTIC_SERVER_CONFIG_BASE64 when set (the
    /// whole file, base64), else $XDG_CONFIG_HOME/attic/server.toml,
    /// created on first start].
    #[arg(short = 'f', long)]
    config: Option<PathBuf>,
    /// Data directory for the default SQLite database and blob storage
    /// [default: $XDG_DATA_HOME/attic].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address, overriding the config's `listen` (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the operators' listener, serving `/_health` and
    /// `/metrics` alone, overriding the config's `metrics-listen` (port 0
    /// picks a free port).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Mode::Monolithic)]
    mode: Mode,
    /// Validate the configuration and exit (as `--mode check-config`).
    #[arg(long)]
    check_config: bool,
    /// Log format on stderr: `text` (coloured only on a terminal) or
    /// `json` (one object per line, for log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    /// Collect garbage every `garbage-collection.interval` (once, if it is
    /// zero), serving nothing but `/_health` and `/metrics` on `--listen`
    /// or `--metrics-listen` when given; one for a whole deployment.
    GarbageCollector,
    /// Collect garbage once and exit, non-zero if the run was skipped or
    /// failed (Attic's mode, for cron).
    GarbageCollectorOnce,
    /// Validate the configuration, say what each key of the file means
    /// here, check the database and storage answer, and exit.
    CheckConfig,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut options = Options::parse();
    if options.mode == Mode::CheckConfig {
        options.check_config = true;
    }
    // Flushes what is still queued when main returns.
    let _log_writer = init_logging(options.log_format)?;
    server::serve::raise_open_file_limit();
    // Only the monolithic server sets itself up; a replica or a migration
    // run acts on a deployment that exists, so it needs its config.
    let loaded = if options.mode == Mode::Monolithic && !options.check_config {
        setup::load_or_generate_config(options.config.as_deref())?
    } else {
        setup::load_existing_config(options.config.as_deref())?
    };
    // The TLS files are read before anything starts, so a bad one stops a
    // first start before it writes its config.
    let tls = loaded
        .config
        .tls
        .as_ref()
        .map(server::serve::tls_acceptor)
        .transpose()?;
    if options.check_config {
        println!("{}: configuration is valid", loaded.path.display());
        for line in &loaded.key_report {
            println!("{line}");
        }
        if let Some(tls) = &loaded.config.tls {
            println!(
                "tls: {} and {} load",
                tls.certificate.display(),
                tls.key.display()
            );
        }
        let data_dir = setup::data_dir(options.data_dir.clone(), &loaded.config)?;
        for line in setup::check_services(&loaded.config, &data_dir).await? {
            println!("{line}");
        }
        return Ok(());
    }
    let mut config = loaded.config.clone();
    if let Some(listen) = options.listen {
        config.listen = listen;
    }
    let data_dir = setup::data_dir(options.data_dir, &config)?;

    if options.mode == Mode::DbMigrations {
        setup::open_database(&config, &data_dir, OpenDatabase::CreateAndMigrate).await?;
        println!("database migrations applied");
        return Ok(());
    }

    if options.mode == Mode::GarbageCollectorOnce {
        let state = setup::build_state(config, &data_dir, OpenDatabase::Existing).await?;
        let report = server::gc::collect(&state)
            .await
            .context("the garbage collection did not complete")?;
        println!("{report}");
        return Ok(());
    }

    if options.mode == Mode::GarbageCollector {
        // Probes only when asked for: a collector shares its config, and
        // so its `listen` and `metrics-listen`, with the API servers, often
        // on one machine. Either flag gives the same probes listener: the
        // collector has no public one.
        let mut probes = Vec::new();
        for address in [options.metrics_listen, options.listen]
            .into_iter()
            .flatten()
        {
            probes.push(setup::bind(address).await?);
        }
        let state = setup::build_state(config, &data_dir, OpenDatabase::Existing).await?;
        for listener in probes {
            println!("atticd listening on http://{}/", listener.local_addr()?);
            setup::serve_probes(state.clone(), listener);
        }
        return setup::collect_garbage_until_stopped(state).await;
    }

    if let Some(metrics_listen) = options.metrics_listen {
        config.metrics_listen = Some(metrics_listen);
    }
    let listener = setup::bind(config.listen).await?;
    let address = listener.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(address) => Some(setup::bind(address).await?),
        None => None,
    };
    // Replicas leave migrations to one `--mode db-migrations` run, so that
    // they never race each other over the schema, and refuse a schema they
    // do not know.
    let how = match options.mode {
        Mode::Monolithic => OpenDatabase::CreateAndMigrate,
        _ => OpenDatabase::Existing,
    };
    let state = setup::build_state(config, &data_dir, how).await?;
    if options.mode == Mode::Monolithic {
        server::gc::spawn_periodic(state.clone());
    }
    // A first start writes its configuration only now that the server is
    // up, so a failed one leaves nothing and the next shows the token.
    if loaded.generated {
        loaded.persist()?;
        println!(
            "First start: wrote {}.\nRoot token (every permission on every cache; keep it secret):\n\n{}\n\n\
             Make narrower tokens with `atticadm make-token`.\n",
            loaded.path.display(),
            setup::root_token(&loaded.config)?
        );
    }
    // Plain HTTP, and never the public listener: operators keep it on
    // loopback or a private network.
    if let Some(listener) = metrics_listener {
        println!(
            "atticd serving metrics on http://{}/metrics",
            listener.local_addr()?
        );
        setup::serve_probes(state.clone(), listener);
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("atticd listening on {scheme}://{address}/");
    setup::serve(state, listener, tls).await
}

/// Logs to stderr at `RUST_LOG` (default `info`) in the chosen format.
/// Lines are gathered in memory and written by a background thread a few
/// times a second ([`server::log_writer`]): a line per request must not
/// cost every request a write to stderr, nor a wake-up of that thread.
/// Nothing is dropped.
fn init_logging(format: LogFormat) -> Result<server::log_writer::FlushGuard<std::io::Stderr>> {
    // Colour only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = server::log_writer::BatchedWriter::new(std::io::stderr())
        .context("cannot start the log writer thread")?;
    // PostgreSQL's notices ("relation ... already exists, skipping" on
    // every migration check) are not news to an operator.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx::postgres::notice=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        // In colour for a person; lean plain lines for a file or collector.
        LogFormat::Text if ansi => builder.with_ansi(true).init(),
        LogFormat::Text => builder.event_format(server::log_line::PlainLine).init(),
    }
    Ok(guard)
}
