//! ed25519 keys and signatures in Nix's own text forms.
//!
//! A secret key is `name:base64(seed ‖ public key)` (64 bytes, what
//! `nix key generate-secret` prints); a public key is `name:base64(32 bytes)`;
//! a signature is `name:base64(64 bytes)` over a path's fingerprint.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, Verifier};
use thiserror::Error;

use crate::hash::Sha256Hash;
use crate::store_path::{StoreDir, StorePath};

/// Why a key or signature was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SigningError {
    /// Not of the form `name:base64`, or an empty or colon-bearing name.
    #[error("{what} is not of the form `name:base64`")]
    BadFormat {
        /// Which kind of value.
        what: &'static str,
    },
    /// The base64 part does not decode to the right number of bytes.
    #[error("{what} does not decode to {expected} bytes")]
    BadLength {
        /// Which kind of value.
        what: &'static str,
        /// Bytes expected.
        expected: usize,
    },
    /// A secret key whose public half does not belong to its seed.
    #[error("secret key is inconsistent: its public half does not match its seed")]
    InconsistentSecretKey,
    /// A public key that is not a valid curve point.
    #[error("public key is not a valid ed25519 key")]
    InvalidPublicKey,
    /// A signature made by a key of another name.
    #[error("signature is by key {found:?}, not {expected:?}")]
    WrongKeyName {
        /// The key name we verify with.
        expected: String,
        /// The name on the signature.
        found: String,
    },
    /// A signature that does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The operating system could not provide randomness for a new key.
    #[error("no randomness available to generate a key")]
    NoRandomness,
}

/// Splits `name:base64` and decodes the base64 into exactly `N` bytes.
fn split_named<'a, const N: usize>(
    s: &'a str,
    what: &'static str,
) -> Result<(&'a str, [u8; N]), SigningError> {
    let (name, data) = s.split_once(':').ok_or(SigningError::BadFormat { what })?;
    if name.is_empty() {
        return Err(SigningError::BadFormat { what });
    }
    let bytes = BASE64
        .decode(data.trim())
        .map_err(|_| SigningError::BadLength { what, expected: N })?;
    let bytes: [u8; N] = bytes
        .try_into()
        .map_err(|_| SigningError::BadLength { what, expected: N })?;
    Ok((name, bytes))
}

/// Checks a key name: non-empty, and no colon, which would break the format.
fn validate_key_name(name: &str) -> Result<(), SigningError> {
    if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
        Err(SigningError::BadFormat { what: "key name" })
    } else {
        Ok(())
    }
}

/// A named ed25519 secret key.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Generates a fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        validate_key_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| SigningError::NoRandomness)?;
        Ok(Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The key's name, as it prefixes its signatures.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `message`, returning `name:base64(signature)`.
    pub fn sign(&self, message: &[u8]) -> String {
        let signature = self.key.sign(message);
        format!("{}:{}", self.name, BASE64.encode(signature.to_bytes()))
    }

    /// The key in Nix's secret-key form, `name:base64(seed ‖ public key)`.
    /// Handle with care: this is the secret.
    pub fn to_nix_secret(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }
}

impl FromStr for SigningKey {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split_named::<64>(s.trim(), "secret key")?;
        validate_key_name(name)?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| SigningError::InconsistentSecretKey)?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Debug for SigningKey {
    /// Shows the name and public half only, so a key never lands in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public_key())
    }
}

/// A named ed25519 public key, as in Nix's `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks `signature` (`name:base64`) over `message`.
    pub fn verify(&self, message: &[u8], signature: &str) -> Result<(), SigningError> {
        let (name, bytes) = split_named::<64>(signature, "signature")?;
        if name != self.name {
            return Err(SigningError::WrongKeyName {
                expected: self.name.clone(),
                found: name.to_owned(),
            });
        }
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.key
            .verify(message, &signature)
            .map_err(|_| SigningError::BadSignature)
    }
}

impl FromStr for PublicKey {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split_named::<32>(s.trim(), "public key")?;
        validate_key_name(name)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SigningError::InvalidPublicKey)?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The string a path's signatures cover:
/// `1;<full store path>;sha256:<nix32>;<nar size>;<full reference paths, comma-separated>`.
pub fn fingerprint(
    store_dir: &StoreDir,
    store_path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let references: Vec<String> = references.iter().map(|r| store_dir.display(r)).collect();
    format!(
        "1;{};{};{};{}",
        store_dir.display(store_path),
        nar_hash.to_typed_nix32(),
        nar_size,
        references.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by `nix key generate-secret --key-name test-1` and
    /// `nix key convert-secret-to-public` (Nix 2.8).
    const NIX_SECRET: &str = "test-1:lL2MSiDRI+0LDfGizV7NA+Av7fhjD7WdeJSn/Ip7N/htHeP1q/Wu7mblaMKp6Z8mUf436oY5866e8fkzZd5npg==";
    const NIX_PUBLIC: &str = "test-1:bR3j9av1ru5m5WjCqemfJlH+N+qGOfOunvH5M2XeZ6Y=";

    #[test]
    fn loads_a_nix_secret_key_and_derives_its_public_key() {
        let key: SigningKey = NIX_SECRET.parse().expect("Nix's secret key parses");
        assert_eq!(key.public_key().to_string(), NIX_PUBLIC);
        assert_eq!(key.to_nix_secret(), NIX_SECRET);
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message_and_key() {
        let key = SigningKey::generate("cache-a-1").expect("randomness");
        let public = key.public_key();
        let sig = key.sign(b"1;/nix/store/x;sha256:y;1;");
        public
            .verify(b"1;/nix/store/x;sha256:y;1;", &sig)
            .expect("verifies");
        assert_eq!(
            public.verify(b"other", &sig),
            Err(SigningError::BadSignature)
        );

        let other = SigningKey::generate("cache-a-1").expect("randomness");
        assert!(
            other
                .public_key()
                .verify(b"1;/nix/store/x;sha256:y;1;", &sig)
                .is_err()
        );
        let renamed = SigningKey::generate("cache-b-1").expect("randomness");
        assert!(matches!(
            renamed
                .public_key()
                .verify(b"m", &renamed.sign(b"m").replace("cache-b-1", "cache-a-1")),
            Err(SigningError::WrongKeyName { .. })
        ));
    }

    #[test]
    fn rejects_malformed_keys() {
        assert!("nocolon".parse::<SigningKey>().is_err());
        assert!(":AAAA".parse::<PublicKey>().is_err());
        assert!("k:not-base64!".parse::<PublicKey>().is_err());
        assert!(
            NIX_PUBLIC.parse::<SigningKey>().is_err(),
            "public key is not a secret key"
        );
        // A secret whose public half was swapped for another key's.
        let mut bytes = BASE64
            .decode(NIX_SECRET.split_once(':').expect("named").1)
            .expect("base64");
        bytes[40] ^= 1;
        let tampered = format!("test-1:{}", BASE64.encode(bytes));
        assert_eq!(
            tampered.parse::<SigningKey>().err(),
            Some(SigningError::InconsistentSecretKey)
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key: SigningKey = NIX_SECRET.parse().expect("parses");
        let shown = format!("{key:?}");
        assert!(!shown.contains("lL2MSiDRI"), "{shown}");
        assert!(shown.contains(NIX_PUBLIC));
    }
}
