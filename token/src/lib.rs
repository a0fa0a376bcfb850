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

mod pattern;
mod permission;

use std::collections::HashMap;
use std::time::SystemTime;

use biscuit_auth::builder::{BlockBuilder, Term};
use biscuit_auth::error::{FailedCheck, Logic, Token as BiscuitError};
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair, PrivateKey, UnverifiedBiscuit};
use thiserror::Error;

pub use attic::cache::CacheName;
pub use biscuit_auth::PublicKey as RootPublicKey;
pub use pattern::{BadCacheNamePattern, CacheNamePattern};
pub use permission::{BadPermission, Permission};

/// Why a token was refused or could not be made.
#[derive(Debug, Error)]
pub enum TokenError {
    /// Not a token, or not signed by our root key, or tampered with.
    #[error("the token is malformed or its signature does not verify")]
    Invalid(#[source] BiscuitError),
    /// Past its expiry (in its own block or an attenuation).
    #[error("the token has expired")]
    Expired,
    /// Valid, but it does not grant this permission on this cache.
    #[error("the token does not grant {permission} on cache {cache}")]
    Denied {
        /// The cache asked for.
        cache: CacheName,
        /// The permission asked for.
        permission: Permission,
    },
    /// Larger, or with more attenuation blocks, than any token this server
    /// makes or a holder needs: refused before any costly work.
    #[error("the token is too large: at most {MAX_TOKEN_LEN} characters and {MAX_BLOCKS} blocks")]
    TooLarge,
    /// Its conditions take more facts, iterations or time to check than
    /// any token this server makes.
    #[error("the token's conditions are too costly to check")]
    TooComplex,
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
        Ok(Token(biscuit))
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
            let clauses: Vec<String> = (0..caches.len())
                .map(|i| format!("cache($cache), $cache.matches({{cache{i}}})"))
                .collect();
            if clauses.is_empty() {
                code.push_str("check if false;\n");
            } else {
                code.push_str(&format!("check if {};\n", clauses.join(" or ")));
            }
            for (i, pattern) in caches.iter().enumerate() {
                params.insert(format!("cache{i}"), Term::Str(pattern.to_regex()));
            }
        }
        if let Some(permissions) = &self.permissions {
            let clauses: Vec<String> = (0..permissions.len())
                .map(|i| format!("operation({{op{i}}})"))
                .collect();
            if clauses.is_empty() {
                code.push_str("check if false;\n");
            } else {
                code.push_str(&format!("check if {};\n", clauses.join(" or ")));
            }
            for (i, permission) in permissions.iter().enumerate() {
                params.insert(format!("op{i}"), Term::Str(permission.as_str().to_owned()));
            }
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

/// Appends an attenuation to a token given as text, without verifying it
/// (the holder need not know the root key); returns the narrower token.
pub fn attenuate(token: &str, attenuation: &Attenuation) -> Result<String, TokenError> {
    let unverified = UnverifiedBiscuit::from_base64(token.trim()).map_err(TokenError::Invalid)?;
    unverified
        .append(attenuation.block()?)
        .and_then(|t| t.to_base64())
        .map_err(TokenError::Internal)
}

fn date(t: SystemTime) -> Term {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Term::Date(secs)
}

/// Longest token text accepted. A token from `make-token` with a dozen
/// grants is under 1,000 characters, and each attenuation adds about 200.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Most blocks accepted: the authority block and attenuations.
pub const MAX_BLOCKS: usize = 8;

/// Datalog limits per authorisation. Tokens are untrusted input, so a
/// crafted one must cost about what a normal one does: few facts and few
/// iterations (ours need a handful of each) are what bound its work. The
/// time bound is only a backstop: it is wall-clock time, so on a starved
/// CPU even a normal token takes milliseconds (20 ms refused valid tokens
/// on 2 busy cores), and a refusal there would lock users out under load.
fn limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 256,
        max_iterations: 32,
        max_time: std::time::Duration::from_millis(250),
    }
}

/// A token whose signature chain has been verified against the root key.
#[derive(Clone)]
pub struct Token(Biscuit);

impl Token {
    /// Parses and verifies a token (base64url, as sent in `Authorization`),
    /// refusing one over [`MAX_TOKEN_LEN`] or [`MAX_BLOCKS`] first.
    pub fn parse(s: &str, root: &RootPublicKey) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let biscuit = Biscuit::from_base64(s, *root).map_err(TokenError::Invalid)?;
        if biscuit.block_count() > MAX_BLOCKS {
            return Err(TokenError::TooLarge);
        }
        Ok(Self(biscuit))
    }

    /// The token as text.
    pub fn to_base64(&self) -> Result<String, TokenError> {
        self.0.to_base64().map_err(TokenError::Internal)
    }

    /// The identifier of this token's own last block, hex-encoded: on the
    /// revocation list, it revokes this token and everything attenuated
    /// from it (they all carry it), never its parent or siblings (they
    /// do not).
    pub fn own_revocation_id(&self) -> String {
        let ids = self.0.revocation_identifiers();
        hex::encode(
            ids.last()
                .expect("a token has at least its authority block"),
        )
    }

    /// One identifier per block, hex-encoded: the token is revoked if any
    /// of them is on the revocation list.
    pub fn revocation_ids(&self) -> Vec<String> {
        self.0
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect()
    }

    /// The subject the root key signed, if any.
    pub fn subject(&self) -> Option<String> {
        let mut authorizer = biscuit_auth::AuthorizerBuilder::new()
            .set_limits(limits())
            .build(&self.0)
            .ok()?;
        let subjects: Vec<(String,)> = authorizer.query("data($s) <- subject($s)").ok()?;
        subjects.into_iter().next().map(|(s,)| s)
    }

    /// Checks that no block's expiry has passed, whatever the token grants.
    pub fn check_expiry(&self) -> Result<(), TokenError> {
        let mut authorizer = biscuit_auth::AuthorizerBuilder::new()
            .code("allow if true;")
            .map(|b| b.time().set_limits(limits()))
            .and_then(|b| b.build(&self.0))
            .map_err(TokenError::Internal)?;
        match authorizer.authorize() {
            Ok(_) => Ok(()),
            Err(BiscuitError::FailedLogic(
                Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
            )) if checks.iter().any(is_expiry_check) => Err(TokenError::Expired),
            // Other checks (cache, operation) need the request's facts;
            // `authorize` judges them.
            Err(BiscuitError::FailedLogic(_)) => Ok(()),
            Err(BiscuitError::RunLimit(_)) => Err(TokenError::TooComplex),
            Err(e) => Err(TokenError::Internal(e)),
        }
    }

    /// Checks that the token, with all its attenuations, grants `permission`
    /// on `cache` now.
    pub fn authorize(&self, cache: &CacheName, permission: Permission) -> Result<(), TokenError> {
        let code = "cache({cache});\noperation({op});\n\
                    allow if right($re, $op), operation($op), cache($cache), $cache.matches($re);\n\
                    deny if true;";
        let params = HashMap::from([
            ("cache".to_owned(), Term::Str(cache.as_str().to_owned())),
            ("op".to_owned(), Term::Str(permission.as_str().to_owned())),
        ]);
        let mut authorizer = biscuit_auth::AuthorizerBuilder::new()
            .code_with_params(code, params, HashMap::new())
            .map(|b| b.time().set_limits(limits()))
            .and_then(|b| b.build(&self.0))
            .map_err(TokenError::Internal)?;
        match authorizer.authorize() {
            Ok(_) => Ok(()),
            Err(BiscuitError::FailedLogic(
                Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
            )) if checks.iter().any(is_expiry_check) => Err(TokenError::Expired),
            Err(BiscuitError::FailedLogic(_)) => Err(TokenError::Denied {
                cache: cache.clone(),
                permission,
            }),
            Err(BiscuitError::RunLimit(_)) => Err(TokenError::TooComplex),
            Err(e) => Err(TokenError::Internal(e)),
        }
    }
}

fn is_expiry_check(check: &FailedCheck) -> bool {
    match check {
        FailedCheck::Block(block) => block.rule.contains("time($time)"),
        FailedCheck::Authorizer(_) => false,
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
