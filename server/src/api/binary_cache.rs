//! The Nix binary cache protocol, what `nix` reads as a substituter:
//! `/{cache}/nix-cache-info`, `/{cache}/{hash}.narinfo` (signed on the fly
//! with the cache's key, and during a key rotation's overlap with its
//! previous key too) and `/{cache}/nar/{hash}.nar[.zst]`.
//!
//! NAR URLs name the store path hash, not the NAR hash, and resolve only
//! through the cache's own objects: one cache's URLs never reach another's data.

use std::sync::Arc;

use attic::narinfo::NarInfo;
use attic::store_path::StorePathHash;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::handler::Handler;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{build_log, debug_info, delete_path, listing, nix_upload, pulled_nar, uploaded_nar};
use bytes::Bytes;
use futures::StreamExt;

use super::cache_name;
use crate::access::Caller;
use crate::database::{Cache, DatabaseError, NarId, NarRecord, StoredPath, now};
use crate::error::{ServerError, ServerResult};
use crate::expect_continue::refuse_before_the_body;
use crate::metrics::Metrics;
use crate::nar_range;
use crate::nar_stream::{NarEncoding, NarReadError, stream_nar};
use crate::pack::is_whole_pack;
use crate::pack::read::StoredChunk;
use crate::pull_through::{self, Pulled, in_flight::Streaming};
use crate::state::{AppState, CHUNK_LIST_HELD_MAX, SignedNarinfo};

/// The binary cache routes. Every upload handler changes nothing before it
/// reads its body, so one slow to get there is dropped and the upload
/// refused while its client still waits to send
/// ([`crate::expect_continue`]).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/{cache}/nix-cache-info",
            get(nix_cache_info)
                .put(nix_upload::put_cache_info.layer(from_fn(refuse_before_the_body))),
        )
        .route(
            "/{cache}/nar/{file}",
            get(get_nar).put(nix_upload::put_nar.layer(from_fn(refuse_before_the_body))),
        )
        .route(
            "/{cache}/log/{drv}",
            get(build_log::get_log).put(build_log::put_log.layer(from_fn(refuse_before_the_body))),
        )
        // Debug info links (`index-debug-info=true`).
        .route(
            "/{cache}/debuginfo/{id}",
            get(debug_info::get_debug_info)
                .put(debug_info::put_debug_info.layer(from_fn(refuse_before_the_body))),
        )
        .route(
            "/{cache}/{file}",
            get(get_cache_file)
                .put(put_cache_file.layer(from_fn(refuse_before_the_body)))
                .delete(delete_path::delete_path),
        )
}

async fn nix_cache_info(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServerResult<Response> {
    let cache = caller.pullable_cache(&state, &cache_name(&name)?).await?;
    let body = format!(
        "WantMassQuery: 1\nStoreDir: {}\nPriority: {}\n",
        cache.store_dir, cache.priority
    );
    Ok(([(CONTENT_TYPE, "text/x-nix-cache-info")], body).into_response())
}

/// The path and NAR behind `hash` in `cache`.
pub(super) async fn find_object(
    state: &AppState,
    cache: &Cache,
    hash: &StorePathHash,
) -> ServerResult<(StoredPath, NarRecord)> {
    state
        .database
        .find_object(cache.id, hash)
        .await?
        .ok_or(ServerError::NoSuchObject)
}

async fn get_narinfo(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
) -> ServerResult<Response> {
    let hash = file
        .strip_suffix(".narinfo")
        .ok_or(ServerError::NoSuchRoute)?;
    let cache = caller.pullable_cache(&state, &cache_name(&name)?).await;
    // A name that is no store path hash is a miss, once the cache is allowed.
    let hash: Option<StorePathHash> = hash.parse().ok();
    let now = now();
    let held = match (&cache, &hash) {
        (Ok(cache), Some(hash)) => state.read_cache.narinfos.get(&(cache.id, hash.clone())),
        _ => None,
    }
    .filter(|held| held.is_signed_for(now));
    if let Some(held) = held {
        Metrics::count(&state.metrics.narinfo_requests, "hit");
        state.access_log.record(held.object_id);
        return Ok(narinfo_response(held.text));
    }
    let found = match (cache, &hash) {
        (Ok(cache), Some(hash)) => find_or_pull(&state, cache, hash, &caller).await,
        (Ok(_), None) => Err(ServerError::NoSuchObject),
        (Err(e), _) => Err(e),
    };
    let outcome = match &found {
        Ok(_) => "hit",
        Err(ServerError::NoSuchObject) => "miss",
        Err(_) => "refused",
    };
    Metrics::count(&state.metrics.narinfo_requests, outcome);
    let (cache, object, nar) = match found? {
        Found::Stored(found) => *found,
        // Not held: once stored, the narinfo is the stored path's.
        Found::Pulling(cache, streaming) => {
            let narinfo = pull_through::streaming_narinfo(&cache, &streaming.narinfo, now);
            return Ok(narinfo_response(Bytes::from(narinfo.to_string())));
        }
    };
    state.access_log.record(object.id);
    let text = Bytes::from(build_narinfo(&cache, &object, &nar, now)?.to_string());
    state.read_cache.narinfos.insert(
        (cache.id, object.info.store_path_hash.clone()),
        SignedNarinfo {
            text: text.clone(),
            signed_until: cache.signatures_valid_until(now),
            object_id: object.id,
            nar: Arc::new(nar),
        },
    );
    Ok(narinfo_response(text))
}

/// A path a narinfo request found.
enum Found {
    /// Stored in the cache.
    Stored(Box<(Arc<Cache>, StoredPath, NarRecord)>),
    /// On its way from an upstream.
    Pulling(Arc<Cache>, Arc<Streaming>),
}

/// The path behind `hash` in `cache`, or, on a miss, from the cache's
/// upstreams if one has it ([`pull_through`]).
async fn find_or_pull(
    state: &Arc<AppState>,
    cache: Arc<Cache>,
    hash: &StorePathHash,
    caller: &Caller,
) -> ServerResult<Found> {
    let found = match find_object(state, &cache, hash).await {
        Err(ServerError::NoSuchObject) => {
            match pull_through::pull(state, &cache, hash, caller.subject()).await {
                Pulled::Stored => find_object(state, &cache, hash).await,
                Pulled::Streaming(streaming) => return Ok(Found::Pulling(cache, streaming)),
                Pulled::Missed => Err(ServerError::NoSuchObject),
            }
        }
        found => found,
    };
    let (object, nar) = found?;
    Ok(Found::Stored(Box::new((cache, object, nar))))
}

/// A NAR's chunks, from memory when recently read.
pub(crate) async fn nar_chunks(state: &AppState, nar_id: NarId) -> ServerResult<Vec<StoredChunk>> {
    if let Some(held) = state.read_cache.chunk_lists.get(&nar_id) {
        return Ok(held.as_ref().clone());
    }
    let chunks = state.database.nar_chunks(nar_id).await?;
    if chunks.len() <= CHUNK_LIST_HELD_MAX {
        state
            .read_cache
            .chunk_lists
            .insert(nar_id, Arc::new(chunks.clone()));
    }
    Ok(chunks)
}

fn narinfo_response(text: Bytes) -> Response {
    ([(CONTENT_TYPE, "text/x-nix-narinfo")], Body::from(text)).into_response()
}

/// The narinfo of a path, signed with the cache's keys as they sign at
/// `now` (Unix seconds): during a rotation's overlap, the current and the
/// previous key.
fn build_narinfo(
    cache: &Cache,
    object: &StoredPath,
    nar: &NarRecord,
    now: i64,
) -> ServerResult<NarInfo> {
    // The row decoded, but its paths must also be paths of the cache's
    // store: a row that fails this was not written by this server.
    let corrupt = |what: &str| {
        ServerError::Database(DatabaseError::CorruptRow {
            table: "object",
            id: object.id.get(),
            reason: format!("{what} is not a path of {}", cache.store_dir),
        })
    };
    let info = &object.info;
    let store_dir = cache.store_dir.clone();
    let store_path = store_dir
        .parse_path(&info.store_path)
        .map_err(|_| corrupt("store_path"))?;
    let references = info
        .references
        .iter()
        .map(|r| store_dir.parse_path(r))
        .collect::<Result<_, _>>()
        .map_err(|_| corrupt("a reference"))?;
    let deriver = info
        .deriver
        .as_deref()
        .map(|d| store_dir.parse_path(d))
        .transpose()
        .map_err(|_| corrupt("deriver"))?;
    let encoding = NarEncoding::stored(nar);
    let mut narinfo = NarInfo {
        store_dir,
        url: format!("nar/{}{}", store_path.hash(), encoding.suffix()),
        store_path,
        compression: Some(encoding.compression().to_owned()),
        file_hash: None,
        file_size: Some(encoding.file_size(nar)),
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size,
        references,
        deriver,
        system: info.system.clone(),
        sigs: info.sigs.clone(),
        ca: info.ca.clone(),
        extra_fields: Vec::new(),
    };
    cache.drop_previous_key_signatures(&mut narinfo.sigs);
    for key in cache.signing_keys(now) {
        narinfo.sign(key);
    }
    Ok(narinfo)
}

/// A presigned URL of the pack that is byte for byte this NAR's
/// `.nar.zst`, when `[storage] redirect-reads` is on and there is one.
/// Anything else, a failure to presign included, is served as usual.
async fn presigned_whole_pack(
    state: &AppState,
    nar: &NarRecord,
    chunks: &[StoredChunk],
) -> Option<String> {
    let expiry = state.config.read_redirect_expiry()?;
    let pack_id = nar.pack_id?;
    // The chunks must still be that pack, back to back from its start (a
    // repair may since have moved some elsewhere).
    let pieces = chunks.iter().map(|c| (c.pack_id, c.offset, c.stored_size));
    if !is_whole_pack(pack_id, nar.file_size, pieces) {
        return None;
    }
    let pack = &chunks.first()?.pack_key;
    match state.storage.presign(pack.storage_key(), expiry).await {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(error = ?e, %pack, "cannot presign a pack; serving it through the server");
            None
        }
    }
}

async fn get_nar(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> ServerResult<Response> {
    if uploaded_nar::is_nix_upload_name(&file) {
        let cache = caller.pullable_cache(&state, &cache_name(&name)?).await?;
        return uploaded_nar::serve(state, &cache, &file).await;
    }
    let (hash, encoding) = if let Some(hash) = file.strip_suffix(".nar.zst") {
        (hash, NarEncoding::Zstd)
    } else if let Some(hash) = file.strip_suffix(".nar") {
        (hash, NarEncoding::Plain)
    } else {
        return Err(ServerError::NoSuchObject);
    };
    let cache = caller.pullable_cache(&state, &cache_name(&name)?).await?;
    let hash: StorePathHash = hash.parse().map_err(|_| ServerError::NoSuchObject)?;
    // Nix asks for the narinfo first: its rows are usually in memory.
    let key = (cache.id, hash.clone());
    let held = (state.read_cache.narinfos.get(&key))
        .map(|held| (held.object_id, held.nar))
        .or_else(|| state.read_cache.path_nars.get(&key));
    let (object_id, nar) = match held {
        Some(held) => held,
        None => {
            let (object, nar) = match find_object(&state, &cache, &hash).await {
                // A path being pulled through: its NAR as it arrives.
                Err(ServerError::NoSuchObject) if encoding == NarEncoding::Plain => {
                    let subject = caller.subject();
                    let range = headers.contains_key(RANGE);
                    match pulled_nar::serve_while_pulling(&state, &cache, &hash, subject, range)
                        .await?
                    {
                        Some(response) => return Ok(response),
                        None => find_object(&state, &cache, &hash).await?,
                    }
                }
                found => found?,
            };
            let held = (object.id, Arc::new(nar));
            state.read_cache.path_nars.insert(key, held.clone());
            held
        }
    };
    // A NAR read counts as a read of the path, for retention.
    state.access_log.record(object_id);
    if encoding == NarEncoding::Zstd && NarEncoding::stored(&nar) != NarEncoding::Zstd {
        return Err(ServerError::NoSuchObject);
    }
    let chunks = nar_chunks(&state, nar.id).await?;
    if encoding == NarEncoding::Zstd
        && let Some(url) = presigned_whole_pack(&state, &nar, &chunks).await
    {
        state.metrics.nar_redirects.inc();
        return Ok((
            StatusCode::FOUND,
            [
                (LOCATION, url),
                // The URL expires: never let a proxy keep the redirect.
                (CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response());
    }
    // Lengths from the chunks themselves: a NAR row held in memory may
    // predate a compaction that recompressed them.
    let mut served = nar_range::select_range(chunks, encoding, headers.get(RANGE))?;
    let stream = Box::pin(nar_range::trim(
        stream_nar(state.clone(), std::mem::take(&mut served.chunks), encoding),
        served.skip,
        served.length,
    ));
    let body = checked_body(stream).await?;
    state.metrics.served_bytes.inc_by(served.length);
    let mut response = (
        served.status,
        [
            (CONTENT_TYPE, "application/x-nix-nar".to_owned()),
            (CONTENT_LENGTH, served.length.to_string()),
            (
                CACHE_CONTROL,
                "private, max-age=31536000, immutable".to_owned(),
            ),
        ],
        body,
    )
        .into_response();
    served.add_headers(response.headers_mut());
    Ok(response)
}

/// The body of a NAR response, its first piece read before answering, so
/// that a NAR found damaged there gets an error status rather than a
/// response cut short.
pub(super) async fn checked_body<S>(mut stream: S) -> ServerResult<Body>
where
    S: futures::Stream<Item = Result<Bytes, NarReadError>> + Send + Unpin + 'static,
{
    let first = match stream.next().await {
        Some(Ok(first)) => Some(first),
        Some(Err(NarReadError::Damaged)) => return Err(ServerError::NarDamaged),
        Some(Err(NarReadError::Unavailable)) => return Err(ServerError::StorageUnavailable(None)),
        None => None,
    };
    Ok(Body::from_stream(
        futures::stream::iter(first.map(Ok)).chain(stream),
    ))
}

/// `GET /{cache}/{file}`: a narinfo, or a `.ls` listing ([`listing`]).
async fn get_cache_file(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> ServerResult<Response> {
    if file.ends_with(".ls") {
        return listing::get_listing(state.0, caller, name, file, headers).await;
    }
    get_narinfo(state, caller, Path((name, file))).await
}

/// `PUT /{cache}/{file}`: a narinfo, or a `.ls` listing ([`listing`]).
async fn put_cache_file(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
    request: axum::extract::Request,
) -> ServerResult<StatusCode> {
    if file.ends_with(".ls") {
        return listing::put_listing(state.0, caller, name, file, request).await;
    }
    nix_upload::put_narinfo(state, caller, Path((name, file)), request).await
}
