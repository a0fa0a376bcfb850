//! `debuginfo/{build id}` as Nix's binary caches hold it with
//! `index-debug-info=true`: `{"archive": "../nar/…", "member":
//! "lib/debug/.build-id/…"}`, naming the NAR and the file in it that hold
//! the DWARF debug info of a build id, for debuggers' fetchers (dwarffs,
//! debuginfod bridges). The server finds the files in each NAR as it is
//! uploaded, so every path pushed by any route is indexed, and a link
//! resolves only through the cache's own paths: it goes when the path does.
//! The link `nix copy` PUTs itself names the NAR by the file it uploaded,
//! which is not a URL this cache serves, so it is read and dropped.

use std::sync::Arc;

use attic_token::Permission;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::cache_name;
use crate::access::Caller;
use crate::encoded_upload::read_decoded;
use crate::error::{ServerError, ServerResult};
use crate::nar_stream::NarEncoding;
use crate::state::AppState;

/// The most a link PUT may decode to: a link is some 150 bytes.
const LINK_MAX_SIZE: u64 = 64 << 10;

/// A build id as Nix names the link: 40 lowercase hex digits, which Nix
/// 2.8 follows with `.debug`.
fn build_id(id: &str) -> Option<&str> {
    let id = id.strip_suffix(".debug").unwrap_or(id);
    let hex = id.len() == 40 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then_some(id)
}

/// `GET /{cache}/debuginfo/{id}`: the link, permission-checked like the
/// path it points into (a caller who may not pull gets a missing cache's
/// answer).
pub async fn get_debug_info(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> ServerResult<Response> {
    let cache = caller.pullable_cache(&state, &cache_name(&name)?).await?;
    let id = build_id(&id).ok_or(ServerError::NoSuchObject)?;
    let found = state
        .database
        .find_debug_info(cache.id, id)
        .await?
        .ok_or(ServerError::NoSuchObject)?;
    let (_, nar) = state
        .database
        .find_object(cache.id, &found.store_path_hash)
        .await?
        .ok_or(ServerError::NoSuchObject)?;
    let suffix = NarEncoding::stored(&nar).suffix();
    let link = serde_json::json!({
        "archive": format!("../nar/{}{suffix}", found.store_path_hash),
        "member": found.member,
    });
    Ok(([(CONTENT_TYPE, "application/json")], link.to_string()).into_response())
}

/// `PUT /{cache}/debuginfo/{id}`: Nix's own link, read (bounded, decoded
/// as its `Content-Encoding` says) and dropped: ours is made from the NAR.
pub async fn put_debug_info(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
    request: Request,
) -> ServerResult<StatusCode> {
    caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    build_id(&id).ok_or_else(|| {
        ServerError::bad_request(
            "InvalidBuildId",
            format!("{id:?} is not a build id (40 hex digits)"),
        )
    })?;
    let (parts, body) = request.into_parts();
    let timeout = state.config.http.body_timeout;
    read_decoded(&parts.headers, body, LINK_MAX_SIZE, timeout).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_id_is_40_hex_digits_with_or_without_debug() {
        let id = "ab0123456789abcdef0123456789abcdef012345";
        assert_eq!(build_id(id), Some(id));
        assert_eq!(build_id(&format!("{id}.debug")), Some(id));
        assert_eq!(build_id(&id[1..]), None);
        assert_eq!(build_id(&id.to_uppercase()), None);
        assert_eq!(build_id("../../etc/passwd"), None);
    }
}
