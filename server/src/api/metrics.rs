//! `GET /metrics`: the server's counters ([`crate::metrics`]) in the
//! OpenMetrics text format. Served on the operators' listener
//! (`metrics-listen`), and on the public one only to holders of
//! `metrics-token`: even aggregates such as stored bytes tell a pusher
//! whether another tenant held what it pushed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// Serves the counters.
pub async fn metrics(State(state): State<Arc<AppState>>) -> ServerResult<Response> {
    let text = state
        .metrics
        .encode()
        .map_err(ServerError::MetricsEncoding)?;
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Lets `/metrics` on the public listener through only with
/// `Authorization: Bearer <metrics-token>`.
pub async fn require_metrics_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let expected = state.config.metrics_token.as_deref().unwrap_or_default();
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    if expected.is_empty() || !same_secret(presented.as_bytes(), expected.as_bytes()) {
        return Err(ServerError::Unauthenticated);
    }
    Ok(next.run(request).await)
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
