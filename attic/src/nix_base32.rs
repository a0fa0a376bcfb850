//! Nix's own base-32 encoding, as used in store path hashes and `sha256:` hashes.
//!
//! It is not RFC 4648: the alphabet omits `e`, `o`, `u` and `t`, and the bytes are
//! read from the end, so the first character carries the most significant bits
//! of the last byte.

use thiserror::Error;

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Marks a byte outside the alphabet in [`DIGITS`].
const NOT_A_DIGIT: u8 = 0xff;

/// Each byte's value as a digit, or [`NOT_A_DIGIT`]: every store path hash
/// a request names is checked, and a table answers in one load where a
/// search of the alphabet scanned it per character.
const DIGITS: [u8; 256] = {
    let mut digits = [NOT_A_DIGIT; 256];
    let mut value = 0;
    while value < ALPHABET.len() {
        digits[ALPHABET[value] as usize] = value as u8;
        value += 1;
    }
    digits
};

/// Why a string is not valid nix-base32 for the expected length.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NixBase32Error {
    /// The string has the wrong number of characters for the decoded length.
    #[error("expected {expected} nix-base32 characters, found {found}")]
    WrongLength {
        /// Characters needed.
        expected: usize,
        /// Characters given.
        found: usize,
    },
    /// A character outside the nix-base32 alphabet.
    #[error("invalid nix-base32 character {0:?}")]
    InvalidCharacter(char),
    /// The string encodes bits beyond the decoded length (non-canonical).
    #[error("nix-base32 string has trailing bits set")]
    TrailingBits,
}

/// The number of characters needed to encode `byte_len` bytes.
pub const fn encoded_len(byte_len: usize) -> usize {
    if byte_len == 0 {
        0
    } else {
        (byte_len * 8 - 1) / 5 + 1
    }
}

/// Encodes bytes as nix-base32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        let low = bytes[i] >> j;
        let high = if i + 1 < bytes.len() && j > 3 {
            bytes[i + 1] << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a nix-base32 string into exactly `byte_len` bytes.
pub fn decode(input: &str, byte_len: usize) -> Result<Vec<u8>, NixBase32Error> {
    let expected = encoded_len(byte_len);
    if input.len() != expected {
        return Err(NixBase32Error::WrongLength {
            expected,
            found: input.chars().count(),
        });
    }
    let mut bytes = vec![0u8; byte_len];
    for (n, c) in input.bytes().rev().enumerate() {
        let digit = digit_value(c)?;
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        bytes[i] |= digit << j;
        let carry = if j > 3 { digit >> (8 - j) } else { 0 };
        if i + 1 < byte_len {
            bytes[i + 1] |= carry;
        } else if carry != 0 {
            return Err(NixBase32Error::TrailingBits);
        }
    }
    Ok(bytes)
}

/// Whether `c` is a character of the nix-base32 alphabet.
pub fn is_valid_char(c: u8) -> bool {
    DIGITS[c as usize] != NOT_A_DIGIT
}

fn digit_value(c: u8) -> Result<u8, NixBase32Error> {
    match DIGITS[c as usize] {
        NOT_A_DIGIT => Err(NixBase32Error::InvalidCharacter(c as char)),
        digit => Ok(digit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_sha256_like_nix() {
        // `nix hash to-base32 sha256-G+ObpZ23fOSLSY1j8LYxyYjqCeEEbvLiKI9z2UFvMZ4=`
        // printed by Nix 2.8 for a real NAR.
        let hex = "1be39ba59db77ce48b498d63f0b631c988ea09e1046ef2e2288f73d9416f319e";
        let bytes = hex::decode(hex).expect("test vector is hex");
        assert_eq!(
            encode(&bytes),
            "17iidx0xjwwg53ig4vh4w44ym26966vg0qwd965y8z5pknjrpqqv"
        );
    }

    #[test]
    fn encodes_store_path_hash_length() {
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encode(&[0u8; 20]), "0".repeat(32));
    }

    #[test]
    fn rejects_bad_characters_and_lengths() {
        assert_eq!(
            decode(&"e".repeat(32), 20),
            Err(NixBase32Error::InvalidCharacter('e'))
        );
        assert!(matches!(
            decode("abc", 20),
            Err(NixBase32Error::WrongLength { .. })
        ));
    }

    #[test]
    fn accepts_exactly_the_alphabet() {
        for c in 0..=u8::MAX {
            assert_eq!(is_valid_char(c), ALPHABET.contains(&c), "byte {c}");
        }
        for (value, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(digit_value(c), Ok(value as u8));
        }
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // 20 bytes = 160 bits = exactly 32 digits, so use 32 bytes (52 digits,
        // 260 bits) whose top digit would set bits past the end.
        let mut s = String::from("z");
        s.push_str(&"0".repeat(51));
        assert_eq!(decode(&s, 32), Err(NixBase32Error::TrailingBits));
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let encoded = encode(&bytes);
            prop_assert_eq!(encoded.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&encoded, bytes.len()).expect("own encoding decodes"), bytes);
        }
    }
}
