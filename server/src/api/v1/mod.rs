//! `/_api/v1/`: one module per route, mirroring `attic::api::v1`.

pub mod cache_config;
pub mod cache_log;
pub mod caches;
pub mod get_missing_paths;
pub mod oidc_exchange;
pub mod pins;
pub mod upload_path;
pub mod whoami;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::state::AppState;

/// Largest JSON body a route takes: room for `get-missing-paths` with
/// its 100,000 hashes (about 3.5 MB), so that limit is the one that
/// applies. Larger bodies get 413.
pub const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// The v1 routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/get-missing-paths",
            post(get_missing_paths::get_missing_paths).layer(DefaultBodyLimit::max(MAX_JSON_BODY)),
        )
        .route(
            "/oidc/exchange",
            post(oidc_exchange::exchange).layer(DefaultBodyLimit::max(oidc_exchange::MAX_BODY)),
        )
        .route("/upload-path", put(upload_path::upload_path))
        .route("/whoami", get(whoami::whoami))
        .route("/caches", get(caches::list_caches))
        .route("/pins/{cache}", get(pins::list_pins))
        .route(
            "/pins/{cache}/{name}",
            put(pins::pin_path).delete(pins::remove_pin),
        )
        .route("/cache-log/{cache}", get(cache_log::cache_log))
        .route(
            "/cache-config/{cache}",
            get(cache_config::get_cache_config)
                .post(cache_config::create_cache)
                .patch(cache_config::configure_cache)
                .delete(cache_config::destroy_cache),
        )
}
