//! Attic's tokens: JWTs signed with HS256 or RS256 whose
//! `https://jwt.attic.rs/v1` claim maps cache-name patterns to
//! permissions. Verified as Attic verifies them (jwt-simple 0.11 with the
//! options Attic passes), and never more leniently.
//!
//! Attic's rules, kept exactly:
//! - The algorithm is the configured key's: a token whose `alg` is
//!   anything else (`none`, HS256 on an RS256 server) is refused before
//!   its signature is looked at.
//! - No clock leeway: Attic passes no `time_tolerance`, which jwt-simple
//!   0.11 reads as zero. `exp` is the last valid second, `nbf` the first;
//!   an `iat` in the future is refused; a claim left out is not checked.
//! - `token-bound-issuer`: `iss` must be present and equal to it.
//!   `token-bound-audiences`: `aud` must be present and name one of them.
//! - Permissions on a cache come from one `caches` entry: its exact name
//!   if listed, else the first matching pattern in the token's order
//!   ([`CacheGrants::permissions_for`]).
//!
//! Stricter than Attic, on purpose: a token over [`MAX_JWT_LEN`]
//! characters is refused unread; so is one with a `crit` header (RFC 7515
//! says to refuse extensions one does not understand) or a pattern listed
//! twice. Verification is pure: the caller passes the time.

mod claims;
mod key;
#[cfg(any(test, feature = "jwt-mint"))]
pub mod mint;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;

use crate::{CacheName, Permission, Refusal};
pub use claims::{AtticCacheNamePattern, CLAIM_NAMESPACE, CacheGrants, CachePermissions};
#[cfg(any(test, feature = "jwt-mint"))]
pub use key::to_pem;
pub use key::{JwtAlgorithm, JwtKey, JwtKeyError};

/// Longest JWT accepted, checked before anything else. Attic's
/// `make-token` with a dozen patterns makes under 1,000 characters, an
/// 8192-bit RS256 signature takes 1,366.
pub const MAX_JWT_LEN: usize = 8192;

/// Why a JWT was refused. Each is a class of bad token a test covers.
#[derive(Debug, Error)]
pub enum JwtError {
    /// Over [`MAX_JWT_LEN`].
    #[error("the token is longer than {MAX_JWT_LEN} characters")]
    TooLarge,
    /// Not three dot-separated parts.
    #[error("the token is not three dot-separated parts")]
    NotThreeParts,
    /// A part is not unpadded base64url.
    #[error("the token's {part} is not base64url")]
    NotBase64 {
        /// `header`, `payload` or `signature`.
        part: &'static str,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// The header is not the JSON of a JOSE header.
    #[error("the token's header is not a JWT header")]
    BadHeader(#[source] serde_json::Error),
    /// `typ` names something other than a JWT.
    #[error("the token's type is not JWT")]
    NotJwtType,
    /// `crit` is present: an extension we must understand and do not.
    #[error("the token requires header extensions this server does not support")]
    CriticalHeader,
    /// `alg` is not the configured key's algorithm.
    #[error("the token is signed with {found:?}; this server accepts only {expected}")]
    WrongAlgorithm {
        /// The token's `alg`.
        found: String,
        /// The configured key's.
        expected: &'static str,
    },
    /// The signature does not verify against the configured key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The payload is not Attic's claims (a missing Attic claim, a bad
    /// pattern, a permission other than 0 or 1, a mistyped standard claim).
    #[error("the token's claims are not Attic's")]
    BadClaims(#[source] serde_json::Error),
    /// `iat` is in the future.
    #[error("the token says it was issued in the future")]
    IssuedInFuture,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `iss` is missing or not the bound issuer.
    #[error("the token's issuer is not the one this server accepts")]
    WrongIssuer,
    /// `aud` is missing or names none of the bound audiences.
    #[error("the token's audience is not one this server accepts")]
    WrongAudience,
}

/// Verifies JWTs against one key and the bounds the configuration sets.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    key: JwtKey,
    bound_issuer: Option<String>,
    bound_audiences: Option<BTreeSet<String>>,
}

impl JwtVerifier {
    /// A verifier requiring `iss` to be `bound_issuer` and `aud` to name
    /// one of `bound_audiences`, each when given.
    pub fn new(
        key: JwtKey,
        bound_issuer: Option<String>,
        bound_audiences: Option<BTreeSet<String>>,
    ) -> Self {
        Self {
            key,
            bound_issuer,
            bound_audiences,
        }
    }

    /// The key tokens are checked against.
    pub fn key(&self) -> &JwtKey {
        &self.key
    }

    /// Verifies `token` at `now`: size, shape, header, algorithm,
    /// signature, then claims, in that order, so that no claim is read
    /// before the signature holds.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<AtticJwt, JwtError> {
        let token = token.trim();
        if token.len() > MAX_JWT_LEN {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::NotThreeParts);
        };
        let header_json = decode("header", header)?;
        let header_fields: claims::Header =
            serde_json::from_slice(&header_json).map_err(JwtError::BadHeader)?;
        if let Some(typ) = &header_fields.typ {
            let typ = typ.to_ascii_uppercase();
            if typ != "JWT" && !typ.ends_with("+JWT") {
                return Err(JwtError::NotJwtType);
            }
        }
        if header_fields.crit.is_some() {
            return Err(JwtError::CriticalHeader);
        }
        let expected = self.key.algorithm().as_str();
        if header_fields.alg != expected {
            return Err(JwtError::WrongAlgorithm {
                found: header_fields.alg,
                expected,
            });
        }
        let signature = decode("signature", signature)?;
        let signed = &token[..header.len() + 1 + payload.len()];
        if !self.key.verify(signed.as_bytes(), &signature) {
            return Err(JwtError::BadSignature);
        }
        let payload: claims::Payload =
            serde_json::from_slice(&decode("payload", payload)?).map_err(JwtError::BadClaims)?;
        self.check_claims(&payload, now)?;
        Ok(AtticJwt {
            subject: payload.sub,
            expires_at: payload.exp,
            grants: payload.attic.caches,
        })
    }

    fn check_claims(&self, payload: &claims::Payload, now: SystemTime) -> Result<(), JwtError> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let at = Duration::from_secs;
        if payload.iat.is_some_and(|iat| at(iat) > now) {
            return Err(JwtError::IssuedInFuture);
        }
        if payload.nbf.is_some_and(|nbf| now < at(nbf)) {
            return Err(JwtError::NotYetValid);
        }
        if payload.exp.is_some_and(|exp| now > at(exp)) {
            return Err(JwtError::Expired);
        }
        if let Some(issuer) = &self.bound_issuer
            && payload.iss.as_ref() != Some(issuer)
        {
            return Err(JwtError::WrongIssuer);
        }
        if let Some(audiences) = &self.bound_audiences {
            let named = payload
                .aud
                .as_ref()
                .is_some_and(|aud| aud.contains_any_of(audiences.iter()));
            if !named {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(())
    }
}

fn decode(part: &'static str, text: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|source| JwtError::NotBase64 { part, source })
}

/// The `exp` and `sub` a JWT's payload states, read without verifying
/// anything: see [`crate::read_unverified`]. `None` for a token whose
/// payload cannot be read.
pub(crate) fn read_unverified(token: &str) -> Option<(Option<u64>, Option<String>)> {
    /// Only these: a payload that would fail [`claims::Payload`] for
    /// another reason still says when it expires.
    #[derive(serde::Deserialize)]
    struct Stated {
        #[serde(default)]
        exp: Option<u64>,
        #[serde(default)]
        sub: Option<String>,
    }
    let token = token.trim();
    if token.len() > MAX_JWT_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let json = decode("payload", payload).ok()?;
    let stated: Stated = serde_json::from_slice(&json).ok()?;
    Some((stated.exp, stated.sub))
}

/// Whether `token` has a JWT's shape (dot-separated parts) rather than a
/// biscuit token's (base64url, which has no dots): which verifier to use.
pub fn looks_like_jwt(token: &str) -> bool {
    token.contains('.')
}

/// A verified JWT: who it is for, until when, and its grants.
#[derive(Debug, Clone)]
pub struct AtticJwt {
    subject: Option<String>,
    expires_at: Option<u64>,
    grants: CacheGrants,
}

impl AtticJwt {
    /// `sub`, which revocation by subject matches and uploads record.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The `caches` entries, in the token's order.
    pub fn grants(&self) -> &CacheGrants {
        &self.grants
    }

    /// Checks that `exp`, if any, has not passed at `now` (a request may
    /// outlive the moment its token was verified).
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), Refusal> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        match self.expires_at {
            Some(exp) if now > Duration::from_secs(exp) => Err(Refusal::Expired),
            _ => Ok(()),
        }
    }

    /// Checks that the token grants `permission` on `cache` at `now`, as
    /// Attic would decide it.
    pub fn authorize(
        &self,
        cache: &CacheName,
        permission: Permission,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        self.check_expiry(now)?;
        if self.grants.permissions_for(cache).allows(permission) {
            Ok(())
        } else {
            Err(Refusal::Denied)
        }
    }
}

#[cfg(test)]
mod tests;
