//! Build logs (`PUT|GET /{cache}/log/{drv}`) stream into blob storage,
//! compressed, bounded by `max-log-size`, and count in their cache's used
//! bytes; real Nix writing and reading them is in `nix_copy.rs`.

use std::path::Path;

use bytes::Bytes;
use integration_tests::server::TestServer;
use integration_tests::upload::Api;
use reqwest::{Method, StatusCode};
use server::database::LogLocation;

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

async fn put_body(api: &Api, token: &str, path: &str, body: reqwest::Body) -> StatusCode {
    api.request(Method::PUT, path, Some(token))
        .body(body)
        .send()
        .await
        .expect("request")
        .status()
}

#[tokio::test]
async fn logs_are_stored_as_blobs_and_count_in_the_cache_usage() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "logs", false).await;
    let path = format!("/logs/log/{}", drv("big"));
    let text = log_text(20 << 20);

    let before = api.used_bytes(token, "logs").await;
    assert_eq!(
        put_body(&api, token, &path, text.clone().into()).await,
        StatusCode::NO_CONTENT
    );
    // The log is a blob of its own, not a row's worth of the database
    // (this checks the on-disk encoding: the row holds no bytes of it).
    assert_eq!(log_blobs(&server), 1);
    let store = server.store().await;
    let logs = store
        .cache_logs(store.cache("logs").await.id)
        .await
        .expect("read logs");
    store.close().await;
    assert!(
        matches!(
            logs.as_slice(),
            [log] if matches!(log.log.location, LogLocation::Blob(_)) && log.inline_bytes == 0
        ),
        "{logs:?}"
    );
    let used = api.used_bytes(token, "logs").await - before;
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
        put_body(&api, token, &path, "again\n".into()).await,
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
    let status = put_body(&api, token, &path, log_text(2 << 20).into()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed with no length: refused at the first byte past the limit.
    let pieces = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(log_text(512 << 10))));
    let status = put_body(
        &api,
        token,
        &path,
        reqwest::Body::wrap_stream(futures::stream::iter(pieces)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(server.row_counts().await.build_logs, 0);
    assert_eq!(log_blobs(&server), 0);
    assert_eq!(api.status(Some(token), &path).await, StatusCode::NOT_FOUND);
    // Exactly at the limit is taken.
    let status = put_body(&api, token, &path, log_text(1 << 20).into()).await;
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
            put_body(
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

const NO_GRACE: &str = "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"0s\"\n";

/// Incompressible text, so a log's stored size is about its size.
fn noisy_log(len: usize, seed: u64) -> Vec<u8> {
    integration_tests::upload::noise(len, seed)
        .into_iter()
        .map(|b| b'a' + b % 26)
        .collect()
}

/// Logs count in the quota and go before any path, oldest first; they go
/// with retention and with their destroyed cache; their blobs go with them.
#[tokio::test]
async fn logs_go_with_quotas_retention_and_destroyed_caches() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;

    // A quota that three 200 KB logs exceed and two fit.
    api.create_cache(token, "quota", false).await;
    for i in 0..3u64 {
        let path = format!("/quota/log/{}", drv(&format!("q{i}")));
        let status = put_body(&api, token, &path, noisy_log(200_000, i).into()).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // Stored one second apart: the oldest is unambiguous.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let used = api.used_bytes(token, "quota").await;
    assert!(used > 300_000, "{used}");
    api.configure(
        token,
        "quota",
        serde_json::json!({"quota": {"Bytes": used * 3 / 4}}),
    )
    .await;
    let report = server.gc();
    assert!(report.contains("logs removed: 1"), "{report}");
    let status = |i: u64| {
        let path = format!("/quota/log/{}", drv(&format!("q{i}")));
        let api = api.clone();
        async move { api.status(Some(token), &path).await }
    };
    assert_eq!(
        status(0).await,
        StatusCode::NOT_FOUND,
        "the oldest log goes"
    );
    assert_eq!(status(1).await, StatusCode::OK);
    assert_eq!(status(2).await, StatusCode::OK);
    assert!(api.used_bytes(token, "quota").await <= used * 3 / 4);
    assert_eq!(log_blobs(&server), 2, "its blob goes in the same run");

    // Retention counts from when a log was stored.
    api.create_cache(token, "short", false).await;
    api.configure(
        token,
        "short",
        serde_json::json!({"retention_period": {"Period": 1}}),
    )
    .await;
    let path = format!("/short/log/{}", drv("short"));
    assert_eq!(
        put_body(&api, token, &path, "brief\n".into()).await,
        StatusCode::NO_CONTENT
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let report = server.gc();
    assert!(report.contains("logs removed: 1"), "{report}");
    assert_eq!(api.status(Some(token), &path).await, StatusCode::NOT_FOUND);
    assert_eq!(log_blobs(&server), 2);

    // A destroyed cache's logs go with it.
    api.create_cache(token, "doomed", false).await;
    let path = format!("/doomed/log/{}", drv("doomed"));
    assert_eq!(
        put_body(&api, token, &path, "doomed\n".into()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(log_blobs(&server), 3);
    api.destroy_cache(token, "doomed").await;
    // Destroying forgets the cache's logs at once; the run deletes the blob.
    let report = server.gc();
    assert!(report.contains("orphans swept: 1"), "{report}");
    assert_eq!(log_blobs(&server), 2);
    assert_eq!(server.row_counts().await.build_logs, 2);
}

/// A NAR `nix copy` staged and no narinfo claimed counts in its cache's
/// used bytes until the collector reclaims it.
#[tokio::test]
async fn staged_nars_count_in_the_cache_usage_until_reclaimed() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "staged", false).await;
    let before = api.used_bytes(token, "staged").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f");
    std::fs::write(&file, integration_tests::upload::noise(300_000, 9)).expect("write");
    let nar = integration_tests::nix::dump(&file);
    let body = zstd::encode_all(nar.as_slice(), 3).expect("compress");
    let name = format!(
        "{}.nar.zst",
        attic::hash::Sha256Hash::digest(&body).to_nix32()
    );
    let status = put_body(&api, token, &format!("/staged/nar/{name}"), body.into()).await;
    assert!(status.is_success(), "{status}");
    let staged = api.used_bytes(token, "staged").await - before;
    assert!(staged >= 290_000, "the staged NAR counts: {staged}");

    // Abandoned: older than the grace period (none) by a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let report = server.gc();
    assert!(report.contains("unclaimed nix-copy uploads: 1"), "{report}");
    assert_eq!(api.used_bytes(token, "staged").await, before);
}
