//! `DELETE /{cache}/{hash}.narinfo`: removes a path from a cache, as niks3
//! and ncps do. Needs delete. The path is gone from the cache at once
//! (narinfo and NAR 404, `get-missing-paths` reports it missing); other
//! caches holding the same NAR keep it, and the garbage collector reclaims
//! what no cache holds.

use std::sync::Arc;

use attic::store_path::StorePathHash;
use attic_token::Permission;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::cache_name;
use crate::access::Caller;
use crate::cache_admin::CacheAdmin;
use crate::database::Actor;
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// 204 when the path was removed, 404 when the cache does not hold it.
pub async fn delete_path(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    let hash = file
        .strip_suffix(".narinfo")
        .ok_or(ServerError::NoSuchRoute)?;
    let cache = caller
        .require_cache(&state, &cache_name(&name)?, Permission::Delete)
        .await?;
    let hash: StorePathHash = hash.parse().map_err(|_| ServerError::NoSuchObject)?;
    CacheAdmin::new(&state, Actor::Token(caller.subject()))
        .delete_path(&cache, &hash)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
