//! `GET /{cache}/nar/<file hash>.nar[.zst|.xz|.bz2]`: a NAR under the file
//! name `nix copy` uploaded it as.
//!
//! After a push, Nix keeps the narinfo it uploaded in its own cache of
//! narinfos (for `narinfo-cache-positive-ttl`, 30 days), and that narinfo
//! names the file Nix sent, not the one our narinfo names. So the machine
//! that pushed asks for that file when it substitutes, and expects it
//! compressed as its name says. The name is kept with the path it created
//! (and forgotten when the path is pushed again another way); the NAR is
//! served in that compression: the stored zstd frames as they are, the NAR
//! itself, or xz and bzip2 made on the fly at their fastest level, at most
//! [`RECOMPRESSING_AT_ONCE`] at a time (the others wait their turn).
//!
//! The bytes are not the ones Nix sent, and need not be: Nix checks the
//! NAR's hash after decompressing, not the file's.

use std::sync::Arc;

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliEncoder, BzEncoder, GzipEncoder, XzEncoder, ZstdEncoder,
};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;
use tokio_util::io::{ReaderStream, StreamReader};

use super::binary_cache::{checked_body, nar_chunks};
use super::nix_upload::parse_nar_file;
use crate::compressed::Compression;
use crate::database::Cache;
use crate::error::{ServerError, ServerResult};
use crate::nar_stream::{NarEncoding, NarReadError, stream_nar};
use crate::state::AppState;

/// How many NARs may be recompressed to xz or bzip2 at once, server-wide.
pub const RECOMPRESSING_AT_ONCE: usize = 2;

static RECOMPRESSING: Semaphore = Semaphore::const_new(RECOMPRESSING_AT_ONCE);

/// Whether `file` is named as Nix names the NARs it uploads (a 52-character
/// file hash), rather than as we name ours (a 32-character path hash).
pub fn is_nix_upload_name(file: &str) -> bool {
    file.split_once(".nar")
        .is_some_and(|(hash, _)| hash.len() == 52)
}

/// Serves the NAR `nix copy` uploaded to `cache` as `file`; 404 when no
/// path of the cache was created from it.
pub async fn serve(state: Arc<AppState>, cache: &Cache, file: &str) -> ServerResult<Response> {
    let (_, compression) = parse_nar_file(file).map_err(|_| ServerError::NoSuchObject)?;
    let (object, nar) = state
        .database
        .find_by_nix_upload_file(cache.id, file)
        .await?
        .ok_or(ServerError::NoSuchObject)?;
    state.access_log.record(object.id);
    let chunks = nar_chunks(&state, nar.id).await?;
    let stored_zstd = NarEncoding::stored(&nar) == NarEncoding::Zstd;
    let (stream, length) = match compression {
        Compression::Zstd if stored_zstd => {
            let length: u64 = chunks.iter().map(|c| c.stored_size).sum();
            (
                boxed(stream_nar(state.clone(), chunks, NarEncoding::Zstd)),
                Some(length),
            )
        }
        Compression::None => {
            let length: u64 = chunks.iter().map(|c| c.chunk_size).sum();
            (
                boxed(stream_nar(state.clone(), chunks, NarEncoding::Plain)),
                Some(length),
            )
        }
        Compression::Zstd
        | Compression::Xz
        | Compression::Bzip2
        | Compression::Brotli
        | Compression::Gzip => {
            let permit = RECOMPRESSING
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let plain = StreamReader::new(
                stream_nar(state.clone(), chunks, NarEncoding::Plain)
                    .map(|read| read.map_err(std::io::Error::from)),
            );
            let encoded: Box<dyn AsyncRead + Send + Unpin> = match compression {
                Compression::Xz => Box::new(XzEncoder::with_quality(plain, Level::Fastest)),
                Compression::Bzip2 => Box::new(BzEncoder::with_quality(plain, Level::Fastest)),
                Compression::Brotli => Box::new(BrotliEncoder::with_quality(plain, Level::Fastest)),
                Compression::Gzip => Box::new(GzipEncoder::with_quality(plain, Level::Fastest)),
                Compression::Zstd | Compression::None => Box::new(ZstdEncoder::new(plain)),
            };
            // The permit goes with the last byte.
            let stream = ReaderStream::new(encoded).map(move |read| {
                let _held = &permit;
                read.map_err(|e| nar_read_error(&e))
            });
            (boxed(stream), None)
        }
    };
    let served = state.metrics.served_bytes.clone();
    let stream = stream.inspect(move |piece| {
        if let Ok(bytes) = piece {
            served.inc_by(bytes.len() as u64);
        }
    });
    let body = checked_body(stream).await?;
    let mut response = (
        [
            (CONTENT_TYPE, "application/x-nix-nar"),
            (CACHE_CONTROL, "private, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response();
    if let Some(length) = length {
        response.headers_mut().insert(CONTENT_LENGTH, length.into());
    }
    Ok(response)
}

/// What a failed read of the NAR being recompressed was: the encoder
/// passes the NAR stream's own error through, so damage stays damage.
fn nar_read_error(e: &std::io::Error) -> NarReadError {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NarReadError>())
        .copied()
        .unwrap_or(NarReadError::Unavailable)
}

type NarStream = std::pin::Pin<Box<dyn Stream<Item = Result<bytes::Bytes, NarReadError>> + Send>>;

fn boxed(
    stream: impl Stream<Item = Result<bytes::Bytes, NarReadError>> + Send + 'static,
) -> NarStream {
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_upload_names_are_told_from_ours_by_the_hash_length() {
        let nix = format!("{}.nar.xz", "1".repeat(52));
        assert!(is_nix_upload_name(&nix));
        assert!(is_nix_upload_name(&format!("{}.nar", "1".repeat(52))));
        assert!(!is_nix_upload_name(&format!("{}.nar.zst", "1".repeat(32))));
        assert!(!is_nix_upload_name("nothing"));
    }

    #[tokio::test]
    async fn damage_under_a_recompressing_encoder_is_still_damage() {
        let damaged = futures::stream::iter([
            Ok(bytes::Bytes::from_static(b"some NAR bytes")),
            Err(std::io::Error::from(NarReadError::Damaged)),
        ]);
        let encoded = XzEncoder::with_quality(StreamReader::new(damaged), Level::Fastest);
        let errors: Vec<NarReadError> = ReaderStream::new(encoded)
            .filter_map(|read| async move { read.err() })
            .map(|e| nar_read_error(&e))
            .collect()
            .await;
        assert_eq!(errors, [NarReadError::Damaged]);
        assert_eq!(
            nar_read_error(&std::io::Error::other("elsewhere")),
            NarReadError::Unavailable
        );
    }
}
