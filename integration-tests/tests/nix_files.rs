//! The repository's Nix files: every one parses, and the NixOS module
//! (`nixos/module.nix`) evaluates, without nixpkgs (no network here),
//! against the stand-in `lib` and `pkgs` in `integration-tests/nix/`: its
//! options and defaults, the units it writes for a sample configuration,
//! and a server.toml that the real `atticd --check-config` accepts.
//! What this does not cover: nixpkgs' module system itself (merging,
//! priorities), `pkgs.formats.toml`, and the flake's package build.

use std::path::{Path, PathBuf};

use integration_tests::client::text;
use integration_tests::nix;
use integration_tests::server::TestHome;
use serde_json::Value;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn nix_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a directory").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            // Build output, Git's data, the rendered book, fuzzing data.
            let skipped = matches!(
                name.to_str(),
                Some("target" | ".git" | "corpus" | "artifacts")
            ) || path == repository_root().join("book/book");
            if !skipped {
                nix_files(&path, found);
            }
        } else if path.extension().is_some_and(|ext| ext == "nix") {
            found.push(path);
        }
    }
}

/// Evaluates `eval-module.nix` for these `services.atticd` values (a Nix
/// expression) and returns `attribute` of its result as JSON.
fn evaluate(values: &str, attribute: &str) -> Result<Value, String> {
    let driver = repository_root().join("integration-tests/nix/eval-module.nix");
    let expression = format!(
        "(import {} {{ values = {values}; }}).{attribute}",
        driver.display()
    );
    // Read-write: `builtins.toFile` writes the generated server.toml to
    // the store, where the test reads it.
    let output = nix::run_unchecked(
        nix::command("nix-instantiate")
            .args(["--read-write-mode", "--eval", "--strict", "--json", "-E"])
            .arg(&expression),
    );
    if !output.status.success() {
        return Err(text(&output));
    }
    Ok(serde_json::from_slice(&output.stdout).expect("nix-instantiate prints JSON"))
}

const PACKAGE: &str = "/nix/store/00000000000000000000000000000000-attic-0.1.0";

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repository_root(), &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|file| {
            file.strip_prefix(repository_root())
                .expect("under the root")
                .display()
                .to_string()
        })
        .collect();
    for expected in ["flake.nix", "nixos/module.nix"] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    for file in &files {
        nix::run(nix::command("nix-instantiate").arg("--parse").arg(file));
    }
    let flake = std::fs::read_to_string(repository_root().join("flake.nix")).expect("flake.nix");
    assert!(flake.contains("nixosModules.atticd"), "{flake}");
    assert!(flake.contains("./nixos/module.nix"), "{flake}");
}

#[test]
fn the_nixos_module_declares_documented_options_with_defaults() {
    let options = evaluate(&format!("{{ package = \"{PACKAGE}\"; }}"), "options")
        .expect("the options evaluate");
    let options = options.as_array().expect("a list");
    let find = |name: &str| {
        options
            .iter()
            .find(|option| option["name"] == name)
            .unwrap_or_else(|| panic!("no option {name}: {options:?}"))
    };
    let mut names: Vec<&str> = options
        .iter()
        .map(|option| option["name"].as_str().expect("a name"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "enable",
            "environmentFile",
            "garbageCollector.enable",
            "group",
            "package",
            "settings",
            "user"
        ]
    );
    for option in options {
        assert!(
            option["description"].as_str().is_some_and(|d| d.len() > 20),
            "undocumented: {option}"
        );
    }
    assert_eq!(find("enable")["default"], false);
    assert_eq!(find("user")["default"], "atticd");
    assert_eq!(find("group")["default"], "atticd");
    assert_eq!(find("environmentFile")["default"], Value::Null);
    assert_eq!(find("garbageCollector.enable")["default"], true);
    assert_eq!(find("package")["hasDefault"], false);
    assert_eq!(find("environmentFile")["type"], "nullOr path");

    // Left disabled, the module configures nothing.
    let config = evaluate(&format!("{{ package = \"{PACKAGE}\"; }}"), "config")
        .expect("the config evaluates");
    assert_eq!(config, serde_json::json!({}));

    // A value of the wrong type is refused, naming the option.
    let error = evaluate(
        &format!("{{ enable = true; package = \"{PACKAGE}\"; user = 5; }}"),
        "config",
    )
    .expect_err("user = 5 is refused");
    assert!(error.contains("services.atticd.user: not a str"), "{error}");
}

#[test]
fn the_nixos_module_runs_the_books_units_on_a_config_atticd_accepts() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().display();
    let values = format!(
        r#"{{
          enable = true;
          package = "{PACKAGE}";
          environmentFile = "/run/secrets/atticd.env";
          settings = {{
            api-endpoint = "https://cache.example.com/";
            database.url = "sqlite://{data_dir}/server.db?mode=rwc";
            database.max-connections = 16;
            storage.path = "{data_dir}/storage";
            garbage-collection.default-retention-period = "6 months";
          }};
        }}"#
    );
    let config = evaluate(&values, "config").expect("the config evaluates");
    let services = &config["systemd"]["services"];
    let config_file = config["environment"]["etc"]["atticd/server.toml"]["source"]
        .as_str()
        .expect("/etc/atticd/server.toml links to the generated file")
        .to_owned();
    let exec_start = |unit: &str| {
        services[unit]["serviceConfig"]["ExecStart"]
            .as_str()
            .unwrap_or_else(|| panic!("{unit} has an ExecStart: {services}"))
            .to_owned()
    };
    let common = format!("-f {config_file} --data-dir /var/lib/atticd");
    assert_eq!(
        exec_start("atticd-migrations"),
        format!("{PACKAGE}/bin/atticd --mode db-migrations {common}")
    );
    assert_eq!(
        exec_start("atticd"),
        format!("{PACKAGE}/bin/atticd --mode api-server {common} --log-format json")
    );
    assert_eq!(
        exec_start("atticd-gc"),
        format!("{PACKAGE}/bin/atticd --mode garbage-collector {common} --log-format json")
    );
    assert_eq!(
        services["atticd-migrations"]["serviceConfig"]["Type"],
        "oneshot"
    );
    for unit in ["atticd", "atticd-gc"] {
        assert_eq!(
            services[unit]["requires"],
            serde_json::json!(["atticd-migrations.service"])
        );
        assert_eq!(
            services[unit]["wantedBy"],
            serde_json::json!(["multi-user.target"])
        );
    }
    for unit in ["atticd-migrations", "atticd", "atticd-gc"] {
        let service = &services[unit]["serviceConfig"];
        assert_eq!(service["User"], "atticd");
        assert_eq!(service["EnvironmentFile"], "/run/secrets/atticd.env");
        assert_eq!(service["StateDirectory"], "atticd");
        assert_eq!(service["StateDirectoryMode"], "0700");
        assert_eq!(service["ProtectSystem"], "strict");
    }
    assert_eq!(config["users"]["users"]["atticd"]["isSystemUser"], true);

    // The TOML: the sample's keys over the module's defaults, the token
    // key left as a reference to the environment file.
    let written = std::fs::read_to_string(&config_file).expect("the generated server.toml");
    let toml: toml::Table = written.parse().expect("valid TOML");
    assert_eq!(
        toml["token-root-key"].as_str(),
        Some("${ATTIC_TOKEN_ROOT_KEY}")
    );
    assert_eq!(toml["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(
        toml["api-endpoint"].as_str(),
        Some("https://cache.example.com/")
    );
    assert_eq!(toml["database"]["max-connections"].as_integer(), Some(16));
    assert_eq!(toml["storage"]["type"].as_str(), Some("local"));
    assert_eq!(
        toml["garbage-collection"]["default-retention-period"].as_str(),
        Some("6 months")
    );

    // What the units would run on, as the real server reads it.
    let home = TestHome::new().with_env(
        "ATTIC_TOKEN_ROOT_KEY",
        "ed25519-private/5ad0e0f0c1b2a3948576a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6",
    );
    let checked = home.run("atticd", &["--check-config", "-f", &config_file]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("configuration is valid"),
        "{}",
        text(&checked)
    );

    // A second machine of the deployment runs no collector.
    let without_gc = values.replace(
        "enable = true;",
        "enable = true; garbageCollector.enable = false;",
    );
    let config = evaluate(&without_gc, "config").expect("the config evaluates");
    let units = config["systemd"]["services"]
        .as_object()
        .expect("units")
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(units, ["atticd", "atticd-migrations"]);
}
