//! `/_api/v1/`: one module per route, mirroring `attic::api::v1`.

pub mod cache_config;
pub mod get_missing_paths;
pub mod upload_path;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};

use crate::state::AppState;

/// The v1 routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/get-missing-paths",
            post(get_missing_paths::get_missing_paths),
        )
        .route("/upload-path", put(upload_path::upload_path))
        .route(
            "/cache-config/{cache}",
            get(cache_config::get_cache_config)
                .post(cache_config::create_cache)
                .patch(cache_config::configure_cache)
                .delete(cache_config::destroy_cache),
        )
}
