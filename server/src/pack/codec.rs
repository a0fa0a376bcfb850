//! The encodings of a stored chunk: each chunk is compressed on its own
//! (zstd, xz or brotli, as `[compression] type` said when it was stored),
//! so any one can be decoded without its neighbours.

use std::cell::RefCell;
use std::io::{self, Read};

use super::StoredCompression;

impl StoredCompression {
    /// Encodes a chunk's content at `level` (ignored by `None`).
    /// CPU-bound: call it off the async executor.
    pub fn encode(self, content: &[u8], level: i32) -> io::Result<Vec<u8>> {
        match self {
            Self::Zstd => zstd_compress(content, level),
            Self::None => Ok(content.to_vec()),
            Self::Xz => {
                let preset = u32::try_from(level).map_err(io::Error::other)?;
                let mut encoded = Vec::new();
                liblzma::read::XzEncoder::new(content, preset).read_to_end(&mut encoded)?;
                Ok(encoded)
            }
            Self::Brotli => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: level,
                    ..Default::default()
                };
                let mut encoded = Vec::new();
                brotli::BrotliCompress(&mut &content[..], &mut encoded, &params)?;
                Ok(encoded)
            }
        }
    }

    /// Decodes a chunk's stored bytes, which must come to exactly `size`
    /// bytes: anything else (more, less, or not the encoding) is an error,
    /// and no more than `size + 1` bytes are ever produced. CPU-bound.
    pub fn decode(self, stored: &[u8], size: usize) -> io::Result<Vec<u8>> {
        let content = match self {
            Self::Zstd => zstd_decompress(stored, size)?,
            Self::None => stored.to_vec(),
            Self::Xz => read_at_most(liblzma::read::XzDecoder::new(stored), size)?,
            Self::Brotli => read_at_most(brotli::Decompressor::new(stored, 4096), size)?,
        };
        if content.len() != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the chunk decodes to {} bytes, not {size}", content.len()),
            ));
        }
        Ok(content)
    }
}

thread_local! {
    /// This thread's zstd contexts, and the level the compressor is set
    /// to: a context is hundreds of KiB to set up, far more than a chunk
    /// costs to compress at the fast levels, and chunks are compressed
    /// one by one on a few blocking threads.
    static ZSTD_COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// What `zstd::bulk::compress` makes, with this thread's context.
fn zstd_compress(content: &[u8], level: i32) -> io::Result<Vec<u8>> {
    ZSTD_COMPRESSOR.with_borrow_mut(|held| {
        if held.as_ref().is_none_or(|(set, _)| *set != level) {
            *held = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = held.as_mut().expect("set above");
        let mut frame = compressor.compress(content)?;
        // The buffer is the worst case, larger than the input; what is kept
        // until the pack is written should be the frame.
        frame.shrink_to_fit();
        Ok(frame)
    })
}

/// What `zstd::bulk::decompress` makes, with this thread's context.
fn zstd_decompress(stored: &[u8], size: usize) -> io::Result<Vec<u8>> {
    ZSTD_DECOMPRESSOR.with_borrow_mut(|held| {
        if held.is_none() {
            *held = Some(zstd::bulk::Decompressor::new()?);
        }
        held.as_mut().expect("set above").decompress(stored, size)
    })
}

/// Up to `size + 1` bytes of `reader`: one more than expected is enough
/// to tell a chunk that decodes too long, without decoding all of it.
fn read_at_most(reader: impl Read, size: usize) -> io::Result<Vec<u8>> {
    let mut content = Vec::with_capacity(size);
    reader.take(size as u64 + 1).read_to_end(&mut content)?;
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::StoredCompression;

    const ALL: [StoredCompression; 4] = [
        StoredCompression::Zstd,
        StoredCompression::Xz,
        StoredCompression::Brotli,
        StoredCompression::None,
    ];

    fn content() -> Vec<u8> {
        (0..100_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect()
    }

    #[test]
    fn every_encoding_round_trips_a_chunk() {
        let content = content();
        for compression in ALL {
            let level = match compression {
                StoredCompression::Xz => 2,
                StoredCompression::Brotli => 5,
                _ => 3,
            };
            let stored = compression.encode(&content, level).expect("encode");
            if compression != StoredCompression::None {
                assert!(stored.len() < content.len(), "{compression:?} compresses");
            }
            let decoded = compression.decode(&stored, content.len()).expect("decode");
            assert_eq!(decoded, content, "{compression:?}");
        }
    }

    #[test]
    fn a_chunk_that_decodes_to_another_size_is_refused() {
        let content = content();
        for compression in ALL {
            let stored = compression.encode(&content, 1).expect("encode");
            for size in [content.len() - 1, content.len() + 1] {
                assert!(
                    compression.decode(&stored, size).is_err(),
                    "{compression:?} at {size}"
                );
            }
        }
        assert!(StoredCompression::Xz.decode(b"not xz", 6).is_err());
        assert!(
            StoredCompression::Brotli
                .decode(b"\xff\xff\xff", 3)
                .is_err()
        );
    }

    #[test]
    fn a_reused_zstd_context_makes_the_frames_a_fresh_one_makes() {
        let content = content();
        let zstd = StoredCompression::Zstd;
        for level in [3, 19, 1, 3] {
            let frame = zstd.encode(&content, level).expect("encode");
            let fresh = zstd::bulk::compress(&content, level).expect("compress");
            assert!(frame == fresh, "level {level}");
        }
        // A failed decode leaves the context fit for the next.
        let frame = zstd.encode(&content, 3).expect("encode");
        assert!(
            zstd.decode(&frame[..frame.len() / 2], content.len())
                .is_err()
        );
        assert!(zstd.decode(&frame, content.len()).expect("decode") == content);
    }
}
