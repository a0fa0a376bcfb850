//! The `Content-Encoding` of the small files Nix uploads beside NARs:
//! narinfos, `.ls` listings and build logs, which Nix's HTTP store sends
//! compressed when asked (`narinfo-compression`, `ls-compression`,
//! `log-compression`; Nix 2.8 sends them plain).
//!
//! Bodies are decoded through [`DecodedBody`], so they are bounded like NAR
//! uploads: the xz decoder's memory, the compressed bytes, how much they may
//! expand, and here also the decoded bytes, so a small bomb is refused
//! with 413 after at most `limit` decoded bytes, never decoded whole.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_ENCODING;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::compressed::{Compression, DecodedBody, DecodedSize, RefusedBody};
use crate::error::{ServerError, ServerResult};
use crate::serve::body_reader;

/// The body's `Content-Encoding`; 415 for one not taken.
pub fn content_encoding(headers: &HeaderMap) -> ServerResult<Compression> {
    let Some(value) = headers.get(CONTENT_ENCODING) else {
        return Ok(Compression::None);
    };
    value
        .to_str()
        .ok()
        .and_then(Compression::from_content_encoding)
        .ok_or_else(|| {
            ServerError::UnsupportedMediaType(format!(
                "Content-Encoding {value:?} is not taken; send zstd, xz, br, gzip, bzip2 or an \
                 uncompressed body"
            ))
        })
}

/// `body` decoded as its `Content-Encoding` says, as a reader, taking at
/// most `limit` compressed bytes and refusing a bomb.
pub fn decoded_reader(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: Duration,
) -> ServerResult<impl AsyncRead + Send + Unpin + 'static> {
    let compression = content_encoding(headers)?;
    Ok(DecodedBody::new(
        body_reader(body, timeout),
        compression,
        limit,
        None,
        DecodedSize::Undeclared,
    ))
}

/// A small body read whole and decoded; 413 past `limit` decoded bytes.
pub async fn read_decoded(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: Duration,
) -> ServerResult<Vec<u8>> {
    let reader = decoded_reader(headers, body, limit, timeout)?;
    let mut decoded = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut decoded)
        .await
        .map_err(explain)?;
    if decoded.len() as u64 > limit {
        return Err(ServerError::TooLarge(format!(
            "the body decodes to more than the {limit} bytes this route accepts"
        )));
    }
    Ok(decoded)
}

/// Why reading an upload failed: our own refusal, or the client's stream.
pub fn explain(error: io::Error) -> ServerError {
    match RefusedBody::take(error) {
        Ok(refusal) => refusal,
        Err(error) if error.kind() == io::ErrorKind::TimedOut => ServerError::UploadStalled(error),
        Err(error) => ServerError::UploadInterrupted(error),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn encoded(name: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_str(name).expect("test input"),
        );
        headers
    }

    async fn read(name: &str, body: Vec<u8>, limit: u64) -> ServerResult<Vec<u8>> {
        read_decoded(
            &encoded(name),
            Body::from(body),
            limit,
            Duration::from_secs(10),
        )
        .await
    }

    async fn encode(mut encoder: impl AsyncRead + Unpin) -> Vec<u8> {
        let mut encoded = Vec::new();
        encoder.read_to_end(&mut encoded).await.expect("test input");
        encoded
    }

    #[tokio::test]
    async fn decodes_each_encoding_nix_sends() {
        let text = b"StorePath: /nix/store/x\n".repeat(100);
        let zstd = zstd::encode_all(&text[..], 3).expect("test input");
        let mut brotli = Vec::new();
        brotli::BrotliCompress(
            &mut &text[..],
            &mut brotli,
            &brotli::enc::BrotliEncoderParams::default(),
        )
        .expect("test input");
        let gzip = encode(async_compression::tokio::bufread::GzipEncoder::new(
            &text[..],
        ))
        .await;
        let xz = encode(async_compression::tokio::bufread::XzEncoder::new(&text[..])).await;
        for (name, body) in [
            ("identity", text.clone()),
            ("zstd", zstd),
            ("br", brotli),
            ("gzip", gzip),
            ("xz", xz),
        ] {
            assert_eq!(
                read(name, body, 1 << 20).await.expect("test input"),
                text,
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_encoding_is_415() {
        let refused = read("compress", b"x".to_vec(), 100).await;
        assert!(
            matches!(refused, Err(ServerError::UnsupportedMediaType(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_bomb_is_refused_without_being_decoded_whole() {
        // 1 GiB of zeros in about 40 KiB of zstd.
        let mut encoder = zstd::Encoder::new(Vec::new(), 19).expect("test input");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            std::io::Write::write_all(&mut encoder, &zeros).expect("test input");
        }
        let bomb = encoder.finish().expect("test input");
        let refused = read("zstd", bomb, 2 << 20).await;
        assert!(
            matches!(refused, Err(ServerError::TooLarge(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_corrupt_body_is_a_client_error() {
        let refused = read("zstd", b"not zstd at all".to_vec(), 1 << 20).await;
        let status =
            axum::response::IntoResponse::into_response(refused.expect_err("refused")).status();
        assert!(status.is_client_error(), "{status}");
    }
}
