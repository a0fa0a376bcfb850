//! What `attic push` prints for scripts and people, and what its exit code
//! says: `--json` records, `--quiet`, exit codes when none, some or all
//! paths fail (the server really refusing uploads: a NAR over its
//! `max-nar-size`), and the warnings about a token that expires soon or
//! has expired.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use integration_tests::client::{TestClient, logged_in, text};
use integration_tests::nix;
use integration_tests::server::TestServer;
use serde_json::Value;

/// Largest NAR the server of the failure tests takes.
const MAX_NAR_SIZE: usize = 64 * 1024;

/// The JSON lines of a `--json` push: every line of stdout must parse.
fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{}", text(output)))
        })
        .collect()
}

/// The path records, by path, and the summary, which must come last.
fn records(output: &Output) -> (Vec<Value>, Value) {
    let mut lines = json_lines(output);
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["type"], "summary", "{summary}");
    assert!(
        lines.iter().all(|l| l["type"] == "path"),
        "only path records before the summary: {lines:?}"
    );
    (lines, summary)
}

fn record_of<'a>(records: &'a [Value], path: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("no record of {path}: {records:?}"))
}

/// A path of its own (no references) holding `size` bytes of noise.
fn path_of_size(dir: &Path, name: &str, size: usize) -> String {
    let content = dir.join(name);
    std::fs::create_dir_all(&content).expect("mkdir");
    let noise: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .chain(nix::nonce().into_bytes())
        .collect();
    std::fs::write(content.join("noise"), noise).expect("write");
    nix::add(&content)
}

#[test]
fn push_json_gives_a_record_per_path_and_a_summary() {
    let (_server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 200 * 1024);
    let leaf = &closure.paths[0];
    client.attic_ok(&["push", "demo", "--no-closure", leaf]);

    let out = client.attic(&["push", "demo", "--json", closure.top()]);
    assert!(out.status.success(), "{}", text(&out));
    let (paths, summary) = records(&out);
    assert_eq!(paths.len(), 3, "{paths:?}");
    let present = record_of(&paths, leaf);
    assert_eq!(present["outcome"], "already_present", "{present}");
    assert_eq!(present["bytes_sent"], 0, "{present}");
    for path in &closure.paths[1..] {
        let record = record_of(&paths, path);
        assert_eq!(record["outcome"], "pushed", "{record}");
        assert_eq!(
            record["nar_size"].as_u64(),
            Some(nix::path_info(path).nar_size),
            "{record}"
        );
        assert!(record["bytes_sent"].as_u64() > Some(0), "{record}");
        assert!(record["seconds"].as_f64().is_some(), "{record}");
        assert!(record.get("error").is_none(), "{record}");
    }
    assert_eq!(summary["pushed"], 2, "{summary}");
    assert_eq!(summary["already_present"], 1, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let nar_bytes: u64 = closure.paths[1..]
        .iter()
        .map(|p| nix::path_info(p).nar_size)
        .sum();
    assert_eq!(summary["nar_bytes"].as_u64(), Some(nar_bytes), "{summary}");
    assert!(summary["seconds"].as_f64() > Some(0.0), "{summary}");

    // Pushed again: every path already there, still one record each.
    let again = client.attic(&["push", "demo", "--json", closure.top()]);
    assert!(again.status.success(), "{}", text(&again));
    let (paths, summary) = records(&again);
    assert!(
        paths.iter().all(|r| r["outcome"] == "already_present") && paths.len() == 3,
        "{paths:?}"
    );
    assert_eq!(summary["pushed"], 0, "{summary}");

    // `--json` and `--quiet` do not mix.
    let both = client.attic(&["push", "demo", "--json", "--quiet", closure.top()]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
}

#[test]
fn quiet_prints_nothing_but_errors() {
    let (_server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    let out = client.attic(&["push", "demo", "--quiet", closure.top()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    // The paths are there: a push for people says so.
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(
        out.contains("nothing to push: 3 paths already in the cache"),
        "{out}"
    );
}

#[test]
fn plain_lines_say_one_thing_per_path_with_correct_plurals() {
    let (_server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    let out = client.attic_ok(&["push", "demo", "--no-closure", &closure.paths[0]]);
    assert!(out.contains("1 path to push to demo"), "{out}");
    assert!(out.contains("pushed 1 path ("), "{out}");
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    for path in &closure.paths[1..] {
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(path.as_str())).collect();
        assert_eq!(lines.len(), 1, "one line per path: {out}");
        assert!(lines[0].starts_with(&format!("pushed {path}: ")), "{out}");
    }
    assert!(!out.contains(&closure.paths[0]), "{out}");
    assert!(out.contains("2 paths to push to demo"), "{out}");
    let summary = out.lines().last().expect("a summary");
    assert!(summary.starts_with("pushed 2 paths ("), "{out}");
    assert!(summary.contains("; 1 already in the cache"), "{out}");
    assert!(!summary.contains("failed"), "{out}");
}

#[test]
fn exit_codes_say_whether_none_some_or_all_paths_failed() {
    let server = TestServer::start_with_config(&format!("max-nar-size = {MAX_NAR_SIZE}"));
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &token]);
    client.attic_ok(&["cache", "create", "demo"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let small = path_of_size(dir.path(), "small", 1000);
    let large = path_of_size(dir.path(), "large", 2 * MAX_NAR_SIZE);
    let also_small = path_of_size(dir.path(), "also-small", 2000);

    // Some fail: the large one, which the server refuses; the small one
    // is pushed.
    let out = client.attic(&["push", "demo", "--json", &small, &large]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let (paths, summary) = records(&out);
    assert_eq!(record_of(&paths, &small)["outcome"], "pushed");
    let refused = record_of(&paths, &large);
    assert_eq!(refused["outcome"], "failed", "{refused}");
    let error = refused["error"].as_str().expect("an error");
    assert!(error.contains("413"), "{error}");
    assert_eq!(summary["pushed"], 1, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("error: {large} was not pushed")),
        "{}",
        text(&out)
    );

    // All fail: only the large one needed pushing.
    let out = client.attic(&["push", "demo", "--quiet", &small, &large]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(out.stdout.is_empty(), "quiet: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: {large} was not pushed")),
        "{stderr}"
    );
    assert!(stderr.contains("413"), "{stderr}");

    // None fail.
    let out = client.attic(&["push", "demo", &small, &also_small]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pushed 1 path ("), "{stdout}");
    assert!(stdout.contains("1 already in the cache"), "{stdout}");

    // The server holds what it acknowledged, and not what it refused.
    let listed = client.attic(&["push", "demo", "--json", &small, &also_small]);
    let (paths, _) = records(&listed);
    assert!(
        paths.iter().all(|r| r["outcome"] == "already_present"),
        "{paths:?}"
    );

    // An error before any upload is 1.
    let out = client.attic(&["push", "no-such-cache", &small]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// A token that expired `ago`, signed with the server's own root key, as
/// `make-token` would have signed it then.
fn expired_token(server: &TestServer, ago: Duration) -> String {
    let config = std::fs::read_to_string(server.config_path()).expect("read config");
    let config: toml::Table = toml::from_str(&config).expect("config parses");
    let root = config["token-root-key"].as_str().expect("a token root key");
    let root = attic_token::RootKey::parse(root).expect("root key");
    attic_token::TokenSpec {
        subject: "test".to_owned(),
        expires_at: Some(SystemTime::now() - ago),
        grants: ["pull", "push"]
            .iter()
            .map(|p| {
                (
                    "*".parse().expect("pattern"),
                    p.parse().expect("permission"),
                )
            })
            .collect(),
    }
    .sign(&root)
    .expect("sign")
    .to_base64()
    .expect("base64")
}

#[test]
fn warns_once_when_the_token_expires_within_a_week_and_says_when_it_has_expired() {
    let (server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);

    let soon = server.atticadm(&[
        "make-token",
        "--sub",
        "ci",
        "--validity",
        "2d",
        "--pull",
        "*",
        "--push",
        "*",
    ]);
    assert!(soon.status.success(), "{}", text(&soon));
    let soon = String::from_utf8_lossy(&soon.stdout).trim().to_owned();
    let ci = TestClient::new();
    let login = ci.attic(&["login", "ci", &server.url, &soon]);
    assert!(login.status.success(), "{}", text(&login));
    assert!(
        String::from_utf8_lossy(&login.stderr).contains("expires in 2 days"),
        "{}",
        text(&login)
    );
    // The push works, and the warning comes once, on stderr.
    let out = ci.attic(&["push", "ci:demo", "--json", closure.top()]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = format!(
        "warning: the token for server \"ci\" expires in 2 days: get a new token before then \
         and run `attic login ci {}/ NEW_TOKEN`",
        server.url.trim_end_matches('/')
    );
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
    let (_, summary) = records(&out);
    assert_eq!(summary["pushed"], 3, "{summary}");

    // An expired token: said before the request, and the request fails.
    let expired = expired_token(&server, Duration::from_secs(3 * 24 * 3600));
    let late = TestClient::new();
    late.attic_ok(&["login", "late", &server.url, &expired, "--no-verify"]);
    let out = late.attic(&["push", "late:demo", closure.top()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr
        .find("error: the token for server \"late\" has expired (3 days ago)")
        .unwrap_or_else(|| panic!("no expiry notice: {stderr}"));
    let refused = stderr
        .find("401")
        .unwrap_or_else(|| panic!("the server took an expired token: {stderr}"));
    assert!(said < refused, "said after the 401: {stderr}");
    assert_eq!(
        stderr.matches("has expired (3 days ago)").count(),
        1,
        "{stderr}"
    );

    // A token far from its expiry: no warning at all.
    let out = client.attic(&["push", "demo", "--quiet", closure.top()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
}

#[test]
fn watch_store_json_gives_the_same_records() {
    let (_server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    client.attic_ok(&["watch-store", "demo", "--enqueue", closure.top()]);
    let out = client.attic(&["watch-store", "demo", "--once", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let (paths, summary) = records(&out);
    for path in &closure.paths {
        assert_eq!(record_of(&paths, path)["outcome"], "pushed", "{paths:?}");
    }
    assert_eq!(summary["pushed"], 3, "{summary}");
}

/// `--compression`: zstd shrinks what crosses the wire; `none`, and `auto`
/// towards a server on loopback, send the NAR as it is.
#[test]
fn compression_chooses_what_crosses_the_wire() {
    let (_server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let sent = |mode: Option<&str>, name: &str| {
        let content = dir.path().join(name);
        std::fs::create_dir_all(&content).expect("mkdir");
        let lines = format!("{name} {}\n", nix::nonce()).repeat(40_000);
        std::fs::write(content.join("text"), lines).expect("write");
        let path = nix::add(&content);
        let mut args = vec!["push", "demo", "--json", path.as_str()];
        if let Some(mode) = mode {
            args.extend(["--compression", mode]);
        }
        let out = client.attic(&args);
        assert!(out.status.success(), "{}", text(&out));
        let (paths, _) = records(&out);
        let record = record_of(&paths, &path);
        let nar_size = nix::path_info(&path).nar_size;
        (record["bytes_sent"].as_u64().expect("bytes_sent"), nar_size)
    };
    let (zstd, nar_size) = sent(Some("zstd"), "zstd");
    assert!(zstd * 10 < nar_size, "{zstd} of {nar_size} bytes sent");
    for (mode, name) in [(Some("none"), "none"), (None, "auto")] {
        let (plain, nar_size) = sent(mode, name);
        assert_eq!(plain, nar_size, "{mode:?}");
    }
    let bad = client.attic(&["push", "demo", "--compression", "lz4", "/nix/store/x"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}
