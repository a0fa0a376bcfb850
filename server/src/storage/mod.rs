//! Blob storage: where chunk files live, behind one small trait.
//!
//! Keys are content addresses chosen by the chunk store, so writing the
//! same key twice writes the same bytes, and concurrent writers need no
//! coordination. `put` returns only once the blob is durable: the database
//! may then point at it.

mod local;

use std::fmt;
use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use thiserror::Error;

pub use local::LocalStorage;

/// A stream of a blob's bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Why a storage operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The blob does not exist.
    #[error("blob {0} not found")]
    NotFound(StorageKey),
    /// The backend failed.
    #[error("storage I/O failed on {key}")]
    Io {
        /// The blob concerned.
        key: StorageKey,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A blob's key: a relative path of `[a-z0-9._-]` segments joined by `/`,
/// never `.` or `..`, so it maps safely onto a directory or a bucket.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorageKey(String);

/// A string that is not a valid storage key.
#[derive(Debug, Error)]
#[error("invalid storage key {0:?}")]
pub struct BadStorageKey(String);

impl StorageKey {
    /// Checks and wraps a key.
    pub fn new(key: impl Into<String>) -> Result<Self, BadStorageKey> {
        let key = key.into();
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
        };
        if key.split('/').all(segment_ok) {
            Ok(Self(key))
        } else {
            Err(BadStorageKey(key))
        }
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({})", self.0)
    }
}

/// A place to keep blobs.
#[async_trait]
pub trait StorageBackend: Send + Sync + fmt::Debug {
    /// Stores a blob, replacing any blob under the same key. Returns once
    /// the blob would survive a crash or power loss; a failed or abandoned
    /// put leaves no blob under `key`.
    async fn put(&self, key: &StorageKey, data: ByteStream) -> Result<(), StorageError>;

    /// Streams a blob.
    async fn get(&self, key: &StorageKey) -> Result<ByteStream, StorageError>;

    /// Removes a blob; removing a missing blob is not an error.
    async fn delete(&self, key: &StorageKey) -> Result<(), StorageError>;

    /// Whether a blob exists.
    async fn exists(&self, key: &StorageKey) -> Result<bool, StorageError>;
}

/// A one-piece [`ByteStream`].
pub fn stream_of(data: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Reads a whole blob; for blobs known to be small, such as chunks.
pub async fn read_all(
    storage: &dyn StorageBackend,
    key: &StorageKey,
) -> Result<Bytes, StorageError> {
    use futures::TryStreamExt;
    let mut stream = storage.get(key).await?;
    let mut buffer = bytes::BytesMut::new();
    while let Some(piece) = stream.try_next().await.map_err(|source| StorageError::Io {
        key: key.clone(),
        source,
    })? {
        buffer.extend_from_slice(&piece);
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests;
