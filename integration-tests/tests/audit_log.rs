//! The audit log and the token registry as a platform team uses them:
//! pushes (`attic push`, `nix copy`), cache creation, configuration and
//! destruction, and token revocation recorded with their subject, cache
//! and path; `attic cache log` for a cache's admins only, `atticadm audit`
//! for the operator; records that survive a restart and that garbage
//! collection trims past `audit-retention-period`; `atticadm list-tokens`.

use std::path::Path;

use integration_tests::client::TestClient;
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::Api;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// `atticadm make-token --sub SUBJECT --validity 1d ARGS`.
fn token(server: &TestServer, subject: &str, args: &[&str]) -> String {
    let mut all = vec!["make-token", "--sub", subject, "--validity", "1d"];
    all.extend_from_slice(args);
    let output = server.atticadm(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// `atticadm ARGS`, which must succeed; its stdout.
fn atticadm_ok(server: &TestServer, args: &[&str]) -> String {
    let output = server.atticadm(args);
    assert!(
        output.status.success(),
        "atticadm {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// One JSON object per line.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// The events of `action`.
fn of<'a>(events: &'a [Value], action: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["action"] == action).collect()
}

fn host(server: &TestServer) -> &str {
    server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host")
}

/// `nix copy --to URL paths` with credentials from `netrc`.
fn nix_copy(url: &str, netrc: &Path, paths: &[String]) {
    let output = nix::run_unchecked(
        nix::command("nix")
            .args(["copy", "--to", url, "--option", "netrc-file"])
            .arg(netrc)
            .args(paths),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every push (by `attic push` and by `nix copy`), the cache's creation
/// and configuration are in its log with the right subject and path; the
/// log is the cache admins' alone; it survives a restart; a subject with
/// control characters cannot break the table.
#[tokio::test]
async fn a_caches_admins_see_who_pushed_what_and_nobody_else_does() {
    let mut server = TestServer::start();
    let api = Api::new(&server.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = token(
        &server,
        "alice",
        &[
            "--pull",
            "team-a*",
            "--push",
            "team-a*",
            "--create-cache",
            "team-a*",
            "--configure-cache",
            "team-a*",
            "--destroy-cache",
            "team-a*",
        ],
    );
    let carol = token(&server, "carol", &["--pull", "team-a", "--push", "team-a"]);
    let bob = token(
        &server,
        "bob",
        &[
            "--push",
            "team-b*",
            "--create-cache",
            "team-b*",
            "--configure-cache",
            "team-b*",
        ],
    );
    let mallory = token(&server, "mallory\n\u{1b}[2Jforged", &["--push", "team-a"]);

    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &alice]);
    client.attic_ok(&["cache", "create", "team-a"]);
    let pushed = nix::build_closure(dir.path(), 4096);
    let mut push = vec!["push", "team-a"];
    push.extend(pushed.paths.iter().map(String::as_str));
    client.attic_ok(&push);

    let copied = nix::build_closure(dir.path(), 4096);
    let netrc = nix::write_netrc(dir.path(), host(&server), &carol);
    nix_copy(&format!("{}/team-a", server.url), &netrc, &copied.paths);

    client.attic_ok(&["cache", "configure", "team-a", "--priority", "50"]);
    api.create_cache(&bob, "team-b", false).await;
    let elsewhere = nix::build_closure(dir.path(), 1024);
    api.push_path(&bob, "team-b", &elsewhere.paths[0]).await;
    let forged = nix::build_closure(dir.path(), 1024);
    api.push_path(&mallory, "team-a", &forged.paths[0]).await;

    let events = json_lines(&client.attic_ok(&["cache", "log", "team-a", "--json"]));
    assert!(
        events.iter().all(|e| e["cache"] == "team-a"),
        "another cache's events in team-a's log: {events:#?}"
    );
    let created = of(&events, "create-cache");
    assert_eq!(created.len(), 1, "{events:#?}");
    assert_eq!(created[0]["subject"], "alice");
    assert_eq!(created[0]["actor"], "token");
    let pushes = of(&events, "push");
    let pushed_by = |subject: &str| -> Vec<String> {
        pushes
            .iter()
            .filter(|e| e["subject"] == subject)
            .map(|e| e["store_path"].as_str().expect("a path").to_owned())
            .collect()
    };
    let mut by_alice = pushed_by("alice");
    by_alice.sort();
    let mut expected = pushed.paths.clone();
    expected.sort();
    assert_eq!(by_alice, expected, "attic push: one event per path");
    let mut by_carol = pushed_by("carol");
    by_carol.sort();
    let mut expected = copied.paths.clone();
    expected.sort();
    assert_eq!(by_carol, expected, "nix copy: one event per path");
    assert_eq!(
        pushed_by("mallory\n\u{1b}[2Jforged"),
        [forged.paths[0].clone()]
    );
    let configured = of(&events, "configure-cache");
    assert_eq!(configured.len(), 1);
    assert_eq!(configured[0]["subject"], "alice");
    assert!(
        configured[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("priority=50")),
        "{configured:?}"
    );
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "newest last: {ids:?}");

    // The table: one line per event under its heading, nothing a
    // terminal would act on, the forged subject escaped.
    let table = client.attic_ok(&["cache", "log", "team-a"]);
    assert_eq!(table.lines().count(), events.len() + 1, "{table}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
    assert!(table.contains("mallory\\n\\u{1b}[2Jforged"), "{table}");
    assert!(table.contains(&pushed.paths[0]), "{table}");

    // --since: a time to come shows nothing, an hour back everything.
    let future = client.attic_ok(&[
        "cache",
        "log",
        "team-a",
        "--json",
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(future.is_empty(), "{future}");
    let hour = client.attic_ok(&["cache", "log", "team-a", "--json", "--since", "1h"]);
    assert_eq!(json_lines(&hour), events);

    // Other tenants: bob's token grants nothing on team-a, and is told
    // what it is told of a cache that does not exist; carol may push
    // there but not read the log; no token at all is 401.
    let ask = |token: Option<&str>, cache: &str| {
        let request = api.request(Method::GET, &format!("/_api/v1/cache-log/{cache}"), token);
        async move {
            let response = request.send().await.expect("request");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            (status, body["error"].clone())
        }
    };
    let hidden = ask(Some(&bob), "team-a").await;
    assert_eq!(hidden.0, StatusCode::NOT_FOUND);
    assert_eq!(hidden, ask(Some(&bob), "team-b-nope").await);
    assert_eq!(hidden, ask(Some(&bob), "team-zzz").await);
    assert_eq!(ask(Some(&carol), "team-a").await.0, StatusCode::FORBIDDEN);
    assert_eq!(ask(None, "team-a").await.0, StatusCode::UNAUTHORIZED);
    let bobs = api
        .request(Method::GET, "/_api/v1/cache-log/team-b", Some(&bob))
        .send()
        .await
        .expect("request");
    assert_eq!(bobs.status(), StatusCode::OK);
    let bobs: Value = bobs.json().await.expect("json");
    let bobs = bobs["events"].as_array().expect("events");
    assert_eq!(bobs.len(), 2, "create and one push: {bobs:#?}");
    assert!(
        bobs.iter()
            .all(|e| e["cache"] == "team-b" && e["subject"] == "bob")
    );

    // A page at a time: `limit` and `after` walk the same events.
    let page = api
        .request(
            Method::GET,
            "/_api/v1/cache-log/team-a?limit=2",
            Some(&alice),
        )
        .send()
        .await
        .expect("request");
    let page: Value = page.json().await.expect("json");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next_after"], events[1]["id"]);

    // A destroyed cache's log is the operator's to read.
    client.attic_ok(&["cache", "create", "team-a-tmp"]);
    client.attic_ok(&["cache", "destroy", "team-a-tmp", "--no-confirm"]);
    let tmp = json_lines(&atticadm_ok(
        &server,
        &["audit", "--cache", "team-a-tmp", "--json"],
    ));
    let actions: Vec<&str> = tmp
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["create-cache", "destroy-cache"]);
    assert!(tmp.iter().all(|e| e["subject"] == "alice"));

    // Records live in the database: a restart keeps them all.
    server.restart();
    let after_restart = json_lines(&client.attic_ok(&["cache", "log", "team-a", "--json"]));
    assert_eq!(after_restart, events);
}

/// `atticadm list-tokens` shows what make-token and attenuate-token issued
/// (never the tokens), and which are revoked by id, through a parent, or
/// by subject; revocations are in the audit log; garbage collection trims
/// the log past `audit-retention-period`, and `0s` keeps it.
#[tokio::test]
async fn issued_tokens_are_listed_revocations_audited_and_the_log_trimmed() {
    let server = TestServer::start();
    let dave = token(&server, "dave", &["--pull", "team-d", "--push", "team-d*"]);
    let erin = token(&server, "erin", &["--pull", "*"]);
    let erin_two = token(&server, "erin", &["--push", "team-e"]);
    let narrowed = atticadm_ok(
        &server,
        &[
            "attenuate-token",
            &dave,
            "--permission",
            "pull",
            "--validity",
            "1h",
        ],
    );
    let narrowed = narrowed.trim();

    let listed = atticadm_ok(&server, &["list-tokens", "--json"]);
    for secret in [&dave, &erin, &erin_two, &narrowed.to_owned()] {
        assert!(!listed.contains(secret.as_str()), "a token in the registry");
    }
    let tokens = json_lines(&listed);
    let subjects: Vec<&str> = tokens
        .iter()
        .map(|t| t["subject"].as_str().expect("subject"))
        .collect();
    assert_eq!(subjects, ["dave", "erin", "erin", "dave"]);
    assert!(tokens.iter().all(|t| t["revoked"] == false), "{tokens:#?}");
    assert_eq!(tokens[0]["grants"][0]["permission"], "pull");
    assert_eq!(tokens[0]["grants"][0]["pattern"], "team-d");
    assert_eq!(tokens[0]["grants"][1]["pattern"], "team-d*");
    assert_eq!(tokens[3]["parent_token_id"], tokens[0]["token_id"]);
    assert_eq!(tokens[3]["permissions"][0], "pull");
    assert!(tokens[3]["expires_at"].as_i64() < tokens[0]["expires_at"].as_i64());

    // Revoking dave's token revokes what was attenuated from it; revoking
    // erin by subject revokes both of hers.
    atticadm_ok(&server, &["revoke-token", &dave]);
    atticadm_ok(&server, &["revoke-token", "--subject", "erin"]);
    let tokens = json_lines(&atticadm_ok(&server, &["list-tokens", "--json"]));
    let states: Vec<&str> = tokens
        .iter()
        .map(|t| t["state"].as_str().expect("state"))
        .collect();
    assert_eq!(
        states,
        ["revoked", "revoked-subject", "revoked-subject", "revoked"]
    );
    let erins = json_lines(&atticadm_ok(
        &server,
        &["list-tokens", "--subject", "erin", "--json"],
    ));
    assert_eq!(erins.len(), 2);
    let table = atticadm_ok(&server, &["list-tokens", "--subject", "dave"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("dave") && table.contains("revoked"),
        "{table}"
    );
    assert!(!table.contains(&dave), "{table}");

    let log = json_lines(&atticadm_ok(&server, &["audit", "--json"]));
    let revoked = of(&log, "revoke-token");
    assert_eq!(revoked.len(), 1, "{log:#?}");
    assert_eq!(revoked[0]["actor"], "atticadm");
    let detail = revoked[0]["detail"].as_str().expect("detail");
    assert!(detail.contains("dave"), "{detail}");
    assert!(
        detail.contains(tokens[0]["token_id"].as_str().expect("id")),
        "{detail}"
    );
    let by_subject = of(&log, "revoke-subject");
    assert_eq!(by_subject.len(), 1);
    assert!(
        by_subject[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("erin"))
    );
    assert_eq!(of(&log, "issue-token").len(), 4);

    // Collections keep the log within its retention: 90 days by default,
    // for ever with `0s`, and older events go once it is shorter.
    let config = server.config_path();
    let original = std::fs::read_to_string(&config).expect("config");
    let with_retention = |period: &str| {
        let text = original.replace(
            "audit-retention-period = \"90d\"",
            &format!("audit-retention-period = \"{period}\""),
        );
        assert_ne!(text, original, "the config has the default retention");
        std::fs::write(&config, text).expect("write config");
    };
    server.gc();
    assert_eq!(json_lines(&atticadm_ok(&server, &["audit", "--json"])), log);
    with_retention("0s");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    server.gc();
    assert_eq!(json_lines(&atticadm_ok(&server, &["audit", "--json"])), log);
    with_retention("1s");
    let report = server.gc();
    assert!(
        report.contains(&format!("{} removed", log.len())),
        "{report}"
    );
    assert_eq!(atticadm_ok(&server, &["audit", "--json"]), "");
}

/// Pinning, unpinning, deleting a path and rotating the key are in the
/// cache's log too, each with who did it and on what.
#[tokio::test]
async fn pins_deletions_and_key_rotations_are_recorded() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(
        &server,
        "release-bot",
        &[
            "--pull",
            "rel",
            "--push",
            "rel",
            "--delete",
            "rel",
            "--create-cache",
            "rel",
            "--configure-cache",
            "rel",
        ],
    );
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &admin]);
    client.attic_ok(&["cache", "create", "rel"]);
    let built = nix::build_closure(dir.path(), 1024);
    let mut push = vec!["push", "rel"];
    push.extend(built.paths.iter().map(String::as_str));
    client.attic_ok(&push);
    let top = built.paths.last().expect("a path").clone();
    let leaf = built.paths[0].clone();
    client.attic_ok(&["pin", "add", "rel", "v1", &top]);
    client.attic_ok(&["pin", "remove", "rel", "v1"]);
    client.attic_ok(&["cache", "delete-path", "rel", &leaf]);
    client.attic_ok(&[
        "cache",
        "configure",
        "rel",
        "--rotate-keypair",
        "--overlap",
        "1h",
    ]);

    let events = json_lines(&client.attic_ok(&["cache", "log", "rel", "--json"]));
    let one = |action: &str| -> &Value {
        let found = of(&events, action);
        assert_eq!(found.len(), 1, "{action}: {events:#?}");
        assert_eq!(found[0]["subject"], "release-bot", "{action}");
        assert_eq!(found[0]["cache"], "rel", "{action}");
        found[0]
    };
    let pinned = one("pin");
    assert_eq!(pinned["store_path"], top.as_str());
    assert!(pinned["detail"].as_str().is_some_and(|d| d.contains("v1")));
    assert!(
        one("unpin")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("v1"))
    );
    let leaf_hash = integration_tests::upload::path_hash(&leaf);
    assert!(
        one("delete-path")["detail"]
            .as_str()
            .is_some_and(|d| d.contains(leaf_hash)),
        "{events:#?}"
    );
    assert!(
        one("rotate-key")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("rel-2")),
        "{events:#?}"
    );
}
