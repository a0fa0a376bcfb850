//! `attic use CACHE`: add the cache to the user's Nix configuration as a
//! substituter with its public key, and a pull-only token to a netrc file
//! when the cache is private. Running it again changes nothing.
//!
//! During a key rotation's overlap it trusts both the cache's current and
//! previous key (the server signs with both then); afterwards, run again,
//! it drops the previous one, and any older key of the cache. Nix's netrc holds one password per host, so the token
//! written there is the login token narrowed (offline) to pulling from the
//! caches used on that server, all of them, so using a second cache never
//! locks Nix out of the first and the file never holds push or admin rights.

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use attic::cache::CacheName;
use attic_token::{Attenuation, CacheNamePattern, MAX_TOKEN_LEN, Permission};
use clap::Args;

use crate::api::ApiClient;
use crate::cache_ref::CacheRef;
use crate::config::{ClientConfig, config_home};

/// Arguments of `attic use`.
#[derive(Debug, Args)]
pub struct Use {
    /// The cache: `server:cache` or a name on the default server.
    cache: CacheRef,
    /// Print what to change instead of writing it.
    #[arg(long)]
    print: bool,
}

pub async fn run(args: Use) -> Result<ExitCode> {
    let mut config = ClientConfig::load()?;
    let (server_name, server) = args.cache.resolve(&config)?;
    let server_name = server_name.to_owned();
    let server = server.clone();
    crate::token_expiry::warn_once(&server_name, &server.endpoint, server.token.as_deref());
    let api = ApiClient::new(&server);
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
    // During an overlap the previous key still signs: trust it too, so a
    // narinfo Nix fetched before the rotation (and keeps in its own cache)
    // still verifies.
    let keys: Vec<String> = std::iter::once(key)
        .chain(cache.previous_public_key)
        .collect();
    let private = cache.is_public == Some(false);
    let host = host_of(&substituter)?;

    let nix_dir = config_home()?.join("nix");
    let nix_conf = nix_dir.join("nix.conf");
    let existing = read_or_empty(&nix_conf)?;
    let netrc = existing_netrc_file(&existing).unwrap_or_else(|| nix_dir.join("netrc"));
    let mut lines = vec![format!("extra-substituters = {substituter}")];
    lines.extend(
        keys.iter()
            .map(|key| format!("extra-trusted-public-keys = {key}")),
    );
    let mut used = server.used_caches.clone();
    used.insert(args.cache.cache.clone());
    let netrc_token = match (&server.token, private) {
        (Some(token), true) => {
            if existing_netrc_file(&existing).is_none() {
                lines.push(format!("netrc-file = {}", netrc.display()));
            }
            let mut covered = caches_sharing_host(&config, &server_name, &host, token);
            covered.extend(used.iter().cloned());
            Some((pull_token(token, &covered)?, covered))
        }
        (None, true) => {
            eprintln!(
                "warning: {} is private but server {server_name} has no token: \
                 Nix will be refused until you `attic login` with one",
                args.cache
            );
            None
        }
        (_, false) => None,
    };

    let (without_stale, stale) = remove_stale_keys(&existing, &keys);
    if args.print {
        println!("# add to {}:", nix_conf.display());
        for line in &lines {
            println!("{line}");
        }
        for old in &stale {
            println!(
                "# remove from {} (an older key of this cache): {old}",
                nix_conf.display()
            );
        }
        if let Some((token, covered)) = &netrc_token {
            println!(
                "# add to {} (pull only, on {}):",
                netrc.display(),
                list(covered)
            );
            println!("machine {host} password {token}");
        }
        return Ok(ExitCode::SUCCESS);
    }

    let updated = add_missing_lines(&without_stale, &lines);
    if updated != existing {
        write_private(&nix_conf, &updated, 0o644)?;
    }
    for old in &stale {
        eprintln!("no longer trusting {old}, an older key of {}", args.cache);
    }
    if let Some((token, covered)) = netrc_token {
        let old = read_or_empty(&netrc)?;
        let new = set_netrc_entry(&old, &host, &token);
        if new != old {
            write_private(&netrc, &new, 0o600)?;
        }
        eprintln!(
            "wrote a pull-only token for {} to {} (machine {host})",
            list(&covered),
            netrc.display()
        );
    }
    if used != server.used_caches {
        config
            .servers
            .get_mut(&server_name)
            .expect("the server was just resolved")
            .used_caches = used;
        config.save()?;
    }
    eprintln!(
        "configured Nix to use {} ({substituter}) in {}",
        args.cache,
        nix_conf.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Rewrites the netrc entry `attic use` wrote for a server's host from its
/// current token, after `attic login` replaced it (a rotated or renewed
/// token would otherwise leave Nix sending the old one). Does nothing if
/// no entry for the host exists.
pub(super) fn refresh_netrc_entry(config: &ClientConfig, server_name: &str) -> Result<()> {
    let server = &config.servers[server_name];
    let Some(token) = &server.token else {
        return Ok(());
    };
    if server.used_caches.is_empty() {
        return Ok(());
    }
    let host = host_of(&server.endpoint)?;
    let nix_dir = config_home()?.join("nix");
    let nix_conf = read_or_empty(&nix_dir.join("nix.conf"))?;
    let netrc = existing_netrc_file(&nix_conf).unwrap_or_else(|| nix_dir.join("netrc"));
    let old = read_or_empty(&netrc)?;
    if !has_netrc_entry(&old, &host) {
        return Ok(());
    }
    let mut covered = caches_sharing_host(config, server_name, &host, token);
    covered.extend(server.used_caches.iter().cloned());
    let new = set_netrc_entry(&old, &host, &pull_token(token, &covered)?);
    if new != old {
        write_private(&netrc, &new, 0o600)?;
        eprintln!(
            "updated the pull-only token for {} in {} (machine {host})",
            list(&covered),
            netrc.display()
        );
    }
    Ok(())
}

/// `token` narrowed to pulling from `caches` and nothing else: what Nix
/// needs, and all a reader of the netrc file could misuse.
fn pull_token(token: &str, caches: &BTreeSet<CacheName>) -> Result<String> {
    let patterns = caches
        .iter()
        .map(|cache| {
            cache
                .as_str()
                .parse::<CacheNamePattern>()
                .with_context(|| format!("cache {cache} cannot be named in a token"))
        })
        .collect::<Result<Vec<_>>>()?;
    let narrowed = attic_token::attenuate(
        token,
        &Attenuation {
            caches: Some(patterns),
            permissions: Some(vec![Permission::Pull]),
            expires_at: None,
        },
    )
    .context("cannot narrow the login token to pull-only for the netrc file (is it a token `atticadm make-token` printed?)")?;
    if narrowed.len() > MAX_TOKEN_LEN {
        bail!(
            "a pull-only token for the {} caches used on this server is too long for the server \
             ({} characters, at most {MAX_TOKEN_LEN}): use fewer caches on this server, or log in \
             with a token of fewer blocks",
            caches.len(),
            narrowed.len()
        );
    }
    Ok(narrowed)
}

fn list(caches: &BTreeSet<CacheName>) -> String {
    caches
        .iter()
        .map(CacheName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The caches used through other configured servers on `host`: Nix sends
/// them the same netrc password, so the entry must name them too. Warns
/// when such a server was logged in with another token, since one token
/// (narrowed, never widened) cannot carry another's rights.
fn caches_sharing_host(
    config: &ClientConfig,
    server_name: &str,
    host: &str,
    token: &str,
) -> BTreeSet<CacheName> {
    let mut caches = BTreeSet::new();
    for (name, other) in &config.servers {
        if name == server_name
            || other.used_caches.is_empty()
            || host_of(&other.endpoint).ok().as_deref() != Some(host)
        {
            continue;
        }
        caches.extend(other.used_caches.iter().cloned());
        if other.token.as_deref() != Some(token) {
            eprintln!(
                "warning: server {name} is on the same host ({host}) with another token; Nix sends \
                 one netrc password per host, so its caches ({}) now get this server's token, \
                 narrowed to pulling. If it may not pull from them, log in once with a token that \
                 may pull from every cache on {host}",
                list(&other.used_caches)
            );
        }
    }
    caches
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

/// The family of a key name: the name without its generation suffix
/// (`demo-2` and `host-demo-3` belong to `demo` and `host-demo`). The
/// server counts a cache's key name up by one on each rotation.
fn key_family(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((family, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => family,
        _ => name,
    }
}

/// Whether trusting `old` (a `name:base64` key) next to the cache's
/// `current` keys is stale: an older generation of the same cache's key,
/// or a different key under the same name (which Nix could not tell apart
/// anyway), and none of the keys the cache signs with now.
fn is_stale_key(old: &str, current: &[String]) -> bool {
    let Some((old_name, _)) = old.split_once(':') else {
        return false;
    };
    !current.iter().any(|key| key == old)
        && current.iter().any(|key| {
            key.split_once(':')
                .is_some_and(|(name, _)| key_family(old_name) == key_family(name))
        })
}

/// `nix_conf` without the cache's stale keys in its `trusted-public-keys`
/// and `extra-trusted-public-keys` lines, and the keys removed. A key the
/// cache no longer signs with is dropped rather than kept: the server signs
/// every narinfo with its current keys when it serves it, so nothing from
/// this cache still needs the old one, and a key is often rotated because
/// it leaked.
fn remove_stale_keys(nix_conf: &str, current: &[String]) -> (String, Vec<String>) {
    let mut out = String::with_capacity(nix_conf.len());
    let mut removed = Vec::new();
    for line in nix_conf.split_inclusive('\n') {
        let setting = line.split_once('=').and_then(|(name, value)| {
            let name = name.trim();
            matches!(name, "trusted-public-keys" | "extra-trusted-public-keys")
                .then_some((name, value))
        });
        let Some((name, value)) = setting else {
            out.push_str(line);
            continue;
        };
        let (stale, kept): (Vec<&str>, Vec<&str>) = value
            .split_whitespace()
            .partition(|key| is_stale_key(key, current));
        if stale.is_empty() {
            out.push_str(line);
            continue;
        }
        removed.extend(stale.into_iter().map(str::to_owned));
        // An emptied `trusted-public-keys` stays, empty: dropping it would
        // bring back Nix's default keys, which the user had replaced.
        if !kept.is_empty() || name == "trusted-public-keys" {
            out.push_str(format!("{name} = {}", kept.join(" ")).trim_end());
            out.push('\n');
        }
    }
    (out, removed)
}

/// Whether `netrc` has a one-line entry for `host`, as `attic use` writes.
fn has_netrc_entry(netrc: &str, host: &str) -> bool {
    netrc.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("machine") && words.next() == Some(host)
    })
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

    const CURRENT: &str = "demo-2:bmV3";

    fn current() -> Vec<String> {
        vec![CURRENT.to_owned()]
    }

    #[test]
    fn a_rotated_key_replaces_older_generations_of_the_same_cache() {
        let conf = "substituters =\n\
            extra-trusted-public-keys = demo-1:b2xk\n\
            extra-trusted-public-keys = other-1:b3Ro\n\
            trusted-public-keys = cache.nixos.org-1:eA== demo:b2xkZXI=\n";
        let (kept, removed) = remove_stale_keys(conf, &current());
        assert_eq!(removed, vec!["demo-1:b2xk", "demo:b2xkZXI="]);
        assert_eq!(
            kept,
            "substituters =\n\
             extra-trusted-public-keys = other-1:b3Ro\n\
             trusted-public-keys = cache.nixos.org-1:eA==\n"
        );
        let lines = vec![format!("extra-trusted-public-keys = {CURRENT}")];
        let updated = add_missing_lines(&kept, &lines);
        assert_eq!(
            remove_stale_keys(&updated, &current()),
            (updated.clone(), vec![])
        );
    }

    #[test]
    fn a_different_key_under_the_same_name_is_stale_and_other_caches_are_not() {
        assert!(is_stale_key("demo-2:b2xk", &current()));
        assert!(!is_stale_key(CURRENT, &current()));
        assert!(is_stale_key("host-demo-1:x", &["host-demo-7:y".to_owned()]));
        // `demo-1` is another cache, whose keys are `demo-1-N`.
        assert!(!is_stale_key("demo-1-1:x", &current()));
        assert!(!is_stale_key("demox-1:x", &current()));
        assert!(!is_stale_key("host-demo-1:x", &current()));
        assert!(!is_stale_key("not a key", &current()));
    }

    #[test]
    fn during_an_overlap_both_keys_stay_and_older_generations_go() {
        let overlapping = vec![CURRENT.to_owned(), "demo-1:b2xk".to_owned()];
        let conf = "extra-trusted-public-keys = demo-1:b2xk\n\
            extra-trusted-public-keys = demo-0:b2xkZXI=\n";
        let (kept, removed) = remove_stale_keys(conf, &overlapping);
        assert_eq!(removed, vec!["demo-0:b2xkZXI="]);
        assert_eq!(kept, "extra-trusted-public-keys = demo-1:b2xk\n");
        // After the overlap, the server names one key: the previous goes.
        let (kept, removed) = remove_stale_keys(&kept, &current());
        assert_eq!(removed, vec!["demo-1:b2xk"]);
        assert_eq!(kept, "");
    }

    #[test]
    fn an_emptied_trusted_public_keys_stays_to_keep_defaults_off() {
        let (kept, _) = remove_stale_keys("trusted-public-keys = demo-1:x\n", &current());
        assert_eq!(kept, "trusted-public-keys =\n");
        let (kept, _) = remove_stale_keys("extra-trusted-public-keys = demo-1:x\n", &current());
        assert_eq!(kept, "");
    }

    #[test]
    fn the_netrc_token_is_narrowed_to_pulling_the_used_caches() {
        use attic_token::{RootKey, TokenSpec};
        let root = RootKey::generate();
        let token = TokenSpec {
            subject: "me".into(),
            expires_at: None,
            grants: Permission::ALL
                .iter()
                .map(|p| (CacheNamePattern::any(), *p))
                .collect(),
        }
        .sign(&root)
        .expect("sign")
        .to_base64()
        .expect("encode");
        let caches: BTreeSet<CacheName> = ["a", "b"]
            .iter()
            .map(|c| c.parse().expect("name"))
            .collect();
        let narrowed = pull_token(&token, &caches).expect("attenuate");
        let parsed = attic_token::Token::parse(&narrowed, &root.public()).expect("parse");
        for cache in &caches {
            parsed.authorize(cache, Permission::Pull).expect("pull");
            assert!(parsed.authorize(cache, Permission::Push).is_err());
            assert!(parsed.authorize(cache, Permission::DestroyCache).is_err());
        }
        let other: CacheName = "c".parse().expect("name");
        assert!(parsed.authorize(&other, Permission::Pull).is_err());
        assert!(pull_token("garbage", &caches).is_err());
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
