//! A real Caddy, started as a child of the test with its own Caddyfile,
//! data directories and free port, with its admin endpoint and its port
//! 80 redirects off: a TLS reverse proxy in front of atticd.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package installs it (scripts/test installs it).
const CADDY: &str = "/usr/bin/caddy";

/// A running Caddy.
pub struct Caddy {
    child: Child,
    home: tempfile::TempDir,
}

impl Caddy {
    /// Runs `site` (a Caddyfile site block that listens on
    /// 127.0.0.1:`port`), after global options that keep Caddy to that
    /// port and to files under its own temporary home; waits until it
    /// accepts connections.
    pub fn start(port: u16, site: &str) -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let caddyfile = format!("{{\n\tadmin off\n\tauto_https disable_redirects\n}}\n\n{site}");
        let caddyfile_path = home.path().join("Caddyfile");
        std::fs::write(&caddyfile_path, caddyfile).expect("write the Caddyfile");
        let log = std::fs::File::create(home.path().join("caddy.log")).expect("create caddy.log");
        let child = Command::new(CADDY)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile_path)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_DATA_HOME", home.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {CADDY}: {e}. Install Debian's caddy (scripts/test does this)")
            });
        let mut caddy = Self { child, home };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = caddy.child.try_wait().expect("wait").is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "caddy did not start: {}",
                std::fs::read_to_string(caddy.home.path().join("caddy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        caddy
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
