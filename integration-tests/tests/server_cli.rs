//! `atticd` and `atticadm` as a new user meets them: defaults, first start,
//! and configuration errors that name the key.

use integration_tests::server::{TestHome, TestServer};
use integration_tests::upload::Api;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn atticadm_works_before_atticd_ever_ran_and_they_share_the_config() {
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
            "--push",
            "*",
            "--create-cache",
            "*",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let token = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(
        token.trim().lines().count(),
        1,
        "only the token on stdout: {token:?}"
    );
    let config = home.path().join("config/attic/server.toml");
    assert!(config.exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config)
        .expect("config")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the config holds the token key");
    let check = home.run("atticd", &["--check-config"]);
    assert!(check.status.success(), "{}", stderr(&check));
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

#[test]
fn db_migrations_mode_creates_the_database_and_exits() {
    let home = TestHome::new();
    let data = home.path().join("elsewhere");
    let output = home.run(
        "atticd",
        &[
            "--mode",
            "db-migrations",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(data.join("server.db").exists());
    assert!(
        !home.path().join("data/attic").exists(),
        "--data-dir moved the data"
    );
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

/// Logs written to a file or a pipe carry no terminal colour codes.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let home = TestHome::new();
    let output = home
        .command("atticd")
        .args(["--mode", "db-migrations"])
        .env("RUST_LOG", "info")
        .output()
        .expect("run atticd");
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(log.contains("migration"), "something was logged: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log: {log:?}");
}
