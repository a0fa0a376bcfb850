//! SHA-256 hashes in every textual form Nix writes.
//!
//! Nix prints the same digest as `sha256:<nix-base32>` (narinfo, path-info),
//! `sha256-<base64>` (SRI, `nix path-info --json`) and `sha256:<hex>` (Attic's
//! wire format). [`Sha256Hash`] parses all of them and prints each on request.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncRead, ReadBuf};

use crate::nix_base32;

/// Length of a SHA-256 digest in bytes.
pub const SHA256_LEN: usize = 32;

/// Why a string is not a SHA-256 hash.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HashError {
    /// The hash names an algorithm other than sha256, or none.
    #[error("unsupported hash type in {0:?}: only sha256 is supported")]
    UnsupportedType(String),
    /// The digest part has a length that fits no known encoding.
    #[error("sha256 digest {0:?} is neither 64 hex, 52 nix-base32 nor 44 base64 characters")]
    BadLength(String),
    /// The digest part is not valid in the encoding its length implies.
    #[error("sha256 digest {0:?} is not validly encoded")]
    BadEncoding(String),
}

/// A SHA-256 digest, such as a NAR hash or a file hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash([u8; SHA256_LEN]);

impl Sha256Hash {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; SHA256_LEN]) -> Self {
        Self(bytes)
    }

    /// Hashes `data` in one go.
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; SHA256_LEN] {
        &self.0
    }

    /// `sha256:<nix-base32>`, the form of narinfo files and fingerprints.
    pub fn to_typed_nix32(&self) -> String {
        format!("sha256:{}", nix_base32::encode(&self.0))
    }

    /// `sha256-<base64>`, the SRI form `nix path-info --json` prints.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(self.0))
    }

    /// `sha256:<hex>`, the form of Attic's API.
    pub fn to_typed_hex(&self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }

    /// The digest alone in nix-base32 (52 characters), as in `nar/<hash>.nar` names.
    pub fn to_nix32(&self) -> String {
        nix_base32::encode(&self.0)
    }

    /// Parses a digest with no type prefix, telling the encoding from its length.
    fn parse_untyped(digest: &str) -> Result<Self, HashError> {
        let bad_encoding = || HashError::BadEncoding(digest.to_owned());
        let bytes = match digest.len() {
            64 => hex::decode(digest).map_err(|_| bad_encoding())?,
            52 => nix_base32::decode(digest, SHA256_LEN).map_err(|_| bad_encoding())?,
            44 => BASE64.decode(digest).map_err(|_| bad_encoding())?,
            _ => return Err(HashError::BadLength(digest.to_owned())),
        };
        let bytes: [u8; SHA256_LEN] = bytes.try_into().map_err(|_| bad_encoding())?;
        Ok(Self(bytes))
    }
}

impl FromStr for Sha256Hash {
    type Err = HashError;

    /// Accepts `sha256:<hex|nix32|base64>` and `sha256-<base64>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(digest) = s.strip_prefix("sha256:") {
            Self::parse_untyped(digest)
        } else if let Some(digest) = s.strip_prefix("sha256-") {
            if digest.len() != 44 {
                return Err(HashError::BadLength(digest.to_owned()));
            }
            Self::parse_untyped(digest)
        } else {
            Err(HashError::UnsupportedType(s.to_owned()))
        }
    }
}

impl fmt::Display for Sha256Hash {
    /// Prints Nix's canonical `sha256:<nix-base32>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_typed_nix32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hash({})", self.to_typed_nix32())
    }
}

impl Serialize for Sha256Hash {
    /// Serialises as `sha256:<hex>`, Attic's wire form.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_typed_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 over a stream, with a byte count.
#[derive(Clone, Default)]
pub struct Sha256Hasher {
    inner: Sha256,
    len: u64,
}

impl Sha256Hasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes were seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest and the number of bytes hashed.
    pub fn finish(self) -> (Sha256Hash, u64) {
        (Sha256Hash(self.inner.finalize().into()), self.len)
    }

    /// Reads from `inner` into `buf` and hashes what came, for a reader
    /// that hashes what passes through it. `check` first sees the bytes
    /// read so far, these included, and these bytes; if it refuses them,
    /// they are taken back out of `buf` (a failed read must not hand out
    /// bytes), not hashed, and its error is the read's. An error of
    /// `inner` is the read's as it is.
    pub fn poll_read_checked<R: AsyncRead + ?Sized>(
        &mut self,
        inner: Pin<&mut R>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        check: impl FnOnce(u64, &[u8]) -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(inner.poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if let Err(refusal) = check(self.len + new.len() as u64, new) {
            buf.set_filled(before);
            return Poll::Ready(Err(refusal));
        }
        self.update(new);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One real NAR hash, as Nix 2.8 printed it in three places.
    const SRI: &str = "sha256-G+ObpZ23fOSLSY1j8LYxyYjqCeEEbvLiKI9z2UFvMZ4=";
    const NIX32: &str = "sha256:17iidx0xjwwg53ig4vh4w44ym26966vg0qwd965y8z5pknjrpqqv";
    const HEX: &str = "sha256:1be39ba59db77ce48b498d63f0b631c988ea09e1046ef2e2288f73d9416f319e";

    #[test]
    fn parses_every_form_to_the_same_digest() {
        let a: Sha256Hash = SRI.parse().expect("SRI parses");
        let b: Sha256Hash = NIX32.parse().expect("nix32 parses");
        let c: Sha256Hash = HEX.parse().expect("hex parses");
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.to_sri(), SRI);
        assert_eq!(a.to_typed_nix32(), NIX32);
        assert_eq!(a.to_typed_hex(), HEX);
    }

    #[test]
    fn rejects_other_types_and_garbage() {
        assert!(matches!(
            "md5:abc".parse::<Sha256Hash>(),
            Err(HashError::UnsupportedType(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Sha256Hash>(),
            Err(HashError::BadLength(_))
        ));
        assert!(matches!(
            format!("sha256:{}", "g".repeat(64)).parse::<Sha256Hash>(),
            Err(HashError::BadEncoding(_))
        ));
    }

    #[test]
    fn serde_uses_typed_hex_and_accepts_any_form() {
        let h: Sha256Hash = NIX32.parse().expect("nix32 parses");
        assert_eq!(
            serde_json::to_string(&h).expect("serialises"),
            format!("\"{HEX}\"")
        );
        let back: Sha256Hash = serde_json::from_str(&format!("\"{SRI}\"")).expect("parses");
        assert_eq!(back, h);
    }

    #[test]
    fn hasher_counts_bytes() {
        let mut h = Sha256Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        let (digest, len) = h.finish();
        assert_eq!(len, 11);
        assert_eq!(digest, Sha256Hash::digest(b"hello world"));
    }

    #[tokio::test]
    async fn a_checked_read_hashes_what_passes_and_takes_back_what_is_refused() {
        let mut hasher = Sha256Hasher::new();
        let mut inner: &[u8] = b"abcdefgh";
        let mut first = [0u8; 4];
        let mut buf = ReadBuf::new(&mut first);
        std::future::poll_fn(|cx| {
            hasher.poll_read_checked(Pin::new(&mut inner), cx, &mut buf, |total, new| {
                assert_eq!((total, new), (4, &b"abcd"[..]));
                Ok(())
            })
        })
        .await
        .expect("passed");
        assert_eq!(buf.filled(), b"abcd");

        let mut second = [0u8; 4];
        let mut buf = ReadBuf::new(&mut second);
        let refused = std::future::poll_fn(|cx| {
            hasher.poll_read_checked(Pin::new(&mut inner), cx, &mut buf, |total, new| {
                assert_eq!((total, new), (8, &b"efgh"[..]));
                Err(io::Error::other("refused"))
            })
        })
        .await;
        assert_eq!(refused.expect_err("refused").to_string(), "refused");
        assert!(buf.filled().is_empty(), "a refused read handed out bytes");
        assert_eq!(hasher.finish(), (Sha256Hash::digest(b"abcd"), 4));
    }
}
