//! atticd behind a real nginx and a real Caddy terminating TLS, each
//! configured exactly as the book's reverse-proxy page says, with a
//! certificate from a CA the test makes: `attic login`, `use` and `push`
//! of a closure whose big NAR is past nginx's default body limit, real
//! Nix substituting over `https://` (on S3, NARs redirected to the
//! bucket), and the client address atticd logs: the forwarded one through
//! the trusted proxy, never a client's own claim.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::client::{TestClient, text};
use integration_tests::nginx::free_port;
use integration_tests::nix;
use integration_tests::reverse_proxy::{ProxyKind, ReverseProxy, TlsFiles, tls_files_in};
use integration_tests::server::TestServer;

/// The big file of the pushed closure: a NAR well past nginx's default
/// `client_max_body_size` (1 MiB) and its body buffers.
const BIG_FILE: usize = 8 * 1024 * 1024;

/// How long a test waits for a line to reach atticd's log before failing.
const LOG_GUARD: Duration = Duration::from_secs(60);

/// Login, use, push of a big NAR, a NAR read and Nix substituting, over
/// https through nginx.
#[tokio::test]
async fn attic_and_nix_work_through_nginx_as_the_book_configures_it() {
    works_through(ProxyKind::Nginx).await;
}

/// The same through Caddy.
#[tokio::test]
async fn attic_and_nix_work_through_caddy_as_the_book_configures_it() {
    works_through(ProxyKind::Caddy).await;
}

/// The client address in atticd's log: the one nginx saw, whatever the
/// client claims; a client's claim straight to atticd is not believed,
/// nor nginx's header when nginx is not in `trusted-proxies`.
#[tokio::test]
async fn forwarded_addresses_are_believed_from_nginx_only() {
    client_addresses_through(ProxyKind::Nginx).await;
}

/// The same through Caddy.
#[tokio::test]
async fn forwarded_addresses_are_believed_from_caddy_only() {
    client_addresses_through(ProxyKind::Caddy).await;
}

/// A CA, and a certificate for 127.0.0.1 it signed, as files.
struct Certificates {
    dir: tempfile::TempDir,
    /// The CA certificate clients are told to trust.
    ca: PathBuf,
    /// What the proxy serves.
    tls: TlsFiles,
}

impl Certificates {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "attic test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("a CA certificate");
        let leaf_key = KeyPair::generate().expect("a key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params")
            .signed_by(&leaf_key, &ca)
            .expect("a certificate");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write the CA");
        let tls = tls_files_in(dir.path());
        // The chain as a proxy serves it: the certificate, then its CA.
        std::fs::write(&tls.certificate, format!("{}{}", leaf.pem(), ca.pem()))
            .expect("write the certificate");
        std::fs::write(&tls.key, leaf_key.serialize_pem()).expect("write the key");
        Self {
            dir,
            ca: ca_path,
            tls,
        }
    }

    /// An HTTP client that trusts the CA, connecting from `local`, and
    /// following no redirect.
    fn http_client(&self, local: IpAddr) -> reqwest::Client {
        let ca = std::fs::read(&self.ca).expect("read the CA");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("the CA"))
            .local_address(local)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client")
    }
}

/// atticd (logging requests into `atticd.log` beside the certificates)
/// with `api-endpoint` the proxy's public URL, behind `kind`, which it
/// trusts as the book says; on S3, NAR reads are redirected to the bucket.
fn server_behind(kind: ProxyKind, certificates: &Certificates) -> (TestServer, ReverseProxy) {
    server_behind_with(kind, certificates, "trusted-proxies = [\"127.0.0.1\"]\n")
}

/// Like [`server_behind`], with `http` as atticd's `[http]` section.
fn server_behind_with(
    kind: ProxyKind,
    certificates: &Certificates,
    http: &str,
) -> (TestServer, ReverseProxy) {
    let port = free_port();
    let mut server = TestServer::start_with_config(&format!(
        "api-endpoint = \"https://127.0.0.1:{port}/\"\n[http]\n{http}"
    ));
    if server.s3().is_some() {
        let config = std::fs::read_to_string(server.config_path()).expect("read config");
        assert_eq!(config.matches("[storage]\n").count(), 1, "{config}");
        let config = config.replace("[storage]\n", "[storage]\nredirect-reads = true\n");
        std::fs::write(server.config_path(), config).expect("write config");
    }
    server.log_requests_to(&certificates.dir.path().join("atticd.log"));
    let proxy = ReverseProxy::start_on(kind, port, &server.url, &certificates.tls);
    (server, proxy)
}

async fn works_through(kind: ProxyKind) {
    let certificates = Certificates::new();
    let (server, proxy) = server_behind(kind, &certificates);
    let public = &proxy.url;
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let client = TestClient::new()
        .with_env("SSL_CERT_FILE", &certificates.ca)
        .with_env("NIX_SSL_CERT_FILE", &certificates.ca);

    client.attic_ok(&["login", "proxied", &format!("{public}/"), &token]);
    client.attic_ok(&["cache", "create", "demo"]);
    client.attic_ok(&["use", "demo"]);
    let conf = std::fs::read_to_string(client.nix_conf()).expect("nix.conf");
    assert!(
        conf.contains(&format!("extra-substituters = {public}/demo")),
        "`attic use` must name the public https URL: {conf}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), BIG_FILE);
    let original = nix::dump(Path::new(closure.top()));
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(out.contains("pushed 3 paths"), "{out}");
    if let Some(nginx) = proxy.nginx() {
        // The big NAR went through nginx whole, in one request.
        let uploads = nginx.log_lines("PUT /_api/v1/upload-path");
        assert!(
            uploads.iter().any(|line| {
                let mut fields = line.rsplit('"').nth(2).unwrap_or("").split_whitespace();
                fields.next() == Some("200")
                    && fields
                        .next()
                        .and_then(|length| length.parse::<usize>().ok())
                        .is_some_and(|length| length > BIG_FILE)
            }),
            "no upload of the big NAR passed nginx: {uploads:?}"
        );
    }

    // A NAR read through the proxy: served, or on S3 redirected to the
    // bucket itself (never to atticd's internal address).
    let leaf = &closure.paths[0];
    let http = certificates.http_client("127.0.0.1".parse().expect("ip"));
    let hash = leaf
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .expect("a hash");
    let narinfo = http
        .get(format!("{public}/demo/{hash}.narinfo"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET the narinfo through the proxy");
    assert_eq!(narinfo.status(), reqwest::StatusCode::OK);
    let narinfo = narinfo.text().await.expect("a narinfo");
    let nar_url = narinfo
        .lines()
        .find_map(|line| line.strip_prefix("URL: "))
        .expect("a URL line");
    let nar = http
        .get(format!("{public}/demo/{nar_url}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET the NAR through the proxy");
    match server.s3() {
        Some(s3) => {
            assert_eq!(nar.status(), reqwest::StatusCode::FOUND);
            let location = nar
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .expect("a Location");
            assert!(
                location.starts_with(&s3.endpoint()),
                "a redirect must name the bucket, not {location}"
            );
        }
        None => {
            assert_eq!(nar.status(), reqwest::StatusCode::OK);
            let body = nar.bytes().await.expect("the NAR");
            assert!(body.len() > BIG_FILE / 2, "{} bytes", body.len());
        }
    }

    // Real Nix substitutes the closure over https, as `attic use` set up.
    nix::delete(&closure.paths);
    let realised = client.realise(closure.top());
    assert!(realised.status.success(), "{}", text(&realised));
    for path in &closure.paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
    assert_eq!(nix::dump(Path::new(closure.top())), original);
}

async fn client_addresses_through(kind: ProxyKind) {
    let certificates = Certificates::new();
    let (server, proxy) = server_behind(kind, &certificates);
    let log = certificates.dir.path().join("atticd.log");
    let claimed = "203.0.113.9";

    // Through the trusted proxy, from 127.0.0.2, claiming another address:
    // atticd names 127.0.0.2, the address the proxy saw.
    let through_proxy = certificates.http_client("127.0.0.2".parse().expect("ip"));
    let reply = through_proxy
        .get(format!("{}/via-proxy/nix-cache-info", proxy.url))
        .header("X-Forwarded-For", claimed)
        .send()
        .await
        .expect("GET through the proxy");
    assert!(reply.status().is_client_error(), "{}", reply.status());
    let line = wait_for_log_line(&log, "path=/via-proxy/nix-cache-info");
    assert!(line.contains("client=127.0.0.2 "), "{line}");

    // Straight to atticd from 127.0.0.3, an address that is no trusted
    // proxy: its X-Forwarded-For is not believed.
    let direct = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<IpAddr>().expect("ip"))
        .build()
        .expect("an HTTP client");
    let reply = direct
        .get(format!("{}/direct/nix-cache-info", server.url))
        .header("X-Forwarded-For", claimed)
        .send()
        .await
        .expect("GET straight to atticd");
    assert!(reply.status().is_client_error(), "{}", reply.status());
    let line = wait_for_log_line(&log, "path=/direct/nix-cache-info");
    assert!(line.contains("client=127.0.0.3 "), "{line}");

    let everything = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        !everything.contains(claimed),
        "a claimed address reached the log:\n{everything}"
    );

    // Behind the same proxy left out of `trusted-proxies`, its header is
    // not believed either: every client is the proxy.
    let untrusted = Certificates::new();
    let (_server, proxy) = server_behind_with(kind, &untrusted, "");
    let reply = untrusted
        .http_client("127.0.0.2".parse().expect("ip"))
        .get(format!("{}/untrusted-proxy/nix-cache-info", proxy.url))
        .send()
        .await
        .expect("GET through the untrusted proxy");
    assert!(reply.status().is_client_error(), "{}", reply.status());
    let line = wait_for_log_line(
        &untrusted.dir.path().join("atticd.log"),
        "path=/untrusted-proxy/nix-cache-info",
    );
    assert!(line.contains("client=127.0.0.1 "), "{line}");
}

/// The first line of atticd's log containing `needle`, once written.
fn wait_for_log_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + LOG_GUARD;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "atticd never logged {needle}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
