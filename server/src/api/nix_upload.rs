//! Pushing with Nix alone: the writes of Nix's HTTP binary cache store, so
//! `nix copy --to 'http://host/cache'` works with no client installed.
//!
//! Nix uploads each NAR compressed, named by the hash of the compressed
//! file (`PUT nar/<file hash>.nar.xz`), then its narinfo (`PUT
//! <hash>.narinfo`). The NAR is decompressed, verified, chunked and stored
//! like any upload, then *staged*: bound to the cache it was sent to under
//! its file name, and visible nowhere. The narinfo claims it: its URL must
//! name a NAR staged for this cache, whose hash and size must be what the
//! narinfo says; only then does the path appear, in one transaction, and
//! the server signs it with the cache's key like any other. A narinfo alone
//! never grants content: a NAR another tenant stored must still be sent.

use std::sync::Arc;

use attic::api::v1::upload_path::UploadPathNarInfo;
use attic::hash::Sha256Hash;
use attic::narinfo::NarInfo;
use attic::store_path::StorePath;
use attic_token::Permission;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;

use super::{cache_name, read_body};
use crate::access::Caller;
use crate::compressed::{Compression, DecodedBody, DecodedSize};
use crate::encoded_upload::read_decoded;
use crate::error::{ServerError, ServerResult};
use crate::ingest::{self, Expect};
use crate::serve::body_reader;
use crate::state::AppState;
use crate::uploads::{Uploads, new_object};

/// `PUT /{cache}/nix-cache-info`: Nix writes it when it finds none. The
/// cache has one already; the write is accepted when it agrees.
pub async fn put_cache_info(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    request: Request,
) -> ServerResult<StatusCode> {
    let cache = caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    let body = read_body(request).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ServerError::bad_request("InvalidCacheInfo", "nix-cache-info is not text"))?;
    let store_dir = text
        .split('\n')
        .find_map(|line| line.strip_prefix("StoreDir: "))
        .ok_or_else(|| ServerError::bad_request("InvalidCacheInfo", "no StoreDir line"))?;
    if store_dir != cache.store_dir.as_str() {
        return Err(ServerError::bad_request(
            "StoreDirMismatch",
            format!(
                "this cache holds paths of {}, not {store_dir:?}",
                cache.store_dir
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /{cache}/nar/{file hash}.nar[.zst|.xz|.bz2]`: stores and stages a NAR.
pub async fn put_nar(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
    body: Body,
) -> ServerResult<StatusCode> {
    let cache = caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    Uploads::new(&state).check_pins_fit(&cache).await?;
    let (file_hash, compression) = parse_nar_file(&file)?;
    // Compressed NARs are rarely larger than plain ones; a bound well
    // above that keeps a body of junk from running on.
    let limit = state
        .config
        .max_nar_size
        .saturating_mul(2)
        .saturating_add(1 << 20);
    let body = DecodedBody::new(
        body_reader(body, state.config.http.body_timeout),
        compression,
        limit,
        Some(file_hash),
        // The narinfo, with NarSize, comes after the NAR.
        DecodedSize::Undeclared,
    );
    let stored = ingest::store_nar(
        &state,
        body,
        Expect::AtMost {
            max_size: state.config.max_nar_size,
        },
    )
    .await?;
    Uploads::new(&state).stage(stored, cache.id, file).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `<52 nix32 characters>.nar` and a known compression's extension.
pub(super) fn parse_nar_file(file: &str) -> ServerResult<(Sha256Hash, Compression)> {
    let bad = || {
        ServerError::bad_request(
            "InvalidNarFile",
            format!("{file:?} is not <nix32 file hash>.nar[.zst|.xz|.bz2]"),
        )
    };
    let (hash, extension) = file.split_once(".nar").ok_or_else(bad)?;
    if hash.len() != 52 {
        return Err(bad());
    }
    let hash: Sha256Hash = format!("sha256:{hash}").parse().map_err(|_| bad())?;
    let compression = Compression::from_extension(extension).ok_or_else(|| {
        ServerError::UnsupportedMediaType(format!(
            "NARs compressed as {extension:?} are not accepted: use ?compression=zstd (or xz, \
             bzip2, none) in the cache URL"
        ))
    })?;
    Ok((hash, compression))
}

/// The most a narinfo may decode to: as much as any small body.
const NARINFO_MAX_SIZE: u64 = 2 << 20;

/// `PUT /{cache}/{hash}.narinfo`: claims a staged NAR as a path. The
/// body may come compressed (`Content-Encoding`: zstd, xz, br, bzip2).
pub async fn put_narinfo(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
    request: Request,
) -> ServerResult<StatusCode> {
    let hash = file
        .strip_suffix(".narinfo")
        .ok_or(ServerError::NoSuchRoute)?;
    let cache = caller
        .require_cache(&state, &cache_name(&name)?, Permission::Push)
        .await?;
    Uploads::new(&state).check_pins_fit(&cache).await?;
    let (parts, body) = request.into_parts();
    let timeout = state.config.http.body_timeout;
    let body = read_decoded(&parts.headers, body, NARINFO_MAX_SIZE, timeout).await?;
    let bad = |message: String| ServerError::bad_request("InvalidNarInfo", message);
    let text = std::str::from_utf8(&body).map_err(|_| bad("the narinfo is not text".into()))?;
    let info: NarInfo = text.parse().map_err(|e| bad(format!("{e}")))?;
    // Strict: Nix writes no other field, and a line break in a value
    // shows up as one.
    if let Some((field, _)) = info.extra_fields.first() {
        return Err(bad(format!(
            "unknown field {field:?} (a line break in a value?)"
        )));
    }
    if info.store_path.hash().as_str() != hash {
        return Err(bad(format!(
            "StorePath {} does not match the file name {file}",
            info.full_store_path()
        )));
    }
    if info.store_dir != cache.store_dir {
        return Err(bad(format!(
            "StorePath {} is not in this cache's store, {}",
            info.full_store_path(),
            cache.store_dir
        )));
    }
    let nar_file = info
        .url
        .strip_prefix("nar/")
        .filter(|f| !f.contains('/'))
        .ok_or_else(|| bad(format!("URL {:?} does not name a NAR under nar/", info.url)))?;
    let (staged, nar) = state
        .database
        .find_staged(cache.id, nar_file)
        .await?
        .ok_or_else(|| {
            ServerError::bad_request(
                "NarNotUploaded",
                format!(
                    "no NAR {nar_file} was uploaded to this cache: PUT it to nar/{nar_file} first"
                ),
            )
        })?;
    if nar.nar_hash != info.nar_hash || nar.nar_size != info.nar_size {
        return Err(ServerError::NarMismatch(format!(
            "the narinfo says {} ({} bytes), but {nar_file} holds {} ({} bytes)",
            info.nar_hash, info.nar_size, nar.nar_hash, nar.nar_size
        )));
    }
    let full = |path: &StorePath| info.store_dir.display(path);
    let upload = UploadPathNarInfo {
        cache: cache_name(&name)?,
        store_path_hash: info.store_path.hash().clone(),
        store_path: info.full_store_path(),
        references: info.references.iter().map(full).collect(),
        system: info.system.clone(),
        deriver: info.deriver.as_ref().map(full),
        sigs: info.sigs.clone(),
        ca: info.ca.clone(),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
    };
    let object = new_object(&upload, &cache, caller.subject())?;
    Uploads::new(&state).claim_staged(&staged, object).await?;
    Ok(StatusCode::NO_CONTENT)
}
