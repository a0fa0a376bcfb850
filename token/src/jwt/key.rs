//! The key a server verifies JWTs with, read from the values Attic's
//! `[jwt.signing]` takes: base64 of an HMAC secret, or base64 of an RSA
//! key in PEM.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{PublicEncryptingKey, PublicKey as RsaPublicKey};
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use thiserror::Error;

use crate::RootKey;

/// Why a configured JWT key is unusable.
#[derive(Debug, Error)]
pub enum JwtKeyError {
    /// The value is not standard base64.
    #[error("not base64")]
    NotBase64(#[source] base64::DecodeError),
    /// An HS256 secret of no bytes: anyone could sign tokens with it.
    #[error("the HS256 secret is empty")]
    EmptySecret,
    /// The base64 does not hold a PEM block of the kind expected.
    #[error("the base64 does not hold a PEM {expected} (\"-----BEGIN ...-----\" lines)")]
    NotPem {
        /// What was expected, e.g. "RSA private key".
        expected: &'static str,
    },
    /// A PEM block of another kind, e.g. a certificate where a key belongs.
    #[error("the PEM block is a {found:?}, not {expected}")]
    WrongPemLabel {
        /// The label found after `BEGIN`.
        found: String,
        /// The labels accepted.
        expected: &'static str,
    },
    /// The PEM body is not base64.
    #[error("the PEM body is not base64")]
    PemBodyNotBase64(#[source] base64::DecodeError),
    /// The DER inside does not parse as an RSA key.
    #[error("not a usable RSA key")]
    RsaKeyRejected(#[source] aws_lc_rs::error::KeyRejected),
    /// An RSA key outside what RS256 verification accepts.
    #[error("the RSA key has {bits} bits; RS256 keys of 2048 to 8192 bits are accepted")]
    RsaKeySize {
        /// The modulus length.
        bits: usize,
    },
    /// The key could not be re-encoded (which a parsed key always can).
    #[error("the RSA key could not be encoded")]
    RsaEncoding(#[source] aws_lc_rs::error::Unspecified),
}

/// The JWT signature algorithms Attic uses: one per server, fixed by the
/// kind of key configured. A token naming any other (`none`, or HS256 on
/// an RS256 server) is refused before its signature is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
}

impl JwtAlgorithm {
    /// The name in a JWT header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
        }
    }
}

/// A key that verifies JWTs, and whether it can stand in for the biscuit
/// root key (see [`JwtKey::derived_root_key`]).
#[derive(Clone)]
pub struct JwtKey {
    kind: KeyKind,
}

#[derive(Clone)]
enum KeyKind {
    Hs256 {
        secret: Vec<u8>,
    },
    Rs256 {
        /// PKCS#1 `RSAPublicKey` DER.
        public_key: Vec<u8>,
        /// PKCS#8 DER of the private key when it was given, which only
        /// seeds the derived biscuit root key.
        private_key: Option<Vec<u8>>,
    },
}

/// The blake3 `derive_key` context of the biscuit root key derived from a
/// JWT secret. Fixed forever: changing it changes the key, and so
/// invalidates every biscuit token a server without `token-root-key` made.
const ROOT_KEY_CONTEXT: &str = "attic-rs 2026-12-06 biscuit root key from the [jwt.signing] secret";

impl JwtKey {
    /// `token-hs256-secret-base64`: standard base64 of the HMAC secret,
    /// whose bytes are the key (as Attic uses them).
    pub fn from_hs256_secret_base64(value: &str) -> Result<Self, JwtKeyError> {
        let secret = BASE64
            .decode(value.trim())
            .map_err(JwtKeyError::NotBase64)?;
        if secret.is_empty() {
            return Err(JwtKeyError::EmptySecret);
        }
        Ok(Self {
            kind: KeyKind::Hs256 { secret },
        })
    }

    /// `token-rs256-secret-base64`: standard base64 of an RSA private key
    /// in PEM, PKCS#1 (`RSA PRIVATE KEY`, what Attic's documentation
    /// generates) or PKCS#8 (`PRIVATE KEY`). Only its public half verifies.
    pub fn from_rs256_secret_base64(value: &str) -> Result<Self, JwtKeyError> {
        let expected = "RSA private key (RSA PRIVATE KEY or PRIVATE KEY)";
        let (label, der) = pem_in_base64(value, expected)?;
        let pair = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            _ => {
                return Err(JwtKeyError::WrongPemLabel {
                    found: label,
                    expected,
                });
            }
        }
        .map_err(JwtKeyError::RsaKeyRejected)?;
        let public_key = pair.public_key().as_ref().to_vec();
        check_rsa_size(&public_key)?;
        let private_key = pair
            .as_der()
            .map_err(JwtKeyError::RsaEncoding)?
            .as_ref()
            .to_vec();
        Ok(Self {
            kind: KeyKind::Rs256 {
                public_key,
                private_key: Some(private_key),
            },
        })
    }

    /// `token-rs256-pubkey-base64`: standard base64 of an RSA public key in
    /// PEM, PKCS#1 (`RSA PUBLIC KEY`) or SubjectPublicKeyInfo (`PUBLIC
    /// KEY`). Verifies only: no biscuit root key can be derived from it.
    pub fn from_rs256_pubkey_base64(value: &str) -> Result<Self, JwtKeyError> {
        let expected = "RSA public key (RSA PUBLIC KEY or PUBLIC KEY)";
        let (label, der) = pem_in_base64(value, expected)?;
        if label != "RSA PUBLIC KEY" && label != "PUBLIC KEY" {
            return Err(JwtKeyError::WrongPemLabel {
                found: label,
                expected,
            });
        }
        let key = RsaPublicKey::from_der(&der).map_err(JwtKeyError::RsaKeyRejected)?;
        let public_key = key.as_ref().to_vec();
        check_rsa_size(&public_key)?;
        Ok(Self {
            kind: KeyKind::Rs256 {
                public_key,
                private_key: None,
            },
        })
    }

    /// The one algorithm tokens must be signed with.
    pub fn algorithm(&self) -> JwtAlgorithm {
        match self.kind {
            KeyKind::Hs256 { .. } => JwtAlgorithm::Hs256,
            KeyKind::Rs256 { .. } => JwtAlgorithm::Rs256,
        }
    }

    /// Whether this key includes a secret (an HS256 secret or an RSA
    /// private key), which is what a derived root key needs.
    pub fn has_secret(&self) -> bool {
        match &self.kind {
            KeyKind::Hs256 { .. } => true,
            KeyKind::Rs256 { private_key, .. } => private_key.is_some(),
        }
    }

    /// The biscuit root key of a server configured without
    /// `token-root-key`: derived from this key's secret with blake3's
    /// `derive_key` under a fixed context, so every replica sharing the
    /// secret derives the same one, and anyone who can sign JWTs for the
    /// server could already grant themselves anything. `None` for a public
    /// key alone, which holds no secret.
    pub fn derived_root_key(&self) -> Option<RootKey> {
        let material: &[u8] = match &self.kind {
            KeyKind::Hs256 { secret } => secret,
            KeyKind::Rs256 {
                private_key: Some(private_key),
                ..
            } => private_key,
            KeyKind::Rs256 {
                private_key: None, ..
            } => return None,
        };
        Some(RootKey::from_seed(blake3::derive_key(
            ROOT_KEY_CONTEXT,
            material,
        )))
    }

    /// Checks `signature` over `message`, in constant time for HS256.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.kind {
            KeyKind::Hs256 { secret } => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                aws_lc_rs::hmac::verify(&key, message, signature).is_ok()
            }
            KeyKind::Rs256 { public_key, .. } => aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                public_key,
            )
            .verify(message, signature)
            .is_ok(),
        }
    }
}

impl std::fmt::Debug for JwtKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKey({})", self.algorithm().as_str())
    }
}

/// Refuses RSA keys that RS256 verification would refuse token by token,
/// so that a bad key is a configuration error rather than 401s.
fn check_rsa_size(pkcs1_public_key: &[u8]) -> Result<(), JwtKeyError> {
    let spki = RsaPublicKey::from_der(pkcs1_public_key)
        .map_err(JwtKeyError::RsaKeyRejected)?
        .as_der()
        .map_err(JwtKeyError::RsaEncoding)?;
    let bits = PublicEncryptingKey::from_der(spki.as_ref())
        .map_err(JwtKeyError::RsaKeyRejected)?
        .key_size_bits();
    if (2048..=8192).contains(&bits) {
        Ok(())
    } else {
        Err(JwtKeyError::RsaKeySize { bits })
    }
}

/// The label and DER of the one PEM block that `value`, standard base64,
/// decodes to.
fn pem_in_base64(value: &str, expected: &'static str) -> Result<(String, Vec<u8>), JwtKeyError> {
    let decoded = BASE64
        .decode(value.trim())
        .map_err(JwtKeyError::NotBase64)?;
    let text = String::from_utf8(decoded).map_err(|_| JwtKeyError::NotPem { expected })?;
    parse_pem(&text).ok_or(JwtKeyError::NotPem { expected })?
}

/// One PEM block: `-----BEGIN L-----`, base64 lines, `-----END L-----`,
/// nothing else but blank space around it. `None` if it is not that shape.
fn parse_pem(text: &str) -> Option<Result<(String, Vec<u8>), JwtKeyError>> {
    let mut lines = text.trim().lines().map(str::trim);
    let label = lines
        .next()?
        .strip_prefix("-----BEGIN ")?
        .strip_suffix("-----")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == end {
            return lines.next().is_none().then(|| {
                BASE64
                    .decode(&body)
                    .map(|der| (label, der))
                    .map_err(JwtKeyError::PemBodyNotBase64)
            });
        }
        body.push_str(line);
    }
    None
}

/// The PEM text of `der` under `label`, for tests that write keys as
/// Attic's configuration takes them.
#[cfg(any(test, feature = "jwt-mint"))]
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}
