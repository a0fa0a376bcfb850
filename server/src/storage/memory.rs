//! Blobs in memory: the reference backend the scenario suite holds the
//! others to, and a fast one for tests.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;

use super::{BlobInfo, ByteStream, StorageBackend, StorageError, StorageKey, stream_of};

/// Blobs in a map; gone when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    blobs: Mutex<HashMap<StorageKey, (Bytes, SystemTime)>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn blobs(&self) -> std::sync::MutexGuard<'_, HashMap<StorageKey, (Bytes, SystemTime)>> {
        self.blobs
            .lock()
            .expect("the blob map lock is never poisoned")
    }
}

#[async_trait]
impl StorageBackend for MemoryStorage {
    async fn put(&self, key: &StorageKey, data: ByteStream) -> Result<u64, StorageError> {
        let blob = data
            .try_fold(BytesMut::new(), |mut blob, piece| async move {
                blob.extend_from_slice(&piece);
                Ok(blob)
            })
            .await
            .map_err(|source| StorageError::Io {
                key: key.clone(),
                source,
            })?
            .freeze();
        let size = blob.len() as u64;
        self.blobs().insert(key.clone(), (blob, SystemTime::now()));
        Ok(size)
    }

    async fn get(&self, key: &StorageKey, range: Range<u64>) -> Result<ByteStream, StorageError> {
        let blob = self
            .blobs()
            .get(key)
            .map(|(blob, _)| blob.clone())
            .ok_or_else(|| StorageError::NotFound(key.clone()))?;
        let len = blob.len() as u64;
        let (start, end) = (range.start.min(len), range.end.min(len));
        Ok(stream_of(
            blob.slice(start as usize..end.max(start) as usize),
        ))
    }

    async fn delete(&self, key: &StorageKey) -> Result<(), StorageError> {
        self.blobs().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StorageError> {
        Ok(self
            .blobs()
            .iter()
            .filter(|(key, _)| key.as_str().starts_with(prefix))
            .map(|(key, (blob, modified))| BlobInfo {
                key: key.clone(),
                size: blob.len() as u64,
                modified: *modified,
            })
            .collect())
    }
}
