//! `POST /_api/v1/oidc/exchange`: an OpenID Connect ID token (from a CI
//! job) in, a short-lived token of this server out, scoped by the first
//! of the server's rules for that issuer that the ID token's claims match.

use serde::{Deserialize, Serialize};

/// The request body. The ID token may come as `Authorization: Bearer`
/// instead, with an empty body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcExchangeRequest {
    /// The ID token, a JWT.
    pub token: String,
}

/// The reply: the minted token and what identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcExchangeResponse {
    /// A token of this server, used as `attic login` stores any token.
    pub token: String,
    /// When it stops working, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// Its subject, `oidc:<issuer host>:<sub claim>`: what `atticadm
    /// revoke-token --subject` names to revoke it.
    pub subject: String,
}
