//! One log line per request: the client's address, method, matched route,
//! cache, status and the time until the response headers, at info level
//! (health probes and metric scrapes at debug). Never a header, so
//! never a token. Server errors are logged at error level with their cause.

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ErrorDetail;

/// The address a request came from, in its extensions: the peer's, or,
/// on a connection from one of `[http] trusted-proxies`, the client the
/// proxy forwarded for (`X-Forwarded-For`). The connection limits count
/// the same address, so the log names who they held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The client address as logged: `-` when unknown.
struct LoggedClient(Option<ClientAddress>);

impl fmt::Display for LoggedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Outer layer: times the request and logs it with what
/// [`tag_route`] recorded.
pub async fn log_requests(request: Request, next: Next) -> Response {
    let start = Instant::now();
    // Clones that share their bytes with the request: this runs on every
    // request, so it allocates nothing of its own.
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path();
    // Absent only for a request not served by our listener (unit tests).
    let client = LoggedClient(request.extensions().get::<ClientAddress>().copied());
    let response = next.run(request).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let cache = route.and_then(|r| cache_of(r, path));
    let route = route.unwrap_or("(no route)");
    let cache = cache.unwrap_or("-");
    match response.extensions().get::<ErrorDetail>() {
        // Try-again answers (storage briefly unreadable, a chunk reclaimed
        // under an upload) are not failures of the server.
        Some(ErrorDetail(detail))
            if response.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::warn!(%client, %method, %route, %cache, %path, status, latency_ms, error = %detail, "request refused for now");
        }
        Some(ErrorDetail(detail)) if response.status().is_server_error() => {
            tracing::error!(%client, %method, %route, %cache, %path, status, latency_ms, error = %detail, "request failed");
        }
        Some(ErrorDetail(detail)) => {
            tracing::info!(%client, %method, %route, %cache, %path, status, latency_ms, error = %detail, "request refused");
        }
        // Probes and scrapes come every few seconds: debug, not info.
        None if matches!(route, "/_health" | "/metrics") => {
            tracing::debug!(%client, %method, %route, %cache, %path, status, latency_ms, "request");
        }
        None => {
            tracing::info!(%client, %method, %route, %cache, %path, status, latency_ms, "request")
        }
    }
    response
}

/// Inner layer, on matched routes only: hands the route template out to
/// [`log_requests`] in the response's extensions (routing happens inside
/// the outer layer, so it cannot see the match itself).
pub async fn tag_route(matched: MatchedPath, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.extensions_mut().insert(matched);
    response
}

/// The path segment standing where the route template has `{cache}`.
fn cache_of<'p>(route: &str, path: &'p str) -> Option<&'p str> {
    let index = route.split('/').position(|s| s == "{cache}")?;
    path.split('/').nth(index)
}

#[cfg(test)]
mod tests {
    use super::cache_of;

    #[test]
    fn the_cache_is_read_where_the_route_names_it() {
        assert_eq!(
            cache_of("/{cache}/{file}", "/team-a/x.narinfo"),
            Some("team-a")
        );
        assert_eq!(
            cache_of("/_api/v1/cache-config/{cache}", "/_api/v1/cache-config/b"),
            Some("b")
        );
        assert_eq!(
            cache_of("/_api/v1/upload-path", "/_api/v1/upload-path"),
            None
        );
    }
}
