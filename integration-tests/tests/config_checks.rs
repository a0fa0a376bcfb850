//! `atticd --mode check-config` and start-up errors, through the real
//! binary: a database URL is shown without its password, and a SQLite file
//! the first start will create is said to be so, not "unreachable".

use integration_tests::client::text;
use integration_tests::server::TestHome;

/// A token key line, so the configs below are otherwise complete.
fn key_line() -> String {
    format!("token-root-key = \"ed25519-private/{}\"\n", "22".repeat(32))
}

/// Runs `atticd -f CONFIG ARGS` in `home` on `config`.
fn atticd_on(home: &TestHome, config: &str, args: &[&str]) -> std::process::Output {
    let path = home.path().join("server.toml");
    std::fs::write(&path, config).expect("write config");
    let data = home.path().join("data");
    let mut all = vec![
        "-f",
        path.to_str().expect("UTF-8"),
        "--data-dir",
        data.to_str().expect("UTF-8"),
    ];
    all.extend_from_slice(args);
    home.run("atticd", &all)
}

#[test]
fn database_passwords_never_show_in_check_config_or_start_up_errors() {
    let home = TestHome::new();
    // Nothing listens on port 1: the connection is refused.
    for url in [
        "postgres://attic:hunter2-in-userinfo@127.0.0.1:1/attic",
        "postgresql://127.0.0.1:1/attic?user=attic&password=hunter2-in-query",
    ] {
        let config = format!(
            "{}[database]\nurl = \"{url}\"\nacquire-timeout = \"1s\"\n",
            key_line()
        );
        for args in [
            &["--mode", "check-config"][..],
            &["--mode", "api-server", "--listen", "127.0.0.1:0"][..],
        ] {
            let output = atticd_on(&home, &config, args);
            let shown = text(&output);
            assert!(
                !output.status.success(),
                "{args:?} passed on a dead database: {shown}"
            );
            assert!(
                !shown.contains("hunter2"),
                "{args:?} showed the password: {shown}"
            );
            // Still says which database it means.
            assert!(shown.contains("127.0.0.1:1/attic"), "{args:?}: {shown}");
            assert!(shown.contains("***"), "{args:?}: {shown}");
        }
    }
}

#[test]
fn a_fresh_sqlite_file_is_reported_as_to_be_created_not_unreachable() {
    let home = TestHome::new();
    let file = home.path().join("fresh.db");
    let config = format!(
        "{}[database]\nurl = \"sqlite://{}?mode=rwc\"\n",
        key_line(),
        file.display()
    );
    let output = atticd_on(&home, &config, &["--mode", "check-config"]);
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("database: {} will be created", file.display())),
        "{shown}"
    );
    assert!(!shown.contains("unreachable"), "{shown}");
    assert!(!file.exists(), "checking created the database");

    // The first start does create it, and the check then finds it.
    let migrated = atticd_on(&home, &config, &["--mode", "db-migrations"]);
    assert!(migrated.status.success(), "{}", text(&migrated));
    let output = atticd_on(&home, &config, &["--mode", "check-config"]);
    assert!(
        text(&output).contains("answers; its schema is up to date"),
        "{}",
        text(&output)
    );

    // A file in a directory that does not exist cannot be created.
    let config = format!(
        "{}[database]\nurl = \"sqlite://{}/missing/dir/fresh.db?mode=rwc\"\n",
        key_line(),
        home.path().display()
    );
    let output = atticd_on(&home, &config, &["--mode", "check-config"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("cannot be created: its directory"),
        "{}",
        text(&output)
    );
}
