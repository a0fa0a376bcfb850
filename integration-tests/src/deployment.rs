//! A deployment run through our systemd units, as an operator runs it:
//! the migrations unit, then the API server unit (its `check-config`
//! first) and the collector's, a token from `atticadm` as the service's user, and a real Nix
//! closure pushed with `attic` and substituted back by real Nix.
//!
//! Shared by the Debian package's test (the installed units) and the plain
//! binaries' test (the repository's units, pointed at the build).

use std::path::{Path, PathBuf};

use crate::client::{TestClient, text};
use crate::nix;
use crate::systemd::{ExecLine, Service, Unit};

/// The units we ship, by file name, in the order they start.
pub const UNIT_NAMES: [&str; 3] = [
    "atticd-migrations.service",
    "atticd.service",
    "atticd-gc.service",
];

/// The repository's unit files, `packaging/systemd/`.
pub fn repository_units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// Migrates, starts `atticd.service` from `units_dir` (each unit prepared
/// by `prepare`: paths rewritten, another user), waits for it on
/// `address` (what `ATTIC_LISTEN` in the config's environment says) and
/// starts `atticd-gc.service` beside it, then pushes and substitutes a
/// closure through it with the `attic` at `attic`. Stops both (each must
/// exit cleanly on SIGTERM) before returning.
pub fn serve_push_and_substitute(
    units_dir: &Path,
    prepare: impl Fn(Service) -> Service,
    address: &str,
    attic: &Path,
) {
    let load = |name: &str| prepare(Service::new(Unit::load(&units_dir.join(name))));
    let migrations = load("atticd-migrations.service");
    migrations.run_oneshot();

    let api = load("atticd.service");
    let pre = api.exec_start_pre();
    assert!(
        pre.iter().any(|line| line
            .argv
            .windows(2)
            .any(|w| w == ["--mode", "check-config"])),
        "atticd.service checks its config before it starts: {pre:?}"
    );
    // atticadm beside the unit's atticd, on the unit's config.
    let main = api.exec_start().remove(0);
    let atticadm = Path::new(&main.argv[0]).with_file_name("atticadm");
    let config = main
        .argv
        .windows(2)
        .find(|w| w[0] == "-f")
        .map(|w| w[1].clone())
        .expect("atticd.service names its config with -f");
    let mut token_line = ExecLine {
        argv: vec![atticadm.display().to_string(), "-f".to_owned(), config],
        ignore_failure: false,
    };
    token_line.argv.extend(
        [
            "make-token",
            "--sub",
            "operator",
            "--validity",
            "30d",
            "--pull",
            "*",
            "--push",
            "*",
            "--create-cache",
            "*",
        ]
        .map(str::to_owned),
    );

    let mut server = api.start();
    server.wait_for_listener(address);
    // The collector beside it, on the same config and data, as the
    // package runs them; it collects at once, while the push goes on.
    let mut collector = load("atticd-gc.service").start();
    let token = String::from_utf8(load("atticd.service").run_line(&token_line).stdout)
        .expect("UTF-8 token")
        .trim()
        .to_owned();
    push_and_substitute(&format!("http://{address}"), attic, &token);
    assert!(
        collector.stop(),
        "atticd-gc.service ran until SIGTERM and stopped cleanly"
    );
    assert!(server.stop(), "atticd.service stopped cleanly on SIGTERM");
}

/// Through the server at `url`, with `token`: `attic` (the binary at
/// `attic`) logs in, creates a cache, pushes a fresh closure built by
/// real Nix; the closure leaves the local store, and real Nix, trusting
/// only the cache's key, substitutes it back byte for byte.
pub fn push_and_substitute(url: &str, attic: &Path, token: &str) {
    let client = TestClient::new();
    let run = |args: &[&str]| {
        let output = client
            .command_at(attic)
            .args(args)
            .output()
            .expect("run attic");
        assert!(
            output.status.success(),
            "attic {args:?} failed:\n{}",
            text(&output)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    };
    run(&["login", "deployed", url, token]);
    run(&["cache", "create", "packaged"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 256 * 1024);
    let original = nix::dump(Path::new(closure.top()));
    let pushed = run(&["push", "packaged", closure.top()]);
    assert!(pushed.contains("pushed 3 paths"), "{pushed}");
    let info = run(&["cache", "info", "packaged"]);
    let key = info
        .lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .expect("a public key line")
        .trim()
        .to_owned();

    nix::delete(&closure.paths);
    let netrc = nix::write_netrc(dir.path(), "127.0.0.1", token);
    let substituted = nix::substitute_with_netrc(
        closure.top(),
        &format!("{url}/packaged"),
        &key,
        Some(&netrc),
    );
    assert!(substituted.status.success(), "{}", text(&substituted));
    for path in &closure.paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
    assert_eq!(nix::dump(Path::new(closure.top())), original);
}
