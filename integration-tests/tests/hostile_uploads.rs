//! A hostile client costs the server about what a normal one does: a
//! compressed NAR cannot make it allocate gigabytes (an xz dictionary) or
//! decode gigabytes (a bomb), a caller is authorised before its body is
//! read, and a refusal tells the client to reconnect and when to retry.

use std::time::Duration;

use attic::hash::Sha256Hash;
use attic::nar::NarNode;
use integration_tests::bombs::{bzip2_bomb, xz_with_dictionary, zstd_bomb};
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for, noise};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn reply(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// PUTs `body` as Nix's upload protocol does, named by its hash.
async fn put_nar(api: &Api, token: &str, body: Vec<u8>, extension: &str) -> (StatusCode, Value) {
    let file = format!("{}.nar{extension}", Sha256Hash::digest(&body).to_nix32());
    reply(
        api.request(Method::PUT, &format!("/c/nar/{file}"), Some(token))
            .body(body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// Staged NARs, which a refused upload must not leave.
async fn staged(server: &TestServer) -> u64 {
    server.row_counts().await.staged_nars
}

#[tokio::test]
async fn an_xz_nar_whose_dictionary_needs_gigabytes_is_refused_at_its_header() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", false).await;
    let nar = NarNode::Regular {
        executable: false,
        contents: b"hello".to_vec(),
    }
    .to_nar();
    // The same NAR with xz -9's dictionary is taken.
    let (status, body) = put_nar(&api, token, xz_with_dictionary(&nar, 64 << 20), ".xz").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let before = staged(&server).await;
    // 1.5 GiB, which a decoder without a limit allocates and fills.
    let (status, body) = put_nar(&api, token, xz_with_dictionary(&nar, 1536 << 20), ".xz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "XzDictionaryTooLarge", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("65 MiB"), "{message}");
    assert_eq!(staged(&server).await, before, "nothing staged");
}

/// Writes into a channel, for a request body generated as it is sent.
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(data)))
            .map_err(|_| std::io::Error::other("the request ended"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A request body: a NAR of `size` zeros as xz asking for a 1.5 GiB
/// dictionary, generated as it is sent.
fn streamed_xz_bomb(size: u64) -> reqwest::Body {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(1 << 16, ChannelWriter(sender));
        let _ = integration_tests::bombs::write_xz_with_dictionary(
            integration_tests::bombs::zeros_nar(size),
            integration_tests::bombs::dictionary_byte(1536 << 20),
            out,
        );
    });
    reqwest::Body::wrap_stream(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|piece| (piece, receiver)) },
    ))
}

/// Three xz NARs at once, each asking for a 1.5 GiB dictionary and
/// holding 48 MiB to fill it with: the server's peak memory grows by less
/// than one of them would take to decode.
#[tokio::test]
async fn concurrent_xz_dictionary_bombs_cost_the_server_no_memory() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "c", false).await;
    let nar = NarNode::Regular {
        executable: false,
        contents: noise(1 << 20, 9),
    }
    .to_nar();
    let (status, body) = put_nar(
        &api,
        &token,
        zstd::encode_all(&nar[..], 3).expect("zstd"),
        ".zst",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let before = server.peak_rss_kib();
    let size = 48u64 << 20;
    let uploads: Vec<_> = (0..3)
        .map(|_| {
            let (api, token) = (api.clone(), token.clone());
            tokio::spawn(async move {
                // Named by a hash it does not have: it is refused first.
                let file = format!("{}.nar.xz", "0".repeat(52));
                reply(
                    api.request(Method::PUT, &format!("/c/nar/{file}"), Some(&token))
                        .body(streamed_xz_bomb(size))
                        .send()
                        .await
                        .expect("request"),
                )
                .await
            })
        })
        .collect();
    for upload in uploads {
        let (status, body) = upload.await.expect("the upload task");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "XzDictionaryTooLarge", "{body}");
    }
    let after = server.peak_rss_kib();
    eprintln!("atticd peak RSS: {before} KiB before, {after} KiB after three xz dictionary bombs");
    assert!(
        after - before < size / 1024,
        "peak RSS grew from {before} to {after} KiB"
    );
}

#[tokio::test]
async fn a_nix_copy_nar_that_expands_like_a_bomb_is_refused() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", false).await;
    // A valid NAR: one file of 64 MiB of zeros, which nothing bounds but
    // max-nar-size until its narinfo comes.
    let size = 64 << 20;
    for (bomb, extension) in [(zstd_bomb(size), ".zst"), (bzip2_bomb(size).await, ".bz2")] {
        assert!(bomb.len() < 64 << 10, "{extension}: {} bytes", bomb.len());
        let (status, body) = put_nar(&api, token, bomb, extension).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extension}: {body}");
        assert_eq!(body["error"], "ExpansionTooLarge", "{extension}: {body}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains("compression=none"), "{message}");
    }
    assert_eq!(staged(&server).await, 0, "nothing staged");
    // A NAR that compresses as real ones do is taken.
    let nar = NarNode::Regular {
        executable: false,
        contents: noise(4 << 20, 7),
    }
    .to_nar();
    let compressed = zstd::encode_all(&nar[..], 3).expect("zstd");
    let (status, body) = put_nar(&api, token, compressed, ".zst").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

/// A narinfo, listing or log sent compressed (`Content-Encoding`) that
/// decodes to far more than such a file can be is refused with a 4xx after
/// a bounded amount of decoding, and nothing of it is kept.
#[tokio::test]
async fn compressed_narinfo_listing_and_log_bombs_are_refused() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", false).await;
    let path = fake_store_path("bomb");
    let hash = &path[11..43];
    let drv = format!("{}-bomb.drv", "1".repeat(32));
    let bomb = zstd_bomb(256 << 20);
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    for target in [
        format!("/c/{hash}.narinfo"),
        format!("/c/{hash}.ls"),
        format!("/c/log/{drv}"),
    ] {
        let response = api
            .request(Method::PUT, &target, Some(token))
            .header("Content-Encoding", "zstd")
            .body(bomb.clone())
            .send()
            .await
            .expect("request");
        let (status, body) = reply(response).await;
        assert!(
            status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST,
            "{target}: {status} {body}"
        );
        assert!(
            body["error"] == "TooLarge" || body["error"] == "ExpansionTooLarge",
            "{target}: {body}"
        );
    }
    for target in [format!("/c/{hash}.narinfo"), format!("/c/log/{drv}")] {
        assert_eq!(
            api.status(Some(token), &target).await,
            StatusCode::NOT_FOUND,
            "{target}"
        );
    }
}

#[tokio::test]
async fn a_nix_copy_nar_decoding_past_max_nar_size_is_refused() {
    let server = TestServer::start_with_config("max-nar-size = 1048576\n");
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", false).await;
    // Incompressible, so only the size bound can stop it.
    let nar = NarNode::Regular {
        executable: false,
        contents: noise(2 << 20, 8),
    }
    .to_nar();
    let compressed = zstd::encode_all(&nar[..], 3).expect("zstd");
    let (status, body) = put_nar(&api, token, compressed, ".zst").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("max-nar-size"),
        "{body}"
    );
    assert_eq!(staged(&server).await, 0);
}

#[tokio::test]
async fn an_api_upload_decoding_past_its_declared_nar_size_is_refused() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", false).await;
    // It declares a 4 KiB NAR and sends a zstd body that decodes to 64 MiB.
    let small = NarNode::Regular {
        executable: false,
        contents: vec![0; 4000],
    }
    .to_nar();
    let path = fake_store_path("bomb");
    let info = nar_info_for("c", &path, &small);
    let response = api
        .request(Method::PUT, "/_api/v1/upload-path", Some(token))
        .header(
            attic::api::v1::upload_path::NAR_INFO_HEADER,
            serde_json::to_string(&info).expect("serialise"),
        )
        .header("Content-Encoding", "zstd")
        .body(zstd_bomb(64 << 20))
        .send()
        .await
        .expect("request");
    let (status, body) = reply(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "NarMismatch", "{body}");
    assert_eq!(
        api.status(Some(token), &format!("/c/{}.narinfo", &path[11..43]))
            .await,
        StatusCode::NOT_FOUND
    );
}

/// The head of the next HTTP response on a raw connection, up to its
/// blank line, lower-cased; empty if the server closed first.
async fn response_head(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => response.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&response).to_lowercase()
}

/// Sends a request head that promises `length` body bytes and waits to be
/// asked for them (`Expect: 100-continue`), and returns the first response
/// head: a route that reads the body before refusing answers `100`.
async fn refusal_before_body(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    length: usize,
) -> (String, TcpStream) {
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}\
         Content-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    (response_head(&mut stream).await, stream)
}

/// Every route that takes a body, with a body too big for any of them.
const ROUTES_WITH_BODIES: [(&str, &str); 12] = [
    ("POST", "/_api/v1/get-missing-paths"),
    ("POST", "/_api/v1/cache-config/c"),
    ("PATCH", "/_api/v1/cache-config/c"),
    ("PUT", "/_api/v1/upload-path"),
    ("PUT", "/c/nix-cache-info"),
    ("PUT", "/c/00000000000000000000000000000000.narinfo"),
    (
        "PUT",
        "/c/nar/0000000000000000000000000000000000000000000000000000.nar.xz",
    ),
    ("PUT", "/c/log/00000000000000000000000000000000-a.drv"),
    (
        "PUT",
        "/c/realisations/sha256:0000000000000000000000000000000000000000000000000000000000000000!out.doi",
    ),
    (
        "PUT",
        "/c/build-trace-v2/00000000000000000000000000000000-a.drv/out.doi",
    ),
    ("PUT", "/c/00000000000000000000000000000000.ls"),
    (
        "PUT",
        "/c/debuginfo/ab0123456789abcdef0123456789abcdef012345",
    ),
];

#[tokio::test]
async fn every_route_with_a_body_authorises_its_caller_before_reading_it() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    let puller = server.make_token(&["--pull", "*"]);
    for (method, path) in ROUTES_WITH_BODIES {
        let (head, _) = refusal_before_body(&server, method, path, None, 9 << 20).await;
        assert!(head.starts_with("http/1.1 401"), "{method} {path}: {head}");
        assert!(
            head.contains("connection: close"),
            "{method} {path}: {head}"
        );
        // get-missing-paths and upload-path name their cache in the body:
        // any valid token lets them read it (and upload-path, at most a
        // megabyte of preamble). Everywhere else a token without the
        // right is refused as early.
        if !path.starts_with("/_api/v1/get-missing-paths") && path != "/_api/v1/upload-path" {
            let (head, _) =
                refusal_before_body(&server, method, path, Some(&puller), 9 << 20).await;
            assert!(head.starts_with("http/1.1 403"), "{method} {path}: {head}");
            assert!(
                head.contains("connection: close"),
                "{method} {path}: {head}"
            );
        }
    }
}

#[tokio::test]
async fn an_anonymous_get_missing_paths_is_401_whatever_its_body() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    // Valid JSON past the route's 8 MiB limit: 401, not 413 or a parse.
    let hashes: Vec<String> = (0..270_000).map(|i| format!("{i:0>32}")).collect();
    let body = serde_json::json!({ "cache": "c", "store_path_hashes": hashes });
    let (status, body) = reply(
        api.request(Method::POST, "/_api/v1/get-missing-paths", None)
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

/// A client that sends its whole body anyway gets the refusal, then the
/// connection closes, so its next request starts on a fresh one.
#[tokio::test]
async fn a_refused_body_is_read_and_the_connection_closed_after_the_answer() {
    let server = TestServer::start();
    let address = server.url.trim_start_matches("http://").to_owned();
    let body = vec![b' '; 1 << 20];
    let head = format!(
        "PUT /c/nar/0000000000000000000000000000000000000000000000000000.nar HTTP/1.1\r\n\
         Host: {address}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = TcpStream::connect(&address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&body).await?;
        writer.flush().await.map(|()| writer)
    });
    let head = response_head(&mut reader).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // The server closes once it has answered: this read ends.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.expect("read");
    assert!(String::from_utf8_lossy(&rest).contains("Unauthorized"));
    sending
        .await
        .expect("the sending task")
        .expect("the whole body was taken, with no broken pipe");
}

/// The counterpart of a refusal: an upload that succeeds keeps its
/// connection, even when its handler had the whole NAR before the chunked
/// body's terminator arrived (closing it made `attic push` open a new
/// connection for every path).
#[tokio::test]
async fn a_successful_chunked_upload_keeps_its_connection() {
    let server = TestServer::start();
    let token = &server.root_token;
    Api::new(&server.url).create_cache(token, "c", false).await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    for seed in 0..2 {
        let nar = NarNode::Regular {
            executable: false,
            contents: noise(50_000, 900 + seed),
        }
        .to_nar();
        let info = nar_info_for("c", &fake_store_path("kept-alive"), &nar);
        let head = format!(
            "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: {address}\r\n\
             Authorization: Bearer {token}\r\nX-Attic-Nar-Info: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            serde_json::to_string(&info).expect("json"),
            nar.len()
        );
        writer.write_all(head.as_bytes()).await.expect("head");
        writer.write_all(&nar).await.expect("NAR");
        writer.write_all(b"\r\n").await.expect("chunk end");
        writer.flush().await.expect("flush");
        // The terminator comes later, as from a client streaming its body.
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.write_all(b"0\r\n\r\n").await.expect("terminator");
        let head = response_head(&mut reader).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a content-length")
            .trim()
            .parse()
            .expect("a number");
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await.expect("the reply");
        assert!(String::from_utf8_lossy(&body).contains("Uploaded"));
    }
}

/// The server's database, locked against writes until dropped: with one
/// pooled connection held by a write that waits on the lock, every other
/// request finds the database unavailable.
struct WriteLock {
    transaction: Option<sea_orm::DatabaseTransaction>,
}

impl WriteLock {
    async fn take(server: &TestServer) -> Self {
        use sea_orm::{ConnectionTrait, Database, DatabaseBackend, TransactionTrait};
        let url = server.database_url().replace("mode=ro", "mode=rw");
        let database = Database::connect(&url).await.expect("connect");
        let transaction = database.begin().await.expect("begin");
        // Raw SQL on purpose: this simulates an outage, and no server API
        // (rightly) holds a lock open for someone else.
        let lock = match transaction.get_database_backend() {
            // Any write takes SQLite's one write lock, held to the end.
            DatabaseBackend::Sqlite => "DELETE FROM cache WHERE 0",
            // Readers pass; inserts and updates wait.
            _ => "LOCK TABLE cache IN EXCLUSIVE MODE",
        };
        transaction.execute_unprepared(lock).await.expect("lock");
        Self {
            transaction: Some(transaction),
        }
    }

    async fn release(mut self) {
        let transaction = self.transaction.take().expect("held");
        transaction.rollback().await.expect("rollback");
    }
}

/// A server with one pooled database connection, given up on after a
/// second: with it held by a write waiting on a [`WriteLock`], every
/// request that needs the database is 503 `DatabaseUnavailable`.
fn start_with_one_database_connection() -> TestServer {
    let mut server = TestServer::start();
    let config = server.config_path();
    let mut toml: toml::Table = std::fs::read_to_string(&config)
        .expect("read config")
        .parse()
        .expect("config parses");
    let database = toml
        .entry("database")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("a table");
    database.insert("max-connections".into(), 1.into());
    database.insert("acquire-timeout".into(), "1s".into());
    std::fs::write(&config, toml.to_string()).expect("write config");
    server.restart();
    server
}

#[tokio::test]
async fn every_503_says_when_to_retry_and_closes_a_connection_whose_body_was_not_read() {
    let server = start_with_one_database_connection();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "c", false).await;

    let lock = WriteLock::take(&server).await;
    // A write that holds the one connection while it waits on the lock.
    let waiting = tokio::spawn({
        let api = api.clone();
        let token = token.clone();
        async move { api.try_create_cache(&token, "d", false).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (head, mut stream) = refusal_before_body(
        &server,
        "PUT",
        "/c/nar/0000000000000000000000000000000000000000000000000000.nar.xz",
        Some(&token),
        1 << 20,
    )
    .await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // The server closes the connection after the answer's body.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read");
    let rest = String::from_utf8_lossy(&rest);
    // Refused within half a second, before curl would stop waiting for
    // `100 Continue` and send the body anyway.
    assert!(rest.contains("NotReadyForBody"), "{rest}");
    lock.release().await;
    assert_eq!(
        waiting.await.expect("the waiting write"),
        StatusCode::OK,
        "the write waiting on the lock completes once it is released"
    );
}

/// Real Nix pushing while the database goes away for 10 seconds, from
/// just after its first NAR is stored: it completes (its upload waited
/// out the outage), or fails within 30 seconds naming the 503 it was
/// given (Nix 2.8 retries five times over about 8 seconds).
///
/// Nix 2.8 does not rewind an upload's body when it retries: once curl has
/// sent a body (and it stops waiting for `100 Continue` after a second),
/// every retry of it sends what was left, and the server waits out
/// `http.body-timeout` for the rest. So a NAR is refused within half a
/// second, before curl sends any of it, even though a 503 for a database
/// out of connections takes `acquire-timeout` (1 s here): the retry then
/// sends the whole NAR. See the book's security page.
#[tokio::test]
async fn nix_copy_across_a_database_outage_completes_or_fails_clearly() {
    use integration_tests::nix;
    let server = start_with_one_database_connection();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "c", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let host = server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host")
        .to_owned();
    let netrc = nix::write_netrc(dir.path(), &host, &token);
    // NARs over a megabyte, for which curl asks `Expect: 100-continue`.
    let paths = nix::build_wide_closure(dir.path(), 16, 2 << 20);

    let started = std::time::Instant::now();
    let copy = tokio::task::spawn_blocking({
        let url = format!("{}/c?compression=zstd", server.url);
        let paths = paths.clone();
        move || {
            nix::run_unchecked(
                nix::command("nix")
                    .args(["copy", "--to", &url, "--option", "netrc-file"])
                    .arg(netrc)
                    .args(paths),
            )
        }
    });
    while server.row_counts().await.nars == 0 {
        assert!(!copy.is_finished(), "nix copy ended before storing a NAR");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lock = WriteLock::take(&server).await;
    let holding = tokio::spawn({
        let api = api.clone();
        let token = token.clone();
        async move { api.try_create_cache(&token, "d", false).await.status() }
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = copy.is_finished();
    lock.release().await;
    let out = copy.await.expect("nix copy ran");
    let elapsed = started.elapsed();
    holding.await.expect("the holding write");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "nix copy across the outage: {elapsed:?}, {} (ended during the outage: {during})\n{stderr}",
        out.status
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "nix copy took {elapsed:?}: {stderr}"
    );
    if out.status.success() {
        let hashes: Vec<&str> = paths
            .iter()
            .map(|p| integration_tests::upload::path_hash(p))
            .collect();
        assert!(api.missing(&token, "c", &hashes).await.is_empty());
    } else {
        // Nix shows the reply's body (`DatabaseUnavailable`, "try again
        // shortly") for a narinfo, but not always for a NAR: curl stops
        // waiting for `100 Continue` after a second and starts sending,
        // so the refusal, unread body and all, ends in a closed connection.
        assert!(
            stderr.contains("HTTP error 503 ('Service Unavailable')"),
            "{stderr}"
        );
    }
}
