//! `attic use CACHE`: add the cache to the user's Nix configuration as a
//! substituter with its public key, and its token to a netrc file when the
//! cache is private. Running it again changes nothing.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::api::ApiClient;
use crate::cache_ref::CacheRef;
use crate::config::{ClientConfig, config_home};

/// Arguments of `attic use`.
#[derive(Debug, Args)]
pub struct Use {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// Print what to add instead of writing it.
    #[arg(long)]
    print: bool,
}

pub async fn run(args: Use) -> Result<ExitCode> {
    let config = ClientConfig::load()?;
    let (_, server) = args.cache.resolve(&config)?;
    let api = ApiClient::new(server);
    let cache = api
        .get_cache_config(&args.cache.cache)
        .await
        .with_context(|| format!("cannot look up cache {}", args.cache))?;
    let substituter = cache
        .substituter_endpoint
        .context("the server did not say the cache's URL")?;
    let key = cache
        .public_key
        .context("the server did not say the cache's public key")?;
    let private = cache.is_public == Some(false);

    let nix_dir = config_home()?.join("nix");
    let nix_conf = nix_dir.join("nix.conf");
    let existing = read_or_empty(&nix_conf)?;
    let netrc = existing_netrc_file(&existing).unwrap_or_else(|| nix_dir.join("netrc"));
    let mut lines = vec![
        format!("extra-substituters = {substituter}"),
        format!("extra-trusted-public-keys = {key}"),
    ];
    let netrc_entry = match (&server.token, private) {
        (Some(token), true) => {
            if existing_netrc_file(&existing).is_none() {
                lines.push(format!("netrc-file = {}", netrc.display()));
            }
            Some((host_of(&substituter)?, token.clone()))
        }
        _ => None,
    };

    if args.print {
        println!("# add to {}:", nix_conf.display());
        for line in &lines {
            println!("{line}");
        }
        if let Some((host, token)) = &netrc_entry {
            println!("# add to {}:", netrc.display());
            println!("machine {host} password {token}");
        }
        return Ok(ExitCode::SUCCESS);
    }

    let updated = add_missing_lines(&existing, &lines);
    if updated != existing {
        write_private(&nix_conf, &updated, 0o644)?;
    }
    if let Some((host, token)) = netrc_entry {
        let old = read_or_empty(&netrc)?;
        let new = set_netrc_entry(&old, &host, &token);
        if new != old {
            write_private(&netrc, &new, 0o600)?;
        }
    }
    eprintln!(
        "configured Nix to use {} ({substituter}) in {}",
        args.cache,
        nix_conf.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_or_empty(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The `netrc-file` the user's nix.conf already names, if any.
fn existing_netrc_file(nix_conf: &str) -> Option<PathBuf> {
    nix_conf.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "netrc-file").then(|| PathBuf::from(value.trim()))
    })
}

/// `text` with each of `lines` appended unless already present.
fn add_missing_lines(text: &str, lines: &[String]) -> String {
    let mut out = text.to_owned();
    for line in lines {
        if !text.lines().any(|l| l.trim() == line) {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `netrc` with the entry for `host` replaced by one with `token`.
fn set_netrc_entry(netrc: &str, host: &str, token: &str) -> String {
    let entry = format!("machine {host} password {token}");
    let mut out: Vec<&str> = netrc
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            !(words.next() == Some("machine") && words.next() == Some(host))
        })
        .collect();
    out.push(&entry);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn host_of(url: &str) -> Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .context("the cache URL has no scheme")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    Ok(host.to_owned())
}

/// Writes a file atomically with the given mode.
fn write_private(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = path.with_extension("attic-tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_lines_is_idempotent() {
        let lines = vec!["extra-substituters = http://x/c".to_owned()];
        let once = add_missing_lines("max-jobs = 4", &lines);
        assert_eq!(once, "max-jobs = 4\nextra-substituters = http://x/c\n");
        assert_eq!(add_missing_lines(&once, &lines), once);
    }

    #[test]
    fn netrc_entries_are_replaced_not_duplicated() {
        let first = set_netrc_entry("machine other password o\n", "h", "t1");
        let second = set_netrc_entry(&first, "h", "t2");
        assert_eq!(second, "machine other password o\nmachine h password t2\n");
        assert_eq!(set_netrc_entry(&second, "h", "t2"), second);
    }

    #[test]
    fn finds_hosts_and_configured_netrc() {
        assert_eq!(
            host_of("http://127.0.0.1:8080/demo").expect("host"),
            "127.0.0.1"
        );
        assert_eq!(
            host_of("https://cache.example.com/team").expect("host"),
            "cache.example.com"
        );
        assert_eq!(
            existing_netrc_file("a = b\nnetrc-file = /etc/nix/netrc\n"),
            Some(PathBuf::from("/etc/nix/netrc"))
        );
    }
}
