//! Build logs as Nix reads and writes them in a binary cache
//! (`nix store copy-log --to`, `nix log --store`): `log/<drv>`, one per
//! derivation and cache, streamed into blob storage compressed and
//! streamed back decompressed, bounded by `max-log-size`.

use std::sync::Arc;

use attic::store_path::StorePath;
use attic_token::Permission;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::cache_name;
use crate::access::Caller;
use crate::build_log::{LogUploadError, new_log_key, read_log, store_log};
use crate::database::{LogLocation, LogRecord};
use crate::encoded_upload::{decoded_reader, explain};
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;
use crate::storage::StorageKey;

/// `PUT /{cache}/log/{drv}`: stores a build log, compressed, as it
/// arrives; the body may come compressed (`Content-Encoding`).
pub async fn put_log(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Path((name, drv)): Path<(String, String)>,
    body: Body,
) -> ServerResult<StatusCode> {
    let cache = caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    check_drv(&drv)?;
    let limit = state.config.max_log_size;
    if let Some(length) = declared_length(&headers)
        && length > limit
    {
        return Err(ServerError::TooLarge(format!(
            "a build log may be at most {limit} bytes (max-log-size)"
        )));
    }
    let key = new_log_key();
    // Compressed or not, the body is bounded like a NAR upload's; the
    // decoded log by max-log-size below.
    let body = decoded_reader(&headers, body, limit, state.config.http.body_timeout)?;
    let level = state.config.compression.zstd_level();
    let stored = store_log(state.storage.as_ref(), &key, body, limit, level)
        .await
        .map_err(|e| match e {
            LogUploadError::TooLarge { limit } => ServerError::TooLarge(format!(
                "a build log may be at most {limit} bytes (max-log-size)"
            )),
            LogUploadError::Stalled(e) | LogUploadError::Interrupted(e) => explain(e),
            LogUploadError::Storage(e) => e.into(),
        })?;
    state
        .database
        .put_log(
            cache.id,
            &drv,
            stored.size,
            stored.stored_size,
            key.as_str(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /{cache}/log/{drv}`: a build log, streamed.
pub async fn get_log(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, drv)): Path<(String, String)>,
) -> ServerResult<Response> {
    let cache = caller.pullable_cache(&state, &cache_name(&name)?).await?;
    check_drv(&drv)?;
    let LogRecord { size, location } = state
        .database
        .find_log(cache.id, &drv)
        .await?
        .ok_or(ServerError::NoSuchObject)?;
    let body = match location {
        LogLocation::Blob(key) => {
            let key = StorageKey::new(key).map_err(ServerError::BadLogKey)?;
            Body::from_stream(read_log(state.storage.as_ref(), &key).await?)
        }
        LogLocation::Inline(data) => {
            let capacity = usize::try_from(size).unwrap_or(0);
            let text = tokio::task::spawn_blocking(move || zstd::bulk::decompress(&data, capacity))
                .await
                .map_err(ServerError::TaskFailed)?
                .map_err(ServerError::Compression)?;
            Body::from(text)
        }
    };
    Ok((
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A derivation's file name: a store path base name ending in `.drv`.
fn check_drv(drv: &str) -> ServerResult<()> {
    let valid = drv.ends_with(".drv") && StorePath::from_base_name(drv).is_ok();
    if valid {
        Ok(())
    } else {
        Err(ServerError::bad_request(
            "InvalidDerivation",
            format!("{drv:?} is not a derivation's file name (<hash>-<name>.drv)"),
        ))
    }
}
