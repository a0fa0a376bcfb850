//! Blobs as files under a directory, written atomically and durably.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;
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

async fn sync_dir(dir: &Path) -> io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

#[async_trait]
impl StorageBackend for LocalStorage {
    async fn put(&self, key: &StorageKey, mut data: ByteStream) -> Result<(), StorageError> {
        let io_error = |source| StorageError::Io {
            key: key.clone(),
            source,
        };
        let target = self.path_of(key);
        let parent = target.parent().expect("a key path has a parent").to_owned();
        tokio::fs::create_dir_all(&parent).await.map_err(io_error)?;
        let temp = self.temp_path();
        let written = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            while let Some(piece) = data.try_next().await? {
                file.write_all(&piece).await?;
            }
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&temp, &target).await?;
            sync_dir(&parent).await
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        written.map_err(io_error)
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
