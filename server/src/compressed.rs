//! Compressed upload bodies: `nix copy` sends NARs compressed as their
//! file name says, and `attic push` may send `Content-Encoding: zstd`.
//!
//! [`DecodedBody`] decompresses as it reads, while hashing the compressed
//! bytes, so one pass serves the NAR checks downstream and the file hash
//! Nix names the upload by. At the end of the compressed stream it reads
//! the body to its end and compares the file hash; a mismatch, a corrupt
//! stream or too many compressed bytes end the read with a
//! [`RefusedBody`] error that the ingest path turns into a 4xx.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::{BzDecoder, XzDecoder, ZstdDecoder};
use attic::hash::{Sha256Hash, Sha256Hasher};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::error::ServerError;

/// How a body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain.
    None,
    /// zstd, one or more frames.
    Zstd,
    /// xz (Nix's default for `nix copy`).
    Xz,
    /// bzip2.
    Bzip2,
}

impl Compression {
    /// From a NAR file name's extension after `.nar`: `""`, `.zst`, `.xz`
    /// or `.bz2`.
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension {
            "" => Some(Self::None),
            ".zst" => Some(Self::Zstd),
            ".xz" => Some(Self::Xz),
            ".bz2" => Some(Self::Bzip2),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
        }
    }
}

/// A refusal of the body itself, carried through `io::Error` to the
/// ingest path, which answers with the error inside.
#[derive(Debug)]
pub struct RefusedBody(pub ServerError);

impl std::fmt::Display for RefusedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "body refused: {}", self.0)
    }
}

impl std::error::Error for RefusedBody {}

impl RefusedBody {
    /// The refusal inside `error`, if it carries one.
    pub fn take(error: io::Error) -> Result<ServerError, io::Error> {
        if !error.get_ref().is_some_and(|e| e.is::<RefusedBody>()) {
            return Err(error);
        }
        let inner = error.into_inner().expect("checked above");
        Ok(inner.downcast::<RefusedBody>().expect("checked above").0)
    }

    fn into_io(error: ServerError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, RefusedBody(error))
    }
}

/// Hashes and counts what passes, refusing more than `limit` bytes, and
/// remembers whether the body itself failed (as opposed to the decoder).
struct Hashing<R> {
    inner: R,
    hasher: Sha256Hasher,
    limit: u64,
    failed: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        if let Err(e) = ready!(Pin::new(&mut this.inner).poll_read(cx, buf)) {
            this.failed = true;
            return Poll::Ready(Err(e));
        }
        let new = &buf.filled()[before..];
        if this.hasher.len() + new.len() as u64 > this.limit {
            this.failed = true;
            buf.set_filled(before);
            return Poll::Ready(Err(RefusedBody::into_io(ServerError::TooLarge(format!(
                "the compressed body is larger than this server accepts ({} bytes)",
                this.limit
            )))));
        }
        this.hasher.update(new);
        Poll::Ready(Ok(()))
    }
}

enum Decoder<R> {
    None(BufReader<Hashing<R>>),
    Zstd(ZstdDecoder<BufReader<Hashing<R>>>),
    Xz(XzDecoder<BufReader<Hashing<R>>>),
    Bzip2(BzDecoder<BufReader<Hashing<R>>>),
}

impl<R: AsyncRead + Unpin> Decoder<R> {
    fn source(&mut self) -> &mut BufReader<Hashing<R>> {
        match self {
            Self::None(source) => source,
            Self::Zstd(decoder) => decoder.get_mut(),
            Self::Xz(decoder) => decoder.get_mut(),
            Self::Bzip2(decoder) => decoder.get_mut(),
        }
    }

    fn poll_decode(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::None(source) => Pin::new(source).poll_read(cx, buf),
            Self::Zstd(decoder) => Pin::new(decoder).poll_read(cx, buf),
            Self::Xz(decoder) => Pin::new(decoder).poll_read(cx, buf),
            Self::Bzip2(decoder) => Pin::new(decoder).poll_read(cx, buf),
        }
    }
}

/// The decompressed body; see the module documentation.
pub struct DecodedBody<R> {
    decoder: Decoder<R>,
    compression: Compression,
    file_hash: Option<Sha256Hash>,
    /// The decoder has ended; what is left of the body must be nothing.
    draining: bool,
    /// The body ended and checked out: every read now is the end.
    finished: bool,
}

impl<R: AsyncRead + Unpin> DecodedBody<R> {
    /// Decodes `body` as `compression`, refusing more than `limit`
    /// compressed bytes, and, if `file_hash` is given, a body whose
    /// SHA-256 differs.
    pub fn new(
        body: R,
        compression: Compression,
        limit: u64,
        file_hash: Option<Sha256Hash>,
    ) -> Self {
        let source = BufReader::new(Hashing {
            inner: body,
            hasher: Sha256Hasher::new(),
            limit,
            failed: false,
        });
        let decoder = match compression {
            Compression::None => Decoder::None(source),
            Compression::Zstd => {
                let mut decoder = ZstdDecoder::new(source);
                decoder.multiple_members(true);
                Decoder::Zstd(decoder)
            }
            Compression::Xz => {
                let mut decoder = XzDecoder::new(source);
                decoder.multiple_members(true);
                Decoder::Xz(decoder)
            }
            Compression::Bzip2 => {
                let mut decoder = BzDecoder::new(source);
                decoder.multiple_members(true);
                Decoder::Bzip2(decoder)
            }
        };
        Self {
            decoder,
            compression,
            file_hash,
            draining: false,
            finished: false,
        }
    }

    /// After the decoder's end: the body must end too, and hash as named.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let source = self.decoder.source();
        let mut scratch = [0u8; 1];
        let mut buf = ReadBuf::new(&mut scratch);
        ready!(Pin::new(&mut *source).poll_read(cx, &mut buf))?;
        if !buf.filled().is_empty() {
            return Poll::Ready(Err(RefusedBody::into_io(ServerError::bad_request(
                "InvalidCompression",
                format!(
                    "the body goes on after its {} stream ends",
                    self.compression.name()
                ),
            ))));
        }
        let Some(expected) = self.file_hash else {
            return Poll::Ready(Ok(()));
        };
        let hashing = source.get_mut();
        let (actual, _) = std::mem::take(&mut hashing.hasher).finish();
        if actual != expected {
            return Poll::Ready(Err(RefusedBody::into_io(ServerError::NarMismatch(
                format!(
                    "the body hashes to {}, but its file name says {}",
                    actual.to_nix32(),
                    expected.to_nix32()
                ),
            ))));
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DecodedBody<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(Ok(()));
        }
        if !this.draining {
            let before = buf.filled().len();
            match ready!(this.decoder.poll_decode(cx, buf)) {
                Ok(()) if buf.filled().len() > before || buf.remaining() == 0 => {
                    return Poll::Ready(Ok(()));
                }
                Ok(()) => this.draining = true,
                Err(e) if this.decoder.source().get_ref().failed => return Poll::Ready(Err(e)),
                Err(e) => {
                    return Poll::Ready(Err(RefusedBody::into_io(ServerError::bad_request(
                        "InvalidCompression",
                        format!("the body is not valid {}: {e}", this.compression.name()),
                    ))));
                }
            }
        }
        ready!(this.poll_finish(cx))?;
        this.finished = true;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
