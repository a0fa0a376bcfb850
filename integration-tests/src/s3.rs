//! A real S3 server on loopback: `s3s-fs` (from the s3s project, not ours),
//! keeping its buckets as directories under a temporary root, with
//! credentials, stopped and restarted at will to play an outage.
//!
//! `scripts/test` installs s3s-fs; a test that needs it fails without it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The access key every test server accepts.
pub const ACCESS_KEY: &str = "attic-test-access";
/// Its secret.
pub const SECRET_KEY: &str = "attic-test-secret-key";
/// The bucket every test server starts with.
pub const BUCKET: &str = "attic";

/// The `s3s-fs` binary: on `PATH`, or where `cargo install` puts it.
fn s3s_fs() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|dir| dir.join("bin/s3s-fs"));
    on_path.chain(cargo_home).find(|p| p.is_file()).expect(
        "s3s-fs is missing: `cargo install s3s-fs --version 0.14.1 --locked --features binary` \
         (scripts/test does)",
    )
}

/// A running s3s-fs, killed on drop.
pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    port: u16,
}

impl S3Server {
    /// Starts s3s-fs on a free loopback port with an empty bucket [`BUCKET`].
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        // s3s-fs keeps a bucket as a directory of its root.
        std::fs::create_dir(root.path().join(BUCKET)).expect("create the bucket");
        let (child, port) = spawn(root.path(), 0);
        Self {
            child: Some(child),
            root,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server as an outage would (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let (child, port) = spawn(self.root.path(), self.port);
        assert_eq!(port, self.port);
        self.child = Some(child);
    }

    /// A `[storage]` section for atticd on this server, `extra` lines added.
    pub fn storage_toml(&self, extra: &str) -> String {
        format!(
            "{}[storage.credentials]\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"{SECRET_KEY}\"\n",
            self.storage_toml_without_credentials(extra)
        )
    }

    /// The same without `[storage.credentials]`, for the AWS chain to fill.
    pub fn storage_toml_without_credentials(&self, extra: &str) -> String {
        format!(
            "[storage]\ntype = \"s3\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\n\
             endpoint = \"{}\"\n{extra}\n",
            self.endpoint()
        )
    }

    /// The storage config atticd would parse from [`S3Server::storage_toml`].
    pub fn storage_config(&self, extra: &str) -> server::config::S3StorageConfig {
        let text = format!(
            "token-root-key = \"ed25519-private/{}\"\n{}",
            "00".repeat(32),
            self.storage_toml(extra)
        );
        let config: server::config::ServerConfig = toml::from_str(&text).expect("parses");
        match config.storage {
            server::config::StorageConfig::S3(s3) => s3,
            other => panic!("not S3: {other:?}"),
        }
    }

    /// Multipart uploads open on the server: s3s-fs records each as
    /// `.upload-<id>.json` in its root until it is completed or aborted.
    /// (It does not implement `ListMultipartUploads`.)
    pub fn open_uploads(&self) -> usize {
        self.root_files(|name| name.starts_with(".upload-") && name.ends_with(".json"))
    }

    /// Parts of open multipart uploads written whole: s3s-fs renames each
    /// into place as `.upload_id-<id>.part-<n>` once it has all of it.
    pub fn uploaded_parts(&self) -> usize {
        self.root_files(|name| name.starts_with(".upload_id-"))
    }

    fn root_files(&self, wanted: impl Fn(&str) -> bool) -> usize {
        std::fs::read_dir(self.root.path())
            .expect("read the s3s-fs root")
            .flatten()
            .filter(|e| wanted(&e.file_name().to_string_lossy()))
            .count()
    }

    /// The file s3s-fs keeps an object's bytes in.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Objects in the bucket under `prefix` (a directory path), by key.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(base, &path, found);
                } else if let Ok(key) = path.strip_prefix(base) {
                    found.push(key.to_string_lossy().into_owned());
                }
            }
        }
        let base = self.root.path().join(BUCKET);
        let mut found = Vec::new();
        walk(&base, &base.join(prefix), &mut found);
        found.sort();
        found
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts s3s-fs on `port` (0: any) and waits until it listens.
// The child is returned to an `S3Server`, whose `Drop` kills and reaps it.
#[allow(clippy::zombie_processes)]
fn spawn(root: &Path, port: u16) -> (Child, u16) {
    let mut child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .env("RUST_LOG", "s3s_fs=info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start s3s-fs");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining, so the server never blocks on a full pipe.
            let _ = lines_tx.send(line);
        }
    });
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("s3s-fs said where it listens within 30 seconds");
        if let Some((_, address)) = line.split_once("server is running at http://") {
            let port = address
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a port");
            return (child, port);
        }
    }
}
