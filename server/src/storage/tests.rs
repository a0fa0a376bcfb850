//! The storage scenarios, run on the backends that need no server; and
//! what is particular to local disk.

use bytes::Bytes;
use futures::stream;

use super::scenarios::failed_put_leaves_nothing;
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

async fn local() -> (tempfile::TempDir, LocalStorage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalStorage::open(dir.path().join("blobs"))
        .await
        .expect("open");
    (dir, storage)
}

async fn memory() -> ((), MemoryStorage) {
    ((), MemoryStorage::new())
}

crate::storage_scenarios!(local, open = local);
crate::storage_scenarios!(memory, open = memory);

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
