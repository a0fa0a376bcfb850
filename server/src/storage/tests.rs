//! Scenarios every storage backend must pass, one case per backend.

use bytes::Bytes;
use futures::stream;

use super::*;

fn key(s: &str) -> StorageKey {
    StorageKey::new(s).expect("valid key")
}

async fn local() -> (tempfile::TempDir, LocalStorage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalStorage::open(dir.path().join("blobs"))
        .await
        .expect("open");
    (dir, storage)
}

async fn put_get_exists_delete(storage: &dyn StorageBackend) {
    let k = key("chunks/ab/abcdef.zst");
    assert!(!storage.exists(&k).await.expect("exists"));
    assert!(matches!(
        storage.get(&k).await,
        Err(StorageError::NotFound(_))
    ));
    let pieces: ByteStream = Box::pin(stream::iter(vec![
        Ok(Bytes::from_static(b"hello ")),
        Ok(Bytes::from_static(b"world")),
    ]));
    storage.put(&k, pieces).await.expect("put");
    assert!(storage.exists(&k).await.expect("exists"));
    assert_eq!(read_all(storage, &k).await.expect("get"), "hello world");
    storage
        .put(&k, stream_of(Bytes::from_static(b"again")))
        .await
        .expect("overwrite");
    assert_eq!(read_all(storage, &k).await.expect("get"), "again");
    storage.delete(&k).await.expect("delete");
    storage.delete(&k).await.expect("deleting twice is fine");
    assert!(!storage.exists(&k).await.expect("exists"));
}

async fn failed_put_leaves_nothing(storage: &dyn StorageBackend) {
    let k = key("chunks/cd/failed.zst");
    let broken: ByteStream = Box::pin(stream::iter(vec![
        Ok(Bytes::from_static(b"partial")),
        Err(io::Error::other("client went away")),
    ]));
    assert!(storage.put(&k, broken).await.is_err());
    assert!(!storage.exists(&k).await.expect("exists"));
}

#[tokio::test]
async fn local_storage_passes_the_scenarios() {
    let (_dir, storage) = local().await;
    put_get_exists_delete(&storage).await;
    failed_put_leaves_nothing(&storage).await;
}

#[tokio::test]
async fn local_storage_leaves_no_temporary_files() {
    let (dir, storage) = local().await;
    failed_put_leaves_nothing(&storage).await;
    storage
        .put(&key("a/b"), stream_of(Bytes::from_static(b"x")))
        .await
        .expect("put");
    let temp = std::fs::read_dir(dir.path().join("blobs/.tmp"))
        .expect("temp dir")
        .count();
    assert_eq!(temp, 0);
}

#[test]
fn keys_cannot_escape() {
    for bad in ["", "/abs", "a/../b", "..", "a//b", "A/b", "a/b/", "a b"] {
        assert!(StorageKey::new(bad).is_err(), "{bad:?}");
    }
    key("chunks/00/0123-abc.zst");
}
