//! Who is asking, and may they: token extraction and permission checks.
//!
//! A token arrives as `Authorization: Bearer <token>` or, as Nix sends
//! netrc credentials, `Authorization: Basic base64(<user>:<token>)`. A
//! caller without the right to a cache cannot tell a private cache from a
//! missing one: both answer 401 to anonymous callers and 403 to tokens.
//!
//! Two kinds of token are accepted: our biscuit tokens, and Attic's JWTs
//! when `[jwt.signing]` (or Attic's variables) gives a key; a token with
//! dots is a JWT. Either is refused if its subject is revoked (`atticadm
//! revoke-token --subject`, or `[jwt.blacklist]`).
//!
//! A bad token (malformed, expired, revoked, another server's) is 401
//! wherever a token is needed, but on a public cache's pull routes it
//! counts as no token: Nix sends the netrc entry of a host to every cache
//! on it, so one stale entry must not break every public cache there.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use attic::cache::CacheName;
use attic_token::jwt::{AtticJwt, JwtError, JwtVerifier, looks_like_jwt};
use attic_token::{Permission, Refusal, RootPublicKey, Token, TokenError};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::config::TokenKeys;
use crate::database::Cache;
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// The caller, as its credentials say.
#[derive(Debug)]
pub struct Caller {
    credential: Credential,
}

#[derive(Debug)]
enum Credential {
    /// No `Authorization` header.
    Anonymous,
    /// A verified, unrevoked biscuit token.
    Token(Box<Token>),
    /// A verified, unrevoked Attic JWT.
    Jwt(Box<AtticJwt>),
    /// Credentials that do not verify, and why.
    Invalid(&'static str),
}

/// What tokens are checked against, built once from the configuration.
#[derive(Debug)]
pub struct TokenVerifier {
    biscuit: Option<RootPublicKey>,
    jwt: Option<JwtVerifier>,
    /// `[jwt.blacklist] subjects`: refused without asking the database.
    blacklist: HashSet<String>,
}

impl TokenVerifier {
    /// The verifier for the keys a configuration resolves to.
    pub fn new(keys: TokenKeys) -> Self {
        Self {
            biscuit: keys.biscuit_root_key().ok().map(|root| root.public()),
            jwt: keys.jwt,
            blacklist: keys.blacklist,
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ServerResult<Self> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Ok(Caller {
                credential: Credential::Anonymous,
            });
        };
        let credential = match verify(header, state).await {
            Ok(credential) => credential,
            Err(ServerError::InvalidToken(reason)) => Credential::Invalid(reason),
            Err(e) => return Err(e),
        };
        Ok(Caller { credential })
    }
}

/// The verified, unrevoked token an `Authorization` header carries.
async fn verify(header: &axum::http::HeaderValue, state: &AppState) -> ServerResult<Credential> {
    let header = header
        .to_str()
        .map_err(|_| ServerError::InvalidToken("the Authorization header is not text"))?;
    let text = token_text(header)?;
    if text.is_empty() {
        return Err(ServerError::InvalidToken("it is empty"));
    }
    let tokens = &state.tokens;
    let (credential, revocation_ids, subject) = if looks_like_jwt(&text) {
        let verifier = tokens.jwt.as_ref().ok_or(ServerError::InvalidToken(
            "it is a JWT, and this server has no [jwt.signing] key to verify JWTs with",
        ))?;
        let jwt = verifier
            .verify(&text, SystemTime::now())
            .map_err(|e| ServerError::InvalidToken(jwt_refusal(&e)))?;
        let subject = jwt.subject().map(str::to_owned);
        (Credential::Jwt(Box::new(jwt)), Vec::new(), subject)
    } else {
        let root = tokens.biscuit.as_ref().ok_or(ServerError::InvalidToken(
            "this server accepts only JWTs: it has no token-root-key for biscuit tokens",
        ))?;
        // Size, signatures, block count and the shape of every block, then
        // expiry, then revocation: nothing in a token is ever evaluated, so
        // deciding a crafted one costs what deciding a normal one does.
        let token = Token::parse(&text, root).map_err(|e| match e {
            TokenError::TooLarge => {
                ServerError::InvalidToken("it is larger than any token this server accepts")
            }
            TokenError::Unrecognised(_) => ServerError::InvalidToken(
                "it holds conditions that neither this server nor atticadm attenuate-token writes",
            ),
            _ => ServerError::InvalidToken("it is malformed or not signed by this server"),
        })?;
        if token.check_expiry().is_err() {
            return Err(ServerError::InvalidToken("it has expired"));
        }
        let ids = token.revocation_ids();
        let subject = token.subject().map(str::to_owned);
        (Credential::Token(Box::new(token)), ids, subject)
    };
    if subject
        .as_ref()
        .is_some_and(|s| tokens.blacklist.contains(s))
    {
        return Err(ServerError::InvalidToken("its subject has been revoked"));
    }
    // One query for both lists, as there was one for revocation ids alone.
    if state
        .database
        .is_revoked(&revocation_ids, subject.as_deref())
        .await?
    {
        return Err(ServerError::InvalidToken("it has been revoked"));
    }
    Ok(credential)
}

/// The reason a client is told for a refused JWT: which check failed,
/// never what the key is.
fn jwt_refusal(error: &JwtError) -> &'static str {
    match error {
        JwtError::TooLarge => "it is larger than any token this server accepts",
        JwtError::NotThreeParts
        | JwtError::NotBase64 { .. }
        | JwtError::BadHeader(_)
        | JwtError::NotJwtType => "it is not a well-formed JWT",
        JwtError::CriticalHeader => {
            "it requires JWT header extensions this server does not support"
        }
        JwtError::WrongAlgorithm { .. } => {
            "it is signed with an algorithm this server does not accept"
        }
        JwtError::BadSignature => "it is malformed or not signed by this server",
        JwtError::BadClaims(_) => "its claims are not Attic's",
        JwtError::IssuedInFuture | JwtError::NotYetValid => "it is not valid yet",
        JwtError::Expired => "it has expired",
        JwtError::WrongIssuer => "its issuer is not the one this server accepts",
        JwtError::WrongAudience => "its audience is not one this server accepts",
    }
}

fn token_text(header: &str) -> ServerResult<String> {
    let (scheme, value) = header.split_once(' ').ok_or(ServerError::InvalidToken(
        "the Authorization header has no scheme",
    ))?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Ok(value.trim().to_owned()),
        "basic" => {
            let decoded = BASE64
                .decode(value.trim())
                .map_err(|_| ServerError::InvalidToken("basic credentials are not base64"))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| ServerError::InvalidToken("basic credentials are not text"))?;
            let (_user, password) = decoded.split_once(':').ok_or(ServerError::InvalidToken(
                "basic credentials lack a password",
            ))?;
            Ok(password.to_owned())
        }
        _ => Err(ServerError::InvalidToken("use the Bearer or Basic scheme")),
    }
}

impl Caller {
    /// The token's subject, recorded on uploads.
    pub fn subject(&self) -> Option<String> {
        match &self.credential {
            Credential::Token(token) => token.subject().map(str::to_owned),
            Credential::Jwt(jwt) => jwt.subject().map(str::to_owned),
            Credential::Anonymous | Credential::Invalid(_) => None,
        }
    }

    /// Whether no credentials came with the request.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.credential, Credential::Anonymous)
    }

    /// Requires a valid token, whatever it grants: for work that must not
    /// be done for anonymous callers, before the cache is even known.
    pub fn require_token(&self) -> ServerResult<()> {
        match &self.credential {
            Credential::Token(_) | Credential::Jwt(_) => Ok(()),
            Credential::Anonymous => Err(ServerError::Unauthenticated),
            Credential::Invalid(reason) => Err(ServerError::InvalidToken(reason)),
        }
    }

    /// Checks `permission` from the token alone.
    pub fn require(&self, cache: &CacheName, permission: Permission) -> ServerResult<()> {
        let decision = match &self.credential {
            Credential::Token(token) => token.authorize(cache, permission),
            Credential::Jwt(jwt) => jwt.authorize(cache, permission, SystemTime::now()),
            Credential::Anonymous => return Err(ServerError::Unauthenticated),
            Credential::Invalid(reason) => return Err(ServerError::InvalidToken(reason)),
        };
        match decision {
            Ok(()) => Ok(()),
            Err(Refusal::Expired) => Err(ServerError::InvalidToken("it has expired")),
            Err(Refusal::Denied) => Err(ServerError::Forbidden { permission }),
        }
    }

    /// Whether the token grants anything at all on `cache`: what makes a
    /// cache appear in the caller's cache listing. Decided from the token
    /// alone, so it says nothing about whether the cache exists.
    pub fn holds_any_permission(&self, cache: &CacheName) -> bool {
        Permission::ALL
            .iter()
            .any(|&permission| self.require(cache, permission).is_ok())
    }

    /// Checks `permission` and returns the live cache.
    pub async fn require_cache(
        &self,
        state: &AppState,
        name: &CacheName,
        permission: Permission,
    ) -> ServerResult<Cache> {
        self.require(name, permission)?;
        state
            .database
            .find_cache(name)
            .await?
            .ok_or_else(|| ServerError::NoSuchCache(name.to_string()))
    }

    /// Checks `permission` and returns the live cache, for a cache's admin
    /// routes: a token that grants nothing at all on the cache is told it
    /// does not exist (404, as for a missing cache), so a tenant cannot
    /// learn another's cache names; one with some right there but not
    /// this one gets 403.
    pub async fn require_cache_undiscoverable(
        &self,
        state: &AppState,
        name: &CacheName,
        permission: Permission,
    ) -> ServerResult<Cache> {
        match self.require(name, permission) {
            Err(ServerError::Forbidden { .. })
                if !Permission::ALL
                    .iter()
                    .any(|p| self.require(name, *p).is_ok()) =>
            {
                Err(ServerError::NoSuchCache(name.to_string()))
            }
            Err(refused) => Err(refused),
            Ok(()) => state
                .database
                .find_cache(name)
                .await?
                .ok_or_else(|| ServerError::NoSuchCache(name.to_string())),
        }
    }

    /// The cache if the caller may pull from it: with a token that grants
    /// pull, or from a public cache by anyone, whatever token they send.
    /// Shared with the read cache: every pull reads it, and a copy of its
    /// keys, names and upstreams per request was a handful of allocations.
    pub async fn pullable_cache(
        &self,
        state: &AppState,
        name: &CacheName,
    ) -> ServerResult<Arc<Cache>> {
        let granted = self.require(name, Permission::Pull);
        let cache = match state.read_cache.caches.get(name) {
            Some(cache) => Some(cache),
            None => {
                let cache = state.database.find_cache(name).await?.map(Arc::new);
                if let Some(cache) = &cache {
                    state.read_cache.caches.insert(name.clone(), cache.clone());
                }
                cache
            }
        };
        match (granted, cache) {
            (Ok(()), Some(cache)) => Ok(cache),
            (Ok(()), None) => Err(ServerError::NoSuchCache(name.to_string())),
            (Err(_), Some(cache)) if cache.is_public => Ok(cache),
            (Err(denied), _) => Err(denied),
        }
    }
}
