//! A platform team's admin surface over a cache: listing the caches a
//! token may see, deleting paths, and pins that keep a release's closure
//! through retention and quota eviction. Through the HTTP API and the
//! `attic` client, with real Nix substituting what is left.

use std::time::Duration;

use integration_tests::client::{TestClient, text};
use integration_tests::gc::{NO_GRACE, all_substitute, assert_nothing_orphaned, holds, store_path};
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, nar_info_from_nix, noise, path_hash};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// GETs `/_api/v1/caches`; the status and the JSON body.
async fn list_caches(api: &Api, token: Option<&str>) -> (StatusCode, Value) {
    let response = api
        .request(Method::GET, "/_api/v1/caches", token)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("JSON"))
}

fn names(listing: &Value) -> Vec<&str> {
    listing["caches"]
        .as_array()
        .expect("caches")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect()
}

/// DELETEs a path's narinfo; the status and the error name, if any.
async fn delete_path(
    api: &Api,
    token: Option<&str>,
    cache: &str,
    path: &str,
) -> (StatusCode, String) {
    let response = api
        .request(
            Method::DELETE,
            &format!("/{cache}/{}.narinfo", path_hash(path)),
            token,
        )
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn narinfo_status(api: &Api, token: &str, cache: &str, path: &str) -> StatusCode {
    api.status(
        Some(token),
        &format!("/{cache}/{}.narinfo", path_hash(path)),
    )
    .await
}

/// PUTs a pin; the status and the body.
async fn pin(
    api: &Api,
    token: &str,
    cache: &str,
    name: &str,
    path: &str,
    keep: u32,
) -> (StatusCode, Value) {
    let response = api
        .request(
            Method::PUT,
            &format!("/_api/v1/pins/{cache}/{name}"),
            Some(token),
        )
        .json(&json!({ "store_path": path, "keep": keep }))
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A token sees the caches it holds any permission on, with what each
/// holds; never another tenant's cache, and an anonymous caller is refused.
#[tokio::test]
async fn the_cache_list_shows_only_what_the_token_may_see() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let root = &server.root_token;
    for (name, public) in [("team-a", false), ("team-b", true), ("other-x", true)] {
        api.create_cache(root, name, public).await;
    }
    let path = store_path(&[("f", &noise(100_000, 1))]);
    let other = store_path(&[("f", &noise(100_000, 2))]);
    api.push_path(root, "team-a", &path).await;
    api.push_path(root, "other-x", &other).await;
    api.configure(root, "team-a", json!({"quota": {"Bytes": 10_000_000}}))
        .await;

    let team = server.make_token(&["--pull", "team-*"]);
    let (status, listing) = list_caches(&api, Some(&team)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&listing), ["team-a", "team-b"]);
    let a = &listing["caches"][0];
    assert_eq!(a["paths"], 1);
    assert_eq!(a["is_public"], false);
    assert_eq!(a["quota"], 10_000_000);
    let stored = a["stored_bytes"].as_u64().expect("stored_bytes");
    assert!(stored > 0, "{a}");
    assert_eq!(
        a["quota_used_bytes"].as_u64(),
        Some(api.used_bytes(root, "team-a").await)
    );
    assert!(a["last_push"].as_i64().is_some(), "{a}");
    let b = &listing["caches"][1];
    assert_eq!(
        (b["paths"].as_u64(), b["stored_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(b["last_push"].is_null());
    // Nothing of other-x: not its name, nor its path in any count.
    assert!(!listing.to_string().contains("other-x"));

    // A token for caches that do not exist lists nothing, as one for
    // nothing at all would; no token at all is refused.
    let nobody = server.make_token(&["--push", "nobody-*"]);
    let (status, listing) = list_caches(&api, Some(&nobody)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(names(&listing).is_empty(), "{listing}");
    let (status, _) = list_caches(&api, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = list_caches(&api, Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The same through the client, as a table.
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &team]);
    let table = client.attic_ok(&["cache", "list"]);
    assert!(
        table.contains("team-a") && table.contains("team-b"),
        "{table}"
    );
    assert!(!table.contains("other-x"), "{table}");
    assert!(table.contains("QUOTA USED"), "{table}");
}

/// A deleted path is gone from its cache at once, whatever was held in
/// memory; another cache holding the same NAR keeps serving it, and GC
/// reclaims the bytes once no cache holds them.
#[tokio::test]
async fn a_deleted_path_leaves_its_cache_alone_and_gc_reclaims_it_last() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let root = &server.root_token;
    api.create_cache(root, "a", false).await;
    api.create_cache(root, "b", true).await;
    let path = store_path(&[("f", &noise(300_000, 3))]);
    api.push_path(root, "a", &path).await;
    api.push_path(root, "b", &path).await;
    // Read it, so that its signed narinfo is held in memory.
    assert_eq!(narinfo_status(&api, root, "a", &path).await, StatusCode::OK);
    let nar_url = format!("/a/nar/{}.nar", path_hash(&path));
    assert_eq!(api.status(Some(root), &nar_url).await, StatusCode::OK);

    let deleter = server.make_token(&["--delete", "a", "--pull", "*"]);
    assert_eq!(
        delete_path(&api, Some(&deleter), "a", &path).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        narinfo_status(&api, root, "a", &path).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.status(Some(root), &nar_url).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.missing(root, "a", &[path_hash(&path)]).await,
        [path_hash(&path)]
    );
    assert_eq!(narinfo_status(&api, root, "b", &path).await, StatusCode::OK);
    assert!(api.missing(root, "b", &[path_hash(&path)]).await.is_empty());
    // Not there any more: 404, named as such.
    assert_eq!(
        delete_path(&api, Some(&deleter), "a", &path).await,
        (StatusCode::NOT_FOUND, "NoSuchObject".to_owned())
    );

    // Refusals: no token, a token without delete, and a token without
    // rights on b cannot tell b from a cache that does not exist.
    assert_eq!(
        delete_path(&api, None, "b", &path).await.0,
        StatusCode::UNAUTHORIZED
    );
    let puller = server.make_token(&["--pull", "*"]);
    assert_eq!(
        delete_path(&api, Some(&puller), "b", &path).await.0,
        StatusCode::FORBIDDEN
    );
    let on_b = delete_path(&api, Some(&deleter), "b", &path).await;
    let on_missing = delete_path(&api, Some(&deleter), "no-such", &path).await;
    assert_eq!(on_b, (StatusCode::FORBIDDEN, "Forbidden".to_owned()));
    assert_eq!(on_b, on_missing);
    assert_eq!(narinfo_status(&api, root, "b", &path).await, StatusCode::OK);

    // b still holds the NAR: GC keeps it, and Nix substitutes it from b.
    server.gc();
    assert_eq!(server.row_counts().await.nars, 1);
    let key = api.public_key(root, "b").await;
    all_substitute(&server, "b", &key, std::slice::from_ref(&path));

    // Deleted from b too, through the client (with a path b lacks among
    // those given: reported, not an error), its bytes leave the disk.
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, root]);
    let missing = store_path(&[("f", b"never pushed")]);
    // One path as an argument, the other on stdin.
    let output = nix::run_with_input(
        client
            .command("attic")
            .args(["cache", "delete-path", "b", &path, "--stdin"]),
        format!("{}\n", path_hash(&missing)).as_bytes(),
    );
    assert!(text(&output).contains("not in b"), "{}", text(&output));
    assert!(
        text(&output).contains(path_hash(&missing)),
        "{}",
        text(&output)
    );
    assert_eq!(
        narinfo_status(&api, root, "b", &path).await,
        StatusCode::NOT_FOUND
    );
    server.gc();
    let counts = server.row_counts().await;
    assert_eq!((counts.paths, counts.nars, counts.chunks), (0, 0, 0));
    assert_nothing_orphaned(&server).await;
    assert_eq!(server.blob_count(), 0);

    // A cache the token cannot delete in is a failure of the command.
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &puller]);
    let output = client.attic(&["cache", "delete-path", "a", path_hash(&path)]);
    assert!(!output.status.success(), "{}", text(&output));
}

/// Pins through the client: add, list, keep the last N, remove; a path
/// the cache does not hold cannot be pinned.
#[tokio::test]
async fn pins_keep_their_last_targets_and_refuse_paths_not_held() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let root = &server.root_token;
    api.create_cache(root, "rel", false).await;
    let releases: Vec<String> = (0..3)
        .map(|i| store_path(&[("f", &noise(10_000, 10 + i))]))
        .collect();
    for path in &releases {
        api.push_path(root, "rel", path).await;
    }
    let client = TestClient::new();
    let pusher = server.make_token(&["--pull", "rel", "--push", "rel"]);
    client.attic_ok(&["login", "local", &server.url, &pusher]);
    for path in &releases {
        client.attic_ok(&["pin", "add", "rel", "stable", path, "--keep", "2"]);
    }
    let listing = client.attic_ok(&["pin", "list", "rel"]);
    assert!(listing.contains("stable (keep 2)"), "{listing}");
    assert!(!listing.contains(&releases[0]), "{listing}");
    assert!(
        listing.contains(&releases[1]) && listing.contains(&releases[2]),
        "{listing}"
    );

    // Not held by the cache: 404, and the command fails saying so.
    let elsewhere = store_path(&[("f", b"not in rel")]);
    let (status, body) = pin(&api, root, "rel", "stable", &elsewhere, 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let output = client.attic(&["pin", "add", "rel", "other", &elsewhere]);
    assert!(!output.status.success());
    assert!(text(&output).contains("NoSuchObject"), "{}", text(&output));
    // Names are checked.
    let (status, _) = pin(&api, root, "rel", "..", &releases[0], 1).await;
    assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND);
    let (status, body) = pin(&api, root, "rel", "bad%0Aname", &releases[0], 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Pulling lists pins, but pinning needs push.
    let puller = server.make_token(&["--pull", "rel"]);
    let (status, _) = pin(&api, &puller, "rel", "mine", &releases[0], 1).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let response = api
        .request(Method::GET, "/_api/v1/pins/rel", Some(&puller))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let pins: Value = response.json().await.expect("JSON");
    assert_eq!(
        pins["pins"][0]["targets"][0]["store_path"],
        releases[2].as_str()
    );

    client.attic_ok(&["pin", "remove", "rel", "stable"]);
    let listing = client.attic_ok(&["pin", "list", "rel"]);
    assert!(!listing.contains("stable"), "{listing}");
    let output = client.attic(&["pin", "remove", "rel", "stable"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("NoSuchPin"), "{}", text(&output));
}

/// The promise of a pin: after retention and a quota removed everything
/// else, real Nix still substitutes the pinned release's whole closure;
/// and since the pins alone exceed the quota, the cache refuses pushes
/// (507) rather than evict them.
#[tokio::test]
async fn real_nix_substitutes_a_pinned_release_after_gc_removed_everything_else() {
    let mut server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let root = &server.root_token.clone();
    api.create_cache(root, "prod", true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let release = nix::build_closure(dir.path(), 200_000);
    for path in &release.paths {
        api.push_path(root, "prod", path).await;
    }
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, root]);
    client.attic_ok(&["pin", "add", "prod", "release", release.top()]);
    let others: Vec<String> = (0..2)
        .map(|i| store_path(&[("f", &noise(150_000, 20 + i))]))
        .collect();
    for path in &others {
        api.push_path(root, "prod", path).await;
    }
    api.configure(
        root,
        "prod",
        json!({"retention_period": {"Period": 1}, "quota": {"Bytes": 1000}}),
    )
    .await;
    std::thread::sleep(Duration::from_millis(2100));
    assert!(server.terminate_within(Duration::from_secs(30)));
    let report = server.gc();
    assert!(report.contains("2 expired"), "{report}");
    assert!(
        report.contains("kept past retention: 3 (pinned"),
        "the release's three paths: {report}"
    );
    server.restart();
    let api = Api::new(&server.url);

    for path in &others {
        assert!(
            !holds(&server, "prod", path).await,
            "{path} survived: {report}"
        );
    }
    for path in &release.paths {
        assert!(
            holds(&server, "prod", path).await,
            "{path} was removed: {report}"
        );
    }
    assert_nothing_orphaned(&server).await;
    let key = api.public_key(root, "prod").await;
    all_substitute(&server, "prod", &key, &release.paths);

    // The pins alone exceed the quota: a push is refused, saying why.
    let extra = store_path(&[("f", &noise(10_000, 30))]);
    let response = api
        .upload(
            Some(root),
            &nar_info_from_nix("prod", &extra),
            nix::dump(std::path::Path::new(&extra)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "PinsExceedQuota");
    assert!(
        body["message"].as_str().expect("message").contains("pins"),
        "{body}"
    );
    // `nix copy` is refused the same way, before its NAR is read.
    let nar_put = api
        .request(
            Method::PUT,
            &format!("/prod/nar/{}.nar", "0".repeat(52)),
            Some(root),
        )
        .body(nix::dump(std::path::Path::new(&extra)))
        .send()
        .await
        .expect("request");
    assert_eq!(nar_put.status(), StatusCode::INSUFFICIENT_STORAGE);
    // Without the pin, the next collection may take the release too.
    client.attic_ok(&["pin", "remove", "prod", "release"]);
    server.gc();
    assert!(!holds(&server, "prod", release.top()).await);
}
