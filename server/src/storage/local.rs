//! Blobs as files under a directory, written atomically and durably.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::read_buffer::ReadBuffer;
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

/// A range of a file being read into a buffer of its own (never copied
/// after).
#[derive(Debug)]
struct Piece {
    buffer: ReadBuffer,
    /// Where `buffer` starts in the file.
    offset: u64,
    filled: usize,
}

impl Piece {
    /// Up to `len` bytes from `start` of a file of `size` bytes; fewer if
    /// it ends first.
    fn new(start: u64, len: u64, size: u64) -> Self {
        let len = len.min(size.saturating_sub(start));
        Self {
            buffer: ReadBuffer::new(len as usize),
            offset: start,
            filled: 0,
        }
    }

    /// Reads what the page cache already holds, never waiting for the
    /// disk (`RWF_NOWAIT`), so it may run on an async worker; whether the
    /// piece is now whole. `false` also where the file system cannot
    /// tell, and [`Self::fill`] then reads the rest.
    fn fill_cached(&mut self, file: &std::fs::File) -> bool {
        let buffer = self.buffer.as_mut_slice();
        while self.filled < buffer.len() {
            let at = self.offset + self.filled as u64;
            let mut rest = [io::IoSliceMut::new(&mut buffer[self.filled..])];
            match rustix::io::preadv2(file, &mut rest, at, rustix::io::ReadWriteFlags::NOWAIT) {
                Ok(0) | Err(_) => return false,
                Ok(read) => self.filled += read,
            }
        }
        true
    }

    /// Reads the rest, waiting for the disk as needed: on a blocking
    /// thread.
    fn fill(mut self, file: &std::fs::File) -> io::Result<Bytes> {
        let at = self.offset + self.filled as u64;
        self.filled += read_at_most(file, &mut self.buffer.as_mut_slice()[self.filled..], at)?;
        Ok(self.into_bytes())
    }

    /// What was read. Only that: a kept buffer still holds an earlier
    /// read's bytes past it.
    fn into_bytes(mut self) -> Bytes {
        self.buffer.truncate(self.filled);
        self.buffer.into_bytes()
    }
}

/// Reads into `buffer` from `offset` until it is full or the file ends;
/// how many bytes it read.
fn read_at_most(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `len` bytes of `file` from `offset`, fewer if it ends first, read into
/// a buffer of their own that is never copied after.
fn read_next(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buffer = ReadBuffer::new(len as usize);
    let read = read_at_most(file, buffer.as_mut_slice(), offset)?;
    buffer.truncate(read);
    Ok(buffer.into_bytes())
}

/// A piece of `file`: in place when the page cache holds it, else on the
/// blocking pool.
async fn read_piece(file: &Arc<std::fs::File>, mut piece: Piece) -> io::Result<Bytes> {
    if piece.fill_cached(file) {
        return Ok(piece.into_bytes());
    }
    let file = file.clone();
    tokio::task::spawn_blocking(move || piece.fill(&file))
        .await
        .map_err(|_| io::Error::other("a blocking read ended abnormally"))?
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
        // Opening a pack (its entry cached, as a served pack's is) costs
        // less than handing the request to another thread.
        let file = match std::fs::File::open(&path) {
            Ok(file) => Arc::new(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(key.clone()));
            }
            Err(e) => return Err(io_error(e)),
        };
        let len = range.end.saturating_sub(range.start);
        if len <= READ_AT_ONCE {
            // Most NARs: one piece, read before answering.
            let size = file.metadata().map_err(io_error)?.len();
            let piece = Piece::new(range.start, len, size);
            return match read_piece(&file, piece).await {
                Ok(bytes) => Ok(super::stream_of(bytes)),
                Err(e) => Err(io_error(e)),
            };
        }
        // Read ahead of the consumer: the next piece is read while the
        // last is sent, on the blocking pool (a megabyte copied out of the
        // page cache would hold an async worker), into a kept buffer. A
        // task (not a thread) drives it, so a slow client holds no thread;
        // the queue bounds memory to a few pieces.
        let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
        tokio::spawn(async move {
            let mut left = len;
            let mut offset = range.start;
            while left > 0 {
                let want = left.min(READ_AT_ONCE);
                let file = file.clone();
                let read =
                    tokio::task::spawn_blocking(move || read_next(&file, offset, want)).await;
                let piece = read
                    .unwrap_or_else(|_| Err(io::Error::other("a blocking read ended abnormally")));
                // A short piece means the file ended; an error ends too.
                let last = piece
                    .as_ref()
                    .map_or(true, |bytes| (bytes.len() as u64) < want);
                let empty = piece.as_ref().is_ok_and(Bytes::is_empty);
                if (!empty && sender.send(piece).await.is_err()) || last {
                    break;
                }
                left -= want;
                offset += want;
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::Piece;

    fn file_of(content: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(content).expect("write");
        file
    }

    #[test]
    fn a_piece_reads_the_same_from_the_page_cache_and_the_disk() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_of(&content);
        let size = content.len() as u64;
        for (start, len) in [(0, size), (1000, 70_000), (size - 10, 100), (size + 5, 10)] {
            let expected = content
                .get(start as usize..(start + len).min(size) as usize)
                .unwrap_or_default();
            let mut cached = Piece::new(start, len, size);
            // Just written, so cached where the file system says so;
            // either way the rest is read by `fill`.
            cached.fill_cached(&file);
            assert_eq!(cached.fill(&file).expect("read"), expected);
            let uncached = Piece::new(start, len, size);
            assert_eq!(uncached.fill(&file).expect("read"), expected);
        }
    }

    #[test]
    fn a_file_shorter_than_it_said_gives_a_short_piece() {
        let file = file_of(b"0123456789");
        let piece = Piece::new(4, 20, 30);
        assert_eq!(piece.fill(&file).expect("read"), "456789");
    }
}
