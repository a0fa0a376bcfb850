//! A real `nginx`, started as a child of the test with its own config,
//! prefix and free port: serving a directory (a binary cache as Nix's
//! `file://` store writes it, served the way teams serve one), or as a
//! TLS reverse proxy in front of atticd. Its access log tells a test which
//! files the server fetched, or what passed through the proxy.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package installs it (scripts/test installs it).
const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx serving one directory.
pub struct Nginx {
    child: Child,
    prefix: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl Nginx {
    /// Serves `root` on a free loopback port, logging every request.
    pub fn serve(root: &Path) -> Self {
        let port = free_port();
        Self::start(
            port,
            &format!(
                "types {{ text/x-nix-narinfo narinfo; }}\n\
                 default_type application/octet-stream;\n\
                 server {{\n\
                   listen 127.0.0.1:{port};\n\
                   root {root};\n\
                 }}\n",
                root = root.display()
            ),
            "http",
        )
    }

    /// Runs `server_block` (an nginx `server { ... }` that listens on
    /// 127.0.0.1:`port` with TLS), logging every request: a reverse
    /// proxy as an operator configures one.
    pub fn proxy(port: u16, server_block: &str) -> Self {
        Self::start(port, server_block, "https")
    }

    /// Starts nginx with `http_body` inside its `http` context, and waits
    /// until it accepts connections on `port`.
    fn start(port: u16, http_body: &str, scheme: &str) -> Self {
        let prefix = tempfile::tempdir().expect("tempdir");
        let p = prefix.path().display();
        // The access log adds what a proxy test looks at: the peer, the
        // forwarded header the client sent, and the request's length.
        let config = format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               log_format requests '$remote_addr \"$request\" $status $request_length \"$http_x_forwarded_for\"';\n\
               access_log {p}/access.log requests;\n\
               client_body_temp_path {p}/body;\n\
               proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n\
               uwsgi_temp_path {p}/uwsgi;\n\
               scgi_temp_path {p}/scgi;\n\
               {http_body}\n\
             }}\n"
        );
        let config_path = prefix.path().join("nginx.conf");
        std::fs::write(&config_path, config).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(prefix.path().join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {NGINX}: {e}. Install Debian's nginx (scripts/test does this)")
            });
        let nginx = Self {
            child,
            prefix,
            url: format!("{scheme}://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(nginx.prefix.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The lines of the access log that contain `needle`: the peer's
    /// address, `"GET /x.narinfo HTTP/1.1"`, the status, the request's
    /// length in bytes and `"X-Forwarded-For as received"`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.access_log()).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// The request lines of the access log (`GET /x.narinfo HTTP/1.1`)
    /// that contain `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.access_log()).unwrap_or_default();
        log.lines()
            .filter_map(|line| line.split('"').nth(1))
            .filter(|request| request.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    fn access_log(&self) -> PathBuf {
        self.prefix.path().join("access.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that accepts connections and never answers, for as long
/// as it lives: the server must give up on it after its timeout.
pub struct HangingUpstream {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _listener: TcpListener,
}

impl HangingUpstream {
    /// Listens on a free port; the kernel completes connections, nobody
    /// reads them.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        Self {
            url: format!("http://127.0.0.1:{port}"),
            _listener: listener,
        }
    }
}
