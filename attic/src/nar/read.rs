//! Reading a NAR from an `AsyncRead`: validation, hash and size in one pass.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{NarError, NarEvent, NarParser};
use crate::hash::{Sha256Hash, Sha256Hasher};

/// Size of each read from the stream; memory use does not grow past it.
const READ_BUFFER_SIZE: usize = 64 * 1024;

/// What reading a whole, valid NAR established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    /// SHA-256 of the NAR bytes: Nix's `NarHash`.
    pub nar_hash: Sha256Hash,
    /// Length of the NAR in bytes: Nix's `NarSize`.
    pub nar_size: u64,
}

/// Reads a NAR to its end, passing each event to `on_event`; fails on the
/// first malformed byte, on a truncated stream, or on data after the archive.
pub async fn read_nar<R: AsyncRead + Unpin>(
    mut reader: R,
    mut on_event: impl FnMut(NarEvent<'_>),
) -> Result<NarSummary, NarError> {
    let mut parser = NarParser::new();
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; READ_BUFFER_SIZE];
    loop {
        let n = reader.read(&mut buf).await.map_err(NarError::Read)?;
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], &mut on_event)?;
        hasher.update(&buf[..n]);
    }
    parser.finish()?;
    let (nar_hash, nar_size) = hasher.finish();
    Ok(NarSummary { nar_hash, nar_size })
}

/// Checks that a stream is exactly one well-formed NAR, returning its hash
/// and size.
pub async fn validate_nar<R: AsyncRead + Unpin>(reader: R) -> Result<NarSummary, NarError> {
    read_nar(reader, |_| ()).await
}
