//! `GET /_api/v1/caches`: the caches the caller's token may see (those on
//! which it holds any permission), with what each holds. Needs a token;
//! public caches are not listed to anonymous callers here.
//!
//! Which caches are visible is decided from the token alone, and only
//! visible caches are counted, so nothing about another tenant's cache
//! (its name, its size, even its place in the order) reaches the caller.

use std::sync::Arc;

use attic::api::v1::caches::{CacheSummary, ListCachesResponse};
use axum::Json;
use axum::extract::State;

use crate::access::Caller;
use crate::database::Cache;
use crate::error::ServerResult;
use crate::state::AppState;

/// The caller's caches, by name.
pub async fn list_caches(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ServerResult<Json<ListCachesResponse>> {
    caller.require_token()?;
    let mut visible: Vec<Cache> = state
        .database
        .live_caches()
        .await?
        .into_iter()
        .filter(|cache| caller.holds_any_permission(&cache.name))
        .collect();
    visible.sort_by(|a, b| a.name.cmp(&b.name));
    let ids: Vec<_> = visible.iter().map(|cache| cache.id).collect();
    let stats = state.database.cache_stats(&ids).await?;
    let caches = visible
        .into_iter()
        .zip(stats)
        .map(|(cache, (_, stats))| CacheSummary {
            name: cache.name,
            is_public: cache.is_public,
            stored_bytes: stats.stored_bytes,
            paths: stats.paths,
            quota: cache.quota,
            quota_used_bytes: stats.quota_used_bytes,
            last_push: stats.last_push,
        })
        .collect();
    Ok(Json(ListCachesResponse { caches }))
}
