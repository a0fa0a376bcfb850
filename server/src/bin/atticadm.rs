//! `atticadm`: administration. Reads the same config as `atticd` (creating
//! the default one if this is the first command ever run).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use attic::api::v1::cache_log::{MAX_PAGE, TABLE_HEADING, format_time, parse_since, printable};
use attic_token::{Attenuation, CacheNamePattern, Permission, Token, TokenSpec, attenuate};
use clap::{Parser, Subcommand};
use server::database::{
    Actor, AuditAction, AuditEvent, AuditQuery, AuditScope, Database, IssuedToken, RegisteredToken,
    Revoked, TokenGrant,
};
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
    /// List the tokens make-token and attenuate-token issued (never the
    /// tokens themselves): subject, id, grants, expiry, and whether each is
    /// revoked, by id (its own or a token's it was attenuated from) or by
    /// subject. Tokens issued before the registry existed are not listed.
    ListTokens {
        /// Only tokens of this subject.
        #[arg(long)]
        subject: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Data directory of the embedded database [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show the audit log, oldest first: every push, import, cache
    /// creation, configuration and destruction, token issued and revoked,
    /// with its time, token subject, cache and path.
    Audit {
        /// Only events of caches of this name (past ones included).
        #[arg(long)]
        cache: Option<String>,
        /// Only events since then: a duration back from now (`2h`, `7d`)
        /// or an RFC 3339 time (`2026-12-01T00:00:00Z`).
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Data directory of the embedded database [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Narrow a token offline: fewer caches, fewer permissions, an earlier expiry.
    /// Needs no key; anyone holding a token can do this. Where the server's
    /// config is at hand, the new token is also entered in the registry
    /// (`list-tokens`).
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
        /// Data directory of the embedded database [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
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
    /// Copy this server (database, the blobs it names, config) into DEST,
    /// a new or empty directory, while it runs and takes pushes: every push
    /// acknowledged before the backup began is in the copy. SQLite only;
    /// on PostgreSQL, see the book's "Backup and restore" page.
    Backup {
        /// Where the backup goes.
        #[arg(value_name = "DEST")]
        destination: PathBuf,
        /// Data directory of the embedded database and storage [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Bring a backup up on a fresh server: its blobs into the storage the
    /// config names, then its database (which must not exist yet). The
    /// config (`-f`, or the default path) is written from the backup if
    /// there is none there yet. Start atticd afterwards.
    Restore {
        /// The backup's directory, as `atticadm backup` wrote it.
        #[arg(value_name = "SRC")]
        source: PathBuf,
        /// Data directory for the embedded database and storage [default: $XDG_DATA_HOME/attic].
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
    /// Data directory of the embedded database, where the token is
    /// registered [default: $XDG_DATA_HOME/attic].
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
            let data_dir = setup::data_dir(args.data_dir.clone(), &loaded.config)?;
            let database =
                setup::open_database(&loaded.config, &data_dir, OpenDatabase::Existing).await?;
            let expires_at = SystemTime::now() + args.validity;
            let spec = TokenSpec {
                subject: args.sub,
                expires_at: Some(expires_at),
                grants: grants.clone(),
            };
            let token = spec.sign(root)?;
            let grants = grants
                .iter()
                .map(|(pattern, permission)| TokenGrant {
                    pattern: pattern.as_str().to_owned(),
                    permission: permission.as_str().to_owned(),
                })
                .collect();
            // Registered before it is printed: no token leaves this command
            // without its record.
            register(
                &database,
                &token,
                None,
                grants,
                None,
                None,
                Some(expires_at),
            )
            .await
            .context("recording the token in the registry")?;
            println!("{}", token.to_base64()?);
        }
        Command::ListTokens {
            subject,
            json,
            data_dir,
        } => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            let data_dir = setup::data_dir(data_dir, &loaded.config)?;
            let database =
                setup::open_database(&loaded.config, &data_dir, OpenDatabase::Existing).await?;
            let tokens = database.list_tokens(subject.as_deref()).await?;
            print_tokens(&tokens, json)?;
        }
        Command::Audit {
            cache,
            since,
            json,
            data_dir,
        } => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            let scope = match cache {
                Some(name) => AuditScope::CacheName(
                    name.parse()
                        .with_context(|| format!("{name:?} is not a cache name"))?,
                ),
                None => AuditScope::All,
            };
            let since = since
                .map(|text| parse_since(&text, SystemTime::now()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let data_dir = setup::data_dir(data_dir, &loaded.config)?;
            let database =
                setup::open_database(&loaded.config, &data_dir, OpenDatabase::Existing).await?;
            print_audit(&database, scope, since, json).await?;
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
                let id = token.own_revocation_id();
                let detail = match token.subject() {
                    Some(subject) => format!("token {id} of subject {subject}"),
                    None => format!("token {id}"),
                };
                let audit =
                    AuditEvent::new(AuditAction::RevokeToken, Actor::Atticadm).with_detail(detail);
                database.revoke(&[id], audit).await?;
                eprintln!(
                    "revoked {} (and every token attenuated from it)",
                    token.subject().unwrap_or_default()
                );
            }
            if let Some(subject) = subject {
                let audit = AuditEvent::new(AuditAction::RevokeSubject, Actor::Atticadm)
                    .with_detail(format!("subject {subject}"));
                database.revoke_subject(&subject, audit).await?;
                eprintln!("revoked every token whose subject is {subject:?}");
            }
        }
        Command::AttenuateToken {
            token,
            caches,
            permissions,
            validity,
            data_dir,
        } => {
            let attenuation = Attenuation {
                caches: (!caches.is_empty()).then_some(caches),
                permissions: (!permissions.is_empty()).then_some(permissions),
                expires_at: validity.map(|v| SystemTime::now() + v),
            };
            let narrowed = attenuate(&token, &attenuation)?;
            println!("{narrowed}");
            // Attenuating needs no server; recording it does.
            if let Err(e) =
                register_attenuated(options.config.as_deref(), data_dir, &narrowed, &attenuation)
                    .await
            {
                eprintln!("note: the new token is not in the token registry: {e:#}");
            }
        }
        Command::Gc { data_dir } => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            let data_dir = setup::data_dir(data_dir, &loaded.config)?;
            collect_garbage(&loaded.config, &data_dir).await?;
        }
        Command::Backup {
            destination,
            data_dir,
        } => {
            let loaded = setup::load_existing_config(options.config.as_deref())?;
            let data_dir = setup::data_dir(data_dir, &loaded.config)?;
            let report =
                server::backup::backup(&loaded.config, Some(&loaded.path), &data_dir, &destination)
                    .await?;
            print_backup_report(&report, &destination);
        }
        Command::Restore { source, data_dir } => {
            let report =
                server::backup::restore(&source, options.config.as_deref(), data_dir).await?;
            println!(
                "restored {} blobs ({}) and the database {}",
                report.blobs,
                indicatif::HumanBytes(report.bytes),
                report.database.display()
            );
            if report.config_restored {
                println!(
                    "wrote the config {} from the backup",
                    report.config.display()
                );
            }
            println!(
                "start atticd on it (it applies any pending migrations); `atticadm verify` reads every pack back"
            );
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

/// Enters a token `atticadm` issued in the registry, with an
/// `issue-token` audit event.
async fn register(
    database: &Database,
    token: &Token,
    parent_token_id: Option<String>,
    grants: Vec<TokenGrant>,
    caches: Option<Vec<String>>,
    permissions: Option<Vec<String>>,
    expires_at: Option<SystemTime>,
) -> Result<()> {
    let token_id = token.own_revocation_id();
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    let mut detail = format!("token {token_id}");
    if let Some(subject) = token.subject() {
        detail.push_str(&format!(" of subject {subject}"));
    }
    if let Some(parent) = &parent_token_id {
        detail.push_str(&format!(", attenuated from {parent}"));
    }
    let audit = AuditEvent::new(AuditAction::IssueToken, Actor::Atticadm).with_detail(detail);
    database
        .register_token(
            IssuedToken {
                token_id,
                parent_token_id,
                subject: token.subject().map(str::to_owned),
                revocation_ids: token.revocation_ids(),
                grants,
                caches,
                permissions,
                expires_at: expires_at.map(unix),
                issued_at: unix(SystemTime::now()),
            },
            audit,
        )
        .await?;
    Ok(())
}

/// Registers a token `attenuate-token` made, if this machine has the
/// server's config, key and database.
async fn register_attenuated(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
    narrowed: &str,
    attenuation: &Attenuation,
) -> Result<()> {
    let loaded = setup::load_existing_config(config)?;
    let keys = loaded.config.token_keys()?;
    let root = keys
        .biscuit_root_key()
        .context("this server has no token-root-key")?;
    let token =
        Token::parse(narrowed, &root.public()).context("the token is not one of this server's")?;
    let ids = token.revocation_ids();
    let parent = ids.len().checked_sub(2).map(|i| ids[i].clone());
    let data_dir = setup::data_dir(data_dir, &loaded.config)?;
    let database = setup::open_database(&loaded.config, &data_dir, OpenDatabase::Existing).await?;
    register(
        &database,
        &token,
        parent,
        Vec::new(),
        attenuation
            .caches
            .as_ref()
            .map(|c| c.iter().map(|p| p.as_str().to_owned()).collect()),
        attenuation
            .permissions
            .as_ref()
            .map(|p| p.iter().map(|p| p.as_str().to_owned()).collect()),
        attenuation.expires_at,
    )
    .await
}

/// Prints the registry: a table, or one JSON object per line. An
/// attenuated token shows what it narrows (`caches=`, `permissions=`) and
/// the token it came from, whose grants bound it.
fn print_tokens(tokens: &[RegisteredToken], json: bool) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<21} {:<21} {:<16} {:<17} {:<16} GRANTS",
            "ISSUED", "EXPIRES", "SUBJECT", "ID", "STATE"
        )?;
    }
    for registered in tokens {
        let token = &registered.token;
        let state = match registered.revoked {
            None if token
                .expires_at
                .is_some_and(|at| at < server::database::now()) =>
            {
                "expired"
            }
            None => "valid",
            Some(Revoked::Token) => "revoked",
            Some(Revoked::Subject) => "revoked-subject",
        };
        if json {
            let line = serde_json::json!({
                "subject": token.subject,
                "token_id": token.token_id,
                "parent_token_id": token.parent_token_id,
                "grants": token.grants,
                "caches": token.caches,
                "permissions": token.permissions,
                "expires_at": token.expires_at,
                "issued_at": token.issued_at,
                "state": state,
                "revoked": registered.revoked.is_some(),
            });
            writeln!(out, "{line}")?;
            continue;
        }
        let mut grants: Vec<String> = token
            .grants
            .iter()
            .map(|g| format!("{}:{}", g.permission, g.pattern))
            .collect();
        if let Some(parent) = &token.parent_token_id {
            grants.push(format!("from={}", short_id(parent)));
        }
        if let Some(caches) = &token.caches {
            grants.push(format!("caches={}", caches.join(",")));
        }
        if let Some(permissions) = &token.permissions {
            grants.push(format!("permissions={}", permissions.join(",")));
        }
        writeln!(
            out,
            "{:<21} {:<21} {:<16} {:<17} {:<16} {}",
            format_time(token.issued_at),
            token.expires_at.map_or("never".to_owned(), format_time),
            printable(token.subject.as_deref().unwrap_or("-")),
            short_id(&token.token_id),
            state,
            printable(&grants.join(" "))
        )?;
    }
    Ok(())
}

/// The first 16 hex digits of a token id: enough to tell tokens apart in a
/// table (`--json` shows the whole id).
fn short_id(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// Prints the audit log a page at a time, so a huge log is never held in
/// memory whole.
async fn print_audit(
    database: &Database,
    scope: AuditScope,
    since: Option<i64>,
    json: bool,
) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(out, "{TABLE_HEADING}")?;
    }
    let mut after = None;
    loop {
        let page = database
            .read_audit(&AuditQuery {
                scope: scope.clone(),
                since,
                after,
                limit: MAX_PAGE,
            })
            .await?;
        for record in &page {
            let entry = server::api::v1::cache_log::entry(record);
            if json {
                writeln!(out, "{}", serde_json::to_string(&entry)?)?;
            } else {
                writeln!(out, "{}", entry.table_row())?;
            }
        }
        match page.last() {
            Some(last) if page.len() as u64 == MAX_PAGE => after = Some(last.id),
            _ => break,
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
            "kept past retention: {} (pinned, or paths kept reference them)",
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

/// Says what a backup holds, and what it left out and why.
fn print_backup_report(report: &server::backup::BackupReport, destination: &std::path::Path) {
    println!(
        "backed up to {}: the database, {} packs and {} build logs ({})",
        destination.display(),
        report.packs,
        report.logs,
        indicatif::HumanBytes(report.bytes)
    );
    if report.deleting_packs_gone > 0 {
        println!(
            "{} packs the garbage collector was deleting were already gone (the restored collector forgets them)",
            report.deleting_packs_gone
        );
    }
    if report.logs_gone > 0 {
        println!(
            "{} build logs replaced or removed while the backup ran are left out",
            report.logs_gone
        );
    }
    for key in &report.wrong_size {
        println!(
            "warning: pack {key} is not the size its row says: damaged here, and in the backup"
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
