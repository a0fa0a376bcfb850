//! `atticd` and `atticadm` as a new user meets them: defaults, first start,
//! and configuration errors that name the key.

use integration_tests::server::{TestHome, TestServer};
use integration_tests::upload::Api;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `atticadm` acts on a server that exists; it never writes a config or
/// a database of its own, which the server would not know.
#[tokio::test]
async fn atticadm_never_sets_up_a_server_and_says_what_it_looked_for() {
    let home = TestHome::new();
    let output = home.run(
        "atticadm",
        &[
            "make-token",
            "--sub",
            "ci",
            "--validity",
            "1d",
            "--pull",
            "*",
        ],
    );
    assert!(!output.status.success(), "made a token for no server");
    assert!(
        stderr(&output).contains("config/attic/server.toml"),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());
    assert_eq!(
        std::fs::read_dir(home.path()).expect("home").count(),
        0,
        "atticadm wrote into an empty home"
    );
    let check = home.run("atticd", &["--check-config"]);
    assert!(
        !check.status.success(),
        "checked a config that is not there"
    );

    // With the wrong data directory, revoke and verify refuse, create
    // nothing, and the token stays valid.
    let server = TestServer::start_embedded();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    let token = server.make_token(&["--pull", "c"]);
    let wrong = server.home().path().join("wrong");
    let wrong_arg = wrong.to_str().expect("utf-8");
    for args in [
        vec!["revoke-token", &token, "--data-dir", wrong_arg],
        vec!["verify", "--data-dir", wrong_arg],
    ] {
        let output = server.atticadm(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&output).contains(&format!("{wrong_arg}/server.db")),
            "{}",
            stderr(&output)
        );
    }
    assert!(!wrong.exists(), "atticadm created {}", wrong.display());
    assert_eq!(
        api.status(Some(&token), "/c/nix-cache-info").await,
        reqwest::StatusCode::OK
    );
    let config = server.config_path();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config)
        .expect("config")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the config holds the token key");
    let check = server.home().run("atticd", &["--check-config"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

/// A first start that fails writes no config, so the next start is a
/// first start again and shows the root token; the error names the path.
#[test]
fn a_failed_first_start_writes_nothing_and_names_the_path() {
    let home = TestHome::new();
    let file = home.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write");
    let data = file.join("data");
    let output = home.run(
        "atticd",
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(data.to_str().expect("utf-8")),
        "{}",
        stderr(&output)
    );
    assert!(
        !home.path().join("config/attic/server.toml").exists(),
        "a failed first start wrote its config"
    );
    let server = TestServer::start_in(home, &[]);
    assert!(!server.root_token.is_empty());
}

#[tokio::test]
async fn a_token_made_by_atticadm_works_on_the_running_server() {
    let server = TestServer::start();
    let token = server.make_token(&["--create-cache", "ci-*"]);
    let api = Api::new(&server.url);
    api.create_cache(&token, "ci-one", true).await;
    let denied = api.try_create_cache(&token, "other", true).await;
    assert_eq!(denied.status(), reqwest::StatusCode::FORBIDDEN);
    // The data landed in the default data directory.
    assert!(server.data_dir().join("server.db").exists());
    assert!(server.config_path().exists());
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let home = TestHome::new();
    let path = home.path().join("server.toml");
    let cases = [
        (
            "token-root-key = \"ed25519-private/00\"\nlistn = \"x\"\n",
            "listn",
        ),
        ("token-root-key = \"nope\"\n", "token-root-key"),
        ("listen = \"127.0.0.1:1\"\n", "token-root-key"),
    ];
    for (text, key) in cases {
        std::fs::write(&path, text).expect("write config");
        let output = home.run(
            "atticd",
            &["--config", path.to_str().expect("utf-8"), "--check-config"],
        );
        assert!(!output.status.success(), "accepted:\n{text}");
        assert!(
            stderr(&output).contains(key),
            "error does not name {key}: {}",
            stderr(&output)
        );
    }
    let missing = home.run(
        "atticd",
        &["--config", "/nonexistent/server.toml", "--check-config"],
    );
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/nonexistent/server.toml"),
        "{}",
        stderr(&missing)
    );
}

/// A migration run or a replica acts on a deployment that exists: each
/// needs its config, and a replica refuses a schema it does not know.
#[test]
fn db_migrations_mode_creates_the_database_and_exits() {
    let home = TestHome::new();
    let lonely = home.run("atticd", &["--mode", "db-migrations"]);
    assert!(!lonely.status.success(), "migrated without a config");
    assert!(
        stderr(&lonely).contains("server.toml"),
        "{}",
        stderr(&lonely)
    );

    let mut server = TestServer::start_embedded();
    server.kill();
    let data = server.home().path().join("elsewhere");
    let data_arg = data.to_str().expect("utf-8");
    let replica = server
        .home()
        .run("atticd", &["--mode", "api-server", "--data-dir", data_arg]);
    assert!(!replica.status.success(), "served without a database");
    assert!(
        stderr(&replica).contains(&format!("{data_arg}/server.db")),
        "{}",
        stderr(&replica)
    );
    let output = server.home().run(
        "atticd",
        &["--mode", "db-migrations", "--data-dir", data_arg],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(data.join("server.db").exists());
}

/// The database holds every cache's signing key and the storage every
/// tenant's data: on a first start both are readable by the server's user
/// alone, whatever the umask.
#[tokio::test]
async fn the_data_directory_and_database_are_private_to_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start();
    Api::new(&server.url)
        .create_cache(&server.root_token, "c", false)
        .await;
    let mode = |path: std::path::PathBuf| {
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let data = server.data_dir();
    assert_eq!(mode(data.clone()), 0o700);
    assert_eq!(mode(data.join("server.db")), 0o600);
    assert_eq!(mode(data.join("storage")), 0o700);
    for sidecar in ["server.db-wal", "server.db-shm"] {
        if data.join(sidecar).exists() {
            assert_eq!(mode(data.join(sidecar)), 0o600, "{sidecar}");
        }
    }
}

/// Every request is logged at info with its route, cache and status,
/// never its token; a log file gets no colour codes, and
/// `--log-format json` writes one JSON object per line.
#[tokio::test]
async fn requests_are_logged_plainly_or_as_json_and_never_with_a_token() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("atticd.log");
        let mut server = TestServer::start_logging_to(&log, &["--log-format", format]);
        let api = Api::new(&server.url);
        api.create_cache(&server.root_token, "team-a", false).await;
        let status = api
            .status(Some(&server.root_token), "/team-a/nix-cache-info")
            .await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let missing = api
            .status(
                Some(&server.root_token),
                "/team-a/00000000000000000000000000000000.narinfo",
            )
            .await;
        assert_eq!(missing, reqwest::StatusCode::NOT_FOUND);
        // A clean stop writes what the log writer still holds.
        assert!(server.terminate_within(std::time::Duration::from_secs(30)));
        let text = std::fs::read_to_string(&log).expect("read log");
        assert!(!text.contains('\u{1b}'), "colour codes in a log: {text:?}");
        assert!(!text.contains(&server.root_token), "a token was logged");
        let requests: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("/{cache}/nix-cache-info") || l.contains("/{cache}/{file}"))
            .collect();
        assert_eq!(requests.len(), 2, "one line per request: {text}");
        if format == "json" {
            for line in text.lines() {
                let value: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(value["level"].is_string(), "{line}");
            }
            let line: serde_json::Value = serde_json::from_str(requests[1]).expect("JSON");
            let fields = &line["fields"];
            assert_eq!(fields["client"], "127.0.0.1", "{line}");
            assert_eq!(fields["method"], "GET", "{line}");
            assert_eq!(fields["route"], "/{cache}/{file}", "{line}");
            assert_eq!(fields["cache"], "team-a", "{line}");
            assert_eq!(fields["status"], 404, "{line}");
            assert!(fields["latency_ms"].is_number(), "{line}");
        } else {
            assert!(requests[0].contains("INFO"), "{}", requests[0]);
            assert!(requests[0].contains("client=127.0.0.1"), "{}", requests[0]);
            assert!(requests[0].contains("method=GET"), "{}", requests[0]);
            assert!(requests[0].contains("cache=team-a"), "{}", requests[0]);
            assert!(requests[0].contains("status=200"), "{}", requests[0]);
            assert!(requests[1].contains("status=404"), "{}", requests[1]);
        }
    }
}

/// Secrets can live in the environment: `${VAR}` in any string value is
/// replaced, and an unset one is an error naming the key and the variable.
#[test]
fn config_values_come_from_the_environment() {
    let server = TestServer::start();
    let config = std::fs::read_to_string(server.config_path()).expect("config");
    let key_line = config
        .lines()
        .find(|l| l.starts_with("token-root-key"))
        .expect("token-root-key");
    let key = key_line.split('"').nth(1).expect("a quoted key").to_owned();
    let path = server.home().path().join("env.toml");
    std::fs::write(
        &path,
        "token-root-key = \"${ATTIC_TEST_ROOT_KEY}\"\napi-endpoint = \"${ATTIC_TEST_ENDPOINT:-https://cache.example.com/}\"\n",
    )
    .expect("write");
    let check = |home: &TestHome| {
        home.run(
            "atticd",
            &["--config", path.to_str().expect("utf-8"), "--check-config"],
        )
    };
    let unset = check(&TestHome::new());
    assert!(!unset.status.success(), "accepted an unset variable");
    assert!(
        stderr(&unset).contains("ATTIC_TEST_ROOT_KEY") && stderr(&unset).contains("token-root-key"),
        "{}",
        stderr(&unset)
    );
    let set = check(&TestHome::new().with_env("ATTIC_TEST_ROOT_KEY", &key));
    assert!(set.status.success(), "{}", stderr(&set));
}
