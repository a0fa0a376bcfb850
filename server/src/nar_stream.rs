//! Serving a NAR by streaming its chunks in order, with bounded memory.
//!
//! Each zstd chunk is a complete frame, so the stored files concatenated
//! form a valid zstd stream: `.nar.zst` is served with no recompression.
//! `.nar` decompresses one chunk at a time, off the async executor.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::database::entity::{chunk, nar};
use crate::storage::{StorageBackend, StorageKey, read_all};

/// Chunks fetched ahead of the one being sent.
const PREFETCH: usize = 2;

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
    pub fn stored(nar: &nar::Model) -> Self {
        if nar.compression == "zstd" {
            Self::Zstd
        } else {
            Self::Plain
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

    /// Bytes sent.
    pub fn file_size(self, nar: &nar::Model) -> u64 {
        match self {
            Self::Zstd => nar.file_size as u64,
            Self::Plain => nar.nar_size as u64,
        }
    }
}

/// The bytes of a NAR in `encoding`, chunk by chunk.
pub fn stream_nar(
    storage: Arc<dyn StorageBackend>,
    chunks: Vec<chunk::Model>,
    encoding: NarEncoding,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::iter(chunks)
        .map(move |chunk| {
            let storage = storage.clone();
            async move { fetch_chunk(&*storage, chunk, encoding).await }
        })
        .buffered(PREFETCH)
}

async fn fetch_chunk(
    storage: &dyn StorageBackend,
    chunk: chunk::Model,
    encoding: NarEncoding,
) -> io::Result<Bytes> {
    let key = StorageKey::new(chunk.remote_file.clone()).map_err(io::Error::other)?;
    let data = read_all(storage, &key).await.map_err(|e| {
        tracing::error!(error = ?e, chunk = %chunk.chunk_hash, "cannot read a chunk");
        io::Error::other("a chunk of this NAR is unreadable")
    })?;
    match (encoding, chunk.compression.as_str()) {
        (NarEncoding::Plain, "zstd") => {
            let capacity = chunk.chunk_size as usize;
            tokio::task::spawn_blocking(move || zstd::bulk::decompress(&data, capacity))
                .await
                .map_err(io::Error::other)?
                .map(Bytes::from)
        }
        _ => Ok(data),
    }
}
