//! Attic's chunk files, read back into the NAR they make up.
//!
//! A chunk row names its file in `remote_file`, JSON of Attic's
//! `RemoteFile`: `{"Local": {"name": …}}`, a file Attic's local backend
//! keeps at `<path>/<c>/<cc>/<name>` (`<path>/<name>` before its layout
//! version 1), or `{"S3": {"region", "bucket", "key"}}`, an object in a
//! bucket. Each file is compressed as the row's `compression` says (`none`,
//! `zstd`, `xz`, `br`, `bzip2`) and decodes to exactly `chunk_size` bytes;
//! a NAR is its chunks decoded and concatenated in `seq` order, which is
//! how Attic serves it.
//!
//! [`nar_reader`] streams that concatenation, reading a few chunk files
//! ahead. What goes wrong is told apart, as a [`SourceFault`] inside the
//! `io::Error` the reader returns: damage to Attic's store (a chunk row
//! or file missing, a file that does not decode or has the wrong size) is
//! [`SourceFault::Damaged`], reported and skipped by the import; a store
//! that does not answer is [`SourceFault::Unavailable`], which stops it.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{BrotliDecoder, BzDecoder, XzDecoder, ZstdDecoder};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};

use super::config::AtticStorage;
use super::source::{AtticChunk, AtticChunkRef, AtticNar, AtticSource};
use crate::compressed::XZ_MEMORY_LIMIT;

/// Chunk rows fetched per query.
const CHUNK_PAGE: u64 = 512;

/// Bytes read from a chunk file, and handed on decoded, at a time: a
/// typical chunk in one or two pieces rather than sixteen (the default),
/// so the per-piece work downstream (hashing, parsing, chunking) is paid
/// rarely.
const READ_BUFFER: usize = 64 * 1024;

/// Chunk files opened ahead of the one being read: hides an S3 round
/// trip per chunk, at the cost of a few open responses.
const READ_AHEAD: usize = 8;

/// Why a NAR could not be read from Attic's store.
#[derive(Debug, thiserror::Error)]
pub enum SourceFault {
    /// Attic's store is damaged: this NAR cannot be rebuilt from it.
    #[error("{0}")]
    Damaged(String),
    /// Attic's database or storage did not answer; nothing is known to
    /// be wrong with the NAR, and a later run may read it.
    #[error("reading Attic's store failed")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
}

impl SourceFault {
    fn damaged(reason: impl Into<String>) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, Self::Damaged(reason.into()))
    }

    fn unavailable(error: impl Into<Box<dyn StdError + Send + Sync>>) -> io::Error {
        io::Error::other(Self::Unavailable(error.into()))
    }

    /// The fault somewhere in `error`'s chain, if it is one of ours.
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a SourceFault> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(fault) = error.downcast_ref::<SourceFault>() {
                return Some(fault);
            }
            if let Some(inner) = error
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<SourceFault>())
            {
                return Some(inner);
            }
            current = error.source();
        }
        None
    }
}

/// Attic's `RemoteFile`, as its rows hold it.
#[derive(Debug, Deserialize)]
enum RemoteFile {
    S3 { bucket: String, key: String },
    Local { name: String },
    Http { url: String },
}

/// How a chunk file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkCompression {
    None,
    Zstd,
    Xz,
    Brotli,
    Bzip2,
}

impl ChunkCompression {
    /// Attic's names (`br` for brotli, as its narinfos say it).
    fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "zstd" => Some(Self::Zstd),
            "xz" => Some(Self::Xz),
            "br" | "brotli" => Some(Self::Brotli),
            "bzip2" => Some(Self::Bzip2),
            _ => None,
        }
    }
}

/// A chunk file's bytes, still compressed.
type RawChunk = Box<dyn AsyncRead + Send + Unpin>;

/// Where Attic's chunk files are, ready to read.
#[derive(Debug, Clone)]
pub enum ChunkFiles {
    /// Under a directory.
    Local(PathBuf),
    /// In a bucket (named per chunk by its row).
    S3(aws_sdk_s3::Client),
}

impl ChunkFiles {
    /// Opens the store Attic's config names. Makes no request.
    pub async fn open(storage: &AtticStorage) -> Self {
        match storage {
            AtticStorage::Local { path } => Self::Local(path.clone()),
            AtticStorage::S3(config) => Self::S3(crate::storage::s3_client(config).await),
        }
    }

    /// One chunk, decoded, checked to be `chunk_size` bytes long.
    async fn open_chunk(&self, chunk: &AtticChunk) -> io::Result<SizedChunk> {
        let compression = ChunkCompression::parse(&chunk.compression).ok_or_else(|| {
            SourceFault::damaged(format!(
                "a chunk has compression {:?}, which Attic does not write",
                chunk.compression
            ))
        })?;
        let file: RemoteFile = serde_json::from_str(&chunk.remote_file).map_err(|_| {
            SourceFault::damaged(format!(
                "a chunk's remote_file does not parse: {}",
                chunk.remote_file
            ))
        })?;
        let raw = match (self, file) {
            (Self::Local(root), RemoteFile::Local { name }) => open_local(root, &name).await?,
            (Self::S3(client), RemoteFile::S3 { bucket, key }) => {
                open_object(client, bucket, key).await?
            }
            (_, RemoteFile::Http { url }) => {
                return Err(SourceFault::damaged(format!(
                    "a chunk is an HTTP link ({url}), which Attic never writes"
                )));
            }
            (Self::Local(_), RemoteFile::S3 { key, .. }) => {
                return Err(SourceFault::damaged(format!(
                    "chunk {key} is in S3, but the config names local storage"
                )));
            }
            (Self::S3(_), RemoteFile::Local { name }) => {
                return Err(SourceFault::damaged(format!(
                    "chunk {name} is on local disk, but the config names S3 storage"
                )));
            }
        };
        let expected = u64::try_from(chunk.chunk_size).map_err(|_| {
            SourceFault::damaged(format!("a chunk has a size of {}", chunk.chunk_size))
        })?;
        Ok(SizedChunk {
            inner: decoder(raw, compression),
            expected,
            read: 0,
        })
    }
}

/// The file of a local chunk, in Attic's nested layout or its older flat
/// one. A name that could leave the directory is damage, not a path.
async fn open_local(root: &Path, name: &str) -> io::Result<RawChunk> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(SourceFault::damaged(format!(
            "a chunk's file name {name:?} is not one Attic writes"
        )));
    }
    let mut candidates = Vec::with_capacity(2);
    if let (Some(first), Some(two)) = (name.get(0..1), name.get(0..2)) {
        candidates.push(root.join(first).join(two).join(name));
    }
    candidates.push(root.join(name));
    for path in &candidates {
        match tokio::fs::File::open(path).await {
            Ok(file) => return Ok(Box::new(Unavailable(file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SourceFault::unavailable(e)),
        }
    }
    Err(SourceFault::damaged(format!(
        "chunk file {name} is missing from {}",
        root.display()
    )))
}

/// An object of a chunk in a bucket; a missing key is damage.
async fn open_object(
    client: &aws_sdk_s3::Client,
    bucket: String,
    key: String,
) -> io::Result<RawChunk> {
    let response = client.get_object().bucket(&bucket).key(&key).send().await;
    match response {
        Ok(output) => Ok(Box::new(Unavailable(output.body.into_async_read()))),
        Err(e) => {
            let missing = e
                .as_service_error()
                .is_some_and(|service| service.is_no_such_key());
            if missing {
                Err(SourceFault::damaged(format!(
                    "chunk object {key} is missing from bucket {bucket}"
                )))
            } else {
                Err(SourceFault::unavailable(e))
            }
        }
    }
}

/// A chunk file's reader whose every error is the store failing, told
/// apart from the decoder's complaints about the bytes it returned.
struct Unavailable<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for Unavailable<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(SourceFault::unavailable(e))),
            other => other,
        }
    }
}

/// The decoder for a chunk file. Errors of the file itself pass through
/// as they are; the decoder's own (corrupt data, early end) are damage.
fn decoder(raw: RawChunk, compression: ChunkCompression) -> RawChunk {
    let source = BufReader::with_capacity(READ_BUFFER, raw);
    match compression {
        ChunkCompression::None => Box::new(source),
        ChunkCompression::Zstd => Box::new(ZstdDecoder::new(source)),
        ChunkCompression::Xz => Box::new(XzDecoder::with_mem_limit(source, XZ_MEMORY_LIMIT)),
        ChunkCompression::Brotli => Box::new(BrotliDecoder::new(source)),
        ChunkCompression::Bzip2 => Box::new(BzDecoder::new(source)),
    }
}

/// A decoded chunk that must come to exactly `expected` bytes.
struct SizedChunk {
    inner: RawChunk,
    expected: u64,
    read: u64,
}

impl AsyncRead for SizedChunk {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(classify_read_error(e))),
            Poll::Ready(Ok(())) => {
                let new = (buf.filled().len() - before) as u64;
                self.read += new;
                if self.read > self.expected || (new == 0 && self.read != self.expected) {
                    // An error returns no bytes.
                    buf.set_filled(before);
                    return Poll::Ready(Err(SourceFault::damaged(format!(
                        "a chunk decodes to {}{} bytes, but its row says {}",
                        self.read,
                        if new == 0 { "" } else { " or more" },
                        self.expected
                    ))));
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// A read error of a chunk: ours if it carries a fault already (the file
/// or object failing), else the decoder's, which means the file is corrupt.
fn classify_read_error(error: io::Error) -> io::Error {
    if SourceFault::find(&error).is_some() {
        return error;
    }
    match error.kind() {
        io::ErrorKind::InvalidData
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::Other => {
            SourceFault::damaged(format!("a chunk file does not decode: {error}"))
        }
        _ => SourceFault::unavailable(error),
    }
}

/// The NAR `nar` as Attic's chunks make it up, streamed, with every chunk
/// row checked (present, valid, in sequence, as many as `num_chunks`).
pub fn nar_reader(
    source: AtticSource,
    files: Arc<ChunkFiles>,
    nar: &AtticNar,
) -> impl AsyncRead + Send + Unpin + 'static {
    struct Paging {
        source: AtticSource,
        nar_id: i64,
        expected_chunks: i64,
        next_seq: i64,
        done: bool,
    }
    let paging = Paging {
        source,
        nar_id: nar.id,
        expected_chunks: nar.num_chunks,
        next_seq: 0,
        done: false,
    };
    let chunk_refs = futures::stream::try_unfold(paging, |mut paging| async move {
        if paging.done {
            return Ok::<_, io::Error>(None);
        }
        let page = paging
            .source
            .chunks(paging.nar_id, paging.next_seq - 1, CHUNK_PAGE)
            .await
            .map_err(SourceFault::unavailable)?;
        if (page.len() as u64) < CHUNK_PAGE {
            paging.done = true;
        }
        let mut checked: Vec<io::Result<AtticChunkRef>> = Vec::with_capacity(page.len());
        for chunk_ref in page {
            if chunk_ref.seq != paging.next_seq {
                checked.push(Err(SourceFault::damaged(format!(
                    "chunk {} of the NAR has no chunkref row",
                    paging.next_seq
                ))));
                break;
            }
            paging.next_seq += 1;
            checked.push(Ok(chunk_ref));
        }
        if paging.done && paging.next_seq != paging.expected_chunks {
            checked.push(Err(SourceFault::damaged(format!(
                "the NAR has {} chunkref rows, but num_chunks says {}",
                paging.next_seq, paging.expected_chunks
            ))));
        }
        Ok(Some((futures::stream::iter(checked), paging)))
    })
    .try_flatten();
    let chunks = chunk_refs
        .map_ok(move |chunk_ref| {
            let files = files.clone();
            async move {
                let chunk = match &chunk_ref.chunk {
                    None => {
                        return Err(SourceFault::damaged(format!(
                            "chunk {} of the NAR is missing from Attic's database",
                            chunk_ref.seq
                        )));
                    }
                    Some(chunk) if !chunk.valid => {
                        return Err(SourceFault::damaged(format!(
                            "chunk {} of the NAR is not a complete upload",
                            chunk_ref.seq
                        )));
                    }
                    Some(chunk) => chunk,
                };
                files
                    .open_chunk(chunk)
                    .await
                    .map(|chunk| ReaderStream::with_capacity(chunk, READ_BUFFER))
            }
        })
        .try_buffered(READ_AHEAD)
        .try_flatten();
    StreamReader::new(chunks.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_chunk(
        root: &Path,
        name: &str,
        compression: &str,
        size: i64,
    ) -> io::Result<Vec<u8>> {
        let files = ChunkFiles::Local(root.to_owned());
        let chunk = AtticChunk {
            valid: true,
            compression: compression.to_owned(),
            remote_file: serde_json::json!({"Local": {"name": name}}).to_string(),
            chunk_size: size,
        };
        let mut reader = files.open_chunk(&chunk).await?;
        let mut data = Vec::new();
        reader.read_to_end(&mut data).await?;
        Ok(data)
    }

    fn write_nested(root: &Path, name: &str, bytes: &[u8]) {
        let dir = root.join(&name[0..1]).join(&name[0..2]);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), bytes).expect("write");
    }

    fn damage_of(error: &io::Error) -> String {
        match SourceFault::find(error) {
            Some(SourceFault::Damaged(reason)) => reason.clone(),
            other => panic!("expected damage, got {other:?} from {error}"),
        }
    }

    #[tokio::test]
    async fn reads_zstd_chunk_from_nested_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = b"hello chunk".repeat(100);
        let compressed = zstd::bulk::compress(&data, 3).expect("compress");
        write_nested(dir.path(), "abc.chunk", &compressed);
        let read = read_chunk(dir.path(), "abc.chunk", "zstd", data.len() as i64)
            .await
            .expect("reads");
        assert_eq!(read, data);
    }

    #[tokio::test]
    async fn reads_uncompressed_chunk_from_flat_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("old.chunk"), b"plain").expect("write");
        let read = read_chunk(dir.path(), "old.chunk", "none", 5)
            .await
            .expect("reads");
        assert_eq!(read, b"plain");
    }

    #[tokio::test]
    async fn missing_chunk_file_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = read_chunk(dir.path(), "gone.chunk", "none", 5)
            .await
            .expect_err("missing");
        assert!(damage_of(&error).contains("missing"));
    }

    #[tokio::test]
    async fn corrupt_zstd_chunk_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_nested(dir.path(), "bad.chunk", b"\x28\xb5\x2f\xfdgarbage garbage");
        let error = read_chunk(dir.path(), "bad.chunk", "zstd", 100)
            .await
            .expect_err("corrupt");
        damage_of(&error);
    }

    #[tokio::test]
    async fn chunk_of_the_wrong_size_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_nested(dir.path(), "short.chunk", b"1234");
        let error = read_chunk(dir.path(), "short.chunk", "none", 5)
            .await
            .expect_err("short");
        assert!(damage_of(&error).contains("decodes to 4 bytes"));
        write_nested(dir.path(), "long.chunk", b"123456");
        let error = read_chunk(dir.path(), "long.chunk", "none", 5)
            .await
            .expect_err("long");
        damage_of(&error);
    }

    #[tokio::test]
    async fn file_name_leaving_the_directory_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = read_chunk(dir.path(), "../../etc/passwd", "none", 5)
            .await
            .expect_err("refused");
        assert!(damage_of(&error).contains("not one Attic writes"));
    }

    #[tokio::test]
    async fn unknown_compression_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_nested(dir.path(), "lz.chunk", b"x");
        let error = read_chunk(dir.path(), "lz.chunk", "lz4", 1)
            .await
            .expect_err("unknown");
        assert!(damage_of(&error).contains("lz4"));
    }
}
