//! NAR listings as a binary cache serves them: `GET /{cache}/{hash}.ls`,
//! the JSON directory listing Nix writes beside a NAR with
//! `write-nar-listing=true` and tools read to browse a cache without
//! fetching NARs. Ours is made by the server from the verified NAR when it
//! is uploaded, whatever route brought it, so it is authoritative: the
//! listing `nix copy` itself sends (`PUT /{cache}/{hash}.ls`) is read,
//! bounded like any upload, and dropped.

use std::sync::Arc;

use attic::store_path::StorePathHash;
use attic_token::Permission;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use super::cache_name;
use crate::access::Caller;
use crate::encoded_upload::{decoded_reader, explain};
use crate::error::{ServerError, ServerResult};
use crate::ingest::LISTING_MAX_SIZE;
use crate::late_listing::listing_of;
use crate::state::AppState;

/// `GET /{cache}/{hash}.ls`: a path's listing, permission-checked like its
/// narinfo (a caller who may not pull gets what a missing path gets), made
/// from the stored NAR if it has none yet. Sent
/// as stored, `Content-Encoding: zstd`, to a client that accepts zstd, and
/// decompressed to any other.
pub async fn get_listing(
    state: Arc<AppState>,
    caller: Caller,
    name: String,
    file: String,
    headers: HeaderMap,
) -> ServerResult<Response> {
    let hash = file.strip_suffix(".ls").ok_or(ServerError::NoSuchRoute)?;
    let cache = caller.pullable_cache(&state, &cache_name(&name)?).await?;
    let hash: StorePathHash = hash.parse().map_err(|_| ServerError::NoSuchObject)?;
    let (_, nar) = state
        .database
        .find_object(cache.id, &hash)
        .await?
        .ok_or(ServerError::NoSuchObject)?;
    let listing = listing_of(&state, &nar)
        .await?
        .ok_or(ServerError::NoSuchObject)?;
    if accepts_zstd(&headers) {
        return Ok((
            [
                (CONTENT_TYPE, "application/json".to_owned()),
                (CONTENT_ENCODING, "zstd".to_owned()),
                (CONTENT_LENGTH, listing.zstd.len().to_string()),
            ],
            Body::from(listing.zstd),
        )
            .into_response());
    }
    let capacity = usize::try_from(listing.size).unwrap_or(0);
    let json = tokio::task::spawn_blocking(move || zstd::bulk::decompress(&listing.zstd, capacity))
        .await
        .map_err(ServerError::TaskFailed)?
        .map_err(ServerError::Compression)?;
    Ok((
        [
            (CONTENT_TYPE, "application/json".to_owned()),
            (CONTENT_LENGTH, json.len().to_string()),
        ],
        Body::from(json),
    )
        .into_response())
}

/// `PUT /{cache}/{hash}.ls`: the listing `nix copy --to
/// 'http://…?write-nar-listing=true'` sends before the narinfo. Ours, made
/// from the NAR itself, is the one served; this one is read (decoded as
/// its `Content-Encoding` says, bounded) and dropped, so the copy goes on.
pub async fn put_listing(
    state: Arc<AppState>,
    caller: Caller,
    name: String,
    file: String,
    request: Request,
) -> ServerResult<StatusCode> {
    let hash = file.strip_suffix(".ls").ok_or(ServerError::NoSuchRoute)?;
    caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    hash.parse::<StorePathHash>().map_err(|_| {
        ServerError::bad_request(
            "InvalidListingName",
            format!("{file:?} is not <store path hash>.ls"),
        )
    })?;
    let (parts, body) = request.into_parts();
    let limit = LISTING_MAX_SIZE as u64;
    let reader = decoded_reader(&parts.headers, body, limit, state.config.http.body_timeout)?;
    let read = tokio::io::copy(&mut reader.take(limit + 1), &mut tokio::io::sink())
        .await
        .map_err(explain)?;
    if read > limit {
        return Err(ServerError::TooLarge(format!(
            "a listing may decode to at most {limit} bytes"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `Accept-Encoding` names zstd (with a non-zero quality).
fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let named = parts.next() == Some("zstd");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            named && !refused
        })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT_ENCODING,
            HeaderValue::from_str(value).expect("test input"),
        );
        headers
    }

    #[test]
    fn zstd_is_sent_only_to_clients_that_accept_it() {
        assert!(accepts_zstd(&accepting("zstd")));
        assert!(accepts_zstd(&accepting("gzip, br, zstd")));
        assert!(accepts_zstd(&accepting("zstd;q=0.5")));
        assert!(!accepts_zstd(&accepting("zstd;q=0")));
        assert!(!accepts_zstd(&accepting("gzip, br")));
        assert!(!accepts_zstd(&HeaderMap::new()));
    }
}
