//! Slow, silent and too many clients cannot hold the server: header and
//! idle timeouts, a body-progress timeout, a connection cap, and a
//! shutdown that waits for requests in flight only up to its deadline.
//!
//! Waits here are hang guards (generous bounds on something that must
//! happen), never performance thresholds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use attic::nar::NarNode;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for};

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
    let mut stream = connect(server);
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
fn connections_over_the_cap_are_closed_and_health_recovers() {
    let server =
        TestServer::start_with_config("[http]\nheader-timeout = \"2s\"\nmax-connections = 4\n");
    // Four silent clients take every slot (each accepted once the server
    // gets to it: give it a moment).
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = connect(&server);
    let got = read_until_closed(&mut over);
    assert!(got.is_empty(), "a fifth connection is closed unanswered");
    // Once the header timeout frees their slots, the server answers again.
    let started = Instant::now();
    while !health(&server) {
        assert!(started.elapsed() < HANG_GUARD, "health never recovered");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
    let metrics = get(&server, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("attic_connections_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
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
    assert_eq!(server.count("SELECT COUNT(*) FROM nar").await, 0);
    assert_eq!(server.count("SELECT COUNT(*) FROM pack").await, 0);
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
