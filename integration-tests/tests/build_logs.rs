//! Build logs (`PUT|GET /{cache}/log/{drv}`) stream into blob storage,
//! compressed, bounded by `max-log-size`, and count in their cache's used
//! bytes; real Nix writing and reading them is in `nix_copy.rs`.

use std::path::Path;

use bytes::Bytes;
use integration_tests::server::TestServer;
use integration_tests::upload::Api;
use reqwest::{Method, StatusCode};

/// A derivation file name of a store path that need not exist.
fn drv(name: &str) -> String {
    format!("{}-{name}.drv", "0".repeat(32))
}

/// A log of `len` bytes of build-output-like text (compressible, as logs are).
fn log_text(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len);
    let mut line = 0u64;
    while text.len() < len {
        text.extend_from_slice(
            format!("building step {line}: cc -O2 -c src/{line}.c\n").as_bytes(),
        );
        line += 1;
    }
    text.truncate(len);
    text
}

/// Blobs under `logs/`, wherever the server keeps them.
fn log_blobs(server: &TestServer) -> usize {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    match server.s3() {
        Some(s3) => s3.objects("logs/").len(),
        None => count(&server.data_dir().join("storage/logs")),
    }
}

async fn put_log(api: &Api, token: &str, path: &str, body: reqwest::Body) -> StatusCode {
    api.request(Method::PUT, path, Some(token))
        .body(body)
        .send()
        .await
        .expect("request")
        .status()
}

async fn used_bytes(api: &Api, token: &str, cache: &str) -> u64 {
    let config: serde_json::Value = api
        .request(
            Method::GET,
            &format!("/_api/v1/cache-config/{cache}"),
            Some(token),
        )
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    config["used_bytes"].as_u64().expect("used_bytes")
}

#[tokio::test]
async fn logs_are_stored_as_blobs_and_count_in_the_cache_usage() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "logs", false).await;
    let path = format!("/logs/log/{}", drv("big"));
    let text = log_text(20 << 20);

    let before = used_bytes(&api, token, "logs").await;
    assert_eq!(
        put_log(&api, token, &path, text.clone().into()).await,
        StatusCode::NO_CONTENT
    );
    // The log is a blob of its own, not a row's worth of the database
    // (this checks the on-disk encoding: the row holds no bytes of it).
    assert_eq!(log_blobs(&server), 1);
    assert_eq!(
        server
            .count(
                "SELECT COUNT(*) FROM build_log WHERE storage_key IS NOT NULL AND length(data) = 0"
            )
            .await,
        1
    );
    let used = used_bytes(&api, token, "logs").await - before;
    assert!(used > 0 && used < text.len() as u64 / 4, "{used}");

    let response = api
        .request(Method::GET, &path, Some(token))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.content_length(),
        Some(text.len() as u64),
        "Content-Length is the log's size"
    );
    assert!(response.bytes().await.expect("body") == text.as_slice());

    // Replacing it serves the new log.
    assert_eq!(
        put_log(&api, token, &path, "again\n".into()).await,
        StatusCode::NO_CONTENT
    );
    let again = api.get_bytes(token, &path).await;
    assert_eq!(&again[..], b"again\n");
}

#[tokio::test]
async fn a_log_past_max_log_size_is_refused_and_leaves_nothing() {
    let server = TestServer::start_with_config("max-log-size = 1048576\n");
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "logs", false).await;
    let path = format!("/logs/log/{}", drv("huge"));

    // Declared too large: refused before the body.
    let status = put_log(&api, token, &path, log_text(2 << 20).into()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed with no length: refused at the first byte past the limit.
    let pieces = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(log_text(512 << 10))));
    let status = put_log(
        &api,
        token,
        &path,
        reqwest::Body::wrap_stream(futures::stream::iter(pieces)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(server.count("SELECT COUNT(*) FROM build_log").await, 0);
    assert_eq!(log_blobs(&server), 0);
    assert_eq!(api.status(Some(token), &path).await, StatusCode::NOT_FOUND);
    // Exactly at the limit is taken.
    let status = put_log(&api, token, &path, log_text(1 << 20).into()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Eight 64 MiB logs at once: the server holds buffers, not logs (before,
/// each was read whole into memory and stored in a row: 2 GiB of RSS).
#[tokio::test]
async fn concurrent_large_logs_take_little_memory() {
    const LIMIT_KIB: u64 = 300 * 1024;
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "logs", false).await;
    let uploads = (0u64..8).map(|i| {
        let path = format!("/logs/log/{}", drv(&format!("log{i}")));
        // Streamed a MiB at a time, so the test holds little too.
        let pieces = (0u64..64).map(move |j| {
            let mut piece = log_text(1 << 20);
            piece[..8].copy_from_slice(&(i * 1000 + j).to_le_bytes());
            Ok::<_, std::io::Error>(Bytes::from(piece))
        });
        let api = api.clone();
        let token = token.clone();
        async move {
            put_log(
                &api,
                &token,
                &path,
                reqwest::Body::wrap_stream(futures::stream::iter(pieces)),
            )
            .await
        }
    });
    for status in futures::future::join_all(uploads).await {
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert_eq!(log_blobs(&server), 8);
    let peak = server.peak_rss_kib();
    assert!(
        peak < LIMIT_KIB,
        "peak RSS {peak} KiB during eight 64 MiB logs"
    );
}
