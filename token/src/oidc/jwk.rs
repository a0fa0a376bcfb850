//! The issuer's public keys as its JWKS publishes them (RFC 7517/7518):
//! RSA keys (`n`, `e`) for RS256 and P-256 keys (`x`, `y`) for ES256.
//! Keys of other kinds (symmetric, other curves, encryption keys, other
//! algorithms) are skipped: an issuer may publish them beside the ones
//! that sign ID tokens.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use thiserror::Error;

use super::IdTokenAlgorithm;

/// Most keys read from one JWKS: issuers publish two or three (the
/// current one and those rotating in or out).
pub const MAX_JWKS_KEYS: usize = 32;

/// Why a JWKS document is unusable.
#[derive(Debug, Error)]
pub enum JwkSetError {
    /// Not `{"keys": [...]}`.
    #[error("the JWKS is not a JSON object with a `keys` list")]
    NotJwks(#[source] serde_json::Error),
    /// More keys than [`MAX_JWKS_KEYS`].
    #[error("the JWKS lists more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
}

/// One public key that can verify ID tokens.
#[derive(Clone)]
pub struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Clone)]
enum PublicKey {
    /// Big-endian, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `0x04 || x || y`.
    P256 { point: Vec<u8> },
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The keys of a JWKS document that can verify RS256 or ES256 tokens.
pub fn parse_jwk_set(json: &[u8]) -> Result<Vec<Jwk>, JwkSetError> {
    let set: RawJwkSet = serde_json::from_slice(json).map_err(JwkSetError::NotJwks)?;
    if set.keys.len() > MAX_JWKS_KEYS {
        return Err(JwkSetError::TooManyKeys);
    }
    Ok(set.keys.into_iter().filter_map(Jwk::from_raw).collect())
}

impl Jwk {
    fn from_raw(raw: RawJwk) -> Option<Self> {
        if raw.usage.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let bytes = |field: &Option<String>| {
            field
                .as_deref()
                .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
        };
        let key = match (raw.kty.as_str(), raw.alg.as_deref()) {
            ("RSA", None | Some("RS256")) => PublicKey::Rsa {
                n: without_leading_zeros(bytes(&raw.n)?),
                e: without_leading_zeros(bytes(&raw.e)?),
            },
            ("EC", None | Some("ES256")) if raw.crv.as_deref() == Some("P-256") => {
                let (x, y) = (bytes(&raw.x)?, bytes(&raw.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::P256 { point }
            }
            _ => return None,
        };
        Some(Self { kid: raw.kid, key })
    }

    /// The key's `kid`, which a token's header names.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> IdTokenAlgorithm {
        match self.key {
            PublicKey::Rsa { .. } => IdTokenAlgorithm::Rs256,
            PublicKey::P256 { .. } => IdTokenAlgorithm::Es256,
        }
    }

    /// Checks `signature` over `message` with this key's algorithm.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            PublicKey::P256 { point } => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwk({:?}, {})", self.kid, self.algorithm().as_str())
    }
}

fn without_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.drain(..zeros);
    bytes
}
