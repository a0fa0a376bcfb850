//! `attic cache create|configure|info|destroy|log`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use attic::api::v1::cache_config::{
    CacheConfig, CreateCacheRequest, KeypairConfig, QuotaConfig, RetentionPeriodConfig,
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
    /// Replace the signing key; clients must trust the new public key.
    #[arg(long)]
    regenerate_keypair: bool,
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
                is_public: (args.public || args.private).then_some(args.public),
                priority: args.priority,
                upstream_cache_key_names: (!args.upstream_cache_key_names.is_empty())
                    .then_some(args.upstream_cache_key_names),
                retention_period: match (args.reset_retention_period, &args.retention_period) {
                    (true, _) => Some(RetentionPeriodConfig::Global),
                    (false, period) => period.as_deref().map(parse_retention).transpose()?,
                },
                quota: args.quota.as_deref().map(parse_quota).transpose()?,
                ..CacheConfig::default()
            };
            if patch == CacheConfig::default() {
                bail!(
                    "nothing to change: give at least one setting (see `attic cache configure --help`)"
                );
            }
            api.configure_cache(&args.cache.cache, &patch).await?;
            eprintln!("configured {}", args.cache);
            if args.regenerate_keypair {
                let config = api.get_cache_config(&args.cache.cache).await?;
                eprintln!("the cache has a new key; clients must trust it:");
                print_config(&config);
            }
        }
        CacheCommand::Info { cache } => {
            let api = client_for(&cache)?;
            print_config(&api.get_cache_config(&cache.cache).await?);
        }
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

fn print_config(config: &CacheConfig) {
    let show = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    println!("public key:        {}", show(config.public_key.clone()));
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
    use super::{RetentionPeriodConfig, parse_retention, parse_size};

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
