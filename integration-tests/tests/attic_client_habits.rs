//! An Attic user's habits, unchanged: Attic's client config as it is
//! (`token-file`, no `default-server`), and Attic's commands and flags.

use std::path::Path;

use integration_tests::client::{TestClient, text};
use integration_tests::nix;
use integration_tests::server::TestServer;

/// Writes the config an Attic user has: one server, its token in a file,
/// no `default-server`.
fn attic_style_config(client: &TestClient, url: &str, token: &str) {
    let secret = client.home().join("attic-token");
    std::fs::write(&secret, format!("{token}\n")).expect("write token file");
    let dir = client.home().join("config/attic");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[servers.prod]\nendpoint = \"{url}/\"\ntoken-file = \"{}\"\n",
            secret.display()
        ),
    )
    .expect("write config");
}

#[test]
fn an_attic_client_config_and_attic_command_lines_work_unchanged() {
    let server = TestServer::start();
    let token = server.make_token(&[
        "--pull",
        "*",
        "--push",
        "*",
        "--create-cache",
        "*",
        "--configure-cache",
        "*",
        "--configure-cache-retention",
        "*",
        "--destroy-cache",
        "*",
    ]);
    let client = TestClient::new();
    attic_style_config(&client, &server.url, &token);
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 4096);

    // A bare cache name means the only server; its token comes from the file.
    client.attic_ok(&["cache", "create", "team"]);

    // `get-closure` lists what `nix-store -qR` does.
    let listed = client.attic_ok(&["get-closure", closure.top()]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort_unstable();
    let mut expected: Vec<&str> = closure.paths.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected);

    // `push --stdin --jobs N` as CI scripts pipe paths in, and the flags
    // Attic's push accepts.
    let mut push = client.command("attic");
    push.args(["push", "team", "--stdin", "--jobs", "2"]);
    let out = nix::run_with_input(&mut push, format!("{}\n", closure.top()).as_bytes());
    assert!(text(&out).contains("pushed 3 paths"), "{}", text(&out));
    let out = client.attic_ok(&[
        "push",
        "prod:team",
        "--no-closure",
        "--ignore-upstream-cache-filter",
        "--force-preamble",
        closure.top(),
    ]);
    assert!(out.contains("already in the cache"), "{out}");
    let out = client.attic(&["push", "team", "--jobs", "0", closure.top()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--jobs"), "{}", text(&out));

    // Attic's retention flags.
    client.attic_ok(&[
        "cache",
        "configure",
        "team",
        "--retention-period",
        "2 years",
    ]);
    let info = client.attic_ok(&["cache", "info", "team"]);
    assert!(info.contains("2years"), "{info}");
    client.attic_ok(&["cache", "configure", "team", "--reset-retention-period"]);
    let info = client.attic_ok(&["cache", "info", "team"]);
    assert!(info.contains("server default"), "{info}");

    // watch-store takes Attic's flags (and here pushes what is queued).
    client.attic_ok(&[
        "watch-store",
        "team",
        "--once",
        "--jobs",
        "2",
        "--ignore-upstream-cache-filter",
        "--no-closure",
        "--force-preamble",
    ]);

    // Nix substitutes through `attic use` with the token from the file.
    client.attic_ok(&["use", "team"]);
    let original = nix::dump(Path::new(closure.top()));
    nix::delete(&closure.paths);
    let realised = client.realise(closure.top());
    assert!(realised.status.success(), "{}", text(&realised));
    assert_eq!(nix::dump(Path::new(closure.top())), original);

    // Saving the config (as `attic use` did) kept the token in its file.
    let saved =
        std::fs::read_to_string(client.home().join("config/attic/config.toml")).expect("config");
    assert!(saved.contains("token-file"), "{saved}");
    assert!(
        !saved.contains(&token),
        "the token leaked into the config: {saved}"
    );

    client.attic_ok(&["cache", "destroy", "team", "--no-confirm"]);
}

#[test]
fn an_unreadable_token_file_is_named_when_its_server_is_used() {
    let server = TestServer::start();
    let client = TestClient::new();
    let dir = client.home().join("config/attic");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "default-server = \"prod\"\n[servers.prod]\nendpoint = \"{}/\"\ntoken-file = \"/nonexistent/attic-token\"\n",
            server.url
        ),
    )
    .expect("write config");
    let out = client.attic(&["cache", "info", "team"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("/nonexistent/attic-token"),
        "{}",
        text(&out)
    );
}
