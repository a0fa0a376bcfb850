//! `PUT /_api/v1/upload-path`: the NAR is the body; its metadata is the
//! `X-Attic-Nar-Info` header or a JSON preamble. Needs push.
//!
//! By default the body is always read and verified, even when the store
//! already holds the NAR: attaching a stored NAR to a cache requires proof
//! that the uploader has its content, so knowing a hash never grants
//! another tenant's data. `require-proof-of-possession = false` (Attic's
//! key) attaches a stored NAR on its hash alone, without reading the body.

use std::sync::Arc;

use attic::api::v1::upload_path::{
    NAR_INFO_HEADER, NAR_INFO_PREAMBLE_SIZE_HEADER, UploadPathNarInfo, UploadPathResult,
    UploadPathResultKind,
};
use attic_token::Permission;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_ENCODING;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::access::Caller;
use crate::compressed::{Compression, DecodedBody, DecodedSize};
use crate::database::HeldByCache;
use crate::error::{ServerError, ServerResult};
use crate::ingest::{self, Declared, Expect};
use crate::serve::body_reader;
use crate::state::AppState;
use crate::uploads::{Uploads, new_object};

/// Stores a path's NAR (or proves and reuses a stored one) and adds the
/// path to the cache.
pub async fn upload_path(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ServerResult<Json<UploadPathResult>> {
    // Authenticate before reading up to a megabyte of metadata: the
    // cache, and so the permission, is only known once it is parsed.
    caller.require_token()?;
    let body = body_reader(body, state.config.http.body_timeout);
    let mut body: Box<dyn AsyncRead + Unpin + Send> = match content_encoding(&headers)? {
        None => Box::new(body),
        Some(compression) => {
            // Room for the preamble, and for a NAR that compresses badly.
            let limit = state
                .config
                .max_nar_size
                .saturating_mul(2)
                .saturating_add(state.config.max_nar_info_size as u64)
                .saturating_add(1 << 20);
            // nar_size is declared before the NAR: in the header, or in
            // a preamble of at most max-nar-info-size, which decodes within
            // the expansion allowance. Reading checks the NAR against it.
            Box::new(DecodedBody::new(
                body,
                compression,
                limit,
                None,
                DecodedSize::Declared,
            ))
        }
    };
    let info = read_nar_info(&headers, &mut body, state.config.max_nar_info_size).await?;
    let cache = caller
        .require_cache(&state, &info.cache, Permission::Push)
        .await?;
    let object = new_object(&info, &cache, caller.subject())?;
    let uploads = Uploads::new(&state);
    uploads.check_pins_fit(&cache).await?;
    if info.nar_size == 0 {
        return Err(ServerError::bad_request(
            "InvalidNarInfo",
            "nar_size must be positive",
        ));
    }
    if info.nar_size > state.config.max_nar_size {
        return Err(ServerError::TooLarge(format!(
            "the NAR is {} bytes; this server accepts at most {}",
            info.nar_size, state.config.max_nar_size
        )));
    }
    let declared = Declared {
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
    };
    if let Some(existing) = state.database.find_nar(&info.nar_hash).await? {
        let mut listing = None;
        if state.config.require_proof_of_possession {
            listing = uploads
                .prove_possession(&existing, body, Expect::Declared(declared))
                .await?;
        } else if existing.nar_size != info.nar_size {
            // On the hash alone, what was declared must still be the NAR's.
            return Err(ServerError::NarMismatch(format!(
                "nar_size is {}, but the NAR with this nar_hash has {} bytes",
                info.nar_size, existing.nar_size
            )));
        }
        let held = state
            .database
            .held_by_cache(existing.id, cache.id, None)
            .await?;
        uploads.attach_existing(&existing, object, listing).await?;
        return Ok(Json(reply(held, existing.file_size, info.nar_size)));
    }

    let stored = ingest::store_nar(&state, body, Expect::Declared(declared)).await?;
    let nar = uploads.commit_path(stored, object).await?;
    let held = state
        .database
        .held_by_cache(nar.id, cache.id, Some(&info.store_path_hash))
        .await?;
    Ok(Json(reply(held, nar.file_size, info.nar_size)))
}

/// The reply, in terms of the uploader's own cache alone: what the server
/// stores depends on every tenant's data, and telling one tenant that
/// another holds its content would leak it. `Deduplicated` means the cache
/// held this very NAR already (under another path, or this one);
/// `bytes_stored` is the stored size of the chunks it did not hold, and
/// `frac_deduplicated` the fraction of NAR bytes it did.
fn reply(held: HeldByCache, file_size: u64, nar_size: u64) -> UploadPathResult {
    if held.whole {
        return UploadPathResult {
            kind: UploadPathResultKind::Deduplicated,
            file_size: Some(file_size),
            bytes_stored: Some(0),
            frac_deduplicated: Some(1.0),
        };
    }
    UploadPathResult {
        kind: UploadPathResultKind::Uploaded,
        file_size: Some(file_size),
        bytes_stored: Some(file_size.saturating_sub(held.stored_bytes)),
        frac_deduplicated: Some(if nar_size > 0 {
            (held.nar_bytes as f64 / nar_size as f64).min(1.0)
        } else {
            0.0
        }),
    }
}

/// The `Content-Encoding`s the body may come in, besides none; advertised
/// in the cache's settings so clients send plain NARs to older servers.
pub const UPLOAD_ENCODINGS: &[&str] = &["zstd"];

/// The compression `Content-Encoding` names; 415 for one not taken.
fn content_encoding(headers: &HeaderMap) -> ServerResult<Option<Compression>> {
    let Some(value) = headers.get(CONTENT_ENCODING) else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok("identity") => Ok(None),
        Ok("zstd") => Ok(Some(Compression::Zstd)),
        _ => Err(ServerError::UnsupportedMediaType(format!(
            "Content-Encoding {value:?} is not taken; send zstd or an uncompressed body"
        ))),
    }
}

/// The path's metadata, from the header or the body's preamble.
async fn read_nar_info<R: AsyncRead + Unpin>(
    headers: &HeaderMap,
    body: &mut R,
    max_preamble: usize,
) -> ServerResult<UploadPathNarInfo> {
    let invalid = |e: serde_json::Error| ServerError::bad_request("InvalidNarInfo", e.to_string());
    if let Some(value) = headers.get(NAR_INFO_HEADER) {
        return serde_json::from_slice(value.as_bytes()).map_err(invalid);
    }
    let Some(size) = headers.get(NAR_INFO_PREAMBLE_SIZE_HEADER) else {
        return Err(ServerError::bad_request(
            "MissingNarInfo",
            format!(
                "send the path's metadata in {NAR_INFO_HEADER} or a {NAR_INFO_PREAMBLE_SIZE_HEADER} preamble"
            ),
        ));
    };
    let size: usize = size
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ServerError::bad_request("InvalidNarInfo", "the preamble size is not a number")
        })?;
    if size > max_preamble {
        return Err(ServerError::TooLarge(format!(
            "the metadata preamble may be at most {max_preamble} bytes (max-nar-info-size)"
        )));
    }
    let mut preamble = vec![0; size];
    body.read_exact(&mut preamble)
        .await
        .map_err(ServerError::UploadInterrupted)?;
    serde_json::from_slice(&preamble).map_err(invalid)
}
