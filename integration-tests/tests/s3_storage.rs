//! S3 storage against a real S3 server (s3s-fs): the scenarios every
//! backend passes, and what is particular to S3.

use integration_tests::s3::S3Server;
use server::storage::{S3Storage, StorageBackend, StorageError, StorageKey, scenarios, stream_of};

fn key(s: &str) -> StorageKey {
    StorageKey::new(s).expect("valid key")
}

#[tokio::test]
async fn s3_storage_passes_the_scenarios_and_leaves_no_upload_open() {
    let s3 = S3Server::start();
    // One key per listing page, so that listing must follow continuations.
    let storage = S3Storage::open(&s3.storage_config("prefix = \"tenant/a\""))
        .await
        .with_list_page_size(1);
    scenarios::passes_every_scenario(&storage).await;
    // The large failed put opened a multipart upload, which was aborted.
    assert_eq!(s3.open_uploads(), 0);
    let objects = s3.objects("");
    assert!(
        objects.iter().all(|o| o.starts_with("tenant/a/")),
        "blobs live under the prefix: {objects:?}"
    );
    assert!(objects.contains(&"tenant/a/packs/9a/large".to_owned()));
}

#[tokio::test]
async fn a_presigned_url_reads_the_blob_without_credentials() {
    let s3 = S3Server::start();
    let storage = S3Storage::open(&s3.storage_config("")).await;
    let k = key("packs/ab/presigned");
    storage
        .put(&k, stream_of(bytes::Bytes::from_static(b"pack bytes")))
        .await
        .expect("put");
    let url = storage
        .presign(&k, std::time::Duration::from_secs(60))
        .await
        .expect("presign")
        .expect("S3 presigns");
    assert!(url.starts_with(&s3.endpoint()), "{url}");
    let response = reqwest::get(&url).await.expect("GET");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.bytes().await.expect("body"), "pack bytes");
    // Unsigned, the same object is refused.
    let unsigned = url.split('?').next().expect("a path");
    assert!(
        reqwest::get(unsigned)
            .await
            .expect("GET")
            .status()
            .is_client_error()
    );
}

#[tokio::test]
async fn unreachable_s3_is_unavailable() {
    let mut s3 = S3Server::start();
    let storage = S3Storage::open(&s3.storage_config("max-attempts = 2")).await;
    s3.stop();
    let read = storage.get(&key("packs/00/any"), 0..10).await;
    assert!(
        matches!(read, Err(StorageError::Unavailable { .. })),
        "{:?}",
        read.err()
    );
    s3.restart();
    let read = storage.get(&key("packs/00/any"), 0..10).await;
    assert!(matches!(read, Err(StorageError::NotFound(_))));
}
