//! Serving a NAR: its chunks read run by run from their packs, each
//! checked before any of its bytes is sent, with bounded memory.
//!
//! Each zstd chunk is a complete frame, so the frames concatenated form a
//! valid zstd stream: `.nar.zst` is served with no recompression. `.nar`
//! (every NAR holding an xz, brotli or uncompressed chunk) decodes one
//! chunk at a time, off the async executor.
//!
//! Damage found on the way is recorded ([`report_damage`]) and ends the
//! response abnormally: a client never receives a clean response with
//! wrong bytes, and from then on the path is missing until pushed again.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::config::CompressionKind;
use crate::database::{Database, NarRecord};
use crate::pack::StoredCompression;
use crate::pack::read::{CheckedChunks, Damage, ReadError, StoredChunk, read_runs_grouped, runs};
use crate::state::AppState;

/// Groups of chunks decoded ahead of the one being sent.
const PREFETCH: usize = 2;

/// Content bytes per group of chunks handed on at once when some must be
/// decoded: a group of highly compressed chunks stays about this size in
/// memory. Chunks sent as stored are grouped by storage's read size alone.
const DECODED_GROUP_CONTENT: u64 = 1 << 20;

/// How a NAR goes over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarEncoding {
    /// The stored zstd frames, concatenated.
    Zstd,
    /// The NAR itself.
    Plain,
}

impl NarEncoding {
    /// The encoding a NAR's narinfo advertises: zstd when every chunk is zstd.
    pub fn stored(nar: &NarRecord) -> Self {
        match nar.compression {
            StoredCompression::Zstd => Self::Zstd,
            StoredCompression::None | StoredCompression::Xz | StoredCompression::Brotli => {
                Self::Plain
            }
        }
    }

    /// The URL suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Zstd => ".nar.zst",
            Self::Plain => ".nar",
        }
    }

    /// narinfo `Compression:`.
    pub fn compression(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Plain => "none",
        }
    }

    /// Whether a chunk stored with `compression` is sent as it is stored.
    fn sends_as_stored(self, compression: StoredCompression) -> bool {
        matches!(
            (self, compression),
            (Self::Zstd, StoredCompression::Zstd) | (Self::Plain, StoredCompression::None)
        )
    }

    /// Bytes sent.
    pub fn file_size(self, nar: &NarRecord) -> u64 {
        match self {
            Self::Zstd => nar.file_size,
            Self::Plain => nar.nar_size,
        }
    }
}

/// Why a NAR could not be sent whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NarReadError {
    /// Stored data is damaged; it has been marked so.
    #[error("a chunk of this NAR is damaged")]
    Damaged,
    /// Storage or decompression failed for another reason.
    #[error("a chunk of this NAR is unreadable right now")]
    Unavailable,
}

impl From<NarReadError> for io::Error {
    fn from(e: NarReadError) -> Self {
        io::Error::other(e)
    }
}

/// The bytes of a NAR in `encoding`, each chunk checked before any of
/// its bytes is yielded; chunks stored back to back come as one piece.
pub fn stream_nar(
    state: Arc<AppState>,
    chunks: Vec<StoredChunk>,
    encoding: NarEncoding,
) -> impl Stream<Item = Result<Bytes, NarReadError>> + Send + 'static {
    let storage = state.storage.clone();
    let max_content = match chunks
        .iter()
        .all(|c| encoding.sends_as_stored(c.compression))
    {
        true => u64::MAX,
        false => DECODED_GROUP_CONTENT,
    };
    read_runs_grouped(storage, runs(chunks), max_content)
        .map(move |read| {
            let state = state.clone();
            async move {
                match read {
                    Ok(checked) => decode(&state, checked, encoding).await,
                    Err(ReadError::Damaged(damage)) => {
                        if report_damage(&state, &damage).await {
                            Err(NarReadError::Damaged)
                        } else {
                            Err(NarReadError::Unavailable)
                        }
                    }
                    Err(ReadError::Storage(e)) => {
                        tracing::error!(error = ?e, "cannot read a pack");
                        Err(NarReadError::Unavailable)
                    }
                }
            }
        })
        .buffered(PREFETCH)
        // Nothing after the first failure: the response must end there.
        .scan(false, |failed, item| {
            let next = (!*failed).then(|| {
                *failed = item.is_err();
                item
            });
            std::future::ready(next)
        })
}

/// Checked chunks in the wire encoding; records checksums they earned.
async fn decode(
    state: &Arc<AppState>,
    checked: CheckedChunks,
    encoding: NarEncoding,
) -> Result<Bytes, NarReadError> {
    if !checked.learned_checksums.is_empty() {
        let database = state.database.clone();
        let learned = checked.learned_checksums.clone();
        tokio::spawn(async move {
            for (chunk_id, checksum) in learned {
                if let Err(e) = database.record_checksum(chunk_id, checksum).await {
                    tracing::warn!(error = %e, chunk_id = chunk_id.get(), "cannot record a chunk's checksum");
                }
            }
        });
    }
    if (checked.chunks.iter()).all(|c| encoding.sends_as_stored(c.compression)) {
        return Ok(checked.stored);
    }
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (chunk, stored) in checked.pieces() {
            let compression = chunk.compression;
            if encoding.sends_as_stored(compression) {
                out.extend_from_slice(&stored);
                continue;
            }
            let content = compression.decode(&stored, chunk.chunk_size as usize);
            // A zstd response holds zstd frames only: any other chunk is
            // decoded and framed afresh.
            let wire = content.and_then(|content| match encoding {
                NarEncoding::Plain => Ok(content),
                NarEncoding::Zstd => StoredCompression::Zstd
                    .encode(&content, CompressionKind::Zstd.default_level()),
            });
            match wire {
                Ok(wire) => out.extend_from_slice(&wire),
                Err(e) => {
                    tracing::error!(error = %e, chunk = %chunk.hash, "a checked chunk does not decompress");
                    return Err(NarReadError::Unavailable);
                }
            }
        }
        Ok(Bytes::from(out))
    })
    .await
    .map_err(|_| NarReadError::Unavailable)?
}

/// Logs, counts and records damage, so the affected paths stop being
/// served and the next upload of their content heals them; whether it was
/// damage. A chunk that compaction moved since its place was looked up
/// (its old pack deleted after the grace period) is not damage: the
/// reader's view was stale, and the next read finds the chunk.
pub async fn report_damage(state: &AppState, damage: &Damage) -> bool {
    state.read_cache.forget_paths();
    let chunk = &damage.chunk;
    match state
        .database
        .chunk_is_at(chunk.id, chunk.pack_id, chunk.offset)
        .await
    {
        Ok(false) => {
            tracing::warn!(
                chunk = %chunk.hash,
                pack = %chunk.pack_key,
                "a chunk moved by compaction was read at its old place; the next read finds it"
            );
            return false;
        }
        Ok(true) => {}
        Err(e) => tracing::warn!(error = %e, "cannot look a chunk's place up"),
    }
    state.metrics.damaged_chunks.inc();
    let marked = mark(&state.database, damage).await;
    tracing::error!(
        chunk = %damage.chunk.hash,
        pack = %damage.chunk.pack_key,
        offset = damage.chunk.offset,
        fault = ?damage.fault,
        marked,
        "damaged chunk: its NARs are no longer served until pushed again"
    );
    true
}

/// Marks damage in the database; how many chunks were newly marked.
pub async fn mark(database: &Database, damage: &Damage) -> u64 {
    match database.mark_damaged(damage).await {
        Ok(marked) => marked,
        Err(e) => {
            tracing::error!(error = %e, chunk = %damage.chunk.hash, "cannot mark a chunk damaged");
            0
        }
    }
}
