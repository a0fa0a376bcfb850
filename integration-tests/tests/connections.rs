//! Slow, silent and too many clients cannot hold the server: header and
//! idle timeouts, a body-progress timeout, a connection cap with room kept
//! for probes, a cap per client address, idle connections closed sooner
//! near the cap, and a shutdown that waits for requests in flight only up
//! to its deadline.
//!
//! Waits here are hang guards (generous bounds on something that must
//! happen), never performance thresholds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use attic::nar::NarNode;
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for, nar_info_from_nix};

/// Long enough for any timeout under test to fire, on a loaded machine.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn connect(server: &TestServer) -> TcpStream {
    let address = server.url.trim_start_matches("http://");
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(HANG_GUARD))
        .expect("read timeout");
    stream
}

/// Reads until the server closes the connection; panics if it does not
/// within the hang guard. Returns what was read.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(e) => panic!(
                "the server kept the connection open for {:?}: {e}",
                started.elapsed()
            ),
        }
    }
}

/// GET `path` on a fresh connection; the whole reply, or what arrived.
fn get(server: &TestServer, path: &str) -> String {
    get_from(&server.url, path)
}

/// GET `path` from `base` (`http://ADDRESS`, such as the metrics
/// listener's) on a fresh connection; the whole reply, or what arrived.
fn get_from(base: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

fn health(server: &TestServer) -> bool {
    get(server, "/_health").starts_with("HTTP/1.1 200")
}

#[test]
fn silent_and_idle_connections_are_closed_after_the_header_timeout() {
    let server = TestServer::start_with_config("[http]\nheader-timeout = \"1s\"\n");
    // Connected, never a byte sent.
    let mut silent = connect(&server);
    read_until_closed(&mut silent);
    // Half a request line, then nothing.
    let mut slow = connect(&server);
    slow.write_all(b"GET /_hea").expect("write");
    read_until_closed(&mut slow);
    // One request answered, then idle on a kept-alive connection.
    let mut idle = connect(&server);
    idle.write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let reply = read_until_closed(&mut idle);
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
}

#[test]
fn connections_past_the_cap_answer_only_probes() {
    let server = TestServer::start_with_config(
        "[http]\nheader-timeout = \"1h\"\nmax-connections = 4\nprobe-connections = 2\n\
         idle-timeout-under-pressure = \"1h\"\n",
    );
    // Four silent clients take every slot, and two more every probe slot
    // (each accepted once the server gets to it, in order).
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    let probes: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
    let mut over = connect(&server);
    let got = read_until_closed(&mut over);
    assert!(got.is_empty(), "a seventh connection is closed unanswered");
    // Once the probe slots are free again, probes are answered past the
    // cap (the server may take a moment to see the two leave).
    drop(probes);
    let started = Instant::now();
    while !health(&server) {
        assert!(
            started.elapsed() < HANG_GUARD,
            "/_health never answered past the cap"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And nothing else is.
    let refused = get(&server, "/_api/v1/cache-config/c");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("Overloaded"), "{refused}");
    let metrics = get_from(&server.metrics_url, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("attic_connections_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(held);
}

/// Connects from `source` (a loopback address other than 127.0.0.1 is
/// another client address on Linux).
fn connect_from(server: &TestServer, source: &str) -> TcpStream {
    let address: SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let source: SocketAddr = format!("{source}:0").parse().expect("source");
    // std cannot bind before connecting, so tokio's socket does it, on a
    // thread of its own (the caller may be inside a runtime already).
    let stream = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(source).expect("bind");
            let stream = socket.connect(address).await.expect("connect");
            stream.into_std().expect("std stream")
        })
    })
    .join()
    .expect("connect thread");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(HANG_GUARD))
        .expect("read timeout");
    stream
}

#[test]
fn an_address_past_its_connection_limit_is_refused_and_others_are_served() {
    let server = TestServer::start_with_config(
        "[http]\nheader-timeout = \"1h\"\nmax-connections-per-address = 3\n",
    );
    let held: Vec<TcpStream> = (0..3).map(|_| connect_from(&server, "127.0.0.2")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = connect_from(&server, "127.0.0.2");
    let got = read_until_closed(&mut over);
    assert!(
        got.is_empty(),
        "a fourth connection from 127.0.0.2 is closed unanswered"
    );
    // Another address is served as usual.
    assert!(health(&server), "/_health from 127.0.0.1");
    let metrics = get_from(&server.metrics_url, "/metrics");
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("attic_connections_refused_per_address_total ") && !l.ends_with(" 0")
        }),
        "{metrics}"
    );
    drop(held);
}

#[test]
fn idle_connections_are_closed_sooner_when_the_cap_is_near() {
    // Three of four slots open is pressure; the header timeout alone
    // would keep an idle connection for an hour.
    let server = TestServer::start_with_config(
        "[http]\nheader-timeout = \"1h\"\nmax-connections = 4\n\
         idle-timeout-under-pressure = \"1s\"\n",
    );
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    for _ in 0..3 {
        let mut idle = connect(&server);
        idle.write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let closed_tx = closed_tx.clone();
        std::thread::spawn(move || {
            let reply = read_until_closed(&mut idle);
            let _ = closed_tx.send(reply);
        });
    }
    // At least one gives way (then the pressure is off for the others).
    let reply = closed_rx
        .recv_timeout(HANG_GUARD)
        .expect("an idle kept-alive connection was closed under pressure");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
}

/// GET `path` on a fresh connection from `stream`, claiming to forward
/// for `forwarded_for`; the status line.
fn status_forwarded_for(mut stream: TcpStream, path: &str, forwarded_for: &str) -> String {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n"
    )
    .expect("request");
    let reply = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
    reply.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_limited_by_their_forwarded_address() {
    let server = TestServer::start_with_config(
        "[http]\nbody-timeout = \"1h\"\nmax-connections-per-address = 2\n\
         trusted-proxies = [\"127.0.0.1/32\"]\n",
    );
    Api::new(&server.url)
        .create_cache(&server.root_token, "c", false)
        .await;
    // The proxy (127.0.0.1) forwards uploads of one client that stall
    // mid-body, one after another, until one is refused: the client then
    // has its two requests in flight, whichever the server read first.
    // (A probe request of the same client would itself take a slot for a
    // moment, and could leave an upload refused in its place.)
    let started = Instant::now();
    let mut held = Vec::new();
    loop {
        let mut upload = stalled_upload_forwarded_for(&server, "203.0.113.9");
        upload
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut head = [0u8; 64];
        match std::io::Read::read(&mut upload, &mut head) {
            Ok(n) if n > 0 => {
                let head = String::from_utf8_lossy(&head[..n]);
                assert!(head.starts_with("HTTP/1.1 429 Too Many Requests"), "{head}");
                break;
            }
            // No answer yet: in flight (or, if the server is slow to read
            // it, refused later, which holds nothing).
            _ => held.push(upload),
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "a request forwarded for one client past its limit was never refused"
        );
    }
    let status = |stream, forwarded_for| status_forwarded_for(stream, "/_health", forwarded_for);
    assert_eq!(
        status(connect(&server), "203.0.113.9"),
        "HTTP/1.1 429 Too Many Requests"
    );
    // What a client writes before the proxy's own entry is not believed.
    assert_eq!(
        status(connect(&server), "198.51.100.1, 203.0.113.9"),
        "HTTP/1.1 429 Too Many Requests"
    );
    // Other clients of the proxy are served.
    assert_eq!(status(connect(&server), "203.0.113.10"), "HTTP/1.1 200 OK");
    // From an address that is not a trusted proxy, the header means nothing.
    assert_eq!(
        status(connect_from(&server, "127.0.0.2"), "203.0.113.9"),
        "HTTP/1.1 200 OK"
    );
    drop(held);
}

/// Like [`stalled_upload`], through a proxy that forwards for `client`.
fn stalled_upload_forwarded_for(server: &TestServer, client: &str) -> TcpStream {
    let nar = small_nar();
    let info = nar_info_for("c", &fake_store_path("stalled"), &nar);
    let mut stream = connect(server);
    write!(
        stream,
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         X-Forwarded-For: {client}\r\n\
         X-Attic-Nar-Info: {}\r\nContent-Length: {}\r\n\r\n",
        server.root_token,
        serde_json::to_string(&info).expect("json"),
        nar.len()
    )
    .expect("headers");
    stream.write_all(&nar[..nar.len() / 2]).expect("half");
    stream
}

fn small_nar() -> Vec<u8> {
    NarNode::Regular {
        executable: false,
        contents: vec![7u8; 200 * 1024],
    }
    .to_nar()
}

/// Starts an upload that sends half its body, then nothing.
fn stalled_upload(server: &TestServer) -> TcpStream {
    let nar = small_nar();
    let info = nar_info_for("c", &fake_store_path("stalled"), &nar);
    let mut stream = connect(server);
    write!(
        stream,
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         X-Attic-Nar-Info: {}\r\nContent-Length: {}\r\n\r\n",
        server.root_token,
        serde_json::to_string(&info).expect("json"),
        nar.len()
    )
    .expect("headers");
    stream.write_all(&nar[..nar.len() / 2]).expect("half");
    stream
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_stores_nothing() {
    let server = TestServer::start_with_config("[http]\nbody-timeout = \"1s\"\n");
    Api::new(&server.url)
        .create_cache(&server.root_token, "c", false)
        .await;
    let mut stream = stalled_upload(&server);
    let reply = tokio::task::spawn_blocking(move || read_until_closed(&mut stream))
        .await
        .expect("join");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("UploadStalled"), "{reply}");
    let counts = server.row_counts().await;
    assert_eq!(counts.nars, 0);
    assert_eq!(counts.packs, 0);
    assert_eq!(server.blob_count(), 0);
}

#[tokio::test]
async fn shutdown_does_not_wait_past_its_deadline_for_a_stalled_upload() {
    let mut server = TestServer::start_with_config(
        "[http]\nbody-timeout = \"10m\"\nshutdown-timeout = \"1s\"\n",
    );
    Api::new(&server.url)
        .create_cache(&server.root_token, "c", false)
        .await;
    let _stream = stalled_upload(&server);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.terminate_within(HANG_GUARD),
        "atticd still running after SIGTERM with a stalled upload"
    );
}

/// With `[tls]`, atticd serves HTTPS from the certificate and key files,
/// and a plain HTTP request to it gets nothing.
#[tokio::test]
async fn the_tls_listener_serves_https() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    let server = TestServer::start_with_config(&format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    ));
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let port = server.url.rsplit(':').next().expect("a port");
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).expect("cert"),
        )
        .resolve(
            "localhost",
            format!("127.0.0.1:{port}").parse().expect("address"),
        )
        .build()
        .expect("client");
    let health = client
        .get(format!("https://localhost:{port}/_health"))
        .send()
        .await
        .expect("an HTTPS request");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert_eq!(health.text().await.expect("body"), "OK");
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/_health")).await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
}

/// Idle sockets in the flood: more than `http.max-connections` (1024).
const IDLE_SOCKETS: usize = 1030;

/// `GET /_health` on a fresh connection, as a load balancer probes;
/// whether it answered 200.
async fn probe_health(address: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        Some(reply.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(HANG_GUARD, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The flood of issue 18 on the default `[http]` limits: 1,030 idle
/// sockets from one address (127.0.0.2) while real Nix substitutes a
/// closure from another (127.0.0.1) and `/_health` answers every probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_from_one_address_stop_neither_nix_nor_health() {
    // The flood's sockets are this process's files.
    let files = server::serve::raise_open_file_limit();
    assert!(
        files >= 2 * IDLE_SOCKETS as u64,
        "the test needs {} open files; the hard limit allows {files}",
        2 * IDLE_SOCKETS
    );
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "public", true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 512 * 1024);
    for path in &closure.paths {
        api.upload_ok(
            &server.root_token,
            &nar_info_from_nix("public", path),
            nix::dump(Path::new(path)),
        )
        .await;
    }
    let key = api.public_key(&server.root_token, "public").await;
    let address: SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");

    let mut flood = Vec::with_capacity(IDLE_SOCKETS);
    for _ in 0..IDLE_SOCKETS {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("source"))
            .expect("bind 127.0.0.2");
        flood.push(socket.connect(address).await.expect("connect"));
    }

    nix::delete(&closure.paths);
    let substituter = format!("{}/public", server.url);
    let top = closure.top().to_owned();
    let substitution =
        tokio::task::spawn_blocking(move || nix::substitute(&top, &substituter, &key));
    let mut failed = 0;
    for _ in 0..38 {
        if !probe_health(address).await {
            failed += 1;
        }
    }
    let out = substitution.await.expect("join");
    assert_eq!(
        failed, 0,
        "/_health failed {failed} times in 38 under the flood"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &closure.paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
    let metrics = Api::new(&server.metrics_url).get_text("/metrics").await.1;
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("attic_connections_refused_per_address_total ") && !l.ends_with(" 0")
        }),
        "{metrics}"
    );
    drop(flood);
}
