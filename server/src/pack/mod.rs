//! Packs: each upload stores the chunks it brings new as one blob, their
//! encoded forms (zstd frames, by default) concatenated in NAR order, and
//! each chunk is addressed as (pack, offset, stored size) with a checksum
//! of its stored bytes.
//!
//! The encodings a chunk may have, and how each is encoded and decoded,
//! live in `codec`; [`write`] streams a pack into storage while an upload is chunked;
//! [`read`] turns a NAR's chunks into runs (consecutive chunks of one pack,
//! one ranged read each) and checks every chunk before handing it out.

mod codec;
pub mod read;
pub mod write;

use std::fmt;
use std::str::FromStr;

use crate::storage::{BadStorageKey, StorageKey};

crate::row_id::row_id! {
    /// A pack's row.
    PackId
}

crate::row_id::row_id! {
    /// A chunk's row (the chunk's content is named by its
    /// [`attic::chunking::ChunkId`]).
    StoredChunkId
}

/// Whether a NAR, chunk or pack may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    /// Whole and checked when written: served.
    Valid,
    /// Its stored bytes failed a check, or (for a NAR) one of its chunks
    /// did: never served, and stored afresh by the next upload of it.
    Damaged,
    /// Being reclaimed by the garbage collector.
    Deleting,
}

/// How stored bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredCompression {
    /// One zstd frame per chunk; for a NAR, every chunk is one.
    Zstd,
    /// The bytes themselves; for a NAR, some chunk is not zstd, so it is
    /// served decompressed.
    None,
    /// One xz stream per chunk (chunks only).
    Xz,
    /// One brotli stream per chunk (chunks only).
    Brotli,
}

/// Whether `pieces` (each a chunk's pack, offset and stored size, in NAR
/// order) are pack `pack_id` whole: back to back from its start to its
/// end, `pack_size`. Such a NAR is served as its pack, one sequential read
/// (or a presigned URL of it).
pub fn is_whole_pack(
    pack_id: PackId,
    pack_size: u64,
    pieces: impl IntoIterator<Item = (PackId, u64, u64)>,
) -> bool {
    let mut expected_offset = 0;
    for (pack, offset, stored_size) in pieces {
        if pack != pack_id || offset != expected_offset {
            return false;
        }
        expected_offset = offset + stored_size;
    }
    expected_offset == pack_size
}

/// Where packs are stored: `packs/<2 hex>/<32 hex>`, spread over 256
/// prefixes so that listing one for the orphan sweep stays small.
pub const PACK_PREFIX: &str = "packs";

/// The storage key of a pack. New packs get a fresh random key (see
/// [`PackKey::generate`]); a pack converted from a pre-pack chunk keeps
/// that chunk's old key, so any valid storage key is accepted as one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PackKey(StorageKey);

impl PackKey {
    /// A fresh key for a new pack, random, so two uploads never write the
    /// same blob and a key reveals nothing of content.
    pub fn generate() -> Self {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the OS random source works");
        let id = hex::encode(id);
        Self(
            StorageKey::new(format!("{PACK_PREFIX}/{}/{id}", &id[..2]))
                .expect("hex makes a valid key"),
        )
    }

    /// The key as recorded.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The blob's key in storage.
    pub fn storage_key(&self) -> &StorageKey {
        &self.0
    }
}

impl FromStr for PackKey {
    type Err = BadStorageKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorageKey::new(s).map(Self)
    }
}

impl From<StorageKey> for PackKey {
    fn from(key: StorageKey) -> Self {
        Self(key)
    }
}

impl fmt::Display for PackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for PackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackKey({})", self.0)
    }
}

/// A checksum of a chunk's stored bytes, checked before any of them is
/// served. It only has to catch damage at rest (Nix checks every NAR
/// against the hash its signed narinfo gives), and it is computed over
/// every byte served, so new chunks get CRC-64/NVME, which runs at tens of
/// GB/s where blake3 runs at a few; chunks stored before keep their blake3.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StoredChecksum {
    /// blake3, 64 hex digits: chunks stored before CRC-64.
    Blake3([u8; 32]),
    /// CRC-64/NVME, `crc64nvme:` and 16 hex digits.
    Crc64Nvme(u64),
}

const CRC64_PREFIX: &str = "crc64nvme:";

impl StoredChecksum {
    /// The checksum new chunks get of `stored`.
    pub fn of(stored: &[u8]) -> Self {
        Self::Crc64Nvme(crc_fast::crc64_nvme(stored))
    }

    /// Whether `stored` has this checksum, by this checksum's algorithm.
    pub fn matches(&self, stored: &[u8]) -> bool {
        match self {
            Self::Blake3(expected) => blake3::hash(stored).as_bytes() == expected,
            Self::Crc64Nvme(expected) => crc_fast::crc64_nvme(stored) == *expected,
        }
    }
}

impl fmt::Display for StoredChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blake3(bytes) => f.write_str(&hex::encode(bytes)),
            Self::Crc64Nvme(sum) => write!(f, "{CRC64_PREFIX}{sum:016x}"),
        }
    }
}

impl fmt::Debug for StoredChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredChecksum({self})")
    }
}

/// Text that is neither 64 hex digits nor `crc64nvme:` and 16.
#[derive(Debug, thiserror::Error)]
#[error("invalid stored checksum {0:?}")]
pub struct BadStoredChecksum(String);

impl FromStr for StoredChecksum {
    type Err = BadStoredChecksum;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadStoredChecksum(s.to_owned());
        if let Some(digits) = s.strip_prefix(CRC64_PREFIX) {
            let mut bytes = [0; 8];
            hex::decode_to_slice(digits, &mut bytes).map_err(|_| bad())?;
            return Ok(Self::Crc64Nvme(u64::from_be_bytes(bytes)));
        }
        let mut bytes = [0; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| bad())?;
        Ok(Self::Blake3(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_round_trip_through_text() {
        let sum = StoredChecksum::of(b"frame");
        assert!(matches!(sum, StoredChecksum::Crc64Nvme(_)));
        assert_eq!(
            sum.to_string().parse::<StoredChecksum>().expect("parse"),
            sum
        );
        let old = hex::encode(blake3::hash(b"frame").as_bytes());
        assert_eq!(
            old.parse::<StoredChecksum>().expect("parse").to_string(),
            old
        );
        for bad in [
            "xyz",
            "crc64nvme:",
            "crc64nvme:0123",
            &old[..62],
            "crc64nvme:zz00000000000000",
        ] {
            assert!(bad.parse::<StoredChecksum>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_checksum_checks_by_its_own_algorithm() {
        let old: StoredChecksum = hex::encode(blake3::hash(b"frame").as_bytes())
            .parse()
            .expect("parse");
        for sum in [old, StoredChecksum::of(b"frame")] {
            assert!(sum.matches(b"frame"), "{sum}");
            assert!(!sum.matches(b"frams"), "{sum}");
            assert!(!sum.matches(b""), "{sum}");
        }
        // The standard check value of CRC-64/NVME.
        assert_eq!(
            StoredChecksum::of(b"123456789").to_string(),
            "crc64nvme:ae8b14860a799888"
        );
    }

    #[test]
    fn only_chunks_back_to_back_from_the_start_to_the_end_are_a_whole_pack() {
        let (one, two) = (PackId::new(1), PackId::new(2));
        assert!(is_whole_pack(one, 30, [(one, 0, 10), (one, 10, 20)]));
        assert!(
            !is_whole_pack(one, 31, [(one, 0, 10), (one, 10, 20)]),
            "short"
        );
        assert!(
            !is_whole_pack(one, 30, [(one, 0, 10), (one, 11, 19)]),
            "gap"
        );
        assert!(
            !is_whole_pack(one, 30, [(one, 10, 20), (one, 0, 10)]),
            "order"
        );
        assert!(
            !is_whole_pack(one, 30, [(one, 0, 10), (two, 10, 20)]),
            "other pack"
        );
    }

    #[test]
    fn pack_keys_are_fresh_and_valid() {
        let (a, b) = (PackKey::generate(), PackKey::generate());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("packs/"));
    }
}
