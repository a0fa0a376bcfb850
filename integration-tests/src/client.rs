//! The `attic` client as a user runs it: its own home, with a Nix user
//! configuration that `attic use` can extend.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::nix;
use crate::server::binary;

/// A user with an empty home and a `nix.conf` that names no substituter, so
/// only caches added by `attic use` are asked (the machine has no network).
pub struct TestClient {
    home: tempfile::TempDir,
    /// Set on every command, e.g. the CA files a private CA needs.
    env: Vec<(String, PathBuf)>,
}

impl TestClient {
    /// A fresh user.
    pub fn new() -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let nix_dir = home.path().join("config/nix");
        std::fs::create_dir_all(&nix_dir).expect("mkdir");
        std::fs::write(nix_dir.join("nix.conf"), "substituters =\n").expect("write nix.conf");
        Self {
            home,
            env: Vec::new(),
        }
    }

    /// This user with `name` set to `value` for every command: trusting
    /// a private CA, say (`SSL_CERT_FILE`, `NIX_SSL_CERT_FILE`).
    pub fn with_env(mut self, name: &str, value: &Path) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The user's `nix.conf`.
    pub fn nix_conf(&self) -> PathBuf {
        self.home.path().join("config/nix/nix.conf")
    }

    /// A command (ours or Nix's) in this user's environment.
    pub fn command(&self, program: &str) -> Command {
        if program == "attic" {
            self.command_at(&binary("attic"))
        } else {
            self.command_at(Path::new(program))
        }
    }

    /// A command for the program at `program` (an installed `attic`, say)
    /// in this user's environment.
    pub fn command_at(&self, program: &Path) -> Command {
        let mut cmd = nix::command(&program.display().to_string());
        cmd.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("XDG_STATE_HOME", self.home.path().join("state"))
            .env("XDG_DATA_HOME", self.home.path().join("data"))
            .envs(self.env.iter().map(|(name, value)| (name, value)));
        cmd
    }

    /// Runs `attic` with these arguments.
    pub fn attic(&self, args: &[&str]) -> Output {
        self.command("attic")
            .args(args)
            .output()
            .expect("run attic")
    }

    /// Runs `attic`, panicking unless it succeeds; returns stdout.
    pub fn attic_ok(&self, args: &[&str]) -> String {
        let output = self.attic(args);
        assert!(
            output.status.success(),
            "attic {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// `nix-store --realise PATH` with only this user's configuration.
    pub fn realise(&self, path: &str) -> Output {
        self.command("nix-store")
            .args(["--realise", path])
            .output()
            .expect("run nix-store")
    }
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

/// A server, a logged-in user, and a private cache `demo`.
pub fn logged_in() -> (crate::server::TestServer, TestClient, String) {
    let server = crate::server::TestServer::start();
    let token = server.make_token(&[
        "--pull",
        "*",
        "--push",
        "*",
        "--create-cache",
        "*",
        "--destroy-cache",
        "*",
        "--configure-cache",
        "*",
    ]);
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &token]);
    client.attic_ok(&["cache", "create", "demo"]);
    (server, client, token)
}

/// What a command printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
