//! One log line per request: the client's address, method, matched route,
//! cache, status and the time until the response headers, at info level
//! (health probes and metric scrapes at debug). Never a header, so
//! never a token. Server errors are logged at error level with their cause.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{self, Method, Uri};
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

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

/// A request being timed, to be logged once answered with what
/// [`TagRouteLayer`] recorded. Made and finished by the middleware around
/// every request (`api::around_every_request`).
pub struct RequestLog {
    start: Instant,
    // Clones that share their bytes with the request: this runs on every
    // request, so it allocates nothing of its own.
    method: Method,
    uri: Uri,
    client: LoggedClient,
}

impl RequestLog {
    /// Starts timing `request`.
    pub fn start(request: &Request) -> Self {
        Self {
            start: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            // Absent only for a request not served by our listener (unit tests).
            client: LoggedClient(request.extensions().get::<ClientAddress>().copied()),
        }
    }

    /// Logs the request with its `response`.
    pub fn finish(self, response: &Response) {
        let Self {
            start,
            method,
            uri,
            client,
        } = self;
        // Whole microseconds: `0.25`, not `0.25000000000000006`.
        let latency_ms = start.elapsed().as_micros() as f64 / 1000.0;
        let path = uri.path();
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
    }
}

/// Inner layer, on matched routes only: hands the route template out to
/// [`RequestLog::finish`] in the response's extensions (routing happens
/// inside the outer layer, so it cannot see the match itself). Written by
/// hand rather than with `middleware::from_fn`, which boxes the route and
/// its future again on every request.
#[derive(Clone, Copy, Debug, Default)]
pub struct TagRouteLayer;

impl<S> Layer<S> for TagRouteLayer {
    type Service = TagRoute<S>;

    fn layer(&self, inner: S) -> TagRoute<S> {
        TagRoute { inner }
    }
}

/// A route's service, tagging its responses with the matched route.
#[derive(Clone, Debug)]
pub struct TagRoute<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TagRoute<S>
where
    S: Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tagged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let matched = request.extensions().get::<MatchedPath>().cloned();
        Tagged {
            inner: self.inner.call(request),
            matched,
        }
    }
}

pin_project! {
    /// A route's response on its way, tagged once it comes.
    pub struct Tagged<F> {
        #[pin]
        inner: F,
        matched: Option<MatchedPath>,
    }
}

impl<F, E> Future for Tagged<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(matched) = this.matched.take() {
            response.extensions_mut().insert(matched);
        }
        Poll::Ready(Ok(response))
    }
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
