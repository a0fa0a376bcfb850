//! Storing an uploaded NAR: verify, chunk, deduplicate, compress, store.
//!
//! The body flows once through a [`VerifyingReader`] (NAR grammar, SHA-256,
//! length bound) into the chunker. Known chunks are skipped; new ones are
//! compressed off the async executor and written to storage, a few at a
//! time. Nothing is recorded in the database here: the caller commits only
//! after [`VerifyingReader::finish`] has confirmed hash and size, so a bad or
//! interrupted upload leaves at most orphan blobs, never a visible row.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use attic::chunking::{Chunk, ChunkId, Chunker, ChunkingError};
use attic::hash::{Sha256Hash, Sha256Hasher};
use attic::nar::{NarError, NarParser};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::config::{CompressionConfig, CompressionKind};
use crate::database::UploadedChunk;
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;
use crate::storage::{StorageKey, stream_of};

/// New chunks compressed and written at once per upload; memory per upload
/// is about this many times twice the maximum chunk size (8 MiB at the
/// defaults). Parallel writes let the filesystem group their syncs.
const CHUNK_CONCURRENCY: usize = 16;

/// Chunks looked up in the database per query and compressed per blocking
/// task, at most: few round trips and few thread hand-offs, while a batch
/// holds at most this many chunks in memory.
const LOOKUP_BATCH: usize = 16;

/// What the uploader declared, which the body must match.
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    /// `NarHash`.
    pub nar_hash: Sha256Hash,
    /// `NarSize`.
    pub nar_size: u64,
}

/// Why the stream stopped, when the reader itself stopped it.
#[derive(Debug)]
enum Refusal {
    Malformed(NarError),
    Oversize,
}

/// Passes bytes through while parsing them as a NAR, hashing them, and
/// refusing more than the declared size.
pub struct VerifyingReader<R> {
    inner: R,
    parser: NarParser,
    hasher: Sha256Hasher,
    declared: Declared,
    refusal: Option<Refusal>,
}

impl<R> VerifyingReader<R> {
    /// Wraps a body declared to be `declared`.
    pub fn new(inner: R, declared: Declared) -> Self {
        Self {
            inner,
            parser: NarParser::new(),
            hasher: Sha256Hasher::new(),
            declared,
            refusal: None,
        }
    }

    /// Explains a read error: our own refusal, or the client's stream failing.
    fn explain(&mut self, error: io::Error) -> ServerError {
        match self.refusal.take() {
            Some(Refusal::Malformed(e)) => ServerError::MalformedNar(e),
            Some(Refusal::Oversize) => ServerError::NarMismatch(format!(
                "the body is longer than the declared nar_size of {} bytes",
                self.declared.nar_size
            )),
            None => ServerError::UploadInterrupted(error),
        }
    }

    /// After the last byte: the NAR must be complete and match what was declared.
    pub fn finish(self) -> ServerResult<()> {
        self.parser.finish().map_err(ServerError::MalformedNar)?;
        let (hash, size) = self.hasher.finish();
        if size != self.declared.nar_size {
            return Err(ServerError::NarMismatch(format!(
                "the body has {size} bytes, but nar_size is {}",
                self.declared.nar_size
            )));
        }
        if hash != self.declared.nar_hash {
            return Err(ServerError::NarMismatch(format!(
                "the body hashes to {}, but nar_hash is {}",
                hash.to_typed_hex(),
                self.declared.nar_hash.to_typed_hex()
            )));
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        let refusal = if this.hasher.len() + new.len() as u64 > this.declared.nar_size {
            Some(Refusal::Oversize)
        } else {
            this.parser
                .feed(new, &mut |_| ())
                .err()
                .map(Refusal::Malformed)
        };
        if let Some(refusal) = refusal {
            this.refusal = Some(refusal);
            // A failed read must not hand out bytes.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::other("upload refused")));
        }
        this.hasher.update(new);
        Poll::Ready(Ok(()))
    }
}

/// The chunks of a verified upload, all durable in storage.
#[derive(Debug)]
pub struct StoredNar {
    /// Chunks in order.
    pub chunks: Vec<UploadedChunk>,
    /// Bytes this upload added to storage.
    pub bytes_stored: u64,
}

/// Reads the whole body, checking it, without storing anything: proof that
/// the uploader holds a NAR the store already has.
pub async fn verify_only<R: AsyncRead + Unpin>(body: R, declared: Declared) -> ServerResult<()> {
    let mut reader = VerifyingReader::new(body, declared);
    let mut sink = tokio::io::sink();
    if let Err(e) = tokio::io::copy(&mut reader, &mut sink).await {
        return Err(reader.explain(e));
    }
    reader.finish()
}

/// Verifies and stores a NAR's chunks.
pub async fn store_nar<R: AsyncRead + Unpin + Send>(
    state: &Arc<AppState>,
    body: R,
    declared: Declared,
) -> ServerResult<StoredNar> {
    let mut reader = VerifyingReader::new(body, declared);
    let stored = if declared.nar_size <= state.config.chunking.nar_size_threshold {
        store_whole(state, &mut reader).await
    } else {
        state
            .chunker
            .chunks(&mut reader)
            .map_err(|e| match e {
                ChunkingError::Read(e) => StoreFailure::Body(e),
                other => StoreFailure::Server(ServerError::Internal(other.to_string())),
            })
            // Ask the database about the chunks that are ready, many per
            // query: a round trip per chunk would dominate on PostgreSQL.
            .ready_chunks(LOOKUP_BATCH)
            .map(|batch| {
                // An owned handle keeps this future free of borrowed
                // lifetimes, which the compiler cannot prove `Send` inside
                // stream combinators.
                let state = state.clone();
                async move { prepare_batch(&state, batch).await }
            })
            // Two batches at once keep both cores compressing.
            .buffered(2)
            .map_ok(|chunks| futures::stream::iter(chunks.into_iter().map(Ok)))
            .try_flatten()
            .map(|chunk| async move {
                store_prepared(state, chunk?)
                    .await
                    .map_err(StoreFailure::Server)
            })
            .buffered(CHUNK_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await
    };
    let stored = match stored {
        Ok(stored) => stored,
        Err(StoreFailure::Body(e)) => return Err(reader.explain(e)),
        Err(StoreFailure::Server(e)) => return Err(e),
    };
    reader.finish()?;
    let bytes_stored = stored.iter().map(|(_, new_bytes)| new_bytes).sum();
    Ok(StoredNar {
        chunks: stored.into_iter().map(|(chunk, _)| chunk).collect(),
        bytes_stored,
    })
}

/// A failure while storing.
enum StoreFailure {
    /// Reading the body failed; the reader knows whether it refused it.
    Body(io::Error),
    /// Storing failed on our side.
    Server(ServerError),
}

/// Small NARs are one chunk: a read bounded by the declared size.
async fn store_whole<R: AsyncRead + Unpin>(
    state: &AppState,
    reader: &mut VerifyingReader<R>,
) -> Result<Vec<(UploadedChunk, u64)>, StoreFailure> {
    let mut data = Vec::with_capacity(reader.declared.nar_size as usize);
    reader
        .read_to_end(&mut data)
        .await
        .map_err(StoreFailure::Body)?;
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let chunk = Chunk {
        id: ChunkId::of(&data),
        offset: 0,
        data: Bytes::from(data),
    };
    let mut prepared = Vec::new();
    for chunk in prepare_batch(state, vec![Ok(chunk)]).await? {
        prepared.push(
            store_prepared(state, chunk)
                .await
                .map_err(StoreFailure::Server)?,
        );
    }
    Ok(prepared)
}

/// Looks a batch of chunks up in one query, and compresses the new ones
/// in one blocking task.
async fn prepare_batch(
    state: &AppState,
    batch: Vec<Result<Chunk, StoreFailure>>,
) -> Result<Vec<ChunkToStore>, StoreFailure> {
    let chunks = batch.into_iter().collect::<Result<Vec<Chunk>, _>>()?;
    let hashes: Vec<String> = chunks.iter().map(|c| c.id.to_string()).collect();
    let known = state
        .database
        .find_chunks(&hashes)
        .await
        .map_err(|e| StoreFailure::Server(e.into()))?;
    let mut slots: Vec<Option<ChunkToStore>> = Vec::with_capacity(chunks.len());
    let mut new_chunks = Vec::new();
    let mut new_positions = Vec::new();
    for (position, (chunk, hash)) in chunks.into_iter().zip(hashes).enumerate() {
        match known.get(&hash) {
            Some(row) => slots.push(Some(ChunkToStore::Known(uploaded_chunk(row.clone())))),
            None => {
                slots.push(None);
                new_positions.push(position);
                new_chunks.push(chunk);
            }
        }
    }
    let compressed = compress_all(new_chunks, state.config.compression)
        .await
        .map_err(StoreFailure::Server)?;
    for (position, chunk) in new_positions.into_iter().zip(compressed) {
        slots[position] = Some(ChunkToStore::New(chunk));
    }
    Ok(slots
        .into_iter()
        .map(|slot| slot.expect("every chunk is either known or compressed"))
        .collect())
}

/// A chunk of the upload, after asking the database whether it is stored.
enum ChunkToStore {
    /// Stored already.
    Known(UploadedChunk),
    /// New, compressed, to be stored.
    New(CompressedChunk),
}

fn uploaded_chunk(row: crate::database::entity::chunk::Model) -> UploadedChunk {
    UploadedChunk {
        chunk_hash: row.chunk_hash,
        chunk_size: row.chunk_size,
        file_size: row.file_size,
        compression: row.compression,
        remote_file: row.remote_file,
    }
}

/// Stores a looked-up chunk if it is new; returns it and the bytes added.
async fn store_prepared(
    state: &AppState,
    chunk: ChunkToStore,
) -> ServerResult<(UploadedChunk, u64)> {
    match chunk {
        ChunkToStore::Known(known) => Ok((known, 0)),
        ChunkToStore::New(chunk) => put_chunk(state, chunk).await,
    }
}

/// A new chunk, compressed as configured, ready to be written.
struct CompressedChunk {
    hash: String,
    chunk_size: i64,
    file: Bytes,
    compression: CompressionKind,
}

/// Compresses a chunk. CPU-bound: call it off the async executor.
fn compress(chunk: Chunk, compression: CompressionConfig) -> ServerResult<CompressedChunk> {
    let file = match compression.kind {
        CompressionKind::Zstd => Bytes::from(
            zstd::bulk::compress(&chunk.data, compression.level)
                .map_err(|e| ServerError::Internal(format!("zstd failed: {e}")))?,
        ),
        CompressionKind::None => chunk.data.clone(),
    };
    Ok(CompressedChunk {
        hash: chunk.id.to_string(),
        chunk_size: chunk.data.len() as i64,
        file,
        compression: compression.kind,
    })
}

/// Compresses chunks on one blocking thread: one hand-off for many chunks.
async fn compress_all(
    chunks: Vec<Chunk>,
    compression: CompressionConfig,
) -> ServerResult<Vec<CompressedChunk>> {
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || {
        chunks
            .into_iter()
            .map(|chunk| compress(chunk, compression))
            .collect()
    })
    .await
    .map_err(|e| ServerError::Internal(format!("compression task failed: {e}")))?
}

/// Writes a compressed chunk to storage; returns it and the bytes added.
async fn put_chunk(state: &AppState, chunk: CompressedChunk) -> ServerResult<(UploadedChunk, u64)> {
    let suffix = match chunk.compression {
        CompressionKind::Zstd => "zst",
        CompressionKind::None => "raw",
    };
    let hash = chunk.hash;
    let key = StorageKey::new(format!("chunks/{}/{hash}.{suffix}", &hash[..2]))
        .expect("hex chunk ids make valid keys");
    let file_size = chunk.file.len() as u64;
    state.storage.put(&key, stream_of(chunk.file)).await?;
    Ok((
        UploadedChunk {
            chunk_hash: hash,
            chunk_size: chunk.chunk_size,
            file_size: file_size as i64,
            compression: chunk.compression.as_str().to_owned(),
            remote_file: key.as_str().to_owned(),
        },
        file_size,
    ))
}
