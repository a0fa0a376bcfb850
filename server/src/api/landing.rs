//! `GET /` and `GET /{cache}` for a browser (an `Accept` header that takes
//! `text/html`): the list of public caches, and a page on how to use one
//! cache ([`crate::landing_page`]). Other callers get `NoSuchRoute`, as
//! before these pages existed; Nix never asks for either.
//!
//! A cache the caller may not pull from gets the very page a missing
//! cache gets, so a stranger cannot learn that a private cache exists.

use std::sync::Arc;

use attic_token::Permission;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, VARY};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::substituter_url;
use crate::access::Caller;
use crate::database::now;
use crate::error::{ServerError, ServerResult};
use crate::landing_page::{
    CacheLink, CachePage, render_cache_page, render_index, render_not_found,
};
use crate::state::AppState;

/// The two pages. Any other method on them is `NoSuchRoute`, as before.
pub fn router() -> Router<Arc<AppState>> {
    let no_such_route = || async { ServerError::NoSuchRoute };
    Router::new()
        .route("/", get(index).fallback(no_such_route))
        .route("/{cache}", get(cache_page).fallback(no_such_route))
}

/// The public caches, and with a token the caches it may pull from too.
async fn index(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
) -> ServerResult<Response> {
    if !wants_html(&headers) {
        return Err(ServerError::NoSuchRoute);
    }
    let mut caches: Vec<CacheLink> = state
        .database
        .live_caches()
        .await?
        .into_iter()
        .filter(|cache| cache.is_public || caller.require(&cache.name, Permission::Pull).is_ok())
        .map(|cache| CacheLink {
            name: cache.name.to_string(),
        })
        .collect();
    caches.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(html(StatusCode::OK, render_index(&caches)))
}

/// How to use one cache, for a caller who may pull from it.
async fn cache_page(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ServerResult<Response> {
    if !wants_html(&headers) {
        return Err(ServerError::NoSuchRoute);
    }
    let not_found = || html(StatusCode::NOT_FOUND, render_not_found());
    let Ok(name) = super::cache_name(&name) else {
        return Ok(not_found());
    };
    let cache = match caller.pullable_cache(&state, &name).await {
        Ok(cache) => cache,
        Err(
            ServerError::NoSuchCache(_)
            | ServerError::Unauthenticated
            | ServerError::InvalidToken(_)
            | ServerError::Forbidden { .. },
        ) => return Ok(not_found()),
        Err(e) => return Err(e),
    };
    // Anyone may ask for a public cache's page: its figures are read at
    // most once per `STATS_TTL`, not once per request.
    let stats = state.cache_stats.get(&state.database, cache.id).await?;
    let public_keys = cache
        .signing_keys(now())
        .iter()
        .map(|key| key.public_key().to_string())
        .collect();
    let page = CachePage {
        name: cache.name.to_string(),
        substituter: substituter_url(&state, &headers, &cache.name),
        public_keys,
        is_public: cache.is_public,
        stored_bytes: stats.stored_bytes,
        paths: stats.paths,
        last_push: stats.last_push,
    };
    Ok(html(StatusCode::OK, render_cache_page(&page)))
}

/// A page that no shared cache may keep: what it shows depends on the
/// caller's token, and changes with every push.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(CACHE_CONTROL, "no-store"), (VARY, "Accept, Authorization")],
        Html(body),
    )
        .into_response()
}

/// Whether the `Accept` header takes `text/html` (with a quality above
/// zero), as a browser's does when it navigates.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media_type = parts.next().unwrap_or_default();
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media_type.eq_ignore_ascii_case("text/html") && !refused
        })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn accepting(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn a_browser_navigating_wants_html() {
        assert!(wants_html(&accepting(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(wants_html(&accepting("TEXT/HTML; q=0.5")));
    }

    #[test]
    fn nix_curl_and_api_clients_do_not() {
        assert!(!wants_html(&HeaderMap::new()));
        assert!(!wants_html(&accepting("*/*")));
        assert!(!wants_html(&accepting("application/json")));
        assert!(!wants_html(&accepting("text/html;q=0, */*")));
    }
}
