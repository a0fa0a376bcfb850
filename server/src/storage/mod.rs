//! Blob storage: where packs live, behind one small trait.
//!
//! A pack is written once, as a stream, under a key nobody else uses, and is
//! durable when `put` returns: only then may the database point at it. Reads
//! are byte ranges, so a run of chunks is one request. `list` lets the
//! garbage collector find blobs no row points at.

mod local;
mod memory;
mod metered;
mod read_buffer;
mod s3;

use std::fmt;
use std::io;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use thiserror::Error;

pub use local::LocalStorage;
pub use memory::MemoryStorage;
pub use metered::{MeteredStorage, StorageCounters};
pub use s3::S3Storage;
pub(crate) use s3::client as s3_client;

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
    /// The backend could not be reached, or kept failing or throttling
    /// through its retries: nothing is known to be wrong with the blobs,
    /// and trying again later may work.
    #[error("storage is unreachable or failing ({operation})")]
    Unavailable {
        /// What was attempted, and on which blob.
        operation: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Listing blobs failed.
    #[error("listing blobs failed")]
    Listing {
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
        if crate::key_path::is_key_path(&key) {
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

/// A stored blob, as [`StorageBackend::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its key.
    pub key: StorageKey,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, for grace periods.
    pub modified: SystemTime,
}

/// A place to keep blobs.
#[async_trait]
pub trait StorageBackend: Send + Sync + fmt::Debug {
    /// Stores a blob under a new key. Returns the bytes written once the
    /// blob would survive a crash or power loss. If `data` fails, no blob
    /// appears under `key`; a put abandoned midway leaves at most an
    /// unreferenced blob, which the garbage collector's orphan sweep removes.
    async fn put(&self, key: &StorageKey, data: ByteStream) -> Result<u64, StorageError>;

    /// Streams `range` of a blob. A blob shorter than the range yields its
    /// bytes up to its end and then ends: callers that know the length
    /// they expect must check it.
    async fn get(&self, key: &StorageKey, range: Range<u64>) -> Result<ByteStream, StorageError>;

    /// Removes a blob; removing a missing blob is not an error.
    async fn delete(&self, key: &StorageKey) -> Result<(), StorageError>;

    /// Every blob whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StorageError>;

    /// Removes what unfinished writes left that is older than `before`
    /// (temporary files, abandoned multipart uploads); how many, and
    /// their bytes where known. Backends without such leftovers do nothing.
    async fn sweep_temporary(&self, _before: SystemTime) -> Result<(u64, u64), StorageError> {
        Ok((0, 0))
    }

    /// A URL that lets anyone holding it GET the whole blob for `expiry`,
    /// where the backend can make one (S3 can; a local disk cannot).
    async fn presign(
        &self,
        _key: &StorageKey,
        _expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}

/// The range that means "the whole blob".
pub const WHOLE: Range<u64> = 0..u64::MAX;

/// A one-piece [`ByteStream`].
pub fn stream_of(data: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Reads a whole blob into memory; for tests and small blobs only.
pub async fn read_all(
    storage: &dyn StorageBackend,
    key: &StorageKey,
) -> Result<Bytes, StorageError> {
    use futures::TryStreamExt;
    let mut stream = storage.get(key, WHOLE).await?;
    let mut buffer = bytes::BytesMut::new();
    while let Some(piece) = stream.try_next().await.map_err(|source| StorageError::Io {
        key: key.clone(),
        source,
    })? {
        buffer.extend_from_slice(&piece);
    }
    Ok(buffer.freeze())
}

#[cfg(any(test, feature = "storage-scenarios"))]
pub mod scenarios;
#[cfg(test)]
mod tests;
