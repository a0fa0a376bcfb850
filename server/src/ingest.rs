//! Storing an uploaded NAR: verify, chunk, deduplicate, compress, pack.
//!
//! The body flows once through a [`VerifyingReader`] (NAR grammar, SHA-256,
//! length bound) into the chunker. Chunks the store holds valid are
//! referenced; new (or damaged) ones are compressed off the async executor,
//! each on its own (a zstd frame, or xz or brotli as configured), and
//! appended in NAR order to this upload's one pack, streamed into storage.
//! Nothing is recorded in the database here:
//! the caller commits only after [`VerifyingReader::finish`] has confirmed
//! hash and size and the pack is durable, so a bad or interrupted upload
//! leaves nothing visible (at most an orphan pack, if it failed after the
//! pack was written, for the garbage collector's sweep).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use attic::chunking::{Chunk, ChunkId, Chunker, ChunkingError, FixedSizeChunker};
use attic::hash::{Sha256Hash, Sha256Hasher};
use attic::nar::{DebugInfoFile, DebugInfoFinder, ListingWriter, NarError, NarParser};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::config::{CompressionConfig, CompressionKind};
use crate::database::{NewChunk, UploadedChunk};
use crate::error::{ServerError, ServerResult};
use crate::pack::write::{PackWriter, WrittenPack};
use crate::pack::{StoredChecksum, StoredChunkId, StoredCompression};
use crate::state::AppState;

/// Chunks looked up in the database per query and compressed per blocking
/// task, at most: few round trips and few thread hand-offs. Memory per
/// upload is about three batches of chunks, plus the pack writer's queue.
const LOOKUP_BATCH: usize = 16;

/// The longest `.ls` listing kept (uncompressed): some hundred thousand
/// files. A NAR with more gets none, rather than holding more memory.
pub const LISTING_MAX_SIZE: usize = 32 << 20;

/// What the uploader declared, which the body must match.
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    /// `NarHash`.
    pub nar_hash: Sha256Hash,
    /// `NarSize`.
    pub nar_size: u64,
}

/// What a body is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Exactly this NAR (`upload-path`, whose metadata comes first).
    Declared(Declared),
    /// Exactly this NAR, from a body that hashed it itself and ends in an
    /// error, never cleanly, unless its bytes hash to `nar_hash` (a pulled
    /// NAR's [`crate::pull_through::read_ahead::ReadAhead`]): its size and
    /// grammar are checked here, its hash not again.
    Vouched(Declared),
    /// Any valid NAR up to `max_size` bytes, whose hash and size are then
    /// known (`nix copy`, which sends the narinfo after the NAR).
    AtMost {
        /// The server's `max-nar-size`.
        max_size: u64,
    },
}

impl Expect {
    fn max_size(&self) -> u64 {
        match self {
            Expect::Declared(declared) | Expect::Vouched(declared) => declared.nar_size,
            Expect::AtMost { max_size } => *max_size,
        }
    }

    fn declared(&self) -> Option<Declared> {
        match self {
            Expect::Declared(declared) | Expect::Vouched(declared) => Some(*declared),
            Expect::AtMost { .. } => None,
        }
    }
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
    listing: Option<ListingWriter>,
    debug_info: DebugInfoFinder,
    /// `None` when the body vouches for the hash ([`Expect::Vouched`]).
    hasher: Option<Sha256Hasher>,
    /// Bytes read.
    read: u64,
    expect: Expect,
    refusal: Option<Refusal>,
}

impl<R> VerifyingReader<R> {
    /// Wraps a body expected to be as `expect` says.
    pub fn new(inner: R, expect: Expect) -> Self {
        Self {
            inner,
            parser: NarParser::new(),
            listing: Some(ListingWriter::new(LISTING_MAX_SIZE)),
            debug_info: DebugInfoFinder::new(),
            hasher: match expect {
                Expect::Vouched(_) => None,
                Expect::Declared(_) | Expect::AtMost { .. } => Some(Sha256Hasher::new()),
            },
            read: 0,
            expect,
            refusal: None,
        }
    }

    /// Explains a read error: our own refusal, or the client's stream failing.
    fn explain(&mut self, error: io::Error) -> ServerError {
        let error = match crate::compressed::RefusedBody::take(error) {
            Ok(refusal) => return refusal,
            Err(error) => error,
        };
        match self.refusal.take() {
            Some(Refusal::Malformed(e)) => ServerError::MalformedNar(e),
            Some(Refusal::Oversize) => match self.expect {
                Expect::Declared(declared) | Expect::Vouched(declared) => {
                    ServerError::NarMismatch(format!(
                        "the body is longer than the declared nar_size of {} bytes",
                        declared.nar_size
                    ))
                }
                Expect::AtMost { max_size } => ServerError::TooLarge(format!(
                    "the NAR is larger than this server accepts ({max_size} bytes, max-nar-size)"
                )),
            },
            None if error.kind() == io::ErrorKind::TimedOut => ServerError::UploadStalled(error),
            None => ServerError::UploadInterrupted(error),
        }
    }

    /// The NAR's `.ls` listing, once it is complete (none past
    /// [`LISTING_MAX_SIZE`]).
    pub fn take_listing(&mut self) -> Option<Vec<u8>> {
        if !self.parser.is_complete() {
            return None;
        }
        self.listing.take()?.finish()
    }

    /// The NAR's DWARF debug info files, for `debuginfo/` links.
    pub fn take_debug_info(&mut self) -> Vec<DebugInfoFile> {
        std::mem::take(&mut self.debug_info).finish()
    }

    /// After the last byte: the NAR must be complete and match what was
    /// declared, if anything was. Its hash and size.
    pub fn finish(self) -> ServerResult<(Sha256Hash, u64)> {
        self.parser.finish().map_err(ServerError::MalformedNar)?;
        let size = self.read;
        let hash = match (self.hasher, self.expect.declared()) {
            (Some(hasher), _) => hasher.finish().0,
            (None, Some(declared)) => declared.nar_hash,
            (None, None) => unreachable!("only a declared NAR is vouched for"),
        };
        let Some(declared) = self.expect.declared() else {
            return Ok((hash, size));
        };
        if size != declared.nar_size {
            return Err(ServerError::NarMismatch(format!(
                "the body has {size} bytes, but nar_size is {}",
                declared.nar_size
            )));
        }
        if hash != declared.nar_hash {
            return Err(ServerError::NarMismatch(format!(
                "the body hashes to {}, but nar_hash is {}",
                hash.to_typed_hex(),
                declared.nar_hash.to_typed_hex()
            )));
        }
        Ok((hash, size))
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
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        let total = this.read + new.len() as u64;
        let refused = if total > this.expect.max_size() {
            Some(Refusal::Oversize)
        } else {
            let (listing, debug_info) = (&mut this.listing, &mut this.debug_info);
            let mut on_event = |event: attic::nar::NarEvent<'_>| {
                if let Some(listing) = listing.as_mut() {
                    listing.event(&event);
                }
                debug_info.event(&event);
            };
            this.parser
                .feed(new, &mut on_event)
                .err()
                .map(Refusal::Malformed)
        };
        if let Some(refused) = refused {
            // A failed read hands out no bytes.
            buf.set_filled(before);
            this.refusal = Some(refused);
            return Poll::Ready(Err(io::Error::other("upload refused")));
        }
        if let Some(hasher) = &mut this.hasher {
            hasher.update(new);
        }
        this.read = total;
        Poll::Ready(Ok(()))
    }
}

/// A verified upload whose new chunks are durable in one pack.
#[derive(Debug)]
pub struct StoredNar {
    /// The pack written, if any chunk was new.
    pub pack: Option<WrittenPack>,
    /// Chunks in order.
    pub chunks: Vec<UploadedChunk>,
    /// The NAR's hash, as verified.
    pub nar_hash: Sha256Hash,
    /// Its size.
    pub nar_size: u64,
    /// Its `.ls` listing (JSON), when within [`LISTING_MAX_SIZE`].
    pub listing: Option<Vec<u8>>,
    /// Its DWARF debug info files.
    pub debug_info: Vec<DebugInfoFile>,
}

impl StoredNar {
    /// Bytes this upload added to storage.
    pub fn bytes_stored(&self) -> u64 {
        self.pack.as_ref().map_or(0, |pack| pack.size)
    }
}

/// Bytes read at once when a body is only checked.
const VERIFY_READ: usize = 256 * 1024;

/// Reads the whole body, checking it, without storing anything: proof that
/// the uploader holds a NAR the store already has. With `make_listing`,
/// its `.ls` listing, made on the way (none past [`LISTING_MAX_SIZE`]),
/// for a NAR stored without.
pub async fn verify_only<R: AsyncRead + Unpin>(
    body: R,
    expect: Expect,
    make_listing: bool,
) -> ServerResult<Option<Vec<u8>>> {
    let mut reader = VerifyingReader::new(body, expect);
    if !make_listing {
        reader.listing = None;
    }
    // Large reads: each is one pass of the parser and the hasher, where a
    // copy's 8 KiB reads would cost a poll of every layer below per 8 KiB.
    let mut buffer = vec![
        0;
        usize::try_from(expect.max_size())
            .map_or(VERIFY_READ, |size| size.min(VERIFY_READ))
            + 1
    ];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(reader.explain(e)),
        }
    }
    let listing = reader.take_listing();
    reader.finish()?;
    Ok(listing)
}

/// Verifies a NAR and stores the chunks it brings new as one pack.
pub async fn store_nar<R: AsyncRead + Unpin + Send>(
    state: &Arc<AppState>,
    body: R,
    expect: Expect,
) -> ServerResult<StoredNar> {
    let mut reader = VerifyingReader::new(body, expect);
    let mut pack = PackWriter::new(state.storage.clone());
    let threshold = state.config.chunking.nar_size_threshold;
    let chunks = if threshold == 0 {
        // Chunking off (Attic's `0`): the NAR goes in fixed pieces of
        // `max-size`, so that it is never held whole and the same NAR is
        // always cut the same way.
        let pieces = FixedSizeChunker::new(state.config.chunking.max_size);
        store_chunks(state, &mut pack, pieces.chunks(&mut reader)).await
    } else {
        // Attic's rule: a NAR smaller than the threshold stays one chunk,
        // whichever route brought it (so the same NAR always chunks the
        // same way); whether it is shows after at most `threshold` bytes.
        match read_prefix(&mut reader, threshold).await {
            Err(e) => Err(e),
            Ok(prefix) if prefix.is_empty() => Ok(Vec::new()),
            Ok(prefix) if (prefix.len() as u64) < threshold => {
                let chunk = Chunk {
                    id: ChunkId::of(&prefix),
                    offset: 0,
                    data: Bytes::from(prefix),
                };
                let batch = prepare_batch(state.clone(), vec![Ok(chunk)]).await;
                pack_chunks(&mut pack, futures::stream::once(async { batch }).boxed()).await
            }
            Ok(prefix) => {
                let mut whole = std::io::Cursor::new(prefix).chain(&mut reader);
                store_chunks(state, &mut pack, state.chunker.chunks(&mut whole)).await
            }
        }
    };
    let chunks = match chunks {
        Ok(chunks) => chunks,
        Err(StoreFailure::Body(e)) => return Err(reader.explain(e)),
        Err(StoreFailure::Server(e)) => return Err(e),
    };
    let listing = reader.take_listing();
    let debug_info = reader.take_debug_info();
    let (nar_hash, nar_size) = reader.finish()?;
    let pack = pack.finish().await?;
    Ok(StoredNar {
        pack,
        chunks,
        nar_hash,
        nar_size,
        listing,
        debug_info,
    })
}

/// Stores the chunks of `chunks` that are new into the pack, looking them
/// up and compressing them a batch at a time; every chunk, as the commit
/// will record it.
async fn store_chunks(
    state: &Arc<AppState>,
    pack: &mut PackWriter,
    chunks: impl futures::Stream<Item = Result<Chunk, ChunkingError>> + Send,
) -> Result<Vec<UploadedChunk>, StoreFailure> {
    let batches = chunks
        .map_err(|e| match e {
            ChunkingError::Read(e) => StoreFailure::Body(e),
            other => StoreFailure::Server(ServerError::Chunking(other)),
        })
        // Ask the database about the chunks that are ready, many per
        // query: a round trip per chunk would dominate on PostgreSQL.
        .ready_chunks(LOOKUP_BATCH)
        .map(|batch| prepare_batch(state.clone(), batch))
        // Two batches at once keep both cores compressing.
        .buffered(2)
        .boxed();
    pack_chunks(pack, batches).await
}

/// A failure while storing.
enum StoreFailure {
    /// Reading the body failed; the reader knows whether it refused it.
    Body(io::Error),
    /// Storing failed on our side.
    Server(ServerError),
}

/// The first `threshold` bytes of the body, or all of it if shorter.
/// The threshold is at most `chunking.max-size`, so this is a chunk's worth.
async fn read_prefix<R: AsyncRead + Unpin>(
    reader: &mut VerifyingReader<R>,
    threshold: u64,
) -> Result<Vec<u8>, StoreFailure> {
    let limit = threshold;
    let mut data = Vec::with_capacity(limit.min(reader.expect.max_size()) as usize);
    reader
        .take(limit)
        .read_to_end(&mut data)
        .await
        .map_err(StoreFailure::Body)?;
    Ok(data)
}

/// Appends the new chunks of each batch to the pack, in NAR order, and
/// lists every chunk as the commit will record it.
async fn pack_chunks(
    pack: &mut PackWriter,
    mut batches: BoxStream<'_, Result<Vec<ChunkToStore>, StoreFailure>>,
) -> Result<Vec<UploadedChunk>, StoreFailure> {
    let mut chunks = Vec::new();
    while let Some(batch) = batches.next().await {
        for chunk in batch? {
            chunks.push(match chunk {
                ChunkToStore::Known { id } => UploadedChunk::Reused { id },
                ChunkToStore::New(new) => {
                    let stored_size = new.frame.len() as u64;
                    let offset = pack
                        .append(new.frame)
                        .await
                        .map_err(|e| StoreFailure::Server(e.into()))?;
                    UploadedChunk::New(NewChunk {
                        hash: new.hash,
                        chunk_size: new.chunk_size,
                        compression: new.compression,
                        offset,
                        stored_size,
                        checksum: new.checksum,
                    })
                }
            });
        }
    }
    Ok(chunks)
}

/// Looks a batch of chunks up in one query, and compresses the new ones
/// in one blocking task.
async fn prepare_batch(
    state: Arc<AppState>,
    batch: Vec<Result<Chunk, StoreFailure>>,
) -> Result<Vec<ChunkToStore>, StoreFailure> {
    let chunks = batch.into_iter().collect::<Result<Vec<Chunk>, _>>()?;
    let hashes: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
    let known = state
        .database
        .find_chunks(&hashes)
        .await
        .map_err(|e| StoreFailure::Server(e.into()))?;
    let mut slots: Vec<Option<ChunkToStore>> = Vec::with_capacity(chunks.len());
    let mut new_chunks = Vec::new();
    let mut new_positions = Vec::new();
    for (position, chunk) in chunks.into_iter().enumerate() {
        match known.get(&chunk.id) {
            Some(&id) => slots.push(Some(ChunkToStore::Known { id })),
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
    /// Stored already, valid.
    Known {
        /// Its row.
        id: StoredChunkId,
    },
    /// New (or stored damaged), compressed, to be packed.
    New(CompressedChunk),
}

/// A new chunk, compressed as configured, ready to be packed.
struct CompressedChunk {
    hash: ChunkId,
    chunk_size: u64,
    frame: Bytes,
    compression: StoredCompression,
    checksum: StoredChecksum,
}

/// Compresses a chunk and checksums the result. CPU-bound: call it off
/// the async executor.
fn compress(chunk: Chunk, compression: CompressionConfig) -> ServerResult<CompressedChunk> {
    let stored_compression = match compression.kind {
        CompressionKind::Zstd => StoredCompression::Zstd,
        CompressionKind::Xz => StoredCompression::Xz,
        CompressionKind::Brotli => StoredCompression::Brotli,
        CompressionKind::None => StoredCompression::None,
    };
    let frame = match stored_compression {
        StoredCompression::None => chunk.data.clone(),
        _ => Bytes::from(
            stored_compression
                .encode(&chunk.data, compression.level())
                .map_err(ServerError::Compression)?,
        ),
    };
    Ok(CompressedChunk {
        hash: chunk.id,
        chunk_size: chunk.data.len() as u64,
        checksum: StoredChecksum::of(&frame),
        frame,
        compression: stored_compression,
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
    .map_err(ServerError::TaskFailed)?
}

#[cfg(test)]
mod tests {
    use attic::nar::NarNode;

    use super::*;

    fn nar() -> Vec<u8> {
        NarNode::Regular {
            executable: false,
            contents: b"vouched for".to_vec(),
        }
        .to_nar()
    }

    fn declared(nar: &[u8]) -> Declared {
        Declared {
            nar_hash: Sha256Hash::digest(nar),
            nar_size: nar.len() as u64,
        }
    }

    #[tokio::test]
    async fn a_vouched_body_is_checked_for_size_and_grammar_but_not_hashed_again() {
        let nar = nar();
        // Another hash than the body's: only a body that hashes it itself
        // may be read this way, and it is not hashed here.
        let other_hash = Declared {
            nar_hash: Sha256Hash::digest(b"something else"),
            ..declared(&nar)
        };
        let read = verify_only(&nar[..], Expect::Vouched(other_hash), false).await;
        assert!(read.is_ok(), "{read:?}");
        let checked = verify_only(&nar[..], Expect::Declared(other_hash), false).await;
        assert!(matches!(checked, Err(ServerError::NarMismatch(_))));

        let short = verify_only(
            &nar[..nar.len() - 8],
            Expect::Vouched(declared(&nar)),
            false,
        );
        assert!(matches!(short.await, Err(ServerError::MalformedNar(_))));
        let longer = [&nar[..], &[0u8; 8]].concat();
        let long = verify_only(&longer[..], Expect::Vouched(declared(&nar)), false);
        assert!(matches!(long.await, Err(ServerError::NarMismatch(_))));
        let mut garbled = nar.clone();
        garbled[0] ^= 1;
        let garbled = verify_only(&garbled[..], Expect::Vouched(declared(&nar)), false);
        assert!(matches!(garbled.await, Err(ServerError::MalformedNar(_))));
    }
}
