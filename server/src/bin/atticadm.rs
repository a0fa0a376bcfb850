//! `atticadm`: administration. Reads the same config as `atticd` (creating
//! the default one if this is the first command ever run).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use attic_token::{Attenuation, CacheNamePattern, Permission, Token, TokenSpec, attenuate};
use clap::{Parser, Subcommand};
use server::setup::{self, OpenDatabase};

/// Administer an atticd server.
#[derive(Debug, Parser)]
#[command(name = "atticadm", version)]
struct Options {
    /// Config file [default: $XDG_CONFIG_HOME/attic/server.toml].
    #[arg(short = 'f', long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Variants are named after the subcommands they parse.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a new token granting permissions on cache-name patterns (`*` matches any run of characters).
    MakeToken(MakeToken),
    /// Revoke a token, and every token attenuated from it; or, with
    /// `--subject`, every token (biscuit or Attic JWT) with that subject.
    RevokeToken {
        /// The token.
        #[arg(required_unless_present = "subject", conflicts_with = "subject")]
        token: Option<String>,
        /// Revoke every token whose subject (`sub`) is this, past and
        /// future, JWTs included, which cannot be revoked one by one.
        #[arg(long)]
        subject: Option<String>,
        /// Data directory of the embedded database [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Narrow a token offline: fewer caches, fewer permissions, an earlier expiry.
    /// Needs no key; anyone holding a token can do this.
    AttenuateToken {
        /// The token to narrow.
        token: String,
        /// Keep only caches matching one of these patterns.
        #[arg(long = "cache")]
        caches: Vec<CacheNamePattern>,
        /// Keep only these permissions.
        #[arg(long = "permission")]
        permissions: Vec<Permission>,
        /// Expire after this long at the latest (e.g. `1h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        validity: Option<Duration>,
    },
    /// Read every stored pack back and check each chunk against its
    /// checksum; mark what is damaged, so its paths read as missing and the
    /// next push repairs them. Exits non-zero if anything is damaged.
    Verify {
        /// Only the packs holding this cache's paths.
        #[arg(long)]
        cache: Option<String>,
        /// Data directory of the embedded database and storage [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Collect garbage once, as the config's `[garbage-collection]` says:
    /// expire paths, enforce quotas (both from the roots of each cache's
    /// reference graph, so every path left keeps its whole closure), reclaim
    /// destroyed caches, unheld NARs, unreferenced chunks and dead packs,
    /// compact, sweep orphans, all in one run; only the blobs of marked
    /// packs wait for the grace period. Prints what it reclaimed, and why
    /// bytes were not freed.
    Gc {
        /// Data directory of the embedded database and storage [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Bring an Attic server's caches (with their signing keys and
    /// settings), paths (with their metadata and times) and NAR bytes into
    /// this server, verifying every NAR against its hash. Only reads
    /// Attic's database and storage, so Attic may keep serving; run it
    /// again to resume or to catch up. Damaged NARs are skipped and
    /// reported; exits non-zero if any path was not brought over.
    ImportAttic(server::import::cli::ImportAttic),
}

#[derive(Debug, clap::Args)]
struct MakeToken {
    /// Who the token is for; recorded as the uploader of what it pushes.
    #[arg(long)]
    sub: String,
    /// How long it works, e.g. `1d`, `6months`, `1y`.
    #[arg(long, value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Caches it may pull from.
    #[arg(long, value_name = "PATTERN")]
    pull: Vec<CacheNamePattern>,
    /// Caches it may push to.
    #[arg(long, value_name = "PATTERN")]
    push: Vec<CacheNamePattern>,
    /// Caches it may delete paths from.
    #[arg(long, value_name = "PATTERN")]
    delete: Vec<CacheNamePattern>,
    /// Cache names it may create.
    #[arg(long, value_name = "PATTERN")]
    create_cache: Vec<CacheNamePattern>,
    /// Caches it may configure.
    #[arg(long, value_name = "PATTERN")]
    configure_cache: Vec<CacheNamePattern>,
    /// Caches whose retention period it may change.
    #[arg(long, value_name = "PATTERN")]
    configure_cache_retention: Vec<CacheNamePattern>,
    /// Caches it may destroy.
    #[arg(long, value_name = "PATTERN")]
    destroy_cache: Vec<CacheNamePattern>,
}

impl MakeToken {
    fn grants(&self) -> Vec<(CacheNamePattern, Permission)> {
        let lists = [
            (&self.pull, Permission::Pull),
            (&self.push, Permission::Push),
            (&self.delete, Permission::Delete),
            (&self.create_cache, Permission::CreateCache),
            (&self.configure_cache, Permission::ConfigureCache),
            (
                &self.configure_cache_retention,
                Permission::ConfigureCacheRetention,
            ),
            (&self.destroy_cache, Permission::DestroyCache),
        ];
        lists
            .into_iter()
            .flat_map(|(patterns, permission)| {
                patterns.iter().map(move |p| (p.clone(), permission))
            })
            .collect()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse();
    match options.command {
        Command::MakeToken(args) => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            let keys = loaded.config.token_keys()?;
            let root = keys
                .biscuit_root_key()
                .context("cannot make a biscuit token")?;
            let grants = args.grants();
            if grants.is_empty() {
                anyhow::bail!(
                    "the token would grant nothing: give at least one of --pull, --push, --delete, --create-cache, --configure-cache, --configure-cache-retention, --destroy-cache"
                );
            }
            let spec = TokenSpec {
                subject: args.sub,
                expires_at: Some(SystemTime::now() + args.validity),
                grants,
            };
            println!("{}", spec.sign(root)?.to_base64()?);
        }
        Command::RevokeToken {
            token,
            subject,
            data_dir,
        } => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            // Parse the token before touching the database: a token of
            // another server revokes nothing.
            let token = match token {
                Some(token) => {
                    let keys = loaded.config.token_keys()?;
                    let root = keys
                        .biscuit_root_key()
                        .context("cannot check a biscuit token")?;
                    Some(
                        Token::parse(&token, &root.public())
                            .context("the token is not valid for this server (to revoke an Attic JWT, use --subject with its sub)")?,
                    )
                }
                None => None,
            };
            let data_dir = setup::data_dir(data_dir, &loaded.config)?;
            let database =
                setup::open_database(&loaded.config, &data_dir, OpenDatabase::Existing).await?;
            if let Some(token) = token {
                database.revoke(&[token.own_revocation_id()]).await?;
                eprintln!(
                    "revoked {} (and every token attenuated from it)",
                    token.subject().unwrap_or_default()
                );
            }
            if let Some(subject) = subject {
                database.revoke_subject(&subject).await?;
                eprintln!("revoked every token whose subject is {subject:?}");
            }
        }
        Command::AttenuateToken {
            token,
            caches,
            permissions,
            validity,
        } => {
            let attenuation = Attenuation {
                caches: (!caches.is_empty()).then_some(caches),
                permissions: (!permissions.is_empty()).then_some(permissions),
                expires_at: validity.map(|v| SystemTime::now() + v),
            };
            println!("{}", attenuate(&token, &attenuation)?);
        }
        Command::Gc { data_dir } => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            let data_dir = setup::data_dir(data_dir, &loaded.config)?;
            collect_garbage(&loaded.config, &data_dir).await?;
        }
        Command::ImportAttic(args) => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            if !server::import::cli::run(args, loaded.config).await? {
                std::process::exit(1);
            }
        }
        Command::Verify { cache, data_dir } => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            let data_dir = setup::data_dir(data_dir, &loaded.config)?;
            if !verify(&loaded.config, &data_dir, cache.as_deref()).await? {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// One garbage collection, with its stages shown on a terminal.
async fn collect_garbage(
    config: &server::config::ServerConfig,
    data_dir: &std::path::Path,
) -> Result<()> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use server::gc::{Collector, Progress};

    struct Spinner(ProgressBar);
    impl Progress for Spinner {
        fn stage(&self, name: &'static str) {
            self.0.set_message(name);
        }
    }

    let database = setup::open_database(config, data_dir, OpenDatabase::Existing).await?;
    let storage = setup::open_storage(config, data_dir).await?;
    // Drawn only when stderr is a terminal.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} collecting garbage: {msg} ({elapsed})")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let progress = Spinner(bar.clone());
    let gc = config.garbage_collection;
    let report = Collector::new(&database, storage, &gc, &progress)
        .run()
        .await
        .context("garbage collection failed")?;
    bar.finish_and_clear();
    print_gc_report(&report, &gc);
    Ok(())
}

/// Prints what a collection did, and why it freed less than the paths it
/// removed weigh: NARs other caches still hold, and packs that wait for the
/// grace period (with when they can go).
fn print_gc_report(report: &server::gc::GcReport, gc: &server::config::GcConfig) {
    use indicatif::HumanBytes;
    let bytes = |b: i64| HumanBytes(u64::try_from(b).unwrap_or(0));
    println!(
        "objects: {} expired, {} evicted by quotas, {} of destroyed caches ({} caches forgotten)",
        report.objects_expired,
        report.objects_evicted,
        report.objects_of_destroyed_caches,
        report.caches_forgotten
    );
    if report.objects_kept_for_closures > 0 {
        println!(
            "kept past retention: {} (paths kept reference them)",
            report.objects_kept_for_closures
        );
    }
    if report.removed_nar_bytes > 0 {
        println!(
            "their NARs: {}, of which {} still held by other paths (the same paths in other caches), not freed",
            bytes(report.removed_nar_bytes),
            bytes(report.held_elsewhere_bytes)
        );
    }
    println!(
        "NARs: {}; chunks: {}; unclaimed nix-copy uploads: {}; logs removed: {}",
        report.nars, report.chunks, report.staged_expired, report.logs_removed
    );
    if report.audit_events_trimmed > 0 {
        println!(
            "audit events past audit-retention-period ({}): {} removed",
            humantime::format_duration(gc.audit_retention_period),
            report.audit_events_trimmed
        );
    }
    println!(
        "packs: {} marked for deletion, {} compacted, {} deleted; orphans swept: {}",
        report.packs_marked, report.packs_compacted, report.packs_deleted, report.orphans_swept
    );
    println!("freed: {}", bytes(report.bytes_freed));
    if report.packs_awaiting_deletion > 0 {
        println!(
            "waiting for the grace period ({}): {} in {} packs, deletable from {} by the next run",
            humantime::format_duration(gc.grace_period),
            bytes(report.bytes_awaiting_deletion),
            report.packs_awaiting_deletion,
            report
                .deletable_from
                .map_or_else(|| "now".to_owned(), server::gc::format_time)
        );
    }
}

/// Scrubs the store and prints a summary; whether everything is whole.
async fn verify(
    config: &server::config::ServerConfig,
    data_dir: &std::path::Path,
    cache: Option<&str>,
) -> Result<bool> {
    use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
    use server::scrub::{ScrubScope, scrub, scrub_size};

    let database = setup::open_database(config, data_dir, OpenDatabase::Existing).await?;
    let storage = setup::open_storage(config, data_dir).await?;
    let scope = match cache {
        Some(name) => {
            let name: attic::cache::CacheName = name
                .parse()
                .with_context(|| format!("{name:?} is not a cache name"))?;
            let cache = database
                .find_cache(&name)
                .await?
                .with_context(|| format!("there is no cache named {name:?}"))?;
            ScrubScope::Cache(cache.id)
        }
        None => ScrubScope::All,
    };
    let total = scrub_size(&database, scope).await?;
    // Drawn only when stderr is a terminal.
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "verifying {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
        )
        .expect("a valid template"),
    );
    let report = scrub(&database, storage, scope, &|bytes| bar.inc(bytes)).await?;
    bar.finish_and_clear();
    println!(
        "checked {} packs: {} chunks, {} of stored data",
        report.packs,
        report.chunks_ok + report.damage.len() as u64,
        HumanBytes(report.bytes)
    );
    for damage in &report.damage {
        println!("damaged: {damage}");
    }
    for pack in &report.unreadable {
        println!("unreadable (not marked; run verify again): {pack}");
    }
    println!(
        "found {} damaged; {} chunks are marked damaged in all{}",
        report.damage.len(),
        report.damaged_chunks,
        if report.damaged_chunks > 0 {
            " (their paths read as missing; push them again to repair them)"
        } else {
            ""
        }
    );
    Ok(report.is_clean())
}
