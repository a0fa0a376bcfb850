//! S3 storage against a real S3 server (s3s-fs): the scenarios every
//! backend passes, and what is particular to S3.

use integration_tests::s3::S3Server;
use server::storage::{S3Storage, StorageBackend, StorageError, StorageKey, stream_of};

fn key(s: &str) -> StorageKey {
    StorageKey::new(s).expect("valid key")
}

/// A fresh bucket on its own server, the store under a prefix and listing
/// one key per page, so that listing must follow continuations.
async fn s3() -> (S3Server, S3Storage) {
    let s3 = S3Server::start();
    let storage = S3Storage::open(&s3.storage_config("prefix = \"tenant/a\""))
        .await
        .with_list_page_size(1);
    (s3, storage)
}

/// After any scenario: no multipart upload is left open (a failed put
/// aborts its own), and every blob lives under the prefix.
async fn no_upload_open_and_blobs_under_the_prefix(s3: &S3Server, storage: &S3Storage) {
    assert_eq!(s3.open_uploads(), 0);
    let objects = s3.objects("");
    assert!(
        objects.iter().all(|o| o.starts_with("tenant/a/")),
        "blobs live under the prefix: {objects:?}"
    );
    for blob in storage.list("").await.expect("list") {
        let object = format!("tenant/a/{}", blob.key.as_str());
        assert!(objects.contains(&object), "{object} in {objects:?}");
    }
}

server::storage_scenarios!(
    s3,
    open = s3,
    then = no_upload_open_and_blobs_under_the_prefix,
);

#[tokio::test]
async fn s3_storage_keeps_blobs_under_its_prefix() {
    let (s3, storage) = s3().await;
    storage
        .put(
            &key("packs/ab/kept"),
            stream_of(bytes::Bytes::from_static(b"x")),
        )
        .await
        .expect("put");
    assert_eq!(s3.objects(""), ["tenant/a/packs/ab/kept"]);
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
