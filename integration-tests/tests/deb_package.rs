//! The Debian package, as an operator meets it: `scripts/build-deb` makes
//! it from the binaries this build made, `dpkg -i` installs it on this
//! machine, its units serve a push that real Nix substitutes, and `dpkg
//! --purge` leaves nothing behind but the data in `/var/lib/atticd`.
//!
//! This changes the machine (a system user, files in `/usr/bin`), so it
//! is one test, serialized across processes by a lock file, and a guard
//! purges the package whatever happens. It needs root and dpkg, and fails
//! (never skips) without them.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::client::text;
use integration_tests::deployment::{UNIT_NAMES, serve_push_and_substitute};
use integration_tests::nginx::free_port;
use integration_tests::server::binary;
use integration_tests::systemd::SystemUser;

const PACKAGE: &str = "atticd";
const CONFIG: &str = "/etc/atticd/server.toml";
const DATA_DIR: &str = "/var/lib/atticd";

/// Runs a command, failing the test with what it printed unless it succeeds.
fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        text(&output)
    );
    output
}

/// Fails the test, saying why, unless this runs as root with dpkg.
fn require_root_and_dpkg() {
    let uid = String::from_utf8(run(Command::new("id").arg("-u")).stdout).expect("UTF-8");
    assert_eq!(
        uid.trim(),
        "0",
        "the package test installs a .deb: run it as root (scripts/test does, on Debian)"
    );
    for tool in ["dpkg", "dpkg-deb", "adduser", "objdump", "strip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the package test needs {tool} (Debian: dpkg, dpkg-dev, adduser, binutils)"
        );
    }
}

/// Whether dpkg knows the package (installed, or removed with its
/// config kept).
fn package_known() -> bool {
    Command::new("dpkg")
        .args(["-s", PACKAGE])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the package from this build's binaries into `out`.
fn build_package(out: &Path) -> PathBuf {
    let bin_dir = binary("atticd")
        .parent()
        .expect("the build directory")
        .to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-deb");
    let output = run(Command::new("bash").arg(script).arg(&bin_dir).arg(out));
    let deb = PathBuf::from(String::from_utf8(output.stdout).expect("UTF-8").trim());
    assert!(deb.is_file(), "build-deb printed {}", deb.display());
    deb
}

/// The `token-root-key` line the package wrote.
fn token_root_key() -> String {
    let config = std::fs::read_to_string(CONFIG).expect("read the generated config");
    let key = config
        .lines()
        .find_map(|l| l.strip_prefix("token-root-key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no token-root-key in {CONFIG}:\n{config}"));
    let hex = key
        .strip_prefix("ed25519-private/")
        .expect("an ed25519 key");
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "a 32-byte key: {key}"
    );
    key.to_owned()
}

/// Holds the machine-wide lock; while held, purges the package and
/// removes what the test made when dropped, pass or fail.
struct Installation {
    _lock: std::fs::File,
}

impl Installation {
    /// Takes the lock and checks the machine has no trace of the package
    /// (the test must not purge an installation that is not its own).
    fn claim() -> Self {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("attic-deb-package-test.lock"))
            .expect("open the lock file");
        lock.lock().expect("lock the lock file");
        assert!(
            !package_known() && SystemUser::find("atticd").is_none(),
            "the {PACKAGE} package or the user atticd is already on this machine: the test \
             would remove them. Purge it first (dpkg --purge {PACKAGE})"
        );
        assert!(
            !Path::new("/etc/atticd").exists() && !Path::new(DATA_DIR).exists(),
            "/etc/atticd or {DATA_DIR} exists: the test would remove them"
        );
        Self { _lock: lock }
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
        let _ = std::fs::remove_dir_all(DATA_DIR);
    }
}

#[test]
fn the_debian_package_installs_serves_and_purges_to_the_data_alone() {
    require_root_and_dpkg();
    let _installation = Installation::claim();
    let out = tempfile::tempdir().expect("tempdir");
    let deb = build_package(out.path());

    let info =
        String::from_utf8(run(Command::new("dpkg-deb").arg("-f").arg(&deb)).stdout).expect("UTF-8");
    assert!(info.contains("Depends: adduser, libc6 (>= 2."), "{info}");

    let installed = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        !text(&installed).to_lowercase().contains("warning"),
        "the install warns:\n{}",
        text(&installed)
    );
    let files: Vec<PathBuf> =
        String::from_utf8(run(Command::new("dpkg").args(["-L", PACKAGE])).stdout)
            .expect("UTF-8")
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
    for name in ["/usr/bin/atticd", "/usr/bin/atticadm", "/usr/bin/attic"] {
        assert!(files.contains(&PathBuf::from(name)), "{name} in {files:?}");
    }
    for unit in UNIT_NAMES {
        let path = Path::new("/lib/systemd/system").join(unit);
        let text = std::fs::read_to_string(&path).expect("an installed unit");
        assert!(
            text.contains("/usr/bin/atticd ") && !text.contains("/usr/local/"),
            "{unit} runs the package's binaries:\n{text}"
        );
    }

    // A system user with no login, the config readable by it alone
    // (through its group), the data directory its own.
    let user = SystemUser::find("atticd").expect("the package made the user atticd");
    assert!(user.uid < 1000, "a system user: uid {}", user.uid);
    assert!(user.shell.ends_with("nologin"), "no login: {}", user.shell);
    let config = std::fs::metadata(CONFIG).expect("the package wrote a config");
    assert_eq!(config.permissions().mode() & 0o777, 0o640);
    assert_eq!((config.uid(), config.gid()), (0, user.gid), "root:atticd");
    let data = std::fs::metadata(DATA_DIR).expect("the package made the data directory");
    assert_eq!(data.permissions().mode() & 0o777, 0o700);
    assert_eq!((data.uid(), data.gid()), (user.uid, user.gid));
    let first_key = token_root_key();

    // The listen address from the environment file, as an admin sets it.
    let address = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        "/etc/atticd/atticd.env",
        format!("ATTIC_LISTEN={address}\n"),
    )
    .expect("write atticd.env");
    std::fs::set_permissions(
        "/etc/atticd/atticd.env",
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod atticd.env");
    serve_push_and_substitute(
        Path::new("/lib/systemd/system"),
        |service| service,
        &address,
        Path::new("/usr/bin/attic"),
    );

    // Installing again (an upgrade) keeps the admin's config.
    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(token_root_key(), first_key, "an upgrade rewrote the config");

    // Purge: nothing of the package is left but the data, and it says so.
    let purged = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert!(
        text(&purged).contains("kept /var/lib/atticd"),
        "the purge tells the admin the data stays: {}",
        text(&purged)
    );
    assert!(!package_known(), "dpkg still knows {PACKAGE}");
    for file in &files {
        assert!(!file.exists(), "{} is left after the purge", file.display());
    }
    assert!(!Path::new("/etc/atticd").exists(), "/etc/atticd is left");
    assert!(
        !Path::new("/usr/share/doc/atticd").exists(),
        "/usr/share/doc/atticd is left"
    );
    assert!(
        SystemUser::find("atticd").is_none(),
        "the user atticd is left"
    );
    let group = Command::new("getent")
        .args(["group", "atticd"])
        .output()
        .expect("run getent");
    assert!(!group.status.success(), "the group atticd is left");
    assert!(
        Path::new(DATA_DIR).join("server.db").is_file(),
        "the data the admin keeps is still in {DATA_DIR}"
    );

    // Installing again makes a fresh key, and hands the kept data to the
    // new user.
    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert_ne!(
        token_root_key(),
        first_key,
        "two installs share a token key"
    );
    let user = SystemUser::find("atticd").expect("the user atticd again");
    let database = std::fs::metadata(Path::new(DATA_DIR).join("server.db")).expect("kept data");
    assert_eq!((database.uid(), database.gid()), (user.uid, user.gid));
}
