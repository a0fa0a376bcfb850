//! Counting what storage is asked and how often it fails, whatever the
//! backend, for `/metrics`.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{BlobInfo, ByteStream, StorageBackend, StorageError, StorageKey};

/// Label of storage counters: `put`, `get`, `delete`, `list` or `presign`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageOperation {
    /// The [`StorageBackend`] method.
    pub operation: &'static str,
}

/// Storage requests and failures by operation; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct StorageCounters {
    /// Requests made.
    pub requests: Family<StorageOperation, Counter>,
    /// Requests that failed, or whose read stream failed midway. A missing
    /// blob is not a failure, nor is a put abandoned because its upload
    /// broke off.
    pub errors: Family<StorageOperation, Counter>,
}

impl StorageCounters {
    fn request(&self, operation: &'static str) {
        self.requests
            .get_or_create(&StorageOperation { operation })
            .inc();
    }

    fn error(&self, operation: &'static str) {
        self.errors
            .get_or_create(&StorageOperation { operation })
            .inc();
    }

    /// Counts the outcome of a request.
    fn outcome<T>(
        &self,
        operation: &'static str,
        result: Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if let Err(e) = &result
            && !matches!(e, StorageError::NotFound(_))
        {
            self.error(operation);
        }
        result
    }
}

/// A backend whose requests are counted in [`StorageCounters`].
#[derive(Debug)]
pub struct MeteredStorage {
    inner: Arc<dyn StorageBackend>,
    counters: StorageCounters,
}

impl MeteredStorage {
    /// Counts `inner`'s requests in `counters`.
    pub fn new(inner: Arc<dyn StorageBackend>, counters: StorageCounters) -> Self {
        Self { inner, counters }
    }
}

#[async_trait]
impl StorageBackend for MeteredStorage {
    async fn put(&self, key: &StorageKey, data: ByteStream) -> Result<u64, StorageError> {
        self.counters.request("put");
        let input_failed = Arc::new(AtomicBool::new(false));
        let watched = {
            let input_failed = input_failed.clone();
            data.inspect(move |piece| {
                if piece.is_err() {
                    input_failed.store(true, Ordering::Relaxed);
                }
            })
        };
        let result = self.inner.put(key, Box::pin(watched)).await;
        if result.is_err() && !input_failed.load(Ordering::Relaxed) {
            self.counters.error("put");
        }
        result
    }

    async fn get(&self, key: &StorageKey, range: Range<u64>) -> Result<ByteStream, StorageError> {
        self.counters.request("get");
        let stream = self
            .counters
            .outcome("get", self.inner.get(key, range).await)?;
        let counters = self.counters.clone();
        Ok(Box::pin(stream.inspect(move |piece| {
            if piece.is_err() {
                counters.error("get");
            }
        })))
    }

    async fn delete(&self, key: &StorageKey) -> Result<(), StorageError> {
        self.counters.request("delete");
        self.counters
            .outcome("delete", self.inner.delete(key).await)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StorageError> {
        self.counters.request("list");
        self.counters.outcome("list", self.inner.list(prefix).await)
    }

    async fn presign(
        &self,
        key: &StorageKey,
        expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        self.counters.request("presign");
        self.counters
            .outcome("presign", self.inner.presign(key, expiry).await)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::{MemoryStorage, WHOLE, read_all, stream_of};

    fn count(family: &Family<StorageOperation, Counter>, operation: &'static str) -> u64 {
        family.get_or_create(&StorageOperation { operation }).get()
    }

    #[tokio::test]
    async fn counts_requests_and_failures_but_not_missing_blobs_or_broken_uploads() {
        let counters = StorageCounters::default();
        let storage = MeteredStorage::new(Arc::new(MemoryStorage::new()), counters.clone());
        let key = StorageKey::new("packs/00/a").expect("key");
        storage
            .put(&key, stream_of(Bytes::from_static(b"x")))
            .await
            .expect("put");
        let broken: ByteStream = Box::pin(futures::stream::iter(vec![Err(std::io::Error::other(
            "client went away",
        ))]));
        assert!(storage.put(&key, broken).await.is_err());
        read_all(&storage, &key).await.expect("get");
        let missing = StorageKey::new("packs/00/missing").expect("key");
        assert!(storage.get(&missing, WHOLE).await.is_err());
        assert_eq!(count(&counters.requests, "put"), 2);
        assert_eq!(count(&counters.requests, "get"), 2);
        assert_eq!(count(&counters.errors, "put"), 0);
        assert_eq!(count(&counters.errors, "get"), 0);
    }
}
