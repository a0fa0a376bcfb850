//! Packs: each upload stores the chunks it brings new as one blob, their
//! zstd frames concatenated in NAR order, and each chunk is addressed as
//! (pack, offset, stored size) with a checksum of its stored bytes.
//!
//! [`write`] streams a pack into storage while an upload is chunked;
//! [`read`] turns a NAR's chunks into runs (consecutive chunks of one pack,
//! one ranged read each) and checks every chunk before handing it out.

pub mod read;
pub mod write;

use std::fmt;
use std::str::FromStr;

use crate::storage::StorageKey;

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

/// A fresh key for a new pack: `packs/<2 hex>/<32 hex>`, random, so two
/// uploads never write the same blob and a key reveals nothing of content.
pub fn new_pack_key() -> StorageKey {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the OS random source works");
    let id = hex::encode(id);
    StorageKey::new(format!("packs/{}/{id}", &id[..2])).expect("hex makes a valid key")
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
    fn pack_keys_are_fresh_and_valid() {
        let (a, b) = (new_pack_key(), new_pack_key());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("packs/"));
    }
}
