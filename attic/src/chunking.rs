//! Content-defined chunking: a NAR stream in, a stream of chunks out.
//!
//! Boundaries come from FastCDC (2020) over the content alone, so an edit
//! moves only the chunks around it and identical runs of bytes in different
//! NARs yield identical chunks, which the store keeps once under their
//! [`ChunkId`] (blake3). Boundaries depend on nothing but the bytes and the
//! [`ChunkingParams`]: they are the same on every run and every machine.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::FastCDC;
use futures::Stream;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why chunking failed.
#[derive(Debug, Error)]
pub enum ChunkingError {
    /// Sizes that FastCDC cannot work with.
    #[error(
        "invalid chunk sizes min={min} avg={avg} max={max}: need 64 <= min <= avg <= max, \
         min <= 1 MiB, 256 <= avg <= 4 MiB, 1 KiB <= max <= 16 MiB, all even"
    )]
    BadParams {
        /// The minimum given.
        min: u32,
        /// The average given.
        avg: u32,
        /// The maximum given.
        max: u32,
    },
    /// Reading the input failed.
    #[error("reading the stream to chunk failed")]
    Read(#[source] std::io::Error),
}

/// Chunk size bounds. Defaults: 16 KiB minimum, 64 KiB average, 256 KiB maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingParams {
    /// No chunk but the last is smaller.
    pub min_size: u32,
    /// The size chunks tend to.
    pub avg_size: u32,
    /// No chunk is larger.
    pub max_size: u32,
}

impl Default for ChunkingParams {
    fn default() -> Self {
        Self {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }
}

impl ChunkingParams {
    /// Checks the sizes against what FastCDC supports.
    pub fn validate(self) -> Result<Self, ChunkingError> {
        let Self {
            min_size: min,
            avg_size: avg,
            max_size: max,
        } = self;
        let ok = min <= avg
            && avg <= max
            && (fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX)
                .contains(&(min as usize))
            && (fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX)
                .contains(&(avg as usize))
            && (fastcdc::v2020::MAXIMUM_MIN..=fastcdc::v2020::MAXIMUM_MAX)
                .contains(&(max as usize))
            && [min, avg, max].iter().all(|n| n % 2 == 0);
        if ok {
            Ok(self)
        } else {
            Err(ChunkingError::BadParams { min, avg, max })
        }
    }
}

/// The identity of a chunk: blake3 of its uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    /// Hashes a chunk's bytes.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    /// Lower-case hex, 64 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// Why a string is not a chunk id.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0:?} is not a chunk id (64 lower-case hex characters)")]
pub struct BadChunkId(String);

impl FromStr for ChunkId {
    type Err = BadChunkId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadChunkId(s.to_owned());
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let bytes = hex::decode(s).map_err(|_| bad())?;
        Ok(Self(bytes.try_into().map_err(|_| bad())?))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One chunk of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// blake3 of `data`.
    pub id: ChunkId,
    /// Where the chunk starts in the stream.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// Splits a byte stream into chunks.
pub trait Chunker {
    /// The chunks of `reader`, in order; they concatenate back to its bytes.
    fn chunks<R>(&self, reader: R) -> impl Stream<Item = Result<Chunk, ChunkingError>> + Send
    where
        R: AsyncRead + Unpin + Send;
}

/// The FastCDC 2020 chunker, normalisation level 1, gear seed 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastCdcChunker {
    params: ChunkingParams,
}

impl FastCdcChunker {
    /// A chunker with checked sizes.
    pub fn new(params: ChunkingParams) -> Result<Self, ChunkingError> {
        Ok(Self {
            params: params.validate()?,
        })
    }

    /// The sizes it cuts at.
    pub fn params(&self) -> ChunkingParams {
        self.params
    }

    /// Where the first chunk of `window` ends. `window` holds `max_size`
    /// bytes, or everything left of the stream, so the cut is final.
    fn first_cut(&self, window: &[u8]) -> usize {
        let ChunkingParams {
            min_size,
            avg_size,
            max_size,
        } = self.params;
        FastCDC::new(
            window,
            min_size as usize,
            avg_size as usize,
            max_size as usize,
        )
        .next()
        .map_or(window.len(), |chunk| chunk.length)
    }
}

struct ChunkState<R> {
    reader: R,
    buffer: BytesMut,
    offset: u64,
    eof: bool,
}

impl Chunker for FastCdcChunker {
    fn chunks<R>(&self, reader: R) -> impl Stream<Item = Result<Chunk, ChunkingError>> + Send
    where
        R: AsyncRead + Unpin + Send,
    {
        let chunker = *self;
        let max = self.params.max_size as usize;
        let state = ChunkState {
            reader,
            buffer: BytesMut::with_capacity(2 * max),
            offset: 0,
            eof: false,
        };
        futures::stream::try_unfold(state, move |mut state| async move {
            while !state.eof && state.buffer.len() < max {
                if state.buffer.capacity() - state.buffer.len() < max {
                    // Room for a whole new window; split-off chunks keep the old allocation.
                    state.buffer.reserve(2 * max);
                }
                let n = state
                    .reader
                    .read_buf(&mut state.buffer)
                    .await
                    .map_err(ChunkingError::Read)?;
                state.eof = n == 0;
            }
            if state.buffer.is_empty() {
                return Ok(None);
            }
            let window = &state.buffer[..state.buffer.len().min(max)];
            let length = chunker.first_cut(window);
            let data = state.buffer.split_to(length).freeze();
            let chunk = Chunk {
                id: ChunkId::of(&data),
                offset: state.offset,
                data,
            };
            state.offset += length as u64;
            Ok(Some((chunk, state)))
        })
    }
}

/// Cuts a stream into pieces of one fixed size (the last one shorter):
/// how a NAR is stored when chunking is off (`nar-size-threshold = 0`).
/// Identical NARs give identical pieces, so they are still stored once,
/// while each piece stays as small in memory as a chunk.
#[derive(Debug, Clone, Copy)]
pub struct FixedSizeChunker {
    size: usize,
}

impl FixedSizeChunker {
    /// Pieces of `size` bytes (at least one).
    pub fn new(size: u32) -> Self {
        Self {
            size: (size as usize).max(1),
        }
    }
}

impl Chunker for FixedSizeChunker {
    fn chunks<R>(&self, reader: R) -> impl Stream<Item = Result<Chunk, ChunkingError>> + Send
    where
        R: AsyncRead + Unpin + Send,
    {
        let size = self.size;
        futures::stream::try_unfold((reader, 0u64), move |(mut reader, offset)| async move {
            let mut data = BytesMut::with_capacity(size);
            while data.len() < size {
                let n = (&mut reader)
                    .take((size - data.len()) as u64)
                    .read_buf(&mut data)
                    .await
                    .map_err(ChunkingError::Read)?;
                if n == 0 {
                    break;
                }
            }
            if data.is_empty() {
                return Ok(None);
            }
            let data = data.freeze();
            let next = offset + data.len() as u64;
            let chunk = Chunk {
                id: ChunkId::of(&data),
                offset,
                data,
            };
            Ok(Some((chunk, (reader, next))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes, so tests and benches need no RNG crate.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect()
    }

    fn chunk_all(chunker: &FastCdcChunker, data: &[u8]) -> Vec<Chunk> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(chunker.chunks(data).try_collect())
            .expect("in-memory chunking cannot fail")
    }

    #[test]
    fn chunks_concatenate_to_the_input_within_bounds() {
        let data = noise(3 * 1024 * 1024 + 123, 1);
        let chunker = FastCdcChunker::default();
        let chunks = chunk_all(&chunker, &data);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
        let (last, rest) = chunks.split_last().expect("some chunks");
        for chunk in rest {
            assert!((16 * 1024..=256 * 1024).contains(&chunk.data.len()));
        }
        assert!(last.data.len() <= 256 * 1024);
        let average = data.len() / chunks.len();
        assert!(
            (32 * 1024..=128 * 1024).contains(&average),
            "average {average}"
        );
    }

    #[test]
    fn boundaries_are_stable_and_match_fastcdc_on_the_whole_buffer() {
        let data = noise(2 * 1024 * 1024, 7);
        let chunker = FastCdcChunker::default();
        let ours: Vec<usize> = chunk_all(&chunker, &data)
            .iter()
            .map(|c| c.data.len())
            .collect();
        let reference: Vec<usize> = FastCDC::new(&data, 16 * 1024, 64 * 1024, 256 * 1024)
            .map(|c| c.length)
            .collect();
        assert_eq!(ours, reference);
    }

    #[test]
    fn an_edit_changes_only_nearby_chunks() {
        let original = noise(4 * 1024 * 1024, 3);
        let mut edited = original.clone();
        edited[2 * 1024 * 1024] ^= 0xff;
        let chunker = FastCdcChunker::default();
        let before: std::collections::HashSet<ChunkId> = chunk_all(&chunker, &original)
            .iter()
            .map(|c| c.id)
            .collect();
        let after = chunk_all(&chunker, &edited);
        let new = after.iter().filter(|c| !before.contains(&c.id)).count();
        assert!(new <= 2, "{new} of {} chunks changed", after.len());
    }

    #[test]
    fn small_and_empty_inputs() {
        let chunker = FastCdcChunker::default();
        assert!(chunk_all(&chunker, &[]).is_empty());
        let small = noise(1000, 2);
        let chunks = chunk_all(&chunker, &small);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].id, ChunkId::of(&small));
    }

    #[test]
    fn fixed_size_pieces_are_full_but_the_last_and_cut_the_same_every_time() {
        let data = noise(10_000, 5);
        let chunker = FixedSizeChunker::new(4096);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let cut = || {
            runtime
                .block_on(chunker.chunks(&data[..]).try_collect::<Vec<_>>())
                .expect("in-memory chunking cannot fail")
        };
        let chunks = cut();
        let sizes: Vec<usize> = chunks.iter().map(|c| c.data.len()).collect();
        assert_eq!(sizes, [4096, 4096, 1808]);
        assert_eq!(chunks[2].offset, 8192);
        assert_eq!(
            chunks
                .iter()
                .flat_map(|c| c.data.to_vec())
                .collect::<Vec<_>>(),
            data
        );
        assert_eq!(cut(), chunks);
    }

    #[test]
    fn rejects_unusable_sizes() {
        for (min, avg, max) in [
            (0, 64, 256),
            (32768, 16384, 65536),
            (16384, 65536, 100),
            (16385, 65536, 262144),
        ] {
            let params = ChunkingParams {
                min_size: min,
                avg_size: avg,
                max_size: max,
            };
            assert!(FastCdcChunker::new(params).is_err(), "{params:?}");
        }
    }

    #[test]
    fn chunk_id_round_trips_as_hex() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_string(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(id.to_string().parse::<ChunkId>(), Ok(id));
        assert!(id.to_string().to_uppercase().parse::<ChunkId>().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn any_input_reassembles_within_bounds(
            len in 0usize..600_000,
            seed in any::<u64>(),
            min_kib in 1u32..8,
        ) {
            let params = ChunkingParams {
                min_size: min_kib * 1024,
                avg_size: min_kib * 4096,
                max_size: min_kib * 16384,
            };
            let chunker = FastCdcChunker::new(params).expect("valid sizes");
            let data = noise(len, seed);
            let chunks = chunk_all(&chunker, &data);
            let mut offset = 0u64;
            for (i, chunk) in chunks.iter().enumerate() {
                prop_assert_eq!(chunk.offset, offset);
                prop_assert_eq!(chunk.id, ChunkId::of(&chunk.data));
                prop_assert!(chunk.data.len() <= params.max_size as usize);
                if i + 1 < chunks.len() {
                    prop_assert!(chunk.data.len() >= params.min_size as usize);
                }
                offset += chunk.data.len() as u64;
            }
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
            prop_assert_eq!(joined, data);
        }
    }
}
