//! Rotating a cache's signing key without an outage, with real Nix: during
//! the overlap Nix trusting only the old key and Nix trusting only the new
//! one both substitute; after it only the new key works.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attic::narinfo::NarInfo;
use attic::signing::PublicKey;
use integration_tests::client::{TestClient, logged_in, text};
use integration_tests::nix::{self, FreshStore, TestClosure};
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, path_hash};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A public cache `name` holding a freshly built closure, pushed by `attic`.
fn public_cache_with_a_closure(
    client: &TestClient,
    name: &str,
) -> (TestClosure, tempfile::TempDir) {
    client.attic_ok(&["cache", "create", name, "--public"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 64 * 1024);
    client.attic_ok(&["push", name, closure.top()]);
    (closure, dir)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The narinfo of `path` in public cache `cache`, as Nix fetches it.
async fn narinfo(server: &TestServer, cache: &str, path: &str) -> NarInfo {
    let (status, body) = Api::new(&server.url)
        .get_text(&format!("/{cache}/{}.narinfo", path_hash(path)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.parse().expect("a narinfo")
}

/// The names of the keys that signed `narinfo`, each signature checked.
fn signers(narinfo: &NarInfo, keys: &[&str]) -> Vec<String> {
    let keys: Vec<PublicKey> = keys.iter().map(|k| k.parse().expect("a key")).collect();
    for sig in &narinfo.sigs {
        let name = sig.split_once(':').expect("name:signature").0;
        let key = keys
            .iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| panic!("signed by an unknown key: {sig}"));
        assert!(
            narinfo.is_signed_by_any(std::slice::from_ref(key)),
            "the signature by {name} does not verify"
        );
    }
    let mut names: Vec<String> = narinfo
        .sigs
        .iter()
        .map(|sig| sig.split_once(':').expect("name:signature").0.to_owned())
        .collect();
    names.sort();
    names
}

fn key_name(key: &str) -> String {
    key.split_once(':').expect("name:key").0.to_owned()
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn string(config: &Value, field: &str) -> String {
    config[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {config}"))
        .to_owned()
}

/// Substitutes `closure` into a fresh store trusting `key` alone; whether
/// every path arrived.
fn substitutes(server: &TestServer, cache: &str, closure: &TestClosure, key: &str) -> bool {
    let store = FreshStore::new();
    let out = store.substitute(closure.top(), &format!("{}/{cache}", server.url), key);
    let complete = closure.paths.iter().all(|p| store.is_valid(p));
    assert_eq!(
        out.status.success(),
        complete,
        "nix-store said one thing, the store another: {}",
        text(&out)
    );
    complete
}

#[tokio::test]
async fn nix_trusting_either_key_substitutes_during_the_overlap() {
    let (server, client, token) = logged_in();
    let (closure, _dir) = public_cache_with_a_closure(&client, "rotating");
    let api = Api::new(&server.url);
    let old_key = api.public_key(&token, "rotating").await;

    let out = client.attic_ok(&[
        "cache",
        "configure",
        "rotating",
        "--rotate-keypair",
        "--overlap",
        "1h",
    ]);
    let config = api.cache_config(&token, "rotating").await;
    let new_key = string(&config, "public_key");
    assert_ne!(new_key, old_key);
    assert_ne!(
        key_name(&new_key),
        key_name(&old_key),
        "Nix keeps one key per name"
    );
    assert_eq!(string(&config, "previous_public_key"), old_key);
    let until = config["previous_key_signs_until"]
        .as_i64()
        .expect("the overlap's end");
    assert!(
        (3500..=3700).contains(&(until - unix_now())),
        "an hour's overlap ends in an hour: {config}"
    );
    assert!(out.contains(&new_key) && out.contains(&old_key), "{out}");

    // Every narinfo carries both signatures, each verifying.
    for path in &closure.paths {
        assert_eq!(
            signers(
                &narinfo(&server, "rotating", path).await,
                &[&old_key, &new_key]
            ),
            sorted(vec![key_name(&old_key), key_name(&new_key)]),
        );
    }
    // Nix trusting the old key alone, and Nix trusting the new one alone,
    // both substitute the whole closure.
    assert!(substitutes(&server, "rotating", &closure, &old_key));
    assert!(substitutes(&server, "rotating", &closure, &new_key));

    // `attic cache info` shows both keys; `attic use` trusts both.
    let info = client.attic_ok(&["cache", "info", "rotating"]);
    assert!(info.contains(&new_key), "{info}");
    assert!(
        info.contains(&format!("previous key:      {old_key}")),
        "{info}"
    );
    client.attic_ok(&["use", "rotating"]);
    let conf = std::fs::read_to_string(client.nix_conf()).expect("nix.conf");
    for key in [&old_key, &new_key] {
        assert!(
            conf.contains(&format!("extra-trusted-public-keys = {key}")),
            "{conf}"
        );
    }

    // A second rotation during the overlap: the current key becomes the
    // previous one, and the first key signs nothing any more.
    client.attic_ok(&[
        "cache",
        "configure",
        "rotating",
        "--rotate-keypair",
        "--overlap",
        "1h",
    ]);
    let config = api.cache_config(&token, "rotating").await;
    let third_key = string(&config, "public_key");
    assert_eq!(string(&config, "previous_public_key"), new_key);
    assert_eq!(
        signers(
            &narinfo(&server, "rotating", closure.top()).await,
            &[&new_key, &third_key]
        ),
        sorted(vec![key_name(&new_key), key_name(&third_key)]),
    );
    assert!(!substitutes(&server, "rotating", &closure, &old_key));
    client.attic_ok(&["use", "rotating"]);
    let conf = std::fs::read_to_string(client.nix_conf()).expect("nix.conf");
    assert!(!conf.contains(&old_key), "{conf}");
    assert!(
        conf.contains(&new_key) && conf.contains(&third_key),
        "{conf}"
    );
}

#[tokio::test]
async fn after_the_overlap_only_the_new_key_signs() {
    let (server, client, token) = logged_in();
    let (closure, _dir) = public_cache_with_a_closure(&client, "rotating");
    let api = Api::new(&server.url);
    let old_key = api.public_key(&token, "rotating").await;
    client.attic_ok(&["use", "rotating"]);

    client.attic_ok(&[
        "cache",
        "configure",
        "rotating",
        "--rotate-keypair",
        "--overlap",
        "2s",
    ]);
    let config = api.cache_config(&token, "rotating").await;
    let new_key = string(&config, "public_key");
    let until = config["previous_key_signs_until"]
        .as_i64()
        .expect("the overlap's end");

    // Read once during the overlap (when the clock allows), so the server
    // holds a two-signature narinfo in memory.
    let before = unix_now();
    let during = narinfo(&server, "rotating", closure.top()).await;
    let after = unix_now();
    if after < until {
        assert_eq!(during.sigs.len(), 2, "{:?}", during.sigs);
    } else if before >= until {
        assert_eq!(during.sigs.len(), 1, "{:?}", during.sigs);
    }

    // Wait out the overlap, as the server stated it.
    while unix_now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in &closure.paths {
        assert_eq!(
            signers(&narinfo(&server, "rotating", path).await, &[&new_key]),
            vec![key_name(&new_key)],
            "one signature, by the new key"
        );
    }
    assert!(
        !substitutes(&server, "rotating", &closure, &old_key),
        "Nix trusting only the old key must refuse after the overlap"
    );
    assert!(substitutes(&server, "rotating", &closure, &new_key));

    let config = api.cache_config(&token, "rotating").await;
    assert!(config.get("previous_public_key").is_none(), "{config}");
    assert!(config.get("previous_key_signs_until").is_none(), "{config}");
    let info = client.attic_ok(&["cache", "info", "rotating"]);
    assert!(!info.contains("previous key"), "{info}");
    // `attic use` run again drops the old key.
    client.attic_ok(&["use", "rotating"]);
    let conf = std::fs::read_to_string(client.nix_conf()).expect("nix.conf");
    assert!(!conf.contains(&old_key), "{conf}");
    assert!(conf.contains(&new_key), "{conf}");
}

#[tokio::test]
async fn rotating_with_no_overlap_replaces_the_key_at_once_and_needs_configure_cache() {
    let (server, client, token) = logged_in();
    let (closure, _dir) = public_cache_with_a_closure(&client, "rotating");
    let api = Api::new(&server.url);
    let old_key = api.public_key(&token, "rotating").await;

    // Pushing and pulling is not enough to rotate; the key stays.
    let pusher = server.make_token(&["--pull", "*", "--push", "*"]);
    let refused = api
        .request(
            Method::PATCH,
            "/_api/v1/cache-config/rotating",
            Some(&pusher),
        )
        .json(&json!({"rotate_keypair": {"overlap_seconds": 60}}))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    // Replacing and rotating at once is a contradiction.
    let both = api
        .request(
            Method::PATCH,
            "/_api/v1/cache-config/rotating",
            Some(&token),
        )
        .json(&json!({"keypair": "Generate", "rotate_keypair": {"overlap_seconds": 60}}))
        .send()
        .await
        .expect("request");
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);
    assert_eq!(api.public_key(&token, "rotating").await, old_key);

    client.attic_ok(&[
        "cache",
        "configure",
        "rotating",
        "--rotate-keypair",
        "--overlap",
        "0",
    ]);
    let config = api.cache_config(&token, "rotating").await;
    let new_key = string(&config, "public_key");
    assert_ne!(new_key, old_key);
    assert!(config.get("previous_public_key").is_none(), "{config}");
    assert_eq!(
        signers(
            &narinfo(&server, "rotating", closure.top()).await,
            &[&new_key]
        ),
        vec![key_name(&new_key)],
    );
    assert!(!substitutes(&server, "rotating", &closure, &old_key));
    assert!(substitutes(&server, "rotating", &closure, &new_key));
}
