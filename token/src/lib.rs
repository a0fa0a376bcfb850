//! Biscuit tokens that grant permissions on caches by name pattern.
//!
//! The server signs tokens with its [`RootKey`]. A token's authority block
//! holds `right(<pattern regex>, <permission>)` facts, an optional
//! `subject(..)`, and an optional expiry check. Anyone holding a token can
//! [attenuate](attenuate) it offline by appending a block of checks: fewer
//! caches, fewer permissions, an earlier expiry. Appended blocks can only add
//! checks that must also pass, so an attenuated token never exceeds its
//! parent. Revocation is by the token's revocation identifiers, which the
//! server keeps in its database.
//!
//! Beside them, [`jwt`] verifies the JWTs Attic's `atticadm make-token`
//! mints, when the server is configured with Attic's signing key.
//! [`oidc`] verifies the ID tokens CI systems issue, which the server
//! exchanges for a short-lived token of ours.
//!
//! Tokens are Datalog, but this crate never runs it: a token is read by the
//! shapes of its blocks into grants and conditions ([`claims`]), and one
//! that holds anything else is refused. Deciding any token, however it was
//! crafted, costs about what deciding a normal one does.

mod claims;
pub mod jwt;
pub mod oidc;
mod pattern;
mod permission;

use std::collections::HashMap;
use std::time::SystemTime;

use biscuit_auth::builder::{BlockBuilder, Term};
use biscuit_auth::error::Token as BiscuitError;
use biscuit_auth::{Biscuit, KeyPair, PrivateKey, UnverifiedBiscuit};
use thiserror::Error;

pub use attic::cache::CacheName;
pub use biscuit_auth::PublicKey as RootPublicKey;
use claims::Claims;
pub use claims::{Refusal, UnrecognisedBlock};
pub use pattern::{BadCacheNamePattern, CacheNamePattern};
pub use permission::{BadPermission, Permission};

/// Why a token was refused or could not be made.
#[derive(Debug, Error)]
pub enum TokenError {
    /// Not a token, or not signed by our root key, or tampered with.
    #[error("the token is malformed or its signature does not verify")]
    Invalid(#[source] BiscuitError),
    /// Larger, or with more attenuation blocks, than any token this server
    /// makes or a holder needs: refused before any costly work.
    #[error("the token is too large: at most {MAX_TOKEN_LEN} characters and {MAX_BLOCKS} blocks")]
    TooLarge,
    /// Signed, but a block holds something neither this server nor
    /// `atticadm attenuate-token` writes: refused without evaluating it.
    #[error("the token holds conditions this server does not accept ({0})")]
    Unrecognised(#[source] UnrecognisedBlock),
    /// Attenuating would make a token the server refuses.
    #[error(
        "attenuating would make a token of {blocks} blocks and {len} characters; \
         the server accepts at most {MAX_BLOCKS} blocks and {MAX_TOKEN_LEN} characters: \
         attenuate the token this one was attenuated from instead"
    )]
    AttenuationTooLarge {
        /// Blocks the attenuated token would have.
        blocks: usize,
        /// Its length as text.
        len: usize,
    },
    /// The root key in the configuration does not parse.
    #[error("the token root key is invalid: expected ed25519-private/<64 hex digits>")]
    BadRootKey,
    /// Building or checking the token failed unexpectedly.
    #[error("token processing failed")]
    Internal(#[source] BiscuitError),
}

/// The server's token signing key.
pub struct RootKey(KeyPair);

impl RootKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(KeyPair::new())
    }

    /// The key whose ed25519 private bytes are `seed`.
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        let private = PrivateKey::from_bytes(&seed, biscuit_auth::Algorithm::Ed25519)
            .expect("any 32 bytes are an ed25519 private key");
        Self(KeyPair::from(&private))
    }

    /// Parses `ed25519-private/<hex>`, the form [`RootKey::to_config_string`] writes.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let private: PrivateKey = s.trim().parse().map_err(|_| TokenError::BadRootKey)?;
        Ok(Self(KeyPair::from(&private)))
    }

    /// The key as the configuration file stores it. Secret.
    pub fn to_config_string(&self) -> String {
        self.0.private().to_prefixed_string()
    }

    /// The public half, which verifies tokens.
    pub fn public(&self) -> RootPublicKey {
        self.0.public()
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKey({})", self.public())
    }
}

/// What a new token grants.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// Who the token is for, recorded as the uploader of what it pushes.
    pub subject: String,
    /// When it stops working; `None` for never.
    pub expires_at: Option<SystemTime>,
    /// Permissions, each on the caches a pattern matches.
    pub grants: Vec<(CacheNamePattern, Permission)>,
}

impl TokenSpec {
    /// Signs the token with the root key.
    pub fn sign(&self, root: &RootKey) -> Result<Token, TokenError> {
        let mut code = String::from("subject({subject});\n");
        let mut params = HashMap::from([("subject".to_owned(), Term::Str(self.subject.clone()))]);
        for (i, (pattern, permission)) in self.grants.iter().enumerate() {
            code.push_str(&format!("right({{re{i}}}, {{perm{i}}});\n"));
            params.insert(format!("re{i}"), Term::Str(pattern.to_regex()));
            params.insert(
                format!("perm{i}"),
                Term::Str(permission.as_str().to_owned()),
            );
        }
        if let Some(expiry) = self.expires_at {
            code.push_str("check if time($time), $time <= {expiry};\n");
            params.insert("expiry".to_owned(), date(expiry));
        }
        let biscuit = Biscuit::builder()
            .code_with_params(code, params, HashMap::new())
            .and_then(|b| b.build(&root.0))
            .map_err(TokenError::Internal)?;
        Token::from_biscuit(biscuit)
    }
}

/// A narrowing of a token that its holder applies without the root key.
#[derive(Debug, Clone, Default)]
pub struct Attenuation {
    /// Only caches matching one of these; `None` keeps the parent's.
    pub caches: Option<Vec<CacheNamePattern>>,
    /// Only these permissions; `None` keeps the parent's.
    pub permissions: Option<Vec<Permission>>,
    /// Expire by then at the latest; `None` keeps the parent's.
    pub expires_at: Option<SystemTime>,
}

impl Attenuation {
    fn block(&self) -> Result<BlockBuilder, TokenError> {
        let mut code = String::new();
        let mut params = HashMap::new();
        if let Some(caches) = &self.caches {
            push_any_of_check(
                &mut code,
                &mut params,
                "cache",
                |param| format!("cache($cache), $cache.matches({{{param}}})"),
                caches.iter().map(|pattern| Term::Str(pattern.to_regex())),
            );
        }
        if let Some(permissions) = &self.permissions {
            push_any_of_check(
                &mut code,
                &mut params,
                "op",
                |param| format!("operation({{{param}}})"),
                permissions
                    .iter()
                    .map(|permission| Term::Str(permission.as_str().to_owned())),
            );
        }
        if let Some(expiry) = self.expires_at {
            code.push_str("check if time($time), $time <= {expiry};\n");
            params.insert("expiry".to_owned(), date(expiry));
        }
        BlockBuilder::new()
            .code_with_params(code, params, HashMap::new())
            .map_err(TokenError::Internal)
    }
}

/// Appends to `code` a check that one of `values` holds: `clause(param)`
/// for each, joined by `or`, the value bound to the parameter `param`
/// (`{prefix}0`, `{prefix}1`, ...). No values is a check that always
/// fails: a choice of nothing allows nothing.
fn push_any_of_check(
    code: &mut String,
    params: &mut HashMap<String, Term>,
    prefix: &str,
    clause: impl Fn(&str) -> String,
    values: impl Iterator<Item = Term>,
) {
    let mut clauses = Vec::new();
    for (i, value) in values.enumerate() {
        let param = format!("{prefix}{i}");
        clauses.push(clause(&param));
        params.insert(param, value);
    }
    if clauses.is_empty() {
        code.push_str("check if false;\n");
    } else {
        code.push_str(&format!("check if {};\n", clauses.join(" or ")));
    }
}

/// Appends an attenuation to a token given as text, without verifying it
/// (the holder need not know the root key); returns the narrower token.
pub fn attenuate(token: &str, attenuation: &Attenuation) -> Result<String, TokenError> {
    let unverified = UnverifiedBiscuit::from_base64(token.trim()).map_err(TokenError::Invalid)?;
    let narrowed = unverified
        .append(attenuation.block()?)
        .and_then(|t| t.to_base64())
        .map_err(TokenError::Internal)?;
    let blocks = unverified.block_count() + 1;
    if blocks > MAX_BLOCKS || narrowed.len() > MAX_TOKEN_LEN {
        return Err(TokenError::AttenuationTooLarge {
            blocks,
            len: narrowed.len(),
        });
    }
    Ok(narrowed)
}

/// What a token says of itself, read without verifying it: a client holds
/// no root key, yet should tell its user that their token is about to
/// expire. Nothing read this way may decide access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedClaims {
    /// When it stops working: the earliest expiry of any block,
    /// attenuations included (a JWT's `exp`); `None` for never.
    pub expires_at: Option<SystemTime>,
    /// Whom it names (a JWT's `sub`).
    pub subject: Option<String>,
}

/// Reads this crate's tokens and Attic's JWTs without verifying them; see
/// [`UnverifiedClaims`]. `None` for a token that cannot be read.
pub fn read_unverified(token: &str) -> Option<UnverifiedClaims> {
    let token = token.trim();
    let (expires_at, subject) = if jwt::looks_like_jwt(token) {
        jwt::read_unverified(token)?
    } else {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let bytes = UnverifiedBiscuit::from_base64(token)
            .and_then(|t| t.to_vec())
            .ok()?;
        let claims = Claims::read_serialised(&bytes).ok()?;
        (claims.expires_at(), claims.subject)
    };
    Some(UnverifiedClaims {
        expires_at: expires_at
            .map(|seconds| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds)),
        subject,
    })
}

fn date(t: SystemTime) -> Term {
    Term::Date(claims::seconds(t))
}

/// Longest token text accepted. A token from `make-token` with a dozen
/// grants is under 1,000 characters, and each attenuation adds about 200.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Most blocks accepted: the authority block and attenuations.
pub const MAX_BLOCKS: usize = 8;

/// A token whose signature chain has been verified against the root key
/// and whose blocks have been read into what they grant and require.
#[derive(Clone)]
pub struct Token {
    biscuit: Biscuit,
    claims: Claims,
}

impl Token {
    /// Parses and verifies a token (base64url, as sent in `Authorization`):
    /// its size first, then its signatures, its block count and the shape
    /// of every block. Nothing in it is ever evaluated: see [`claims`].
    pub fn parse(s: &str, root: &RootPublicKey) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let biscuit = Biscuit::from_base64(s, *root).map_err(TokenError::Invalid)?;
        Self::from_biscuit(biscuit)
    }

    fn from_biscuit(biscuit: Biscuit) -> Result<Self, TokenError> {
        if biscuit.block_count() > MAX_BLOCKS {
            return Err(TokenError::TooLarge);
        }
        let claims = Claims::read(&biscuit).map_err(TokenError::Unrecognised)?;
        Ok(Self { biscuit, claims })
    }

    /// The token as text.
    pub fn to_base64(&self) -> Result<String, TokenError> {
        self.biscuit.to_base64().map_err(TokenError::Internal)
    }

    /// The identifier of this token's own last block, hex-encoded: on the
    /// revocation list, it revokes this token and everything attenuated
    /// from it (they all carry it), never its parent or siblings (they
    /// do not).
    pub fn own_revocation_id(&self) -> String {
        let ids = self.biscuit.revocation_identifiers();
        hex::encode(
            ids.last()
                .expect("a token has at least its authority block"),
        )
    }

    /// One identifier per block, hex-encoded: the token is revoked if any
    /// of them is on the revocation list.
    pub fn revocation_ids(&self) -> Vec<String> {
        self.biscuit
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect()
    }

    /// The subject the root key signed, if any.
    pub fn subject(&self) -> Option<&str> {
        self.claims.subject.as_deref()
    }

    /// Checks that no block's expiry has passed, whatever the token grants.
    pub fn check_expiry(&self) -> Result<(), Refusal> {
        self.claims.check_expiry(SystemTime::now())
    }

    /// Checks that the token, with all its attenuations, grants `permission`
    /// on `cache` now.
    pub fn authorize(&self, cache: &CacheName, permission: Permission) -> Result<(), Refusal> {
        self.claims.decide(cache, permission, SystemTime::now())
    }
}

impl std::fmt::Debug for Token {
    /// Never prints the token itself, which is a bearer secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(subject={:?})", self.subject())
    }
}

#[cfg(test)]
mod tests;
