//! Exchanging a CI job's OpenID Connect ID token for a short-lived token
//! of ours (`POST /_api/v1/oidc/exchange`): the whole decision is
//! [`exchange`], one function, so that it can be read and audited in one
//! place. The issuer's keys are fetched and held by [`keys`]; the token is
//! verified by `attic_token::oidc`; the rules come from `[oidc]`.

pub mod keys;

use crate::database::{Actor, AuditAction, AuditEvent};
use std::time::{Duration, SystemTime};

use attic_token::oidc::{IdTokenError, UnverifiedIdToken};
use attic_token::{RootKey, TokenSpec};
use thiserror::Error;

use crate::config::{ConfigError, ServerConfig};
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;
use keys::IssuerKeys;

/// The configured issuers with their keys, and the key tokens are minted
/// with.
#[derive(Debug, Default)]
pub struct OidcExchanger {
    issuers: Vec<IssuerKeys>,
    root: Option<RootKey>,
}

impl OidcExchanger {
    /// The exchanger for `[oidc]` (none configured: every ID token is
    /// refused as of an unknown issuer).
    pub fn new(config: &ServerConfig) -> Result<Self, ConfigError> {
        let issuers = config.oidc.resolve()?;
        if issuers.is_empty() {
            return Ok(Self::default());
        }
        let root = config.token_keys()?.into_biscuit_root_key()?;
        let http = keys::http_client().map_err(|e| ConfigError::InvalidAt {
            key: "oidc.issuers".into(),
            reason: format!("cannot make an HTTP client to fetch issuers' keys: {e}"),
        })?;
        Ok(Self {
            issuers: issuers
                .into_iter()
                .map(|issuer| IssuerKeys::new(issuer, http.clone()))
                .collect(),
            root: Some(root),
        })
    }
}

/// Why an ID token was refused: for the log only; the client is told
/// that it was refused and no more.
#[derive(Debug, Error)]
pub enum OidcRefusal {
    /// The token claims an issuer not configured (or none).
    #[error("the ID token's issuer {0:?} is not configured in [oidc]")]
    UnknownIssuer(Option<String>),
    /// Verification failed.
    #[error("the ID token does not verify")]
    Invalid(#[source] IdTokenError),
    /// The subject the token would be minted for is revoked.
    #[error("the subject {0:?} is revoked")]
    Revoked(String),
}

/// A minted token.
#[derive(Debug)]
pub struct ExchangedToken {
    /// The token, base64.
    pub token: String,
    /// Its subject, `oidc:<issuer host>:<sub>`.
    pub subject: String,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// Verifies `id_token` (size, header, issuer, the issuer's key, the
/// signature, `iss`, `aud`, times), finds the first rule of its issuer
/// whose matchers its claims satisfy, and mints a token granting what
/// that rule grants for the rule's validity, whose subject is
/// `oidc:<issuer host>:<sub>` unless that subject is revoked.
///
/// 401 for a token that does not verify, 403 when it verifies but no rule
/// matches, 503 when the issuer's keys cannot be fetched.
pub async fn exchange(state: &AppState, id_token: &str) -> ServerResult<ExchangedToken> {
    let exchanger = &state.oidc;
    let refused = |refusal| ServerError::IdTokenRefused(Box::new(refusal));
    let token = UnverifiedIdToken::parse(id_token).map_err(|e| refused(OidcRefusal::Invalid(e)))?;
    let claimed = token.claimed_issuer();
    let issuer = exchanger
        .issuers
        .iter()
        .find(|keys| Some(&keys.issuer.issuer) == claimed.as_ref())
        .ok_or_else(|| refused(OidcRefusal::UnknownIssuer(claimed.clone())))?;
    let keys = issuer
        .keys_for(token.key_id())
        .await
        .map_err(ServerError::OidcIssuerUnavailable)?;
    let config = &issuer.issuer;
    let verified = token
        .verify(&keys, &config.issuer, &config.audience, SystemTime::now())
        .map_err(|e| refused(OidcRefusal::Invalid(e)))?;
    let subject = format!("oidc:{}:{}", config.host(), verified.subject());
    let Some((index, rule)) = config
        .rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.matches(|name| verified.string_claim(name)))
    else {
        return Err(ServerError::NoMatchingOidcRule { subject });
    };
    if state.database.is_revoked(&[], Some(&subject)).await? {
        return Err(refused(OidcRefusal::Revoked(subject)));
    }
    let root = exchanger
        .root
        .as_ref()
        .expect("an exchanger with issuers has a root key");
    let expires_at = whole_seconds(SystemTime::now() + rule.validity);
    let minted = TokenSpec {
        subject: subject.clone(),
        expires_at: Some(expires_at),
        grants: rule.grants.clone(),
    }
    .sign(root)
    .and_then(|token| token.to_base64())
    .map_err(ServerError::TokenMinting)?;
    tracing::info!(
        issuer = %config.issuer,
        %subject,
        rule = index,
        grants = ?rule.grants.iter().map(|(p, perm)| format!("{perm} {}", p.as_str())).collect::<Vec<_>>(),
        expires_in = %humantime::format_duration(rule.validity),
        "exchanged an OIDC ID token"
    );
    state
        .database
        .record_audit(
            AuditEvent::new(AuditAction::IssueToken, Actor::Token(Some(subject.clone())))
                .with_detail(format!(
                    "exchanged an ID token of {} (rule {index}) for a token valid {}",
                    config.issuer,
                    humantime::format_duration(rule.validity)
                )),
        )
        .await?;
    Ok(ExchangedToken {
        token: minted,
        subject,
        expires_at,
    })
}

/// `t` rounded down to a whole second: what the reply and the token say.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let seconds = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}
