//! Debian's `podman`, rootful, with a store of its own that is deleted
//! afterwards, and a Debian base image made here with `mmdebstrap` (the
//! machine reaches Debian's mirrors but not Docker Hub).
//!
//! What it takes to run containers inside this kind of machine (root in a
//! container without `CAP_SYS_RESOURCE`, cgroup v1 with an empty v2
//! hierarchy beside it), each found by trying:
//! - `--runtime runc`: crun refuses the hybrid cgroup layout ("cgroups in
//!   hybrid mode not supported");
//! - `--storage-driver vfs`: no overlay inside the outer container;
//! - `--cgroup-manager cgroupfs`: no systemd;
//! - `--ulimit nofile=…,nproc=…` no higher than our own limits: podman's
//!   defaults (1048576) cannot be set without `CAP_SYS_RESOURCE`;
//! - `--network host`, and `--isolation chroot` for builds.
//!
//! When podman cannot run a container, the test fails saying so: it never
//! skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::server::binary;

/// The rootfs tarball of the base image, kept beside the build output so
/// that later runs do not debootstrap again (`cargo clean` removes it).
fn base_rootfs_cache() -> PathBuf {
    binary("atticd")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/atticd")
        .join("container-base/debian-bookworm-minbase.tar.zst")
}

/// A podman whose images, containers and volumes live in a scratch
/// directory, removed (with everything in it) on drop.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// A podman with an empty store. Panics, naming what to install, when
    /// podman is missing.
    pub fn new() -> Self {
        let podman = Self {
            // On /var/tmp rather than a tmpfs /tmp: images are hundreds of MB.
            dir: tempfile::Builder::new()
                .prefix("attic-podman.")
                .tempdir_in("/var/tmp")
                .expect("tempdir"),
        };
        let version = podman.run(&["--version"]);
        assert!(
            String::from_utf8_lossy(&version.stdout).contains("podman"),
            "podman --version: {}",
            text(&version)
        );
        podman
    }

    /// A `podman` command on this store.
    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--runtime",
                "runc",
                "--events-backend",
                "file",
            ]);
        command
    }

    /// Runs `podman ARGS` and returns what it did, whatever its status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap_or_else(|e| {
            panic!(
                "cannot run podman: {e}. Install Debian's podman and runc \
                 (apt-get install podman runc mmdebstrap; scripts/test does this)"
            )
        })
    }

    /// Runs `podman ARGS`, panicking with its output unless it succeeds;
    /// returns its stdout, trimmed.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "podman {args:?} failed ({}):\n{}",
            output.status,
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The `--ulimit` arguments `run` and `build` need: podman's default
    /// limits are above ours, and raising a limit takes a capability root
    /// in a container lacks.
    pub fn ulimits() -> Vec<String> {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
        let hard = |name: &str| {
            limits
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line[name.len()..].split_whitespace().nth(1))
                .and_then(|value| value.parse::<u64>().ok())
        };
        let nofile = hard("Max open files").unwrap_or(1024).min(65536);
        let nproc = hard("Max processes").unwrap_or(4096).min(4096);
        vec![
            "--ulimit".to_owned(),
            format!("nofile={nofile}:{nofile}"),
            "--ulimit".to_owned(),
            format!("nproc={nproc}:{nproc}"),
        ]
    }

    /// Imports a minimal Debian bookworm as the image `name`, making its
    /// rootfs with `mmdebstrap` from Debian's mirror on the first run.
    pub fn import_debian_base(&self, name: &str) {
        let rootfs = base_rootfs_cache();
        if !rootfs.exists() {
            let dir = rootfs.parent().expect("a parent");
            std::fs::create_dir_all(dir).expect("mkdir container-base");
            let partial = dir.join(format!("partial-{}.tar.zst", std::process::id()));
            let output = Command::new("mmdebstrap")
                .args(["--variant=minbase", "--quiet", "bookworm"])
                .arg(&partial)
                .arg("http://deb.debian.org/debian")
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run mmdebstrap: {e}. Install Debian's mmdebstrap \
                         (scripts/test does this)"
                    )
                });
            assert!(
                output.status.success(),
                "mmdebstrap failed: {}",
                text(&output)
            );
            std::fs::rename(&partial, &rootfs).expect("keep the rootfs");
        }
        let rootfs = rootfs.display().to_string();
        self.run_ok(&["import", "--quiet", &rootfs, name]);
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (they hold volumes), then the whole store.
        let _ = self.command().args(["rm", "--all", "--force"]).output();
        let _ = self.command().args(["system", "reset", "--force"]).output();
    }
}

/// What a command printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
