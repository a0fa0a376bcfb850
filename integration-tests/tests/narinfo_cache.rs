//! What the book says of Nix's narinfo cache around `nix copy`, with Nix
//! 2.8: a user's Nix remembers a narinfo's absence for
//! `narinfo-cache-negative-ttl` and, after `nix copy`, the narinfo it
//! wrote itself (naming its own NAR file, which the server does not serve
//! under that name) for `narinfo-cache-positive-ttl`. The cache is the
//! user's, shared by every store they open, a fresh one included.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::Api;

/// Nix's defaults, which the tests' own settings turn off.
const NEGATIVE_TTL: &str = "3600";
const POSITIVE_TTL: &str = "2592000";

/// A Nix command with its own user cache directory and credentials.
fn as_user(mut cmd: Command, cache_home: &Path, netrc: &Path) -> Command {
    cmd.env("XDG_CACHE_HOME", cache_home)
        .arg("--option")
        .arg("netrc-file")
        .arg(netrc);
    cmd
}

struct Setup {
    _server: TestServer,
    dir: tempfile::TempDir,
    url: String,
    key: String,
    netrc: PathBuf,
    path: String,
}

async fn setup() -> Setup {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let admin = &server.root_token;
    api.create_cache(admin, "ttl", false).await;
    let key = api.public_key(admin, "ttl").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let host = server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host");
    let netrc = nix::write_netrc(dir.path(), host, admin);
    let content = dir.path().join("content");
    std::fs::create_dir(&content).expect("mkdir");
    std::fs::write(content.join("file"), nix::nonce()).expect("write");
    let path = nix::add(&content);
    let url = format!("{}/ttl", server.url);
    Setup {
        _server: server,
        dir,
        url,
        key,
        netrc,
        path,
    }
}

impl Setup {
    fn copy(&self, cache_home: &Path) {
        let copy = nix::run_unchecked(
            as_user(nix::command("nix"), cache_home, &self.netrc)
                .args(["copy", "--to", &self.url, &self.path])
                .args(["--option", "narinfo-cache-negative-ttl", NEGATIVE_TTL])
                .args(["--option", "narinfo-cache-positive-ttl", POSITIVE_TTL]),
        );
        assert!(
            copy.status.success(),
            "{}",
            String::from_utf8_lossy(&copy.stderr)
        );
    }

    /// Substitutes the path into a fresh store; whether it arrived, and
    /// what Nix said.
    fn substitute(&self, cache_home: &Path, negative: &str, positive: &str) -> (bool, String) {
        let fresh = nix::FreshStore::new();
        let out = nix::run_unchecked(
            as_user(fresh.command("nix-store"), cache_home, &self.netrc)
                .args(["--realise", &self.path])
                .args(["--option", "substituters", &self.url])
                .args(["--option", "trusted-public-keys", &self.key])
                .args(["--option", "narinfo-cache-negative-ttl", negative])
                .args(["--option", "narinfo-cache-positive-ttl", positive]),
        );
        (
            fresh.is_valid(&self.path),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The pusher's own machine: Nix substitutes from the narinfo it wrote,
/// whose `URL` is its own upload's name, and fails; with
/// `narinfo-cache-positive-ttl = 0` it asks the server, and substitutes.
#[tokio::test]
async fn after_nix_copy_the_pusher_substitutes_with_the_positive_cache_off() {
    let setup = setup().await;
    let pusher = setup.dir.path().join("pusher-cache");
    setup.copy(&pusher);

    let (valid, log) = setup.substitute(&pusher, NEGATIVE_TTL, POSITIVE_TTL);
    assert!(!valid, "{log}");
    assert!(log.contains("does not exist in binary cache"), "{log}");
    let (valid, log) = setup.substitute(&pusher, NEGATIVE_TTL, "0");
    assert!(valid, "{log}");
}

/// A machine that looked for the path before it was pushed believes it
/// missing for `narinfo-cache-negative-ttl`, a fresh store included; with
/// that at 0 it asks again, and substitutes.
#[tokio::test]
async fn a_path_looked_for_before_its_push_needs_the_negative_cache_off() {
    let setup = setup().await;
    let user = setup.dir.path().join("user-cache");
    let (valid, _) = setup.substitute(&user, NEGATIVE_TTL, POSITIVE_TTL);
    assert!(!valid, "nothing was pushed yet");
    setup.copy(&setup.dir.path().join("ci-cache"));

    let (valid, log) = setup.substitute(&user, NEGATIVE_TTL, POSITIVE_TTL);
    assert!(!valid, "the remembered 404 was not believed: {log}");
    let (valid, log) = setup.substitute(&user, "0", POSITIVE_TTL);
    assert!(valid, "{log}");
}
