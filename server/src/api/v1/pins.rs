//! `/_api/v1/pins/{cache}` (GET: list the pins; needs pull, or a public
//! cache) and `/_api/v1/pins/{cache}/{name}` (PUT: pin a path, DELETE:
//! remove the pin; both need push).

use std::sync::Arc;

use attic::api::v1::pins::{
    DEFAULT_KEEP, ListPinsResponse, MAX_KEEP, PinInfo, PinPathRequest, PinTarget,
};
use attic::pin::PinName;
use attic_token::Permission;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;

use super::super::{JsonBody, cache_name};
use crate::access::Caller;
use crate::cache_admin::CacheAdmin;
use crate::database::Actor;
use crate::database::PinRecord;
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// A cache's pins, by name.
pub async fn list_pins(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServerResult<Json<ListPinsResponse>> {
    let cache = caller.pullable_cache(&state, &cache_name(&name)?).await?;
    let pins = state.database.list_pins(cache.id).await?;
    Ok(Json(ListPinsResponse {
        pins: pins.into_iter().map(pin_info).collect(),
    }))
}

/// Points a pin at a path the cache holds (404 if it holds none).
pub async fn pin_path(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, pin)): Path<(String, String)>,
    request: Request,
) -> ServerResult<Json<PinInfo>> {
    let cache = caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    let pin = pin_name(&pin)?;
    let request: PinPathRequest = JsonBody::read(request).await?;
    let keep = request.keep.unwrap_or(DEFAULT_KEEP);
    if !(1..=MAX_KEEP).contains(&keep) {
        return Err(ServerError::bad_request(
            "InvalidKeep",
            format!("keep must be between 1 and {MAX_KEEP}"),
        ));
    }
    let path = cache
        .store_dir
        .parse_path(&request.store_path)
        .map_err(|e| ServerError::bad_request("InvalidStorePath", e.to_string()))?;
    let pinned = CacheAdmin::new(&state, Actor::Token(caller.subject()))
        .pin_path(&cache, &pin, path.hash(), keep)
        .await?;
    Ok(Json(pin_info(pinned)))
}

/// Removes a pin (404 if the cache has none of that name).
pub async fn remove_pin(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, pin)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    let cache = caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    let pin = pin_name(&pin)?;
    CacheAdmin::new(&state, Actor::Token(caller.subject()))
        .remove_pin(&cache, &pin)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn pin_name(raw: &str) -> ServerResult<PinName> {
    raw.parse().map_err(|e: attic::pin::BadPinName| {
        ServerError::bad_request("InvalidPinName", e.to_string())
    })
}

fn pin_info(pin: PinRecord) -> PinInfo {
    PinInfo {
        name: pin.name,
        keep: pin.keep,
        targets: pin
            .targets
            .into_iter()
            .map(|t| PinTarget {
                store_path: t.store_path,
                pinned_at: t.pinned_at,
            })
            .collect(),
    }
}
