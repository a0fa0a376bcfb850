//! What the book says of Nix's narinfo cache around `nix copy`, with Nix
//! 2.8: a user's Nix remembers a narinfo's absence for
//! `narinfo-cache-negative-ttl` and, after `nix copy`, the narinfo it
//! wrote itself (naming its own NAR file, which the server serves under
//! that name too) for `narinfo-cache-positive-ttl`. The cache is the
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
        self.copy_compressed(cache_home, None);
    }

    /// `nix copy` with `?compression=` set, or Nix's default (xz); what
    /// it logged at `--debug`.
    fn copy_compressed(&self, cache_home: &Path, compression: Option<&str>) -> String {
        let to = match compression {
            Some(compression) => format!("{}?compression={compression}", self.url),
            None => self.url.clone(),
        };
        let copy = nix::run_unchecked(
            as_user(nix::command("nix"), cache_home, &self.netrc)
                .args(["copy", "--debug", "--to", &to, &self.path])
                .args(["--option", "narinfo-cache-negative-ttl", NEGATIVE_TTL])
                .args(["--option", "narinfo-cache-positive-ttl", POSITIVE_TTL]),
        );
        let log = String::from_utf8_lossy(&copy.stderr).into_owned();
        assert!(copy.status.success(), "{log}");
        log
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
/// whose `URL` is its own upload's name, and the server serves the NAR
/// under that name, compressed as the name says: Nix's default settings
/// work, whatever compression `nix copy` used.
#[tokio::test]
async fn after_nix_copy_the_pusher_substitutes_with_nix_defaults() {
    for compression in [None, Some("zstd"), Some("bzip2"), Some("none")] {
        let setup = setup().await;
        let pusher = setup.dir.path().join("pusher-cache");
        setup.copy_compressed(&pusher, compression);
        let (valid, log) = setup.substitute(&pusher, NEGATIVE_TTL, POSITIVE_TTL);
        assert!(valid, "{compression:?}: {log}");
    }
}

/// The name is the pushing cache's alone: another cache holding the same
/// path answers 404 for it.
#[tokio::test]
async fn a_nix_upload_name_is_served_only_by_the_cache_it_was_pushed_to() {
    let setup = setup().await;
    let log = setup.copy_compressed(&setup.dir.path().join("pusher-cache"), None);
    let file = uploaded_file(&log);
    let api = Api::new(&setup._server.url);
    let admin = &setup._server.root_token;
    let get = |cache: &'static str| {
        let url = format!("{}/{cache}/nar/{file}", setup._server.url);
        let admin = admin.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(admin)
                .send()
                .await
                .expect("GET")
                .status()
        }
    };
    assert_eq!(get("ttl").await, 200);
    api.create_cache(admin, "other", false).await;
    api.push_path(admin, "other", &setup.path).await;
    assert_eq!(get("other").await, 404);
}

/// The name of the NAR file `nix copy --debug` logged uploading.
fn uploaded_file(log: &str) -> String {
    log.split(|c: char| c.is_whitespace() || c == '\'' || c == '"')
        .filter_map(|word| word.rsplit_once("/nar/"))
        .map(|(_, file)| file.to_owned())
        .find(|file| {
            file.split_once(".nar")
                .is_some_and(|(hash, _)| hash.len() == 52)
        })
        .unwrap_or_else(|| panic!("no NAR upload in the log: {log}"))
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
