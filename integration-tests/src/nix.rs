//! Driving the real `nix`, `nix-store` and `nix-build` binaries.
//!
//! Tests run Nix single-user as root against the machine's `/nix/store`, with
//! the settings `.ci/run` documents. Each test builds derivations carrying a
//! unique nonce, so tests running in parallel never share store paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use attic::hash::Sha256Hash;

/// Settings that let Nix build and substitute as root without a daemon.
pub const NIX_CONFIG: &str = "experimental-features = nix-command\n\
sandbox = false\n\
build-users-group =\n\
substitute = true\n\
narinfo-cache-negative-ttl = 0\n\
narinfo-cache-positive-ttl = 0\n";

/// A Nix command with our settings, any inherited store override removed.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("NIX_REMOTE")
        .env_remove("NIX_STORE_DIR");
    cmd
}

/// Runs a command, panicking with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let output = run_unchecked(cmd);
    assert_succeeded(cmd, output)
}

fn assert_succeeded(cmd: &Command, output: Output) -> Output {
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command and returns its output whatever its status, panicking
/// only if it cannot start: a missing Nix must fail the test, not skip it.
pub fn run_unchecked(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {cmd:?}: {e}. Real Nix is required: install Debian's nix-bin \
             (scripts/test does this)"
        )
    })
}

/// Runs a command with `input` on its stdin, panicking unless it succeeds.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}. Real Nix is required"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .expect("write to the child's stdin");
    let output = child.wait_with_output().expect("wait for the child");
    assert_succeeded(cmd, output)
}

/// Runs a command and returns its stdout as a trimmed string.
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout)
        .expect("Nix prints UTF-8")
        .trim()
        .to_owned()
}

/// A string unique to this process and call, for derivation names and inputs.
pub fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A closure built by real Nix: `top` refers to `middle`, which refers to `leaf`.
pub struct TestClosure {
    /// The outputs, leaf first.
    pub paths: Vec<String>,
}

impl TestClosure {
    /// The path that refers to the others.
    pub fn top(&self) -> &str {
        self.paths.last().expect("a closure has paths")
    }
}

/// The `let` binding of `mk`, a derivation with `/bin/sh` as its builder
/// and this call's nonce, so the paths test expressions build are new.
fn derivation_helper(nonce: &str) -> String {
    format!(
        r#"mk = name: script: derivation {{
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    nonce = "{nonce}";
  }};"#
    )
}

/// Builds the expression (written to `dir/file`) with `nix-build`; returns
/// its output's closure, dependencies first and the output last.
fn build_expression(dir: &Path, file: &str, expr: &str) -> Vec<String> {
    let file = dir.join(file);
    std::fs::write(&file, expr).expect("write the expression");
    let top = stdout_of(
        command("nix-build")
            .arg(&file)
            .args(["--no-out-link", "--max-jobs", "4"]),
    );
    let paths = stdout_of(command("nix-store").args(["--query", "--requisites", &top]));
    // `--requisites` lists dependencies before dependents; keep that order.
    let paths: Vec<String> = paths.lines().map(str::to_owned).collect();
    assert_eq!(paths.last().map(String::as_str), Some(top.as_str()));
    paths
}

/// Builds a three-path closure with references, files, an executable, a
/// symlink, nested and empty directories, and a file of `big_file_size` bytes.
pub fn build_closure(dir: &Path, big_file_size: usize) -> TestClosure {
    let nonce = nonce();
    let helper = derivation_helper(&nonce);
    let expr = format!(
        r#"
let
  {helper}
  leaf = mk "leaf" ''
    /bin/mkdir -p $out/share/empty $out/bin
    echo "leaf {nonce}" > $out/share/data
    /usr/bin/head -c {big_file_size} /dev/urandom > $out/share/big
    printf '#!/bin/sh\necho hi\n' > $out/bin/hello
    /bin/chmod +x $out/bin/hello
    /bin/ln -s ../share/data $out/bin/link
  '';
  middle = mk "middle" ''
    /bin/mkdir -p $out
    echo "${{leaf}}" > $out/ref
  '';
in mk "top" ''
  /bin/mkdir -p $out
  echo "${{middle}} ${{leaf}}/bin/hello" > $out/refs
''
"#
    );
    let paths = build_expression(dir, "closure.nix", &expr);
    assert_eq!(paths.len(), 3, "closure: {paths:?}");
    TestClosure { paths }
}

/// Builds `leaves` paths, each holding `size` bytes of noise, and a top
/// path that refers to all of them; returns them leaves first.
pub fn build_wide_closure(dir: &Path, leaves: usize, size: usize) -> Vec<String> {
    let helper = derivation_helper(&nonce());
    let expr = format!(
        r#"
let
  {helper}
  leaves = builtins.genList (i: mk "wide-${{toString i}}" ''
    /bin/mkdir -p $out
    /usr/bin/head -c {size} /dev/urandom > $out/noise
  '') {leaves};
in mk "wide-top" ''
  /bin/mkdir -p $out
  echo ${{toString leaves}} > $out/refs
''
"#
    );
    build_expression(dir, "wide.nix", &expr)
}

/// What `nix path-info --json` says of a path.
pub struct PathInfo {
    /// `narHash`.
    pub nar_hash: Sha256Hash,
    /// `narSize`.
    pub nar_size: u64,
    /// `references`, full paths.
    pub references: Vec<String>,
    /// `deriver`, a full path.
    pub deriver: Option<String>,
}

/// Asks Nix for a path's metadata.
pub fn path_info(path: &str) -> PathInfo {
    let json = stdout_of(command("nix").args(["path-info", "--json", path]));
    let value: serde_json::Value = serde_json::from_str(&json).expect("path-info prints JSON");
    let info = &value[0];
    PathInfo {
        nar_hash: info["narHash"]
            .as_str()
            .expect("narHash")
            .parse()
            .expect("Nix's hash parses"),
        nar_size: info["narSize"].as_u64().expect("narSize"),
        references: info["references"]
            .as_array()
            .expect("references")
            .iter()
            .map(|r| r.as_str().expect("reference").to_owned())
            .collect(),
        deriver: info["deriver"].as_str().map(str::to_owned),
    }
}

/// `nix-store --dump` of any path.
pub fn dump(path: &Path) -> Vec<u8> {
    run(command("nix-store").arg("--dump").arg(path)).stdout
}

/// A key pair made by `nix key generate-secret`: (secret, public).
pub fn generate_key(name: &str) -> (String, String) {
    let secret = stdout_of(command("nix").args(["key", "generate-secret", "--key-name", name]));
    let public = run_with_input(
        command("nix").args(["key", "convert-secret-to-public"]),
        secret.as_bytes(),
    );
    let public = String::from_utf8(public.stdout)
        .expect("UTF-8 key")
        .trim()
        .to_owned();
    (secret, public)
}

/// Removes paths from the local store (they must be unreferenced).
pub fn delete(paths: &[String]) {
    run(command("nix-store").arg("--delete").args(paths));
}

/// Whether a path is valid in the local store.
pub fn is_valid(path: &str) -> bool {
    run_unchecked(command("nix-store").args(["--check-validity", path]))
        .status
        .success()
}

/// Tries to substitute `path` from `substituter`, trusting only `public_key`.
pub fn substitute(path: &str, substituter: &str, public_key: &str) -> Output {
    substitute_with_netrc(path, substituter, public_key, None)
}

/// Like [`substitute`], sending credentials from a netrc file, as a user of
/// a private cache would.
pub fn substitute_with_netrc(
    path: &str,
    substituter: &str,
    public_key: &str,
    netrc: Option<&Path>,
) -> Output {
    let mut cmd = command("nix-store");
    if let Some(netrc) = netrc {
        cmd.arg("--option").arg("netrc-file").arg(netrc);
    }
    run_unchecked(cmd.args([
        "--realise",
        path,
        "--option",
        "substituters",
        substituter,
        "--option",
        "trusted-public-keys",
        public_key,
        "--option",
        "require-sigs",
        "true",
    ]))
}

/// Writes a netrc file giving `token` as the password for `host`.
pub fn write_netrc(dir: &Path, host: &str, token: &str) -> PathBuf {
    let path = dir.join("netrc");
    std::fs::write(&path, format!("machine {host}\npassword {token}\n")).expect("write netrc");
    path
}

/// Writes a `nix-cache-info` for a binary cache directory.
pub fn write_cache_info(dir: &Path) -> PathBuf {
    let path = dir.join("nix-cache-info");
    std::fs::write(&path, "StoreDir: /nix/store\n").expect("write nix-cache-info");
    path
}

/// Adds a directory to the store with `nix-store --add`, as a path of its
/// own (no references); returns the store path.
pub fn add(dir: &Path) -> String {
    stdout_of(command("nix-store").arg("--add").arg(dir))
}

/// A Nix store of its own under a temporary root (a chroot store: paths
/// keep their `/nix/store/…` names but live under the root), so one test
/// can substitute the same path several times, each time from nothing,
/// without touching the machine's store.
pub struct FreshStore {
    root: tempfile::TempDir,
}

impl FreshStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Tries to substitute `path` (and its closure) into this store from
    /// `substituter`, trusting only `public_key` (one key or several,
    /// space-separated), as `nix-store -r PATH --option substituters URL
    /// --option trusted-public-keys KEY` does.
    pub fn substitute(&self, path: &str, substituter: &str, public_key: &str) -> Output {
        run_unchecked(
            command("nix-store")
                .arg("--store")
                .arg(self.root.path())
                .args([
                    "--realise",
                    path,
                    "--option",
                    "substituters",
                    substituter,
                    "--option",
                    "trusted-public-keys",
                    public_key,
                    "--option",
                    "require-sigs",
                    "true",
                ]),
        )
    }

    /// `program` (`nix-build`, `nix-store`, …) working on this store.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = command(program);
        cmd.arg("--store").arg(self.root.path());
        cmd
    }

    /// The store's root: its paths live under `<root>/nix/store`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Whether `path` is valid in this store.
    pub fn is_valid(&self, path: &str) -> bool {
        run_unchecked(
            command("nix-store")
                .arg("--store")
                .arg(self.root.path())
                .args(["--check-validity", path]),
        )
        .status
        .success()
    }
}

impl Default for FreshStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `path`'s closure into a binary cache directory as `nix copy --to
/// 'file://DIR?compression=C&secret-key=K'` does, signed with `secret_key`
/// (from [`generate_key`]).
pub fn copy_to_file_cache(dir: &Path, compression: &str, secret_key: &str, path: &str) {
    let key_file = dir.with_extension("secret-key");
    std::fs::write(&key_file, secret_key).expect("write the secret key");
    let url = format!(
        "file://{}?compression={compression}&secret-key={}",
        dir.display(),
        key_file.display()
    );
    run(command("nix").args(["copy", "--to", &url, path]));
}
