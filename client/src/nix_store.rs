//! The local Nix store, as Nix itself reports it.
//!
//! Metadata (NAR hash and size, references, deriver, signatures, CA) comes
//! from `nix path-info --json`, which reads Nix's database; NARs are then
//! serialised straight from the filesystem by `attic::nar::dump_path`.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use attic::hash::Sha256Hash;
use attic::store_path::{StoreDir, StorePath};
use serde::Deserialize;
use tokio::process::Command;

/// What Nix knows of one valid store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The full path.
    pub path: String,
    /// Its parsed form.
    pub store_path: StorePath,
    /// SHA-256 of its NAR.
    pub nar_hash: Sha256Hash,
    /// Length of its NAR.
    pub nar_size: u64,
    /// Full paths it refers to.
    pub references: Vec<String>,
    /// Full path of its derivation.
    pub deriver: Option<String>,
    /// Its signatures.
    pub sigs: Vec<String>,
    /// Its content address.
    pub ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPathInfo {
    path: String,
    #[serde(default)]
    valid: Option<bool>,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    #[serde(default)]
    signatures: Vec<String>,
    ca: Option<String>,
}

/// A `nix` command with the features we need switched on.
fn nix() -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command"]);
    cmd
}

/// Turns a user's argument (a store path, a path inside one, or a symlink
/// such as `./result`) into the store path it names.
pub fn resolve_path_argument(store_dir: &StoreDir, argument: &str) -> Result<String> {
    let in_store = |path: &Path| -> Option<String> {
        let rest = path.strip_prefix(store_dir.as_str()).ok()?;
        match rest.components().next()? {
            Component::Normal(name) => Some(format!("{}/{}", store_dir.as_str(), name.to_str()?)),
            _ => None,
        }
    };
    let given = PathBuf::from(argument);
    if let Some(path) = in_store(&given) {
        return Ok(path);
    }
    let resolved =
        std::fs::canonicalize(&given).with_context(|| format!("{argument} does not exist"))?;
    in_store(&resolved)
        .with_context(|| format!("{argument} is not in the Nix store {}", store_dir.as_str()))
}

/// The local Nix store: `$NIX_STORE_DIR`, or `/nix/store`.
pub fn local_store_dir() -> Result<StoreDir> {
    match std::env::var("NIX_STORE_DIR") {
        Ok(dir) if !dir.is_empty() => {
            StoreDir::new(&dir).with_context(|| format!("NIX_STORE_DIR is {dir:?}"))
        }
        _ => Ok(StoreDir::default()),
    }
}

/// The closure of a store path (it and everything it refers to, directly
/// or not), and with `include_outputs` the outputs of the derivations in
/// it, as `nix-store --query --requisites` lists them.
pub async fn closure(path: &str, include_outputs: bool) -> Result<Vec<String>> {
    let mut cmd = tokio::process::Command::new("nix-store");
    cmd.args(["--query", "--requisites"]);
    if include_outputs {
        cmd.arg("--include-outputs");
    }
    cmd.arg("--").arg(path);
    let output = cmd.output().await.context(
        "cannot run `nix-store`: attic reads the store through Nix, so it must be on PATH",
    )?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "Nix cannot list the closure of {path}: {}",
            stderr.trim().trim_start_matches("error: ")
        );
    }
    let listing = String::from_utf8(output.stdout)
        .context("`nix-store --query --requisites` printed something that is not text")?;
    Ok(listing.lines().map(str::to_owned).collect())
}

/// Paths passed to one `nix path-info` call.
const PATHS_PER_CALL: usize = 1000;

/// `nix path-info --json` of `paths`. Nix 2.8 reads a `.drv` path given
/// alone as its outputs (and fails while they are being built), so
/// derivations are asked about in a call of their own with
/// `--derivation`, which for any other path would ask for its deriver.
async fn query_path_info(paths: &[String], closure: bool) -> Result<Vec<RawPathInfo>> {
    let (derivations, others): (Vec<String>, Vec<String>) =
        paths.iter().cloned().partition(|p| p.ends_with(".drv"));
    let mut infos = Vec::new();
    for (group, as_derivations) in [(others, false), (derivations, true)] {
        if !group.is_empty() {
            infos.extend(query_path_info_call(&group, closure, as_derivations).await?);
        }
    }
    Ok(infos)
}

/// One `nix path-info --json` call.
async fn query_path_info_call(
    paths: &[String],
    closure: bool,
    as_derivations: bool,
) -> Result<Vec<RawPathInfo>> {
    let mut cmd = nix();
    cmd.args(["path-info", "--json"]);
    if closure {
        cmd.arg("--recursive");
    }
    if as_derivations {
        cmd.arg("--derivation");
    }
    cmd.arg("--").args(paths);
    let output = cmd
        .output()
        .await
        .context("cannot run `nix`: attic reads the store through Nix, so it must be on PATH")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.trim().trim_start_matches("error: ");
        bail!("Nix cannot describe the paths to push: {reason}");
    }
    serde_json::from_slice(&output.stdout).context("`nix path-info --json` printed unexpected JSON")
}

/// Metadata of `paths`, and of everything they refer to when `closure` is
/// set, dependencies before dependents.
pub async fn path_infos(
    store_dir: &StoreDir,
    paths: &[String],
    closure: bool,
) -> Result<Vec<PathInfo>> {
    // Many paths (`attic push --stdin`) go in several calls, to stay far
    // below the kernel's limit on the length of a command line.
    let mut raw: Vec<RawPathInfo> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for batch in paths.chunks(PATHS_PER_CALL) {
        for entry in query_path_info(batch, closure).await? {
            if seen.insert(entry.path.clone()) {
                raw.push(entry);
            }
        }
    }
    let mut infos = Vec::with_capacity(raw.len());
    for entry in raw {
        if entry.valid == Some(false) {
            bail!("{} is not a valid path in the Nix store", entry.path);
        }
        let store_path = store_dir
            .parse_path(&entry.path)
            .with_context(|| format!("Nix reported a strange path {}", entry.path))?;
        let nar_hash = entry
            .nar_hash
            .as_deref()
            .with_context(|| format!("Nix gave no NAR hash for {}", entry.path))?
            .parse()
            .with_context(|| format!("Nix gave a strange NAR hash for {}", entry.path))?;
        infos.push(PathInfo {
            store_path,
            nar_hash,
            nar_size: entry
                .nar_size
                .with_context(|| format!("Nix gave no NAR size for {}", entry.path))?,
            references: entry.references,
            deriver: entry.deriver,
            sigs: entry.signatures,
            ca: entry.ca,
            path: entry.path,
        });
    }
    Ok(sort_dependencies_first(infos))
}

/// Orders paths so that each comes after the paths it refers to, so an
/// interrupted push never leaves a path in the cache without its references.
pub fn sort_dependencies_first(infos: Vec<PathInfo>) -> Vec<PathInfo> {
    use std::collections::{HashMap, HashSet};
    let by_path: HashMap<String, PathInfo> =
        infos.iter().map(|i| (i.path.clone(), i.clone())).collect();
    let mut done: HashSet<String> = HashSet::new();
    let mut order = Vec::with_capacity(infos.len());
    for info in &infos {
        // Iterative depth-first search: (path, references expanded?).
        let mut stack = vec![(info.path.clone(), false)];
        while let Some((path, expanded)) = stack.pop() {
            if done.contains(&path) {
                continue;
            }
            let Some(entry) = by_path.get(&path) else {
                continue;
            };
            if expanded {
                done.insert(path);
                order.push(entry.clone());
            } else {
                stack.push((path.clone(), true));
                for reference in &entry.references {
                    if reference != &path && !done.contains(reference) {
                        stack.push((reference.clone(), false));
                    }
                }
            }
        }
    }
    order
}

/// The outputs of derivation `drv` that are valid store paths: what a
/// post-build hook should push when Nix gave it `DRV_PATH` but an empty
/// `OUT_PATHS` (Nix 2.8 does so for every build, NixOS/nix#6446).
///
/// `nix-store --query --outputs` names an input-addressed derivation's
/// outputs; Nix 2.8 refuses it for a floating content-addressed one, whose
/// outputs are known only once built, so those are asked of
/// `nix-store --realise` with building and substituting switched off: it
/// prints the outputs Nix already holds, and fails rather than make any.
pub async fn derivation_outputs(drv: &str) -> Result<Vec<String>> {
    let queried = Command::new("nix-store")
        .args(["--query", "--outputs", drv])
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run nix-store --query --outputs")?;
    let listed = if queried.status.success() {
        queried.stdout
    } else {
        let realised = Command::new("nix-store")
            .args(["--realise", drv])
            .args(["--option", "max-jobs", "0"])
            .args(["--option", "substitute", "false"])
            .args(["--option", "extra-experimental-features", "ca-derivations"])
            .output()
            .await
            .context("cannot run nix-store --realise")?;
        if !realised.status.success() {
            bail!(
                "Nix names no built output of {drv}: {}",
                String::from_utf8_lossy(&realised.stderr).trim()
            );
        }
        realised.stdout
    };
    let mut outputs = Vec::new();
    for line in String::from_utf8_lossy(&listed).lines() {
        let path = line.trim();
        if !path.is_empty() && is_valid(path).await {
            outputs.push(path.to_owned());
        }
    }
    Ok(outputs)
}

/// Whether Nix holds `path` as a valid store path.
pub async fn is_valid(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, references: &[&str]) -> PathInfo {
        let path = format!("/nix/store/{}-{name}", "0".repeat(31) + &name[..1]);
        PathInfo {
            store_path: StoreDir::default().parse_path(&path).expect("path"),
            path,
            nar_hash: Sha256Hash::digest(name.as_bytes()),
            nar_size: 8,
            references: references
                .iter()
                .map(|r| format!("/nix/store/{}-{r}", "0".repeat(31) + &r[..1]))
                .collect(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        }
    }

    #[test]
    fn dependencies_come_first() {
        // The first letter of each name doubles as its hash, so it must be nix-base32.
        let infos = vec![
            info("a-top", &["b-mid", "c-leaf"]),
            info("b-mid", &["c-leaf"]),
            info("c-leaf", &[]),
        ];
        let names: Vec<String> = sort_dependencies_first(infos)
            .iter()
            .map(|i| i.store_path.name().to_owned())
            .collect();
        assert_eq!(names, ["c-leaf", "b-mid", "a-top"]);
    }

    #[test]
    fn resolves_paths_inside_the_store() {
        let store = StoreDir::default();
        let path = "/nix/store/00000000000000000000000000000000-x";
        assert_eq!(
            resolve_path_argument(&store, &format!("{path}/bin/tool")).expect("inside"),
            path
        );
        assert_eq!(resolve_path_argument(&store, path).expect("itself"), path);
        assert!(resolve_path_argument(&store, "/etc").is_err());
    }
}
