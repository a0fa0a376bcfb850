//! `POST /_api/v1/oidc/exchange`: a CI job's OpenID Connect ID token, in
//! the JSON body or as `Authorization: Bearer`, for a short-lived token
//! of ours. The decision is [`crate::oidc::exchange`]'s.

use std::sync::Arc;
use std::time::SystemTime;

use attic::api::v1::oidc_exchange::{OidcExchangeRequest, OidcExchangeResponse};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;

use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// Largest body taken: an ID token is bounded well below it
/// (`attic_token::oidc::MAX_ID_TOKEN_LEN`).
pub const MAX_BODY: usize = 32 * 1024;

/// 200 with the minted token; 401, 403 or 503 as [`crate::oidc::exchange`]
/// decides; 400 for a body that is not `{"token": "..."}`.
pub async fn exchange(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> ServerResult<Json<OidcExchangeResponse>> {
    let bearer = request.headers().get(AUTHORIZATION).cloned();
    let body = crate::api::read_body(request).await?;
    let id_token = if body.is_empty() {
        bearer
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned())
            .ok_or_else(|| {
                ServerError::bad_request(
                    "MissingIdToken",
                    "send the ID token as {\"token\": \"...\"} or as Authorization: Bearer",
                )
            })?
    } else {
        let request: OidcExchangeRequest = serde_json::from_slice(&body).map_err(|e| {
            ServerError::bad_request(
                "InvalidJson",
                format!("expected {{\"token\": \"...\"}}: {e}"),
            )
        })?;
        request.token
    };
    let exchanged = crate::oidc::exchange(&state, &id_token).await?;
    Ok(Json(OidcExchangeResponse {
        token: exchanged.token,
        expires_at: exchanged
            .expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        subject: exchanged.subject,
    }))
}
