//! A real `atticd` on a free loopback port, with its own empty config and
//! data directories, exactly as a new user would start it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::backend::{Backend, Services};
use crate::s3::S3Server;

/// The path of one of the workspace's binaries, built beside this test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test runs from target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test does)",
        path.display()
    );
    path
}

/// An empty home with its own XDG directories, as a new user has.
pub struct TestHome {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl TestHome {
    /// A fresh, empty home.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
        }
    }

    /// The same home, whose commands also get `name=value` in their
    /// environment.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A command for one of our binaries living in this home.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(binary(name));
        cmd.env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(name, value)| (name, value)));
        cmd
    }

    /// Runs one of our binaries to completion.
    pub fn run(&self, name: &str, args: &[&str]) -> Output {
        self.command(name).args(args).output().expect("run binary")
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts atticd in `home` and waits for its URL (and root token, on a first start).
// The child is returned to a `TestServer`, whose `Drop` kills and reaps it.
#[allow(clippy::zombie_processes)]
fn spawn(home: &TestHome, listen: &str, args: &[&str]) -> Spawned {
    spawn_with_stderr(home, listen, args, Stdio::inherit(), "warn")
}

/// A started atticd and what it printed.
struct Spawned {
    child: Child,
    url: String,
    /// The operators' listener, `http://127.0.0.1:PORT`: every server the
    /// harness starts has one (a collector has only its `--listen`).
    metrics_url: Option<String>,
    root_token: Option<String>,
}

// As for `spawn`.
#[allow(clippy::zombie_processes)]
fn spawn_with_stderr(
    home: &TestHome,
    listen: &str,
    args: &[&str],
    stderr: Stdio,
    rust_log: &str,
) -> Spawned {
    let mut command = home.command("atticd");
    command
        .env("RUST_LOG", rust_log)
        .args(["--listen", listen])
        .args(args);
    if !args.contains(&"garbage-collector") {
        command.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start atticd");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the test stops listening, so the server
            // never blocks on a full pipe.
            let _ = lines_tx.send(line);
        }
    });
    let mut root_token = None;
    let mut metrics_url = None;
    let mut expect_token = false;
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("atticd printed its URL within a minute");
        if let Some(rest) = line.strip_prefix("atticd listening on ") {
            return Spawned {
                child,
                url: rest.trim_end_matches('/').to_owned(),
                metrics_url,
                root_token,
            };
        } else if let Some(rest) = line.strip_prefix("atticd serving metrics on ") {
            metrics_url = Some(rest.trim_end_matches("/metrics").to_owned());
        } else if line.starts_with("Root token") {
            expect_token = true;
        } else if expect_token && !line.trim().is_empty() {
            root_token = Some(line.trim().to_owned());
            expect_token = false;
        }
    }
}

/// Files under `dir`, recursively, skipping a top-level directory `skip`.
fn count_files(dir: &Path, skip: Option<&str>) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| skip.is_none_or(|skip| e.file_name() != skip))
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        count_files(&path, None)
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `config` without the `[sections]` that `extra` brings, and their
/// subsections (`[storage.credentials]` goes with `[storage]`), so that
/// appending `extra` replaces them.
fn without_sections(config: &str, extra: &str) -> String {
    let replaced: Vec<&str> = extra
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| l.trim().trim_start_matches('[').trim_end_matches(']'))
        .collect();
    let mut kept = String::new();
    let mut skipping = false;
    for line in config.lines() {
        if line.starts_with('[') {
            let name = line.trim().trim_start_matches('[').trim_end_matches(']');
            skipping = replaced.iter().any(|section| {
                name == *section
                    || name
                        .strip_prefix(section)
                        .is_some_and(|rest| rest.starts_with('.'))
            });
        }
        if !skipping {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A running `atticd`, killed on drop.
pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    /// The operators' listener (`--metrics-listen`), serving `/_health`
    /// and `/metrics`: `http://127.0.0.1:PORT`, no trailing slash.
    pub metrics_url: String,
    /// The token printed on first start (empty for a server started on
    /// an existing installation).
    pub root_token: String,
    home: TestHome,
    /// PostgreSQL and S3, when the run's [`Backend`] is not the default.
    services: Option<Services>,
    /// The file restarts log into at `RUST_LOG=info` (see
    /// [`TestServer::log_requests_to`]); the test's stderr at `warn` if none.
    log: Option<PathBuf>,
}

impl TestServer {
    /// Starts `atticd --listen 127.0.0.1:0` with empty XDG directories.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`TestServer::start`], with extra arguments.
    pub fn start_with_args(args: &[&str]) -> Self {
        Self::start_in(TestHome::new(), args)
    }

    /// A first start with extra arguments, logging at `RUST_LOG=info` into
    /// the file `log` instead of the test's stderr.
    pub fn start_logging_to(log: &Path, args: &[&str]) -> Self {
        let home = TestHome::new();
        let file = std::fs::File::create(log).expect("create the log file");
        let spawned = spawn_with_stderr(&home, "127.0.0.1:0", args, Stdio::from(file), "info");
        Self {
            child: spawned.child,
            url: spawned.url,
            metrics_url: spawned.metrics_url.expect("a metrics listener"),
            root_token: spawned
                .root_token
                .expect("a first start prints the root token"),
            home,
            services: None,
            log: None,
        }
    }

    /// A first start of `atticd` in `home`, with extra arguments, moved
    /// onto the run's [`Backend`]: with `postgres-s3` the server is
    /// restarted on a fresh database and bucket, with the first start's
    /// key and root token.
    pub fn start_in(home: TestHome, args: &[&str]) -> Self {
        let mut server = Self::start_embedded_in(home, args);
        if Backend::from_env() == Backend::PostgresS3 {
            let services = Services::start();
            server.kill();
            let config = server.config_path();
            let text = std::fs::read_to_string(&config).expect("read config");
            let sections = services.config_toml();
            let text = format!("{}\n{sections}", without_sections(&text, &sections));
            std::fs::write(&config, text).expect("write config");
            server.services = Some(services);
            server.restart();
        }
        server
    }

    /// A first start of `atticd` in `home` on its embedded default
    /// (SQLite and local disk in the data directory) whatever the run's
    /// backend: for tests of that default itself.
    pub fn start_embedded_in(home: TestHome, args: &[&str]) -> Self {
        let spawned = spawn(&home, "127.0.0.1:0", args);
        Self {
            child: spawned.child,
            url: spawned.url,
            metrics_url: spawned.metrics_url.expect("a metrics listener"),
            root_token: spawned
                .root_token
                .expect("a first start prints the root token"),
            home,
            services: None,
            log: None,
        }
    }

    /// Starts `atticd --mode api-server` in `home`, whose config the
    /// test wrote: a replica, which prints no root token.
    pub fn start_replica(home: TestHome) -> Self {
        Self::start_on_written_config(home, &["--mode", "api-server"])
    }

    /// Starts `atticd` in `home` with `args` on a config the test wrote
    /// (so it prints no root token; make tokens with `atticadm`, which
    /// reads the default config path). The server uses whatever database
    /// and storage that config names, on every backend.
    pub fn start_on_written_config(home: TestHome, args: &[&str]) -> Self {
        let spawned = spawn(&home, "127.0.0.1:0", args);
        Self {
            child: spawned.child,
            url: spawned.url,
            metrics_url: spawned.metrics_url.expect("a metrics listener"),
            root_token: String::new(),
            home,
            services: None,
            log: None,
        }
    }

    /// [`TestServer::start_embedded_in`] in a new home.
    pub fn start_embedded() -> Self {
        Self::start_embedded_in(TestHome::new(), &[])
    }

    /// The S3 server holding this server's blobs, on `postgres-s3`
    /// unless the test configured storage of its own.
    pub fn s3(&self) -> Option<&S3Server> {
        let s3 = &self.services.as_ref()?.s3;
        let text = std::fs::read_to_string(self.config_path()).expect("read config");
        let config: toml::Value = toml::from_str(&text).expect("config parses");
        let endpoint = config.get("storage")?.get("endpoint")?.as_str()?;
        (endpoint == s3.endpoint()).then_some(s3)
    }

    /// Starts `atticd` on its default config with `extra` TOML added (its
    /// top-level keys first; its sections, such as `[http]`, replace the
    /// default's): a first
    /// start writes the config and prints the root token, then the server
    /// is restarted on the edited config.
    pub fn start_with_config(extra: &str) -> Self {
        Self::start_with_config_in(TestHome::new(), extra)
    }

    /// [`TestServer::start_with_config`] in `home`.
    pub fn start_with_config_in(home: TestHome, extra: &str) -> Self {
        let mut server = Self::start_in(home, &[]);
        server.kill();
        let config = server.config_path();
        let text = std::fs::read_to_string(&config).expect("read config");
        // Top-level keys of `extra` go first, before any section.
        let split = extra
            .lines()
            .position(|l| l.starts_with('['))
            .unwrap_or(extra.lines().count());
        let top: Vec<&str> = extra.lines().take(split).collect();
        let sections: Vec<&str> = extra.lines().skip(split).collect();
        let keys: Vec<&str> = top
            .iter()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        // The default's own lines for those keys go (before any section).
        let mut in_section = false;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                in_section |= l.starts_with('[');
                in_section
                    || !l
                        .split_once('=')
                        .is_some_and(|(k, _)| keys.contains(&k.trim()))
            })
            .collect();
        let mut text = format!(
            "{}\n{}",
            top.join("\n"),
            without_sections(&kept.join("\n"), extra)
        );
        text.push('\n');
        text.push_str(&sections.join("\n"));
        text.push('\n');
        std::fs::write(&config, text).expect("write config");
        server.restart();
        server
    }

    /// Sends SIGTERM and waits up to `limit` for the server to exit;
    /// whether it did.
    pub fn terminate_within(&mut self, limit: Duration) -> bool {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().expect("wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Starts `atticd` on a copy of an existing installation: `fixture`
    /// holds `server.toml` and a `data` directory, as an earlier version
    /// left them. The copy is the server's default config and data.
    pub fn start_on_copy_of(fixture: &Path) -> Self {
        let home = TestHome::new();
        let config_dir = home.path().join("config/attic");
        std::fs::create_dir_all(&config_dir).expect("mkdir");
        std::fs::copy(fixture.join("server.toml"), config_dir.join("server.toml"))
            .expect("copy the config");
        copy_tree(&fixture.join("data"), &home.path().join("data/attic"));
        let spawned = spawn(&home, "127.0.0.1:0", &[]);
        Self {
            child: spawned.child,
            url: spawned.url,
            metrics_url: spawned.metrics_url.expect("a metrics listener"),
            root_token: String::new(),
            home,
            services: None,
            log: None,
        }
    }

    /// Stops the server (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same address, config and data.
    pub fn restart(&mut self) {
        self.kill();
        let address = self
            .url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned();
        let spawned = match &self.log {
            None => spawn(&self.home, &address, &[]),
            Some(log) => {
                let file = std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("open the log file");
                spawn_with_stderr(&self.home, &address, &[], Stdio::from(file), "info")
            }
        };
        self.child = spawned.child;
        // Same address; the scheme follows the config (https with [tls]).
        let url = spawned.url;
        assert!(url.ends_with(&address), "{url} is not on {address}");
        self.url = url;
        // The metrics listener moves to a new free port.
        self.metrics_url = spawned.metrics_url.expect("a metrics listener");
    }

    /// Restarts the server logging at `RUST_LOG=info` (a line per
    /// request) into the file `log`, and so on every later restart.
    pub fn log_requests_to(&mut self, log: &Path) {
        self.log = Some(log.to_owned());
        self.restart();
    }

    /// The home the server runs in.
    pub fn home(&self) -> &TestHome {
        &self.home
    }

    /// Runs `atticadm` against this server's config and data.
    pub fn atticadm(&self, args: &[&str]) -> Output {
        self.home.run("atticadm", args)
    }

    /// Runs `atticadm gc`, which must succeed, and returns its report.
    pub fn gc(&self) -> String {
        let output = self.atticadm(&["gc"]);
        assert!(
            output.status.success(),
            "atticadm gc failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// `atticadm make-token --sub test --validity 30d` with more arguments.
    pub fn make_token(&self, args: &[&str]) -> String {
        // Not within a week of expiring, when `attic` would warn on every
        // command.
        let mut all = vec!["make-token", "--sub", "test", "--validity", "30d"];
        all.extend_from_slice(args);
        let output = self.atticadm(&all);
        assert!(
            output.status.success(),
            "atticadm failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// The data directory: `server.db` and `storage/`.
    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data/attic")
    }

    /// The config file atticd wrote.
    pub fn config_path(&self) -> PathBuf {
        self.home.path().join("config/attic/server.toml")
    }

    /// Number of blobs stored (not counting writes in progress).
    pub fn blob_count(&self) -> usize {
        match self.s3() {
            Some(s3) => s3.objects("").len(),
            None => count_files(&self.data_dir().join("storage"), Some(".tmp")),
        }
    }

    /// Number of blobs being written right now: temporary files on disk,
    /// open multipart uploads on S3.
    pub fn temp_file_count(&self) -> usize {
        match self.s3() {
            Some(s3) => s3.open_uploads(),
            None => count_files(&self.data_dir().join("storage/.tmp"), None),
        }
    }

    /// The file that holds a blob, by storage key (s3s-fs keeps each
    /// object as a file too).
    pub fn blob_path(&self, key: &str) -> PathBuf {
        match self.s3() {
            Some(s3) => s3.object_path(key),
            None => self.data_dir().join("storage").join(key),
        }
    }

    /// The URL of the server's database.
    pub fn database_url(&self) -> String {
        match &self.services {
            Some(services) => services.database_url.clone(),
            None => format!(
                "sqlite://{}?mode=ro",
                self.data_dir().join("server.db").display()
            ),
        }
    }

    /// Peak resident memory of the server so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// An `atticd --mode garbage-collector` asked to listen: its probes
/// (`/_health`, `/metrics`) are at `url`. Killed when dropped.
pub struct TestCollector {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl TestServer {
    /// Starts a collector on this server's config and data, listening on
    /// a free port.
    pub fn start_collector(&self) -> TestCollector {
        let spawned = spawn(&self.home, "127.0.0.1:0", &["--mode", "garbage-collector"]);
        TestCollector {
            child: spawned.child,
            url: spawned.url,
        }
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
