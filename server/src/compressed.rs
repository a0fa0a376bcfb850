//! Compressed upload bodies: `nix copy` sends NARs compressed as their
//! file name says, and `attic push` may send `Content-Encoding: zstd`.
//!
//! [`DecodedBody`] decompresses as it reads, while hashing the compressed
//! bytes, so one pass serves the NAR checks downstream and the file hash
//! Nix names the upload by. At the end of the compressed stream it reads
//! the body to its end and compares the file hash; a mismatch, a corrupt
//! stream or too many compressed bytes end the read with a
//! [`RefusedBody`] error that the ingest path turns into a 4xx.
//!
//! Decoding costs are bounded whatever the client sends: the xz decoder
//! may use at most [`XZ_MEMORY_LIMIT`] (a stream whose dictionary needs
//! more is refused at its header), and a body whose size nobody declared
//! may expand at most [`MAX_EXPANSION_RATIO`] times past its first
//! [`EXPANSION_ALLOWANCE`] bytes, so a few kilobytes of bzip2 or zstd
//! cannot make the server decode gigabytes. The decoded size itself is
//! bounded by the reader downstream (the declared `NarSize`, or
//! `max-nar-size`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::{
    BrotliDecoder, BzDecoder, GzipDecoder, XzDecoder, ZstdDecoder,
};
use attic::hash::{Sha256Hash, Sha256Hasher};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::error::ServerError;

/// Memory the xz decoder may use: enough for `xz -9` (a 64 MiB
/// dictionary, 65 MiB in all to decode) and so for every preset Nix and
/// xz offer; a stream asking for more is refused before anything is
/// allocated for it.
pub const XZ_MEMORY_LIMIT: u64 = 65 * 1024 * 1024;

/// Decoded bytes allowed before the expansion ratio is checked: small
/// NARs (a symlink, a short script) compress far better than big ones.
pub const EXPANSION_ALLOWANCE: u64 = 1024 * 1024;

/// Most decoded bytes per compressed byte, past [`EXPANSION_ALLOWANCE`],
/// for a body whose decoded size was not declared. Real NARs stay well
/// below (store paths of binaries and text compress 3–20 times); a file of
/// zeros compresses thousands of times, and bombs millions.
pub const MAX_EXPANSION_RATIO: u64 = 1000;

/// Compressed bytes read from the body at once: a decoder's call decodes
/// what one read brought.
const SOURCE_BUFFER: usize = 64 * 1024;

/// Whether the uploader declared the decoded size before the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodedSize {
    /// Declared (`upload-path`'s `nar_size`), and enforced downstream:
    /// the body may expand as much as it likes up to it.
    Declared,
    /// Not declared (`nix copy` sends the narinfo after the NAR): the
    /// body may expand at most [`MAX_EXPANSION_RATIO`] times.
    Undeclared,
}

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
    /// brotli (`Content-Encoding: br`, Nix's `ls-compression=br`).
    Brotli,
    /// gzip (`Content-Encoding: gzip`).
    Gzip,
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

    /// From a `Content-Encoding` value, as Nix names its compressions
    /// when it sends small files compressed (`narinfo-compression`,
    /// `ls-compression`, `log-compression`): `zstd`, `xz`, `br`, `gzip`,
    /// `bzip2`, or `identity` for none.
    pub fn from_content_encoding(encoding: &str) -> Option<Self> {
        match encoding.trim() {
            "identity" => Some(Self::None),
            "zstd" => Some(Self::Zstd),
            "xz" => Some(Self::Xz),
            "br" => Some(Self::Brotli),
            "bzip2" => Some(Self::Bzip2),
            "gzip" | "x-gzip" => Some(Self::Gzip),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
            Self::Brotli => "brotli",
            Self::Gzip => "gzip",
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
        let limit = this.limit;
        let read = this
            .hasher
            .poll_read_checked(Pin::new(&mut this.inner), cx, buf, |total, _| {
                if total > limit {
                    return Err(RefusedBody::into_io(ServerError::TooLarge(format!(
                        "the compressed body is larger than this server accepts ({limit} bytes)"
                    ))));
                }
                Ok(())
            });
        if let Poll::Ready(Err(_)) = read {
            this.failed = true;
        }
        read
    }
}

enum Decoder<R> {
    None(BufReader<Hashing<R>>),
    Zstd(ZstdDecoder<BufReader<Hashing<R>>>),
    Xz(XzDecoder<BufReader<Hashing<R>>>),
    Bzip2(BzDecoder<BufReader<Hashing<R>>>),
    Brotli(BrotliDecoder<BufReader<Hashing<R>>>),
    Gzip(GzipDecoder<BufReader<Hashing<R>>>),
}

impl<R: AsyncRead + Unpin> Decoder<R> {
    fn source(&mut self) -> &mut BufReader<Hashing<R>> {
        match self {
            Self::None(source) => source,
            Self::Zstd(decoder) => decoder.get_mut(),
            Self::Xz(decoder) => decoder.get_mut(),
            Self::Bzip2(decoder) => decoder.get_mut(),
            Self::Brotli(decoder) => decoder.get_mut(),
            Self::Gzip(decoder) => decoder.get_mut(),
        }
    }

    fn poll_decode(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::None(source) => Pin::new(source).poll_read(cx, buf),
            Self::Zstd(decoder) => Pin::new(decoder).poll_read(cx, buf),
            Self::Xz(decoder) => Pin::new(decoder).poll_read(cx, buf),
            Self::Bzip2(decoder) => Pin::new(decoder).poll_read(cx, buf),
            Self::Brotli(decoder) => Pin::new(decoder).poll_read(cx, buf),
            Self::Gzip(decoder) => Pin::new(decoder).poll_read(cx, buf),
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
    size: DecodedSize,
    /// Decoded bytes handed out so far.
    decoded: u64,
}

impl<R: AsyncRead + Unpin> DecodedBody<R> {
    /// Decodes `body` as `compression`, refusing more than `limit`
    /// compressed bytes, and, if `file_hash` is given, a body whose
    /// SHA-256 differs; if `size` is [`DecodedSize::Undeclared`], also a
    /// body that expands more than real NARs do.
    pub fn new(
        body: R,
        compression: Compression,
        limit: u64,
        file_hash: Option<Sha256Hash>,
        size: DecodedSize,
    ) -> Self {
        let source = BufReader::with_capacity(
            SOURCE_BUFFER,
            Hashing {
                inner: body,
                hasher: Sha256Hasher::new(),
                limit,
                failed: false,
            },
        );
        let decoder = match compression {
            Compression::None => Decoder::None(source),
            Compression::Zstd => {
                let mut decoder = ZstdDecoder::new(source);
                decoder.multiple_members(true);
                Decoder::Zstd(decoder)
            }
            Compression::Xz => {
                let mut decoder = XzDecoder::with_mem_limit(source, XZ_MEMORY_LIMIT);
                decoder.multiple_members(true);
                Decoder::Xz(decoder)
            }
            Compression::Bzip2 => {
                let mut decoder = BzDecoder::new(source);
                decoder.multiple_members(true);
                Decoder::Bzip2(decoder)
            }
            // One stream: brotli has no frames to concatenate.
            Compression::Brotli => Decoder::Brotli(BrotliDecoder::new(source)),
            Compression::Gzip => {
                let mut decoder = GzipDecoder::new(source);
                decoder.multiple_members(true);
                Decoder::Gzip(decoder)
            }
        };
        Self {
            decoder,
            compression,
            file_hash,
            draining: false,
            finished: false,
            size,
            decoded: 0,
        }
    }

    /// Refuses a body that, undeclared, has now expanded past what real
    /// NARs do; counts the `new` decoded bytes.
    fn check_expansion(&mut self, new: usize) -> Result<(), ServerError> {
        self.decoded += new as u64;
        if self.size == DecodedSize::Declared || self.compression == Compression::None {
            return Ok(());
        }
        // Counted as read from the body, a little ahead of the decoder.
        let compressed = self.decoder.source().get_ref().hasher.len().max(1);
        let past_allowance = self.decoded.saturating_sub(EXPANSION_ALLOWANCE);
        if past_allowance > compressed.saturating_mul(MAX_EXPANSION_RATIO) {
            return Err(ServerError::bad_request(
                "ExpansionTooLarge",
                format!(
                    "{compressed} bytes of {} decode to more than {} bytes, over {MAX_EXPANSION_RATIO} \
                     times their size: no real NAR compresses that well (push it \
                     uncompressed, with ?compression=none in the cache URL, if it does)",
                    self.compression.name(),
                    self.decoded,
                ),
            ));
        }
        Ok(())
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
                    let new = buf.filled().len() - before;
                    if let Err(refusal) = this.check_expansion(new) {
                        // A failed read must not hand out bytes.
                        buf.set_filled(before);
                        return Poll::Ready(Err(RefusedBody::into_io(refusal)));
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(()) => this.draining = true,
                Err(e) if this.decoder.source().get_ref().failed => return Poll::Ready(Err(e)),
                Err(e) if is_xz_memory_limit(&e) => {
                    return Poll::Ready(Err(RefusedBody::into_io(ServerError::bad_request(
                        "XzDictionaryTooLarge",
                        format!(
                            "the xz stream needs more than {} MiB of memory to decode (its \
                             dictionary is too large); compress with a preset up to xz -9",
                            XZ_MEMORY_LIMIT >> 20
                        ),
                    ))));
                }
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

/// Whether a decoder error is liblzma's refusal to exceed
/// [`XZ_MEMORY_LIMIT`]. liblzma's error type is reached only through
/// async-compression, so it is known by its message (a unit test keeps
/// that honest).
fn is_xz_memory_limit(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.to_string() == "memory limit reached")
}

#[cfg(test)]
mod tests;
