//! `POST /_api/v1/get-missing-paths`: which paths a cache lacks. Needs push.

use std::sync::Arc;

use attic::api::v1::get_missing_paths::{GetMissingPathsRequest, GetMissingPathsResponse};
use attic_token::Permission;
use axum::Json;
use axum::extract::{Request, State};

use crate::access::Caller;
use crate::api::JsonBody;
use crate::error::ServerResult;
use crate::state::AppState;

/// Longest list of hashes one request may ask about.
const MAX_HASHES: usize = 100_000;

/// Answers with the subset of the hashes the cache does not hold.
pub async fn get_missing_paths(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    request: Request,
) -> ServerResult<Json<GetMissingPathsResponse>> {
    // The cache, and so the permission, is named in the body: refuse
    // anyone without a valid token before reading megabytes of it.
    caller.require_token()?;
    let request: GetMissingPathsRequest = JsonBody::read(request).await?;
    let cache = caller
        .require_cache(&state, &request.cache, Permission::Push)
        .await?;
    if request.store_path_hashes.len() > MAX_HASHES {
        return Err(crate::error::ServerError::TooLarge(format!(
            "ask about at most {MAX_HASHES} paths per request"
        )));
    }
    let missing_paths = state
        .database
        .find_missing_paths(cache.id, &request.store_path_hashes)
        .await?;
    Ok(Json(GetMissingPathsResponse { missing_paths }))
}
