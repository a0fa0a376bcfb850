//! The container image of the repository's `Dockerfile`, built and run with
//! Debian's podman as the book's fly.io guide runs it: a volume on `/data`,
//! secrets in the environment, the image's own config, its health check,
//! `atticadm` through `podman exec`, a push with `attic`, a substitution by
//! real Nix, and the data surviving a new container on the same volume.
//!
//! Docker Hub is out of reach here, so the test builds with the Dockerfile's
//! build arguments: a Debian base made with `mmdebstrap` (`BASE_IMAGE`) and
//! the binaries this test runs beside (`BINARIES=prebuilt`), where users get
//! `debian:bookworm-slim` and a release build inside the image.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use integration_tests::backend::{Backend, fresh_postgres_database};
use integration_tests::client::{TestClient, text};
use integration_tests::nix;
use integration_tests::podman::Podman;
use integration_tests::server::binary;

const BASE_IMAGE: &str = "localhost/attic-test-debian:bookworm";
const IMAGE: &str = "localhost/atticd:test";
const VOLUME: &str = "attic-data";

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Copies of our binaries without their debug info (the image needs no
/// debugger, and podman's vfs store copies every layer).
fn stripped_binaries(dir: &Path) {
    for name in ["atticd", "atticadm", "attic"] {
        let output = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary(name))
            .arg(dir.join(name))
            .output()
            .expect("run objcopy (binutils)");
        assert!(output.status.success(), "objcopy: {}", text(&output));
    }
}

/// The image's health check command, wherever `podman image inspect`
/// puts it (not in the build history, which names it whether kept or not).
fn health_check(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Object(map) => map.iter().find_map(|(key, value)| {
            if key.eq_ignore_ascii_case("healthcheck") {
                Some(value.to_string())
            } else if key == "History" {
                None
            } else {
                health_check(value)
            }
        }),
        serde_json::Value::Array(items) => items.iter().find_map(health_check),
        _ => None,
    }
}

/// Starts a container of the image on the volume, listening on `port`,
/// with the token key as a secret in its environment; returns its name.
fn start_container(podman: &Podman, name: &str, port: u16, database_url: Option<&str>) -> String {
    let endpoint = format!("ATTIC_API_ENDPOINT=http://127.0.0.1:{port}/");
    let listen = format!("ATTIC_LISTEN=127.0.0.1:{port}");
    let volume = format!("{VOLUME}:/data");
    let mut command = podman.command();
    command
        .args(["run", "--detach", "--name", name, "--network", "host"])
        .args(Podman::ulimits())
        .args(["--volume", &volume, "--env", &endpoint, "--env", &listen])
        // Passed by name, so the value is on no command line.
        .args(["--env", "ATTIC_TOKEN_ROOT_KEY"])
        .env("ATTIC_TOKEN_ROOT_KEY", TOKEN_ROOT_KEY);
    if let Some(url) = database_url {
        command
            .args(["--env", "ATTIC_DATABASE_URL"])
            .env("ATTIC_DATABASE_URL", url);
    }
    let output = command.arg(IMAGE).output().expect("run podman");
    assert!(
        output.status.success(),
        "podman cannot run the image's container: {}",
        text(&output)
    );
    wait_until_healthy(podman, name);
    name.to_owned()
}

/// A fixed key: the test's second container must verify the tokens the
/// first one's key signed, as replicas and restarts do.
const TOKEN_ROOT_KEY: &str =
    "ed25519-private/5ad0e0f0c1b2a3948576a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6";

/// Runs the image's HEALTHCHECK until it passes (podman has no systemd
/// timer here to run it on its own), failing if the container stops first.
fn wait_until_healthy(podman: &Podman, name: &str) {
    for _ in 0..240 {
        let state = podman.run_ok(&["inspect", "--format", "{{.State.Status}}", name]);
        assert_eq!(
            state,
            "running",
            "the container stopped before it was healthy; its log:\n{}",
            text(&podman.run(&["logs", name]))
        );
        if podman.run(&["healthcheck", "run", name]).status.success() {
            let health = podman.run_ok(&["inspect", "--format", "{{.State.Health.Status}}", name]);
            assert_eq!(health, "healthy");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!(
        "the container never passed its health check; its log:\n{}",
        text(&podman.run(&["logs", name]))
    );
}

/// Stops the container as a runtime does (SIGTERM, then a grace period)
/// and checks atticd exited cleanly rather than being killed.
fn stop_container(podman: &Podman, name: &str) {
    podman.run_ok(&["stop", "--time", "60", name]);
    let code = podman.run_ok(&["inspect", "--format", "{{.State.ExitCode}}", name]);
    assert_eq!(
        code,
        "0",
        "atticd did not exit cleanly on SIGTERM; its log:\n{}",
        text(&podman.run(&["logs", name]))
    );
    podman.run_ok(&["rm", name]);
}

#[test]
fn the_image_serves_pushes_and_keeps_them_on_its_volume() {
    let podman = Podman::new();
    podman.import_debian_base(BASE_IMAGE);

    let binaries = tempfile::tempdir().expect("tempdir");
    stripped_binaries(binaries.path());
    let root = repository_root();
    let dockerfile = root.join("Dockerfile").display().to_string();
    let context = format!("prebuilt-binaries={}", binaries.path().display());
    let base = format!("BASE_IMAGE={BASE_IMAGE}");
    let mut build = podman.command();
    build
        // No intermediate layers: podman's vfs store copies the whole
        // filesystem for each, gigabytes for this Dockerfile.
        .args(["build", "--format", "docker", "--layers=false"])
        .args(["--isolation", "chroot", "--network", "host"])
        .args(Podman::ulimits())
        .args(["--build-arg", &base, "--build-arg", "BINARIES=prebuilt"])
        .args(["--build-context", &context, "--file", &dockerfile])
        .args(["--tag", IMAGE])
        .arg(&root);
    let output = build.output().expect("run podman build");
    assert!(output.status.success(), "podman build: {}", text(&output));
    // The image runs atticd as its own user, with the data on the volume.
    let config = podman.run_ok(&["image", "inspect", "--format", "{{json .Config}}", IMAGE]);
    assert!(config.contains("\"/data\""), "{config}");
    let inspect: serde_json::Value =
        serde_json::from_str(&podman.run_ok(&["image", "inspect", IMAGE])).expect("JSON");
    let health = health_check(&inspect).expect("the image has a health check");
    assert!(health.contains("/_health"), "HEALTHCHECK kept: {health}");

    // On PostgreSQL + S3 the database is PostgreSQL, named by the
    // environment as a deployment's secrets would; the blobs stay on the
    // volume, which is what the image's config says.
    let database_url = match Backend::from_env() {
        Backend::SqliteLocal => None,
        Backend::PostgresS3 => Some(fresh_postgres_database()),
    };
    podman.run_ok(&["volume", "create", VOLUME]);
    let port = free_port();
    let first = start_container(&podman, "atticd-first", port, database_url.as_deref());

    let status = podman.run_ok(&["exec", &first, "cat", "/proc/1/status"]);
    let uid = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .expect("a Uid line");
    let atticd_uid = podman.run_ok(&["exec", &first, "id", "-u", "atticd"]);
    assert!(
        uid.split_whitespace().skip(1).all(|id| id == atticd_uid),
        "atticd runs as the atticd user, not root: {uid}"
    );
    // `podman exec` and `fly ssh console` run commands as root; the
    // entrypoint runs them as atticd, as the book's fly.io guide does.
    let user = podman.run_ok(&["exec", &first, "atticd-entrypoint", "id", "-un"]);
    assert_eq!(user, "atticd");
    let listing = podman.run_ok(&["exec", &first, "ls", "-ld", "/data"]);
    assert!(listing.starts_with("drwx------"), "{listing}");
    assert!(listing.contains("atticd atticd"), "{listing}");

    let token = podman.run_ok(&[
        "exec",
        "--user",
        "atticd",
        &first,
        "atticadm",
        "-f",
        "/etc/atticd/server.toml",
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
    ]);
    let url = format!("http://127.0.0.1:{port}");
    let client = TestClient::new();
    client.attic_ok(&["login", "box", &url, &token]);
    client.attic_ok(&["cache", "create", "demo"]);
    let info = client.attic_ok(&["cache", "info", "demo"]);
    assert!(info.contains(&format!("{url}/demo")), "{info}");

    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 512 * 1024);
    let original = nix::dump(Path::new(closure.top()));
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(out.contains("pushed 3 paths"), "{out}");
    client.attic_ok(&["use", "demo"]);
    nix::delete(&closure.paths);
    let realised = client.realise(closure.top());
    assert!(realised.status.success(), "{}", text(&realised));
    assert_eq!(nix::dump(Path::new(closure.top())), original);

    // A new container on the same volume: same data, same token key.
    stop_container(&podman, &first);
    let second = start_container(&podman, "atticd-second", port, database_url.as_deref());
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(
        out.contains("nothing to push: 3 paths already in the cache"),
        "{out}"
    );
    nix::delete(&closure.paths);
    let realised = client.realise(closure.top());
    assert!(realised.status.success(), "{}", text(&realised));
    for path in &closure.paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
    assert_eq!(nix::dump(Path::new(closure.top())), original);
    stop_container(&podman, &second);
}

/// `fly.toml` runs the image as the image expects: its volume on the
/// image's `/data`, its port and health check the image's, a stop timeout
/// longer than the server's shutdown timeout, and every variable the
/// image's config needs without a default either in `[env]` or set as a
/// secret by the book's guide.
#[test]
fn fly_toml_agrees_with_the_image_and_the_book() {
    let root = repository_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let fly: toml::Table = read("fly.toml").parse().expect("fly.toml is TOML");
    let dockerfile = read("Dockerfile");
    let config = read("deploy/server.toml");
    let server: toml::Table = config.parse().expect("deploy/server.toml is TOML");
    let book = read("book/src/production.md");

    assert_eq!(fly["mounts"]["destination"].as_str(), Some("/data"));
    assert!(dockerfile.contains("\nVOLUME /data\n"), "{dockerfile}");
    let port = fly["http_service"]["internal_port"]
        .as_integer()
        .expect("internal_port");
    assert!(dockerfile.contains(&format!("\nEXPOSE {port}\n")));
    assert!(dockerfile.contains(&format!("${{ATTIC_LISTEN:-0.0.0.0:{port}}}")));
    assert!(dockerfile.contains("/_health"));
    assert_eq!(
        fly["http_service"]["checks"][0]["path"].as_str(),
        Some("/_health")
    );
    assert_eq!(
        server["listen"].as_str(),
        Some(format!("${{ATTIC_LISTEN:-0.0.0.0:{port}}}").as_str())
    );
    let shutdown = server["http"]["shutdown-timeout"]
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<i64>().ok())
        .expect("shutdown-timeout in seconds");
    let kill = fly["kill_timeout"].as_integer().expect("kill_timeout");
    assert!(kill > shutdown, "kill_timeout {kill} <= {shutdown}");

    let env = fly["env"].as_table().expect("[env]");
    let fly_section = book
        .split("## fly.io")
        .nth(1)
        .expect("the book's fly.io section");
    for variable in config
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
    {
        let (reference, _) = variable;
        if reference.contains(":-") {
            continue;
        }
        assert!(
            env.contains_key(reference)
                || fly_section.contains(&format!("fly secrets set {reference}=")),
            "{reference} is neither in fly.toml's [env] nor set by the guide"
        );
    }
    // The guide shows the files as they are: mdbook includes them.
    assert!(fly_section.contains("fly volumes create attic_data"));
    for file in ["fly.toml", "deploy/server.toml", "deploy/server-s3.toml"] {
        assert!(
            fly_section.contains(&format!("{{{{#include ../../{file}}}}}")),
            "the guide includes {file}"
        );
    }
}
