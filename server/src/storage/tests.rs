//! Scenarios every storage backend must pass, run once per backend.

use bytes::Bytes;
use futures::stream;

use super::*;

fn key(s: &str) -> StorageKey {
    StorageKey::new(s).expect("valid key")
}

fn pieces(parts: &[&'static [u8]]) -> ByteStream {
    Box::pin(stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    ))
}

async fn read_range(storage: &dyn StorageBackend, k: &StorageKey, range: Range<u64>) -> Bytes {
    use futures::TryStreamExt;
    let stream = storage.get(k, range).await.expect("get");
    let parts: Vec<Bytes> = stream.try_collect().await.expect("read");
    parts.concat().into()
}

async fn put_then_get_whole_and_ranges(storage: &dyn StorageBackend) {
    let k = key("packs/ab/abcdef");
    let size = storage
        .put(&k, pieces(&[b"hello ", b"pack ", b"world"]))
        .await
        .expect("put");
    assert_eq!(size, 16);
    assert_eq!(
        read_all(storage, &k).await.expect("get"),
        "hello pack world"
    );
    assert_eq!(read_range(storage, &k, 6..10).await, "pack");
    assert_eq!(read_range(storage, &k, 0..1).await, "h");
    // A range past the end yields what there is: callers detect short reads.
    assert_eq!(read_range(storage, &k, 11..100).await, "world");
    assert_eq!(read_range(storage, &k, 50..60).await, "");
}

async fn missing_blobs_are_not_found(storage: &dyn StorageBackend) {
    let k = key("packs/00/missing");
    assert!(matches!(
        storage.get(&k, WHOLE).await,
        Err(StorageError::NotFound(_))
    ));
    storage
        .delete(&k)
        .await
        .expect("deleting a missing blob is fine");
}

async fn delete_removes_a_blob(storage: &dyn StorageBackend) {
    let k = key("packs/cd/deleted");
    storage.put(&k, pieces(&[b"x"])).await.expect("put");
    storage.delete(&k).await.expect("delete");
    storage.delete(&k).await.expect("deleting twice is fine");
    assert!(matches!(
        storage.get(&k, WHOLE).await,
        Err(StorageError::NotFound(_))
    ));
}

async fn failed_put_leaves_nothing(storage: &dyn StorageBackend) {
    let k = key("packs/ef/failed");
    let broken: ByteStream = Box::pin(stream::iter(vec![
        Ok(Bytes::from_static(b"partial")),
        Err(io::Error::other("client went away")),
    ]));
    assert!(storage.put(&k, broken).await.is_err());
    assert!(matches!(
        storage.get(&k, WHOLE).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(storage.list("packs/ef/").await.expect("list").is_empty());
}

async fn list_finds_blobs_by_prefix(storage: &dyn StorageBackend) {
    storage
        .put(&key("listed/a/one"), pieces(&[b"1"]))
        .await
        .expect("put");
    storage
        .put(&key("listed/b/two"), pieces(&[b"22"]))
        .await
        .expect("put");
    storage
        .put(&key("other/three"), pieces(&[b"333"]))
        .await
        .expect("put");
    let mut listed = storage.list("listed/").await.expect("list");
    listed.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    let listed: Vec<(&str, u64)> = listed.iter().map(|b| (b.key.as_str(), b.size)).collect();
    assert_eq!(listed, [("listed/a/one", 1), ("listed/b/two", 2)]);
}

async fn passes_every_scenario(storage: &dyn StorageBackend) {
    put_then_get_whole_and_ranges(storage).await;
    missing_blobs_are_not_found(storage).await;
    delete_removes_a_blob(storage).await;
    failed_put_leaves_nothing(storage).await;
    list_finds_blobs_by_prefix(storage).await;
}

async fn local() -> (tempfile::TempDir, LocalStorage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalStorage::open(dir.path().join("blobs"))
        .await
        .expect("open");
    (dir, storage)
}

#[tokio::test]
async fn local_storage_passes_the_scenarios() {
    let (_dir, storage) = local().await;
    passes_every_scenario(&storage).await;
}

#[tokio::test]
async fn memory_storage_passes_the_scenarios() {
    passes_every_scenario(&MemoryStorage::new()).await;
}

#[tokio::test]
async fn local_storage_leaves_no_temporary_files_and_lists_none() {
    let (dir, storage) = local().await;
    failed_put_leaves_nothing(&storage).await;
    storage
        .put(&key("a/b"), pieces(&[b"x"]))
        .await
        .expect("put");
    let temp = std::fs::read_dir(dir.path().join("blobs/.tmp"))
        .expect("temp dir")
        .count();
    assert_eq!(temp, 0);
    std::fs::write(dir.path().join("blobs/.tmp/stray"), b"x").expect("write");
    let listed = storage.list("").await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
}

#[test]
fn keys_cannot_escape() {
    for bad in ["", "/abs", "a/../b", "..", "a//b", "A/b", "a/b/", "a b"] {
        assert!(StorageKey::new(bad).is_err(), "{bad:?}");
    }
    key("chunks/00/0123-abc.zst");
}
