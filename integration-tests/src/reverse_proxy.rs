//! atticd behind nginx or Caddy terminating TLS, each configured with the
//! very block the book's reverse-proxy page gives operators: only
//! addresses and file names are replaced, and each replacement must match
//! exactly once, so a change to the page changes what is tested.

use std::path::{Path, PathBuf};

use crate::caddy::Caddy;
use crate::nginx::{Nginx, free_port};

/// The book page whose configuration blocks the proxies run.
const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../book/src/reverse-proxy.md");

/// The page's upstream: where atticd listens.
const PAGE_UPSTREAM: &str = "127.0.0.1:8080";
/// The page's certificate and key files.
const PAGE_CERTIFICATE: &str = "/etc/ssl/attic/fullchain.pem";
const PAGE_KEY: &str = "/etc/ssl/attic/privkey.pem";

/// Which proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// Debian's nginx, `/usr/sbin/nginx`.
    Nginx,
    /// Debian's Caddy, `/usr/bin/caddy`.
    Caddy,
}

/// The certificate (chain) and key a proxy serves.
pub struct TlsFiles {
    /// The certificate, then the CAs that signed it, in PEM.
    pub certificate: PathBuf,
    /// Its private key, in PEM.
    pub key: PathBuf,
}

/// A running proxy in front of one atticd.
pub struct ReverseProxy {
    /// `https://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    running: Running,
}

enum Running {
    Nginx(Nginx),
    // Held only to stop it on drop.
    Caddy(#[allow(dead_code)] Caddy),
}

impl ReverseProxy {
    /// Starts `kind` on a free port, proxying to `upstream`
    /// (`http://127.0.0.1:PORT`) and serving `tls`, configured as the
    /// book says.
    pub fn start(kind: ProxyKind, upstream: &str, tls: &TlsFiles) -> Self {
        Self::start_on(kind, free_port(), upstream, tls)
    }

    /// Like [`ReverseProxy::start`] on a chosen port (one picked with
    /// [`free_port`] before atticd's `api-endpoint` was written).
    pub fn start_on(kind: ProxyKind, port: u16, upstream: &str, tls: &TlsFiles) -> Self {
        let upstream = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{upstream} is not an http:// URL"));
        let page = std::fs::read_to_string(PAGE).expect("read the book's reverse-proxy page");
        let with_files = |block: String| {
            let block = replace_once(&block, PAGE_UPSTREAM, upstream);
            let block = replace_once(
                &block,
                PAGE_CERTIFICATE,
                &tls.certificate.display().to_string(),
            );
            replace_once(&block, PAGE_KEY, &tls.key.display().to_string())
        };
        let running = match kind {
            ProxyKind::Nginx => {
                let block = with_files(code_block(&page, "nginx"));
                let block = replace_once(
                    &block,
                    "listen 443 ssl;",
                    &format!("listen 127.0.0.1:{port} ssl;"),
                );
                Running::Nginx(Nginx::proxy(port, &block))
            }
            ProxyKind::Caddy => {
                let block = with_files(code_block(&page, "caddy"));
                let block = replace_once(
                    &block,
                    "cache.example.com {",
                    &format!("https://127.0.0.1:{port} {{"),
                );
                Running::Caddy(Caddy::start(port, &block))
            }
        };
        Self {
            url: format!("https://127.0.0.1:{port}"),
            running,
        }
    }

    /// The nginx behind this proxy, for its access log (Caddy's site
    /// block, as the book gives it, logs no requests).
    pub fn nginx(&self) -> Option<&Nginx> {
        match &self.running {
            Running::Nginx(nginx) => Some(nginx),
            Running::Caddy(_) => None,
        }
    }
}

/// The one fenced block of `page` in `language` (` ```nginx `).
fn code_block(page: &str, language: &str) -> String {
    let fence = format!("```{language}\n");
    let mut blocks = page.split(fence.as_str()).skip(1);
    let block = blocks
        .next()
        .unwrap_or_else(|| panic!("the book's reverse-proxy page has no ```{language} block"));
    assert!(
        blocks.next().is_none(),
        "the book's reverse-proxy page has more than one ```{language} block"
    );
    let end = block.find("```").expect("a closed code block");
    block[..end].to_owned()
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the book's block must contain {from:?} exactly once:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// Where a test writes the certificate files it makes.
pub fn tls_files_in(dir: &Path) -> TlsFiles {
    TlsFiles {
        certificate: dir.join("fullchain.pem"),
        key: dir.join("privkey.pem"),
    }
}
