//! OpenID Connect ID tokens, as CI systems issue them (GitHub Actions,
//! GitLab CI): JWTs signed with RS256 or ES256 by a key the issuer
//! publishes in its JWKS. This module verifies one against keys it is
//! handed and reads its claims; fetching and caching the keys is the
//! server's (it is I/O), so verification here is pure: the caller passes
//! the time.
//!
//! The order of checks is fixed so that nothing in the payload is trusted
//! before the signature holds: size (before any parsing), shape, header
//! (`typ`, `crit`, `alg`), the key named by `kid` and its algorithm, the
//! signature, then `iss`, `aud`, `exp`, `nbf` and `iat` with
//! [`CLOCK_LEEWAY`]. The issuer a token claims is read unverified only to
//! choose whose keys to check it against ([`UnverifiedIdToken::claimed_issuer`]).

mod jwk;
#[cfg(any(test, feature = "jwt-mint"))]
pub mod mint;

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use thiserror::Error;

pub use jwk::{Jwk, JwkSetError, MAX_JWKS_KEYS, parse_jwk_set};

/// Longest ID token accepted, checked before anything is decoded. A
/// GitHub Actions token is about 1,200 characters, a GitLab one about
/// 1,000; an RS256 signature of an 8192-bit key alone takes 1,366.
pub const MAX_ID_TOKEN_LEN: usize = 16 * 1024;

/// How far `exp`, `nbf` and `iat` may be off the server's clock: CI
/// runners' clocks and the server's drift apart by seconds, and a token is
/// minted moments before it is presented.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(60);

/// The signature algorithms accepted: what GitHub (RS256), GitLab (RS256)
/// and most other issuers sign with, and the common elliptic one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256, keys of 2048 to 8192 bits.
    Rs256,
    /// ECDSA on P-256 with SHA-256, signatures as `r || s`.
    Es256,
}

impl IdTokenAlgorithm {
    /// The name in a JOSE header's or a JWK's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdTokenAlgorithm::Rs256 => "RS256",
            IdTokenAlgorithm::Es256 => "ES256",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(IdTokenAlgorithm::Rs256),
            "ES256" => Some(IdTokenAlgorithm::Es256),
            _ => None,
        }
    }
}

/// Why an ID token was refused: precise, for the server's log. A client
/// is told only that its token was refused.
#[derive(Debug, Error)]
pub enum IdTokenError {
    /// Over [`MAX_ID_TOKEN_LEN`].
    #[error("the ID token is longer than {MAX_ID_TOKEN_LEN} characters")]
    TooLarge,
    /// Not three dot-separated parts.
    #[error("the ID token is not three dot-separated parts")]
    NotThreeParts,
    /// A part is not unpadded base64url.
    #[error("the ID token's {part} is not base64url")]
    NotBase64 {
        /// `header`, `payload` or `signature`.
        part: &'static str,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// The header is not a JOSE header.
    #[error("the ID token's header is not a JWT header")]
    BadHeader(#[source] serde_json::Error),
    /// `typ` names something other than a JWT.
    #[error("the ID token's type is not JWT")]
    NotJwtType,
    /// `crit` is present: an extension we must understand and do not.
    #[error("the ID token requires header extensions (crit) this server does not support")]
    CriticalHeader,
    /// `alg` is `none`, a MAC, or another algorithm not accepted.
    #[error("the ID token is signed with {0:?}; only RS256 and ES256 are accepted")]
    UnsupportedAlgorithm(String),
    /// No `kid` in the header: which of the issuer's keys signed it?
    #[error("the ID token's header names no key (kid)")]
    MissingKeyId,
    /// The issuer publishes no key of that `kid`, even after a refetch.
    #[error("the issuer publishes no key with kid {0:?}")]
    UnknownKey(String),
    /// The key named is for another algorithm than the token's `alg`.
    #[error("the ID token says {token} but its key {kid:?} is for {key}")]
    AlgorithmMismatch {
        /// The token's `alg`.
        token: &'static str,
        /// The key's algorithm.
        key: &'static str,
        /// The key.
        kid: String,
    },
    /// The signature does not verify against the key.
    #[error("the ID token's signature does not verify")]
    BadSignature,
    /// The payload is not JSON claims with `iss`, `sub`, `aud` and `exp`
    /// of the right types.
    #[error("the ID token's claims are malformed or lack iss, sub, aud or exp")]
    BadClaims(#[source] serde_json::Error),
    /// `iss` is not the issuer whose key verified it.
    #[error("the ID token's issuer {found:?} is not {expected:?}")]
    WrongIssuer {
        /// The token's `iss`.
        found: String,
        /// The configured issuer.
        expected: String,
    },
    /// `aud` does not contain the configured audience.
    #[error("the ID token's audience {found:?} does not contain {expected:?}")]
    WrongAudience {
        /// The token's `aud`.
        found: Vec<String>,
        /// The configured audience.
        expected: String,
    },
    /// `exp` passed more than [`CLOCK_LEEWAY`] ago.
    #[error("the ID token expired at {0} (seconds since the epoch)")]
    Expired(u64),
    /// `nbf` is more than [`CLOCK_LEEWAY`] ahead.
    #[error("the ID token is not valid before {0} (seconds since the epoch)")]
    NotYetValid(u64),
    /// `iat` is more than [`CLOCK_LEEWAY`] ahead.
    #[error("the ID token says it was issued at {0}, in the future")]
    IssuedInFuture(u64),
}

/// The JOSE header fields read; others are ignored.
#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    /// RFC 7515: refuse a `crit` we do not understand; we understand none.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// An ID token whose shape and header have been checked and whose
/// signature has not: what is needed to find the key that must verify it.
#[derive(Debug)]
pub struct UnverifiedIdToken<'a> {
    signed: &'a str,
    algorithm: IdTokenAlgorithm,
    kid: String,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> UnverifiedIdToken<'a> {
    /// Checks the size, then the shape, then the header: `alg` must be
    /// RS256 or ES256 (never `none` or a MAC), no `crit`, and a `kid`.
    pub fn parse(token: &'a str) -> Result<Self, IdTokenError> {
        let token = token.trim();
        if token.len() > MAX_ID_TOKEN_LEN {
            return Err(IdTokenError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdTokenError::NotThreeParts);
        };
        let header_fields: Header =
            serde_json::from_slice(&decode("header", header)?).map_err(IdTokenError::BadHeader)?;
        if let Some(typ) = &header_fields.typ {
            let typ = typ.to_ascii_uppercase();
            if typ != "JWT" && !typ.ends_with("+JWT") {
                return Err(IdTokenError::NotJwtType);
            }
        }
        if header_fields.crit.is_some() {
            return Err(IdTokenError::CriticalHeader);
        }
        let algorithm = IdTokenAlgorithm::from_name(&header_fields.alg)
            .ok_or(IdTokenError::UnsupportedAlgorithm(header_fields.alg))?;
        let kid = header_fields.kid.ok_or(IdTokenError::MissingKeyId)?;
        Ok(Self {
            signed: &token[..header.len() + 1 + payload.len()],
            algorithm,
            kid,
            payload: decode("payload", payload)?,
            signature: decode("signature", signature)?,
        })
    }

    /// The `kid` of the key that must verify the token.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The token's `alg`.
    pub fn algorithm(&self) -> IdTokenAlgorithm {
        self.algorithm
    }

    /// The `iss` the token claims, unverified: only to choose whose keys
    /// to verify it with (the verified `iss` is checked again).
    pub fn claimed_issuer(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Issuer {
            iss: String,
        }
        serde_json::from_slice::<Issuer>(&self.payload)
            .ok()
            .map(|i| i.iss)
    }

    /// Verifies the signature with `keys`' key of this token's `kid`, then
    /// the claims against `issuer` and `audience` at `now`.
    pub fn verify(
        &self,
        keys: &[Jwk],
        issuer: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<IdToken, IdTokenError> {
        let key = keys
            .iter()
            .find(|key| key.kid() == Some(self.kid.as_str()))
            .ok_or_else(|| IdTokenError::UnknownKey(self.kid.clone()))?;
        if key.algorithm() != self.algorithm {
            return Err(IdTokenError::AlgorithmMismatch {
                token: self.algorithm.as_str(),
                key: key.algorithm().as_str(),
                kid: self.kid.clone(),
            });
        }
        if !key.verify(self.signed.as_bytes(), &self.signature) {
            return Err(IdTokenError::BadSignature);
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&self.payload).map_err(IdTokenError::BadClaims)?;
        let registered = Registered::deserialize(Value::Object(claims.clone()))
            .map_err(IdTokenError::BadClaims)?;
        registered.check(issuer, audience, now)?;
        Ok(IdToken {
            subject: registered.sub,
            expires_at: registered.exp,
            claims,
        })
    }
}

fn decode(part: &'static str, text: &str) -> Result<Vec<u8>, IdTokenError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|source| IdTokenError::NotBase64 { part, source })
}

/// The registered claims an ID token must carry (OpenID Connect Core 2):
/// `iss`, `sub`, `aud` and `exp` are required; `nbf` and `iat` are
/// checked when present.
#[derive(Debug, Deserialize)]
struct Registered {
    iss: String,
    sub: String,
    aud: Audiences,
    #[serde(deserialize_with = "seconds")]
    exp: u64,
    #[serde(default, deserialize_with = "optional_seconds")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    iat: Option<u64>,
}

/// `aud`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Registered {
    fn check(&self, issuer: &str, audience: &str, now: SystemTime) -> Result<(), IdTokenError> {
        if self.iss != issuer {
            return Err(IdTokenError::WrongIssuer {
                found: self.iss.clone(),
                expected: issuer.to_owned(),
            });
        }
        let audiences = match &self.aud {
            Audiences::One(one) => vec![one.clone()],
            Audiences::Many(many) => many.clone(),
        };
        if !audiences.iter().any(|a| a == audience) {
            return Err(IdTokenError::WrongAudience {
                found: audiences,
                expected: audience.to_owned(),
            });
        }
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let leeway = CLOCK_LEEWAY.as_secs();
        if now > self.exp.saturating_add(leeway) {
            return Err(IdTokenError::Expired(self.exp));
        }
        if let Some(nbf) = self.nbf
            && nbf > now.saturating_add(leeway)
        {
            return Err(IdTokenError::NotYetValid(nbf));
        }
        if let Some(iat) = self.iat
            && iat > now.saturating_add(leeway)
        {
            return Err(IdTokenError::IssuedInFuture(iat));
        }
        Ok(())
    }
}

fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value >= 0.0 && value < u64::MAX as f64 {
        // Rounding a fractional second down is what is meant.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(value as u64)
    } else {
        Err(serde::de::Error::custom(
            "a time must be seconds since the epoch",
        ))
    }
}

fn optional_seconds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    seconds(deserializer).map(Some)
}

/// A verified ID token: whose workload it is and what its claims say.
#[derive(Debug, Clone)]
pub struct IdToken {
    subject: String,
    expires_at: u64,
    claims: Map<String, Value>,
}

impl IdToken {
    /// `sub`: the workload, e.g. `repo:org/app:ref:refs/heads/main`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// `exp`, seconds since the epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// A claim whose value is a string (`repository`, `ref`, ...); `None`
    /// when absent or of another type, which no pattern matches.
    pub fn string_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// Whether `value` matches `pattern`, in which `*` matches any run of
/// characters (`/` included) and everything else is literal: the claim
/// matchers of OIDC rules.
pub fn claim_matches(pattern: &str, value: &str) -> bool {
    crate::pattern::glob_match(pattern.as_bytes(), value.as_bytes())
}

#[cfg(test)]
mod tests;
