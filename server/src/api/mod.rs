//! HTTP routes: the Nix binary cache protocol at `/{cache}/...` (with
//! content-addressed derivations' realisations), the API at
//! `/_api/v1/...`, a browser's pages at `/` and `/{cache}`, `/_health` and
//! `/metrics` (on the operators' listener, [`probe_router`]). The whole
//! route table is [`router`].

pub mod binary_cache;
pub mod build_log;
pub mod debug_info;
pub mod delete_path;
pub mod landing;
pub mod listing;
pub mod metrics;
pub mod nix_upload;
pub mod pulled_nar;
pub mod realisations;
pub mod uploaded_nar;
pub mod v1;

use std::sync::Arc;

use attic::cache::CacheName;
use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::HOST;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;

use crate::error::{ServerError, ServerResult};
use crate::linger::Linger;
use crate::request_log::{RequestLog, TagRouteLayer};
use crate::state::AppState;

/// Every route of the public listener. `/metrics` is among them only
/// when `metrics-token` is set, and then only for requests bearing it.
pub fn router(state: Arc<AppState>) -> Router {
    let mut routes = Router::new().route("/_health", get(health));
    if state.config.metrics_token.is_some() {
        routes = routes.route(
            "/metrics",
            get(metrics::metrics).route_layer(middleware::from_fn_with_state(
                state.clone(),
                metrics::require_metrics_token,
            )),
        );
    }
    routes
        .nest("/_api/v1", v1::router())
        .merge(binary_cache::router())
        .merge(realisations::router())
        .merge(landing::router())
        .route_layer(TagRouteLayer)
        .fallback(|| async { ServerError::NoSuchRoute })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            around_every_request,
        ))
        .with_state(state)
}

/// `/_health` and `/metrics` alone, with no token: the operators'
/// listener (`metrics-listen`, or a collector's `--listen`), which tenants
/// are not meant to reach.
pub fn probe_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_health", get(health))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ServerError::NoSuchRoute })
        .with_state(state)
}

/// `GET /_health`: `OK` when the database answers, else 503. Load
/// balancers and orchestrators probe it by address, so `allowed-hosts`
/// does not apply to it.
async fn health(State(state): State<Arc<AppState>>) -> Result<&'static str, ServerError> {
    match state.database.ping().await {
        Ok(()) => Ok("OK"),
        Err(e) => {
            tracing::error!(error = %e, "health check: the database does not answer");
            Err(ServerError::Unhealthy)
        }
    }
}

/// What every request of the public listener goes through, outermost
/// first: the rest of its body is read once it is answered
/// ([`crate::linger`], so that every refusal, the host check's included,
/// reaches a client still sending); its response is counted by status and
/// logged ([`crate::request_log`]); and a request for a host not in
/// `allowed-hosts` is refused. One layer, not one each: every layer boxes
/// the rest of the router and its future again, per request.
async fn around_every_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let log = RequestLog::start(&request);
    let (request, linger) = Linger::watch(request);
    let response = match check_host(&state, &request) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            // Dropped unread: the linger reads the body's rest.
            drop(request);
            refused.into_response()
        }
    };
    state.metrics.count_response(response.status().as_u16());
    log.finish(&response);
    match linger {
        Some(linger) => linger.finish(&state, response).await,
        None => response,
    }
}

/// Refuses requests for hosts not in `allowed-hosts` (when it is set),
/// but for the health check.
fn check_host(state: &AppState, request: &Request) -> ServerResult<()> {
    let allowed = &state.config.allowed_hosts;
    if !allowed.is_empty() && request.uri().path() != "/_health" {
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !allowed.iter().any(|a| a == host) {
            return Err(ServerError::bad_request(
                "HostNotAllowed",
                format!("this server does not answer for host {host:?}"),
            ));
        }
    }
    Ok(())
}

/// A cache name from a URL path.
pub fn cache_name(raw: &str) -> ServerResult<CacheName> {
    raw.parse().map_err(|e: attic::cache::BadCacheName| {
        ServerError::bad_request("InvalidCacheName", e.to_string())
    })
}

/// The public base URL: `api-endpoint`, or `http://<Host>/`.
pub fn endpoint(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    if let Some(endpoint) = &state.config.api_endpoint {
        return with_trailing_slash(endpoint);
    }
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/")
}

/// The URL Nix substitutes from `cache`: under `substituter-endpoint`
/// when set, else under the API's base URL.
pub fn substituter_url(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    cache: &CacheName,
) -> String {
    let base = match &state.config.substituter_endpoint {
        Some(substituter) => with_trailing_slash(substituter),
        None => endpoint(state, headers),
    };
    format!("{base}{cache}")
}

/// A base URL ending in `/`, so that a name appended to it is a path segment.
pub fn with_trailing_slash(url: &str) -> String {
    let mut url = url.to_owned();
    if !url.ends_with('/') {
        url.push('/');
    }
    url
}

/// A JSON body whose rejection is our own error.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ServerError;

    async fn from_request(request: Request, state: &S) -> ServerResult<Self> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ServerError::TooLarge(
                    "the request body is larger than this route accepts".to_owned(),
                ))
            }
            Err(rejection) => Err(ServerError::bad_request(
                "InvalidJson",
                rejection.body_text(),
            )),
        }
    }
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// Reads `request`'s body as JSON, for a handler that authorises its
    /// caller first: an extractor would read the body before the handler
    /// runs, so an anonymous caller could make the server read and parse
    /// megabytes only to be refused.
    pub async fn read(request: Request) -> ServerResult<T> {
        Self::from_request(request, &())
            .await
            .map(|Self(value)| value)
    }
}

/// Reads `request`'s body whole, up to the route's body limit (413 past
/// it), for a handler that authorises its caller first.
pub async fn read_body(request: Request) -> ServerResult<axum::body::Bytes> {
    match axum::body::Bytes::from_request(request, &()).await {
        Ok(body) => Ok(body),
        Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Err(
            ServerError::TooLarge("the request body is larger than this route accepts".to_owned()),
        ),
        Err(rejection) => Err(ServerError::bad_request(
            "InvalidBody",
            rejection.body_text(),
        )),
    }
}
