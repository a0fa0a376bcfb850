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

/// blake3 of a chunk's stored bytes, checked before any of them is served.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StoredChecksum([u8; 32]);

impl StoredChecksum {
    /// The checksum of `stored`.
    pub fn of(stored: &[u8]) -> Self {
        Self(*blake3::hash(stored).as_bytes())
    }
}

impl fmt::Display for StoredChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StoredChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredChecksum({self})")
    }
}

/// Text that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid stored checksum {0:?}")]
pub struct BadStoredChecksum(String);

impl FromStr for StoredChecksum {
    type Err = BadStoredChecksum;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| BadStoredChecksum(s.to_owned()))?;
        Ok(Self(bytes))
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
    fn checksums_round_trip_through_hex() {
        let sum = StoredChecksum::of(b"frame");
        assert_eq!(
            sum.to_string().parse::<StoredChecksum>().expect("parse"),
            sum
        );
        assert!("xyz".parse::<StoredChecksum>().is_err());
    }

    #[test]
    fn pack_keys_are_fresh_and_valid() {
        let (a, b) = (new_pack_key(), new_pack_key());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("packs/"));
    }
}
