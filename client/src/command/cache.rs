//! `attic cache create|configure|info|destroy|list|delete-path|log`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use attic::api::v1::cache_config::{
    CacheConfig, CreateCacheRequest, KeyRotation, KeypairConfig, QuotaConfig,
    RetentionPeriodConfig, UpstreamCacheConfig,
};
use attic::api::v1::cache_log::{CacheLogQuery, TABLE_HEADING, parse_since};
use clap::{Args, Subcommand};

use super::client_for;
use crate::cache_ref::CacheRef;

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Create a cache, with a new signing key.
    Create(Create),
    /// Change a cache's settings.
    Configure(Configure),
    /// Show a cache's settings and public key.
    Info {
        /// The cache: `server:cache` or a name on the default server.
        cache: CacheRef,
    },
    /// List the caches your token may see, with their sizes.
    List {
        /// A server's login name; the default server if absent.
        server: Option<String>,
    },
    /// Remove store paths from a cache at once (their narinfos answer 404
    /// from then on); other caches holding them are not touched.
    DeletePath(DeletePath),
    /// Show the cache's audit log, oldest first: who pushed which path,
    /// created, configured or destroyed the cache, and when. Needs
    /// configure_cache on the cache.
    Log {
        /// The cache: `server:cache` or a name on the default server.
        cache: CacheRef,
        /// Only events since then: a duration back from now (`2h`, `7d`)
        /// or an RFC 3339 time (`2026-12-01T00:00:00Z`).
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Destroy a cache and everything in it.
    Destroy {
        /// The cache: `server:cache` or a name on the default server.
        cache: CacheRef,
        /// Do not ask for confirmation.
        #[arg(long)]
        no_confirm: bool,
    },
}

/// Arguments of `attic cache create`.
#[derive(Debug, Args)]
pub struct Create {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// Let anyone pull without a token.
    #[arg(long)]
    public: bool,
    /// Substituter priority; lower is preferred (cache.nixos.org is 40).
    #[arg(long, default_value_t = 41)]
    priority: i32,
    /// Upstream key whose paths need not be pushed (repeatable).
    #[arg(long = "upstream-cache-key-name", default_values_t = ["cache.nixos.org-1".to_owned()])]
    upstream_cache_key_names: Vec<String>,
    /// The Nix store directory of the cache's paths.
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
}

/// Arguments of `attic cache delete-path`.
#[derive(Debug, Args)]
pub struct DeletePath {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// Store paths (or links to them), or their 32-character hashes.
    paths: Vec<String>,
    /// Also read paths from stdin, one per line.
    #[arg(long)]
    stdin: bool,
}

/// Arguments of `attic cache configure`.
#[derive(Debug, Args)]
pub struct Configure {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// Let anyone pull without a token.
    #[arg(long, conflicts_with = "private")]
    public: bool,
    /// Require a token to pull.
    #[arg(long)]
    private: bool,
    /// Substituter priority; lower is preferred.
    #[arg(long)]
    priority: Option<i32>,
    /// Upstream key whose paths need not be pushed (repeatable; replaces the list).
    #[arg(long = "upstream-cache-key-name")]
    upstream_cache_key_names: Vec<String>,
    /// Pull paths the cache misses through from this binary cache
    /// (repeatable, asked in the order given; each needs its
    /// `--upstream-key`; replaces the list).
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,
    /// The public key (`name:base64`) the `--upstream` of the same
    /// position signs with: only paths it signed are taken.
    #[arg(long = "upstream-key", value_name = "KEY")]
    upstream_keys: Vec<String>,
    /// Pull through from no upstream any more.
    #[arg(long, conflicts_with_all = ["upstreams", "upstream_keys"])]
    clear_upstreams: bool,
    /// Keep unread paths this long (`30d`, `6months`, `2 years`), or
    /// `global` for the server's default.
    #[arg(long, value_name = "PERIOD")]
    retention_period: Option<String>,
    /// Use the server's default retention period again (the same as
    /// `--retention-period global`).
    #[arg(long, conflicts_with = "retention_period")]
    reset_retention_period: bool,
    /// Largest size of the cache's paths (`50GiB`, `500MB`, `1TiB`), past
    /// which garbage collection removes the least recently read; `none`
    /// for no limit.
    #[arg(long)]
    quota: Option<String>,
    /// Replace the signing key at once; clients must trust the new public
    /// key before they can pull again.
    #[arg(long, conflicts_with = "rotate_keypair")]
    regenerate_keypair: bool,
    /// Replace the signing key without an outage: the old key keeps signing
    /// beside the new one for the `--overlap`, while clients move over.
    #[arg(long)]
    rotate_keypair: bool,
    /// How long the old key keeps signing after `--rotate-keypair` (`7d`,
    /// `12h`, `0` for not at all).
    #[arg(
        long,
        value_name = "DURATION",
        requires = "rotate_keypair",
        default_value = "7d"
    )]
    overlap: String,
}

pub async fn run(command: CacheCommand) -> Result<ExitCode> {
    match command {
        CacheCommand::Create(args) => {
            let api = client_for(&args.cache)?;
            let request = CreateCacheRequest {
                keypair: KeypairConfig::Generate,
                is_public: args.public,
                store_dir: args.store_dir,
                priority: args.priority,
                upstream_cache_key_names: args.upstream_cache_key_names,
            };
            api.create_cache(&args.cache.cache, &request).await?;
            let config = api.get_cache_config(&args.cache.cache).await?;
            eprintln!(
                "created {} cache {}",
                if args.public { "public" } else { "private" },
                args.cache
            );
            print_config(&config);
        }
        CacheCommand::Configure(args) => {
            let api = client_for(&args.cache)?;
            let patch = CacheConfig {
                keypair: args.regenerate_keypair.then_some(KeypairConfig::Generate),
                rotate_keypair: args
                    .rotate_keypair
                    .then(|| parse_overlap(&args.overlap))
                    .transpose()?,
                is_public: (args.public || args.private).then_some(args.public),
                priority: args.priority,
                upstream_cache_key_names: (!args.upstream_cache_key_names.is_empty())
                    .then_some(args.upstream_cache_key_names),
                retention_period: match (args.reset_retention_period, &args.retention_period) {
                    (true, _) => Some(RetentionPeriodConfig::Global),
                    (false, period) => period.as_deref().map(parse_retention).transpose()?,
                },
                quota: args.quota.as_deref().map(parse_quota).transpose()?,
                upstreams: upstreams(&args.upstreams, &args.upstream_keys, args.clear_upstreams)?,
                ..CacheConfig::default()
            };
            if patch == CacheConfig::default() {
                bail!(
                    "nothing to change: give at least one setting (see `attic cache configure --help`)"
                );
            }
            api.configure_cache(&args.cache.cache, &patch).await?;
            eprintln!("configured {}", args.cache);
            if args.regenerate_keypair || args.rotate_keypair {
                let config = api.get_cache_config(&args.cache.cache).await?;
                match (&config.previous_public_key, config.previous_key_signs_until) {
                    (Some(previous), Some(until)) => eprintln!(
                        "the cache has a new key; the old one, {previous}, signs beside it until                          {}: clients must trust the new key before then (`attic use` trusts both)",
                        show_time(until)
                    ),
                    _ => eprintln!("the cache has a new key; clients must trust it:"),
                }
                print_config(&config);
            }
        }
        CacheCommand::Info { cache } => {
            let api = client_for(&cache)?;
            print_config(&api.get_cache_config(&cache.cache).await?);
        }
        CacheCommand::List { server } => {
            let api = super::client_for_server(server.as_deref())?;
            print_caches(&api.list_caches().await?.caches);
        }
        CacheCommand::DeletePath(args) => return delete_paths(args).await,
        CacheCommand::Log { cache, since, json } => {
            let since = since
                .map(|text| parse_since(&text, std::time::SystemTime::now()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let api = client_for(&cache)?;
            print_log(&api, &cache, since, json).await?;
        }
        CacheCommand::Destroy { cache, no_confirm } => {
            let api = client_for(&cache)?;
            if !no_confirm {
                confirm_destroy(&cache)?;
            }
            api.destroy_cache(&cache.cache).await?;
            eprintln!("destroyed {cache}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes each path, reporting those the cache did not hold; fails only
/// on a real error (refused, unreachable, no such cache), after trying
/// every path.
async fn delete_paths(args: DeletePath) -> Result<ExitCode> {
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
        bail!("no paths to delete: give store paths or hashes as arguments, or --stdin");
    }
    let api = client_for(&args.cache)?;
    let store_dir = crate::nix_store::local_store_dir()?;
    let (mut not_found, mut failed) = (Vec::new(), 0);
    for argument in &arguments {
        let hash = match path_hash(&store_dir, argument) {
            Ok(hash) => hash,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
                continue;
            }
        };
        match api.delete_path(&args.cache.cache, &hash).await {
            Ok(()) => eprintln!("deleted {argument}"),
            Err(e) if e.error_name() == Some("NoSuchObject") => not_found.push(argument.as_str()),
            Err(e) => {
                eprintln!("error: deleting {argument}: {e}");
                failed += 1;
            }
        }
    }
    if !not_found.is_empty() {
        eprintln!("not in {} (nothing to delete):", args.cache);
        for argument in &not_found {
            eprintln!("  {argument}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {} paths could not be deleted", arguments.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// The hash of a store path argument: a bare hash, a store path, or a
/// link to one.
fn path_hash(
    store_dir: &attic::store_path::StoreDir,
    argument: &str,
) -> Result<attic::store_path::StorePathHash> {
    if let Ok(hash) = argument.parse() {
        return Ok(hash);
    }
    let path = crate::nix_store::resolve_path_argument(store_dir, argument)?;
    let path = store_dir
        .parse_path(&path)
        .map_err(|e| anyhow::anyhow!("{argument}: {e}"))?;
    Ok(path.hash().clone())
}

/// The caches as a table, one line each.
fn print_caches(caches: &[attic::api::v1::caches::CacheSummary]) {
    let bytes = |b: u64| indicatif::HumanBytes(b).to_string();
    let mut rows = vec![[
        "NAME".to_owned(),
        "PUBLIC".to_owned(),
        "PATHS".to_owned(),
        "STORED".to_owned(),
        "QUOTA".to_owned(),
        "QUOTA USED".to_owned(),
        "LAST PUSH".to_owned(),
    ]];
    for cache in caches {
        rows.push([
            cache.name.to_string(),
            if cache.is_public { "yes" } else { "no" }.to_owned(),
            cache.paths.to_string(),
            bytes(cache.stored_bytes),
            cache.quota.map_or_else(|| "none".to_owned(), bytes),
            bytes(cache.quota_used_bytes),
            cache
                .last_push
                .map_or_else(|| "never".to_owned(), super::pin::format_time),
        ]);
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Prints a cache's log a page at a time as it arrives, oldest first.
async fn print_log(
    api: &crate::api::ApiClient,
    cache: &CacheRef,
    since: Option<i64>,
    json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(out, "{TABLE_HEADING}")?;
    }
    let mut after = None;
    loop {
        let page = api
            .cache_log(
                &cache.cache,
                &CacheLogQuery {
                    since,
                    after,
                    limit: None,
                },
            )
            .await?;
        for entry in &page.events {
            if json {
                writeln!(out, "{}", serde_json::to_string(entry)?)?;
            } else {
                writeln!(out, "{}", entry.table_row())?;
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(())
}

fn parse_retention(text: &str) -> Result<RetentionPeriodConfig> {
    if text == "global" {
        return Ok(RetentionPeriodConfig::Global);
    }
    let duration: Duration = humantime::parse_duration(text).map_err(|e| {
        anyhow::anyhow!("--retention-period {text:?}: {e} (use e.g. 30d, 6months, or global)")
    })?;
    Ok(RetentionPeriodConfig::Period(
        u32::try_from(duration.as_secs())
            .map_err(|_| anyhow::anyhow!("--retention-period is too long"))?,
    ))
}

fn parse_overlap(text: &str) -> Result<KeyRotation> {
    let duration: Duration = humantime::parse_duration(text).map_err(|e| {
        anyhow::anyhow!("--overlap {text:?}: {e} (use e.g. 7d, 12h, or 0 for none)")
    })?;
    // A part of a second still overlaps: round up, never down to none.
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    Ok(KeyRotation {
        overlap_seconds: seconds,
    })
}

/// A Unix time as RFC 3339, in UTC.
fn show_time(unix_seconds: i64) -> String {
    let time =
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

fn parse_quota(text: &str) -> Result<QuotaConfig> {
    if text == "none" {
        return Ok(QuotaConfig::Unlimited);
    }
    parse_size(text).map(QuotaConfig::Bytes).ok_or_else(|| {
        anyhow::anyhow!("--quota {text:?} is not a size: use e.g. 50GiB, 500MB, or none")
    })
}

/// `50GiB`, `500MB`, `1.5TiB`, `123` (bytes): decimal (`kB`, `MB`, `GB`,
/// `TB`) and binary (`KiB`, `MiB`, `GiB`, `TiB`) units.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = number * factor as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn confirm_destroy(cache: &CacheRef) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "refusing to destroy {cache} without confirmation: no terminal to ask on; pass --no-confirm"
        );
    }
    eprint!(
        "This destroys {cache} and every path in it, at once and for good.\nType the cache name to confirm: "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != cache.cache.as_str() {
        bail!("not confirmed; nothing was destroyed");
    }
    Ok(())
}

/// `--upstream` and `--upstream-key`, paired in order: the whole new list,
/// `[]` for `--clear-upstreams`, or `None` to leave it.
fn upstreams(
    urls: &[String],
    keys: &[String],
    clear: bool,
) -> Result<Option<Vec<UpstreamCacheConfig>>> {
    if clear {
        return Ok(Some(Vec::new()));
    }
    if urls.len() != keys.len() {
        bail!(
            "give one --upstream-key per --upstream, in the same order ({} URLs, {} keys)",
            urls.len(),
            keys.len()
        );
    }
    if urls.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        urls.iter()
            .zip(keys)
            .map(|(url, key)| UpstreamCacheConfig {
                url: url.clone(),
                public_key: key.clone(),
            })
            .collect(),
    ))
}

fn print_config(config: &CacheConfig) {
    let show = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    println!("public key:        {}", show(config.public_key.clone()));
    if let (Some(previous), Some(until)) =
        (&config.previous_public_key, config.previous_key_signs_until)
    {
        println!(
            "previous key:      {previous} (also signs until {})",
            show_time(until)
        );
    }
    println!(
        "substituter:       {}",
        show(config.substituter_endpoint.clone())
    );
    println!(
        "public:            {}",
        show(config.is_public.map(|p| p.to_string()))
    );
    println!("store dir:         {}", show(config.store_dir.clone()));
    println!(
        "priority:          {}",
        show(config.priority.map(|p| p.to_string()))
    );
    println!(
        "upstream keys:     {}",
        show(
            config
                .upstream_cache_key_names
                .as_ref()
                .map(|n| n.join(", "))
        )
    );
    match config.upstreams.as_deref() {
        None | Some([]) => println!("pulls through:     -"),
        Some(list) => {
            for (i, upstream) in list.iter().enumerate() {
                let label = if i == 0 { "pulls through:" } else { "" };
                println!("{label:<19}{} ({})", upstream.url, upstream.public_key);
            }
        }
    }
    println!(
        "retention period:  {}",
        match config.retention_period {
            None | Some(RetentionPeriodConfig::Global) => "server default".to_owned(),
            Some(RetentionPeriodConfig::Period(0)) => "forever".to_owned(),
            Some(RetentionPeriodConfig::Period(seconds)) =>
                humantime::format_duration(Duration::from_secs(u64::from(seconds))).to_string(),
        }
    );
    let used = config
        .used_bytes
        .map(|b| indicatif::HumanBytes(b).to_string());
    println!(
        "quota:             {}",
        match config.quota {
            None => "-".to_owned(),
            Some(QuotaConfig::Unlimited) => "none".to_owned(),
            Some(QuotaConfig::Bytes(bytes)) => indicatif::HumanBytes(bytes).to_string(),
        }
    );
    println!("used:              {}", show(used));
}

#[cfg(test)]
mod tests {
    use super::{RetentionPeriodConfig, parse_overlap, parse_retention, parse_size, show_time};

    #[test]
    fn overlaps_parse_as_durations_and_zero_means_none() {
        assert_eq!(
            parse_overlap("7d").expect("days").overlap_seconds,
            7 * 86400
        );
        assert_eq!(parse_overlap("1s").expect("seconds").overlap_seconds, 1);
        assert_eq!(parse_overlap("0").expect("zero").overlap_seconds, 0);
        assert_eq!(parse_overlap("1500ms").expect("millis").overlap_seconds, 2);
        assert!(parse_overlap("a while").is_err());
        assert_eq!(show_time(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn retention_periods_parse_as_attic_writes_them() {
        let year = 31_557_600;
        assert_eq!(
            parse_retention("2 years").expect("spaced"),
            RetentionPeriodConfig::Period(2 * year)
        );
        assert_eq!(
            parse_retention("1y").expect("short"),
            RetentionPeriodConfig::Period(year)
        );
        assert_eq!(
            parse_retention("global").expect("global"),
            RetentionPeriodConfig::Global
        );
        assert!(parse_retention("soon").is_err());
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("50GiB"), Some(50 << 30));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("1.5 KiB"), Some(1536));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("GiB"), None);
    }
}
