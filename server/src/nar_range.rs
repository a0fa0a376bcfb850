//! Byte ranges of a served NAR (`Range: bytes=a-b`, `a-`, `-n`), so an
//! interrupted download resumes where it stopped instead of starting over.
//!
//! The bytes a NAR is served as are deterministic: the stored zstd frames
//! concatenated (`.nar.zst`), or the NAR itself (`.nar`). Each chunk's
//! length on the wire is known from its row, so a range maps to the chunks
//! it touches: only those are read (each whole, since each is checked
//! before any of its bytes leaves), and the response is trimmed to the
//! range's first and last byte. Nothing before the first chunk is read.

use std::ops::Range;

use axum::http::header::{ACCEPT_RANGES, CONTENT_RANGE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};

use crate::error::{ServerError, ServerResult};
use crate::nar_stream::NarEncoding;
use crate::pack::StoredCompression;
use crate::pack::read::StoredChunk;

/// What a `Range` header asks of a response of `length` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one we answer with the whole body (several ranges, a
    /// unit other than bytes, a malformed header): a plain 200, as RFC
    /// 9110 allows.
    Whole,
    /// One satisfiable range: a 206 with these bytes.
    Part(Range<u64>),
    /// A range that starts past the end: 416.
    Unsatisfiable,
}

/// Reads a `Range` header against a body of `length` bytes.
pub fn parse_range(header: Option<&HeaderValue>, length: u64) -> RangeRequest {
    let Some(spec) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().strip_prefix("bytes="))
    else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if length > 0 => RangeRequest::Part(length.saturating_sub(n)..length),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        // `a-`: from a to the end.
        (false, true) => match number(first) {
            Some(start) if start < length => RangeRequest::Part(start..length),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        // `a-b`, both inclusive; the end may run past the body.
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(last)) if start <= last => {
                if start < length {
                    RangeRequest::Part(start..last.saturating_add(1).min(length))
                } else {
                    RangeRequest::Unsatisfiable
                }
            }
            _ => RangeRequest::Whole,
        },
        (true, true) => RangeRequest::Whole,
    }
}

/// The length each chunk takes on the wire in `encoding`, when every one
/// is known before it is read: always for `.nar`; for `.nar.zst` when
/// every chunk is stored as zstd (any other would be framed afresh, to a
/// length known only once done).
pub fn wire_lengths(chunks: &[StoredChunk], encoding: NarEncoding) -> Option<Vec<u64>> {
    chunks
        .iter()
        .map(|c| match (encoding, c.compression) {
            (NarEncoding::Plain, _) => Some(c.chunk_size),
            (NarEncoding::Zstd, StoredCompression::Zstd) => Some(c.stored_size),
            (
                NarEncoding::Zstd,
                StoredCompression::None | StoredCompression::Xz | StoredCompression::Brotli,
            ) => None,
        })
        .collect()
}

/// Which chunks a range touches and how to trim them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The chunks to read, by index.
    pub chunks: Range<usize>,
    /// Bytes of the first of them before the range starts.
    pub skip: u64,
    /// Bytes to send in all.
    pub length: u64,
}

/// Maps `range` (within the sum of `lengths`) to the chunks it touches.
pub fn select(lengths: &[u64], range: &Range<u64>) -> Selection {
    let mut first = None;
    let mut end = lengths.len();
    let mut skip = 0;
    let mut at = 0u64;
    for (index, length) in lengths.iter().enumerate() {
        let next = at + length;
        if first.is_none() && range.start < next {
            first = Some(index);
            skip = range.start - at;
        }
        if range.end <= next {
            end = index + 1;
            break;
        }
        at = next;
    }
    let first = first.unwrap_or(lengths.len());
    Selection {
        chunks: first..end.max(first),
        skip,
        length: range.end.saturating_sub(range.start),
    }
}

/// What a NAR response sends: which chunks, trimmed how, with which status.
#[derive(Debug)]
pub struct Served {
    /// The chunks to read, in order.
    pub chunks: Vec<StoredChunk>,
    /// Bytes of the first chunk not sent.
    pub skip: u64,
    /// Bytes sent (`Content-Length`).
    pub length: u64,
    /// 200, or 206 for a range.
    pub status: StatusCode,
    /// `Content-Range` of a 206.
    content_range: Option<String>,
    /// Whether ranges are answered for this body.
    accepts_ranges: bool,
}

impl Served {
    /// Adds `Accept-Ranges` and `Content-Range` as they apply.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if self.accepts_ranges {
            headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if let Some(range) = &self.content_range {
            headers.insert(
                CONTENT_RANGE,
                HeaderValue::from_str(range).expect("digits make a valid header"),
            );
        }
    }
}

/// What to send of a NAR's `chunks` in `encoding` for a `Range` header.
pub fn select_range(
    chunks: Vec<StoredChunk>,
    encoding: NarEncoding,
    header: Option<&HeaderValue>,
) -> ServerResult<Served> {
    let Some(lengths) = wire_lengths(&chunks, encoding) else {
        // Lengths known only once sent: never a range.
        let length = chunks.iter().map(|c| c.stored_size).sum();
        return Ok(Served {
            chunks,
            skip: 0,
            length,
            status: StatusCode::OK,
            content_range: None,
            accepts_ranges: false,
        });
    };
    let total: u64 = lengths.iter().sum();
    match parse_range(header, total) {
        RangeRequest::Whole => Ok(Served {
            chunks,
            skip: 0,
            length: total,
            status: StatusCode::OK,
            content_range: None,
            accepts_ranges: true,
        }),
        RangeRequest::Unsatisfiable => Err(ServerError::RangeNotSatisfiable { length: total }),
        RangeRequest::Part(range) => {
            let selection = select(&lengths, &range);
            let chunks = chunks
                .into_iter()
                .skip(selection.chunks.start)
                .take(selection.chunks.len())
                .collect();
            Ok(Served {
                chunks,
                skip: selection.skip,
                length: selection.length,
                status: StatusCode::PARTIAL_CONTENT,
                content_range: Some(format!("bytes {}-{}/{total}", range.start, range.end - 1)),
                accepts_ranges: true,
            })
        }
    }
}

/// Drops the first `skip` bytes of `stream` and ends it after `length`
/// more. An error passes through, wherever it falls.
pub fn trim<E>(
    stream: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    skip: u64,
    length: u64,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    E: Send + 'static,
{
    stream
        .scan((skip, length), |(skip, left), item| {
            let next = match item {
                _ if *left == 0 => None,
                Err(e) => Some(Err(e)),
                Ok(mut piece) => {
                    let dropped = (*skip).min(piece.len() as u64);
                    *skip -= dropped;
                    piece.advance(dropped as usize);
                    piece.truncate((*left).min(piece.len() as u64) as usize);
                    *left -= piece.len() as u64;
                    Some(Ok(piece))
                }
            };
            std::future::ready(next)
        })
        .filter(|item| std::future::ready(!matches!(item, Ok(piece) if piece.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(header: &str, length: u64) -> RangeRequest {
        parse_range(
            Some(&HeaderValue::from_str(header).expect("test input")),
            length,
        )
    }

    #[test]
    fn reads_the_three_forms_of_a_byte_range() {
        assert_eq!(range("bytes=0-9", 100), RangeRequest::Part(0..10));
        assert_eq!(range("bytes=10-", 100), RangeRequest::Part(10..100));
        assert_eq!(range("bytes=-10", 100), RangeRequest::Part(90..100));
        assert_eq!(range("bytes=99-99", 100), RangeRequest::Part(99..100));
    }

    #[test]
    fn clamps_a_range_that_runs_past_the_end() {
        assert_eq!(range("bytes=50-1000", 100), RangeRequest::Part(50..100));
        assert_eq!(range("bytes=-1000", 100), RangeRequest::Part(0..100));
        assert_eq!(
            range("bytes=0-18446744073709551615", 100),
            RangeRequest::Part(0..100)
        );
    }

    #[test]
    fn a_range_past_the_end_is_unsatisfiable() {
        assert_eq!(range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), RangeRequest::Unsatisfiable);
    }

    #[test]
    fn anything_else_is_answered_whole() {
        assert_eq!(parse_range(None, 100), RangeRequest::Whole);
        for header in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-2",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(range(header, 100), RangeRequest::Whole, "{header}");
        }
    }

    #[test]
    fn a_range_maps_to_the_chunks_it_touches() {
        let lengths = [10, 20, 30];
        // Inside the second chunk only.
        assert_eq!(
            select(&lengths, &(12..15)),
            Selection {
                chunks: 1..2,
                skip: 2,
                length: 3
            }
        );
        // From the last byte of the first to the first of the third.
        assert_eq!(
            select(&lengths, &(9..31)),
            Selection {
                chunks: 0..3,
                skip: 9,
                length: 22
            }
        );
        // Exactly the third.
        assert_eq!(
            select(&lengths, &(30..60)),
            Selection {
                chunks: 2..3,
                skip: 0,
                length: 30
            }
        );
        // The whole.
        assert_eq!(
            select(&lengths, &(0..60)),
            Selection {
                chunks: 0..3,
                skip: 0,
                length: 60
            }
        );
    }

    #[tokio::test]
    async fn trimming_gives_exactly_the_range() {
        let body: Vec<u8> = (0..60u8).collect();
        let lengths = [10u64, 20, 30];
        for start in 0..60u64 {
            for end in start + 1..=60 {
                let selection = select(&lengths, &(start..end));
                let mut at = 0;
                let pieces: Vec<Result<Bytes, ()>> = lengths
                    .iter()
                    .map(|&l| {
                        let piece = Bytes::copy_from_slice(&body[at..at + l as usize]);
                        at += l as usize;
                        Ok(piece)
                    })
                    .collect::<Vec<_>>()
                    .drain(selection.chunks.clone())
                    .collect();
                let trimmed: Vec<_> = trim(
                    futures::stream::iter(pieces),
                    selection.skip,
                    selection.length,
                )
                .collect()
                .await;
                let sent: Vec<u8> = trimmed
                    .into_iter()
                    .flat_map(|p| p.expect("test input").to_vec())
                    .collect();
                assert_eq!(sent, &body[start as usize..end as usize], "{start}..{end}");
            }
        }
    }

    #[tokio::test]
    async fn an_error_in_the_range_passes_through() {
        let pieces = vec![Ok(Bytes::from_static(b"abc")), Err("damaged")];
        let trimmed: Vec<_> = trim(futures::stream::iter(pieces), 1, 10).collect().await;
        assert_eq!(trimmed, vec![Ok(Bytes::from_static(b"bc")), Err("damaged")]);
    }
}
