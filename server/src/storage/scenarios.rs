//! Scenarios every storage backend must pass: the unit tests run them on
//! the memory and local backends, and `integration-tests` on S3 against a
//! real S3 server (with the `storage-scenarios` feature). Each expects a
//! fresh, empty store and panics on the first thing that is wrong.
//!
//! [`storage_scenarios!`](crate::storage_scenarios) makes one test per
//! scenario for a backend, so a failure names both; a new scenario goes in
//! its list as well as here.

use std::io;
use std::ops::Range;

use bytes::Bytes;
use futures::stream;

use super::{ByteStream, StorageBackend, StorageError, StorageKey, WHOLE, read_all};

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

/// A blob reads back whole and by ranges, a range past its end cut short.
pub async fn put_then_get_whole_and_ranges(storage: &dyn StorageBackend) {
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

/// A missing blob is `NotFound`; deleting it is fine.
pub async fn missing_blobs_are_not_found(storage: &dyn StorageBackend) {
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

/// A deleted blob is gone, and deleting it again is fine.
pub async fn delete_removes_a_blob(storage: &dyn StorageBackend) {
    let k = key("packs/cd/deleted");
    storage.put(&k, pieces(&[b"x"])).await.expect("put");
    storage.delete(&k).await.expect("delete");
    storage.delete(&k).await.expect("deleting twice is fine");
    assert!(matches!(
        storage.get(&k, WHOLE).await,
        Err(StorageError::NotFound(_))
    ));
}

/// A put whose stream fails leaves no blob, listed or read.
pub async fn failed_put_leaves_nothing(storage: &dyn StorageBackend) {
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

/// `list` finds exactly the blobs under a prefix, with their sizes.
pub async fn list_finds_blobs_by_prefix(storage: &dyn StorageBackend) {
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

/// `len` bytes that differ from their neighbours, so a misplaced range shows.
fn pattern(len: usize) -> Bytes {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// `data` as a stream of 64 KiB pieces, as uploads arrive.
fn in_pieces(data: &Bytes) -> Vec<io::Result<Bytes>> {
    (0..data.len())
        .step_by(64 << 10)
        .map(|start| Ok(data.slice(start..(start + (64 << 10)).min(data.len()))))
        .collect()
}

/// Blobs larger than any single write a backend makes (S3 parts are 8 MiB).
pub async fn large_blobs_round_trip(storage: &dyn StorageBackend) {
    let k = key("packs/9a/large");
    let data = pattern((17 << 20) + 5);
    let size = storage
        .put(&k, Box::pin(stream::iter(in_pieces(&data))))
        .await
        .expect("put");
    assert_eq!(size, data.len() as u64);
    assert!(read_all(storage, &k).await.expect("get") == data);
    let boundary = 8 << 20;
    let across = (boundary - 3) as u64..(boundary + 5) as u64;
    assert_eq!(
        read_range(storage, &k, across).await,
        data.slice(boundary - 3..boundary + 5)
    );
    // Longer than one read of any backend, from inside the blob.
    let long = 5..(3 << 20) + 7;
    assert!(read_range(storage, &k, long.clone()).await == data.slice(5..(3 << 20) + 7));
    let tail = (data.len() - 2) as u64..u64::MAX;
    assert_eq!(
        read_range(storage, &k, tail).await,
        data.slice(data.len() - 2..)
    );
}

/// A large put that fails midway leaves nothing, however much it wrote.
pub async fn large_failed_put_leaves_nothing(storage: &dyn StorageBackend) {
    let k = key("packs/9b/broken");
    let mut pieces = in_pieces(&pattern(12 << 20));
    pieces.push(Err(io::Error::other("client went away")));
    assert!(
        storage
            .put(&k, Box::pin(stream::iter(pieces)))
            .await
            .is_err()
    );
    assert!(matches!(
        storage.get(&k, WHOLE).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(storage.list("packs/9b/").await.expect("list").is_empty());
}

/// The `then` of a backend with nothing to check after a scenario.
pub async fn nothing_more<Guard, Storage>(_guard: &Guard, _storage: &Storage) {}

/// Declares `mod $backend` with one `#[tokio::test]` per scenario, each on
/// a fresh store from `open`, an async function returning what must live as
/// long as the store (a temporary directory, a server) and the store; then
/// `then(&guard, &store)`, if given, checks what is particular to the
/// backend after every scenario.
///
/// ```ignore
/// async fn memory() -> ((), MemoryStorage) {
///     ((), MemoryStorage::new())
/// }
/// server::storage_scenarios!(memory, open = memory);
/// ```
#[macro_export]
macro_rules! storage_scenarios {
    ($backend:ident, open = $open:path $(,)?) => {
        $crate::storage_scenarios!(
            $backend,
            open = $open,
            then = $crate::storage::scenarios::nothing_more,
        );
    };
    ($backend:ident, open = $open:path, then = $then:path $(,)?) => {
        $crate::storage_scenarios!(
            @each $backend, $open, $then,
            put_then_get_whole_and_ranges
            missing_blobs_are_not_found
            delete_removes_a_blob
            failed_put_leaves_nothing
            list_finds_blobs_by_prefix
            large_blobs_round_trip
            large_failed_put_leaves_nothing
        );
    };
    (@each $backend:ident, $open:path, $then:path, $($scenario:ident)*) => {
        mod $backend {
            // `open` and `then` are named from the invoking module.
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (guard, storage) = $open().await;
                    $crate::storage::scenarios::$scenario(&storage).await;
                    $then(&guard, &storage).await;
                }
            )*
        }
    };
}
