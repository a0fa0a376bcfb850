//! Blobs as files under a directory, written atomically and durably.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{BlobInfo, ByteStream, StorageBackend, StorageError, StorageKey};

/// Where partially written blobs wait for their rename.
const TEMP_DIR: &str = ".tmp";

/// Bytes per write when storing a blob.
const IO_BUFFER: usize = 256 * 1024;

/// Ranges up to this size (most NARs) are read in one call, where the
/// request runs; longer ones stream in pieces this size. Memory per
/// response is about one piece.
const READ_AT_ONCE: u64 = 1024 * 1024;

/// Pieces read ahead of a slow consumer, at most.
const READ_AHEAD: usize = 2;

/// Blobs in a local directory. A put streams into a temporary file, fsyncs
/// it, renames it into place and fsyncs the directory, so a blob is either
/// absent or whole, even across a power loss.
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Opens the storage directory, creating it (only this user may
    /// enter it) if needed.
    pub async fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let root = root.into();
        let temp = root.join(TEMP_DIR);
        tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(temp)
        })
        .await
        .map_err(io::Error::other)??;
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

/// Writes what `write` produces to `temp`, syncs it, renames it to `target`
/// and syncs the directory, so `target` is either absent or whole after a
/// crash. Removes `temp` if anything fails.
fn write_durably(
    temp: &Path,
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<u64>,
) -> io::Result<u64> {
    let parent = target.parent().expect("a key path has a parent");
    let written = (|| {
        std::fs::create_dir_all(parent)?;
        let file = std::fs::File::create(temp)?;
        let mut buffered = io::BufWriter::with_capacity(IO_BUFFER, file);
        let size = write(&mut buffered)?;
        let file = buffered
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(temp, target)?;
        std::fs::File::open(parent)?.sync_all()?;
        Ok(size)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    written
}

/// Up to `len` bytes of a file from `start`; fewer if it ends first.
fn read_range(path: &Path, start: u64, len: u64) -> io::Result<Bytes> {
    read_piece(&mut open_at(path, start)?, len)
}

/// A file, positioned at `start`.
fn open_at(path: &Path, start: u64) -> io::Result<std::fs::File> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    if start > 0 {
        file.seek(io::SeekFrom::Start(start))?;
    }
    Ok(file)
}

/// The next `len` bytes of `file`, fewer if it ends first, read into a
/// buffer of their own (never zeroed first, never copied after).
fn read_piece(file: &mut std::fs::File, len: u64) -> io::Result<Bytes> {
    use std::io::{Read, Seek};
    let position = file.stream_position()?;
    let available = file.metadata()?.len().saturating_sub(position);
    let mut buffer = Vec::with_capacity(len.min(available) as usize);
    file.take(len).read_to_end(&mut buffer)?;
    Ok(buffer.into())
}

/// Every file under `dir`, as keys relative to `root`, skipping `TEMP_DIR`.
fn walk(root: &Path, dir: &Path, prefix: &str, found: &mut Vec<BlobInfo>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let metadata = entry.metadata()?;
        if metadata.is_dir() {
            if dir != root || entry.file_name() != TEMP_DIR {
                walk(root, &path, prefix, found)?;
            }
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .expect("walked paths are under the root");
        // Files that are not valid keys were not written by us: leave them.
        let Some(key) = relative
            .to_str()
            .and_then(|k| StorageKey::new(k).ok())
            .filter(|k| k.as_str().starts_with(prefix))
        else {
            continue;
        };
        found.push(BlobInfo {
            key,
            size: metadata.len(),
            modified: metadata.modified()?,
        });
    }
    Ok(())
}

#[async_trait]
impl StorageBackend for LocalStorage {
    async fn put(&self, key: &StorageKey, mut data: ByteStream) -> Result<u64, StorageError> {
        let io_error = |source| StorageError::Io {
            key: key.clone(),
            source,
        };
        let target = self.path_of(key);
        let temp = self.temp_path();
        let runtime = tokio::runtime::Handle::current();
        // One blocking task pulls the stream and writes it: a thread
        // hand-off per write would dominate, as it did with async file I/O.
        tokio::task::spawn_blocking(move || {
            write_durably(&temp, &target, |file| {
                let mut size = 0;
                while let Some(piece) = runtime.block_on(data.next()) {
                    let piece = piece?;
                    file.write_all(&piece)?;
                    size += piece.len() as u64;
                }
                Ok(size)
            })
        })
        .await
        .map_err(|e| io_error(io::Error::other(e)))?
        .map_err(io_error)
    }

    async fn get(&self, key: &StorageKey, range: Range<u64>) -> Result<ByteStream, StorageError> {
        let io_error = |source| StorageError::Io {
            key: key.clone(),
            source,
        };
        let path = self.path_of(key);
        let len = range.end.saturating_sub(range.start);
        if len <= READ_AT_ONCE {
            // Open, seek and read in one go, in place: the worker's other
            // tasks move to another thread meanwhile. Per-step async file
            // I/O would cost a thread hand-off for every step. (A runtime
            // with one thread, as in unit tests, cannot do that.)
            let multi_threaded = tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
            let read = if multi_threaded {
                tokio::task::block_in_place(|| read_range(&path, range.start, len))
            } else {
                tokio::task::spawn_blocking(move || read_range(&path, range.start, len))
                    .await
                    .map_err(|e| io_error(io::Error::other(e)))?
            };
            return match read {
                Ok(bytes) => Ok(super::stream_of(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(StorageError::NotFound(key.clone()))
                }
                Err(e) => Err(io_error(e)),
            };
        }
        let opened = tokio::task::spawn_blocking(move || open_at(&path, range.start))
            .await
            .map_err(|e| io_error(io::Error::other(e)))?;
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(key.clone()));
            }
            Err(e) => return Err(io_error(e)),
        };
        // Read ahead of the consumer: the next piece is read while the
        // last is sent. A task (not a thread) drives it, so a slow client
        // holds no thread; the queue bounds memory to a few pieces. Each
        // piece is read straight into its own buffer on the blocking pool
        // (async file I/O would read into a buffer of its own and copy).
        let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
        tokio::spawn(async move {
            let mut left = len;
            while left > 0 {
                let want = left.min(READ_AT_ONCE);
                let read = tokio::task::spawn_blocking(move || {
                    let piece = read_piece(&mut file, want);
                    (file, piece)
                })
                .await;
                let Ok((returned, piece)) = read else {
                    let failed = io::Error::other("a blocking read ended abnormally");
                    let _ = sender.send(Err(failed)).await;
                    break;
                };
                file = returned;
                // A short piece means the file ended; an error ends too.
                let last = piece
                    .as_ref()
                    .map_or(true, |bytes| (bytes.len() as u64) < want);
                let empty = piece.as_ref().is_ok_and(Bytes::is_empty);
                if (!empty && sender.send(piece).await.is_err()) || last {
                    break;
                }
                left -= want;
            }
        });
        Ok(Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|piece| (piece, receiver)) },
        )))
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

    async fn sweep_temporary(&self, before: SystemTime) -> Result<(u64, u64), StorageError> {
        let temp = self.root.join(TEMP_DIR);
        tokio::task::spawn_blocking(move || -> io::Result<(u64, u64)> {
            let mut swept = (0, 0);
            let entries = match std::fs::read_dir(&temp) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let metadata = entry.metadata()?;
                if metadata.is_file() && metadata.modified()? < before {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => {
                            swept.0 += 1;
                            swept.1 += metadata.len();
                        }
                        // Its writer finished (renamed it) meanwhile.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(swept)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|swept| swept)
        .map_err(|source| StorageError::Listing { source })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            // Start in the deepest directory the prefix names, so listing
            // `packs/ab/` reads one directory, not the whole store.
            let start = match prefix.rsplit_once('/') {
                Some((dir, _)) if StorageKey::new(dir).is_ok() => root.join(dir),
                _ => root.clone(),
            };
            walk(&root, &start, &prefix, &mut found).map(|()| found)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|listed| listed)
        .map_err(|source| StorageError::Listing { source })
    }
}
