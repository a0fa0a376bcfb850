//! Blobs as files under a directory, written atomically and durably.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::TryStreamExt;
use tokio_util::io::ReaderStream;

use super::{ByteStream, StorageBackend, StorageError, StorageKey};

/// Where partially written blobs wait for their rename.
const TEMP_DIR: &str = ".tmp";

/// Blobs in a local directory. A put writes a temporary file, fsyncs it,
/// renames it into place and fsyncs the directory, so a blob is either
/// absent or whole, even across a power loss.
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Opens (and creates) the storage directory.
    pub async fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join(TEMP_DIR)).await?;
        Ok(Self { root })
    }

    fn path_of(&self, key: &StorageKey) -> PathBuf {
        // Keys hold no `..` or absolute parts, so this stays under root.
        self.root.join(key.as_str())
    }

    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(TEMP_DIR)
            .join(format!("{}-{n}", std::process::id()))
    }
}

/// Writes `data` to `temp`, syncs it, renames it to `target` and syncs the
/// directory, so `target` is either absent or whole after a crash. Removes
/// `temp` if anything fails.
fn write_durably(temp: &Path, target: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let parent = target.parent().expect("a key path has a parent");
    let written = (|| {
        std::fs::create_dir_all(parent)?;
        let mut file = std::fs::File::create(temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(temp, target)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    written
}

#[async_trait]
impl StorageBackend for LocalStorage {
    async fn put(&self, key: &StorageKey, mut data: ByteStream) -> Result<(), StorageError> {
        let io_error = |source| StorageError::Io {
            key: key.clone(),
            source,
        };
        // Blobs are chunks, at most `chunking.max-size` (16 MiB at the very
        // most): gather one, then write, sync and rename it in a single
        // blocking task. Per-operation async file I/O would cost a thread
        // hand-off for each of the seven steps, which dominated upload time.
        let mut blob = Vec::new();
        while let Some(piece) = data.try_next().await.map_err(io_error)? {
            blob.extend_from_slice(&piece);
        }
        let target = self.path_of(key);
        let temp = self.temp_path();
        tokio::task::spawn_blocking(move || write_durably(&temp, &target, &blob))
            .await
            .map_err(|e| io_error(io::Error::other(e)))?
            .map_err(io_error)
    }

    async fn get(&self, key: &StorageKey) -> Result<ByteStream, StorageError> {
        match tokio::fs::File::open(self.path_of(key)).await {
            Ok(file) => Ok(Box::pin(ReaderStream::with_capacity(file, 64 * 1024))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.clone()))
            }
            Err(source) => Err(StorageError::Io {
                key: key.clone(),
                source,
            }),
        }
    }

    async fn delete(&self, key: &StorageKey) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Io {
                key: key.clone(),
                source,
            }),
        }
    }

    async fn exists(&self, key: &StorageKey) -> Result<bool, StorageError> {
        tokio::fs::try_exists(self.path_of(key))
            .await
            .map_err(|source| StorageError::Io {
                key: key.clone(),
                source,
            })
    }
}
