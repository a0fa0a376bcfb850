//! Build logs as blobs: each log is one zstd stream under a key of its own
//! in the storage backend, written as it arrives and read back as a stream,
//! so a log costs the server a buffer, never its whole size in memory, and
//! never a row's worth of database.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use futures::TryStreamExt;
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::storage::{ByteStream, StorageBackend, StorageError, StorageKey, WHOLE};

/// Where logs live in the storage backend.
pub const LOG_PREFIX: &str = "logs/";

/// A fresh key for a log: `logs/<2 hex>/<32 hex>`, random, so a replaced
/// log never overwrites a blob a reader may be streaming.
pub fn new_log_key() -> StorageKey {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the OS random source works");
    let id = hex::encode(id);
    StorageKey::new(format!("{LOG_PREFIX}{}/{id}", &id[..2])).expect("hex makes a valid key")
}

/// Why a log was not stored. Nothing is left under the key in any case.
#[derive(Debug, thiserror::Error)]
pub enum LogUploadError {
    /// The log passed `max-log-size` (uncompressed).
    #[error("a build log may be at most {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client stopped sending.
    #[error("the log upload stalled")]
    Stalled(#[source] io::Error),
    /// The body broke off.
    #[error("the log upload was interrupted")]
    Interrupted(#[source] io::Error),
    /// The storage backend failed.
    #[error("storing the log failed")]
    Storage(#[from] StorageError),
}

/// A stored log's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLog {
    /// Uncompressed bytes.
    pub size: u64,
    /// Bytes in storage.
    pub stored_size: u64,
}

/// Compresses `body` into a new blob under `key` as it arrives, refusing
/// it at the first byte past `limit`.
pub async fn store_log(
    storage: &dyn StorageBackend,
    key: &StorageKey,
    body: impl AsyncRead + Send + Unpin + 'static,
    limit: u64,
    level: i32,
) -> Result<StoredLog, LogUploadError> {
    let seen = Arc::new(Seen::default());
    let counted = Counted {
        inner: body,
        limit,
        seen: seen.clone(),
    };
    let compressed = ZstdEncoder::with_quality(BufReader::new(counted), Level::Precise(level));
    let stream: ByteStream = Box::pin(ReaderStream::new(compressed));
    let stored = storage.put(key, stream).await;
    let body_failure = seen.failure.lock().expect("not poisoned").take();
    match (stored, body_failure) {
        (Ok(stored_size), None) => Ok(StoredLog {
            size: seen.read.load(Ordering::Relaxed),
            stored_size,
        }),
        (result, Some(body_failure)) => {
            if result.is_ok() {
                // The backend finished despite the error; take it back.
                storage.delete(key).await?;
            }
            Err(body_failure.into_error(limit))
        }
        (Err(e), None) => Err(e.into()),
    }
}

/// Streams a stored log, decompressed.
pub async fn read_log(
    storage: &dyn StorageBackend,
    key: &StorageKey,
) -> Result<ByteStream, StorageError> {
    let stored = storage.get(key, WHOLE).await?;
    let decoder = ZstdDecoder::new(StreamReader::new(stored));
    Ok(Box::pin(ReaderStream::new(decoder).map_err(|e| {
        io::Error::new(e.kind(), format!("a stored log does not decompress: {e}"))
    })))
}

/// What went wrong with the body, as the reader saw it.
#[derive(Debug)]
enum BodyFailure {
    OverLimit,
    Failed(io::Error),
}

impl BodyFailure {
    fn into_error(self, limit: u64) -> LogUploadError {
        match self {
            BodyFailure::OverLimit => LogUploadError::TooLarge { limit },
            BodyFailure::Failed(e) if e.kind() == io::ErrorKind::TimedOut => {
                LogUploadError::Stalled(e)
            }
            BodyFailure::Failed(e) => LogUploadError::Interrupted(e),
        }
    }
}

/// Counts what passes and fails the read past `limit`, noting why any read
/// failed, since a storage backend may report a failing stream as its own
/// I/O error.
struct Counted<R> {
    inner: R,
    limit: u64,
    seen: Arc<Seen>,
}

/// What a [`Counted`] saw, read after the pipeline it is in has finished.
#[derive(Default)]
struct Seen {
    read: AtomicU64,
    failure: Mutex<Option<BodyFailure>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let added = (buf.filled().len() - before) as u64;
                let read = self.seen.read.fetch_add(added, Ordering::Relaxed) + added;
                if read > self.limit {
                    *self.seen.failure.lock().expect("not poisoned") = Some(BodyFailure::OverLimit);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "the log passed max-log-size",
                    )));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                let kind = e.kind();
                let message = e.to_string();
                *self.seen.failure.lock().expect("not poisoned") = Some(BodyFailure::Failed(e));
                Poll::Ready(Err(io::Error::new(kind, message)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::storage::MemoryStorage;

    async fn read_back(storage: &MemoryStorage, key: &StorageKey) -> Vec<u8> {
        let mut stream = read_log(storage, key).await.expect("stored");
        let mut text = Vec::new();
        while let Some(piece) = stream.next().await {
            text.extend_from_slice(&piece.expect("decompresses"));
        }
        text
    }

    #[tokio::test]
    async fn a_log_is_stored_compressed_and_read_back() {
        let storage = MemoryStorage::default();
        let key = new_log_key();
        let log = "building\n".repeat(10_000);
        let body = std::io::Cursor::new(log.clone().into_bytes());
        let stored = store_log(&storage, &key, body, 1 << 20, 3)
            .await
            .expect("stored");
        assert_eq!(stored.size, log.len() as u64);
        assert!(stored.stored_size < stored.size / 10, "{stored:?}");
        assert_eq!(read_back(&storage, &key).await, log.as_bytes());
    }

    #[tokio::test]
    async fn a_log_past_the_limit_is_refused_and_leaves_nothing() {
        let storage = MemoryStorage::default();
        let key = new_log_key();
        let log = vec![b'x'; 100_001];
        let refused = store_log(
            &storage,
            &key,
            std::io::Cursor::new(log.clone()),
            100_000,
            3,
        )
        .await;
        assert!(
            matches!(refused, Err(LogUploadError::TooLarge { limit: 100_000 })),
            "{refused:?}"
        );
        assert!(storage.list("").await.expect("list").is_empty());
        // Exactly at the limit is fine.
        let exact = std::io::Cursor::new(log[..100_000].to_vec());
        store_log(&storage, &key, exact, 100_000, 3)
            .await
            .expect("at the limit");
    }

    #[tokio::test]
    async fn a_broken_body_is_an_interrupted_upload_and_leaves_nothing() {
        let storage = MemoryStorage::default();
        let key = new_log_key();
        let pieces = futures::stream::iter([
            Ok(bytes::Bytes::from_static(b"half a log")),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone")),
        ]);
        let refused = store_log(&storage, &key, StreamReader::new(pieces), 1 << 20, 3).await;
        assert!(
            matches!(refused, Err(LogUploadError::Interrupted(_))),
            "{refused:?}"
        );
        assert!(storage.list("").await.expect("list").is_empty());
    }
}
