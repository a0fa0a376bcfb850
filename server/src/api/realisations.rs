//! Realisations of content-addressed derivations (`ca-derivations`), what
//! Nix reads to substitute a CA derivation's output and writes on `nix
//! copy`: `/{cache}/realisations/<sha256:hex>!<output>.doi` (Nix
//! 2.8–2.34) and `/{cache}/build-trace-v2/<drv>/<output>.doi` (Nix ≥ 2.35).
//!
//! Like narinfos: uploading takes push permission and a path the cache
//! holds; reading takes pull permission (a caller without it cannot tell a
//! missing cache from a forbidden one), and the cache's keys sign what is
//! served, on the fly.

use std::sync::Arc;

use attic::realisation::{DrvOutputId, REALISATION_SUFFIX, Realisation, RealisationError};
use attic_token::Permission;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{cache_name, read_body};
use crate::access::Caller;
use crate::database::{Cache, now};
use crate::error::{ServerError, ServerResult};
use crate::expect_continue::refuse_before_the_body;
use crate::state::AppState;

/// Largest realisation body taken: Nix's are a few hundred bytes, more
/// with many dependent realisations.
const MAX_REALISATION_BODY: usize = 256 * 1024;

/// The realisation routes of both generations of the protocol.
pub fn router() -> Router<Arc<AppState>> {
    let put_limit = || {
        (
            from_fn(refuse_before_the_body),
            DefaultBodyLimit::max(MAX_REALISATION_BODY),
        )
    };
    Router::new()
        .route(
            "/{cache}/realisations/{file}",
            get(get_drv_hash_realisation).put(put_drv_hash_realisation.layer(put_limit())),
        )
        .route(
            "/{cache}/build-trace-v2/{drv}/{file}",
            get(get_build_trace).put(put_build_trace.layer(put_limit())),
        )
}

/// `sha256:<hex>!<output>` from `<that>.doi`.
fn drv_hash_id(file: &str) -> Result<DrvOutputId, RealisationError> {
    let id = file
        .strip_suffix(REALISATION_SUFFIX)
        .ok_or_else(|| RealisationError::BadId(file.to_owned()))?;
    DrvOutputId::parse_drv_hash(id)
}

/// The derivation and output from `<drv>/<output>.doi`.
fn drv_path_id(drv: &str, file: &str) -> Result<DrvOutputId, RealisationError> {
    let output = file
        .strip_suffix(REALISATION_SUFFIX)
        .ok_or_else(|| RealisationError::BadOutputName(file.to_owned()))?;
    DrvOutputId::parse_drv_path(drv, output)
}

/// `GET /{cache}/realisations/{drvHash}!{output}.doi` (Nix 2.8–2.34).
async fn get_drv_hash_realisation(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
) -> ServerResult<Response> {
    serve(&state, &caller, &name, drv_hash_id(&file)).await
}

/// `GET /{cache}/build-trace-v2/{drv}/{output}.doi` (Nix ≥ 2.35).
async fn get_build_trace(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, drv, file)): Path<(String, String, String)>,
) -> ServerResult<Response> {
    serve(&state, &caller, &name, drv_path_id(&drv, &file)).await
}

/// `PUT /{cache}/realisations/{drvHash}!{output}.doi` (Nix 2.8–2.34).
async fn put_drv_hash_realisation(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, file)): Path<(String, String)>,
    request: Request,
) -> ServerResult<StatusCode> {
    store(&state, &caller, &name, drv_hash_id(&file), request).await
}

/// `PUT /{cache}/build-trace-v2/{drv}/{output}.doi` (Nix ≥ 2.35).
async fn put_build_trace(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, drv, file)): Path<(String, String, String)>,
    request: Request,
) -> ServerResult<StatusCode> {
    store(&state, &caller, &name, drv_path_id(&drv, &file), request).await
}

/// A realisation, signed with the cache's keys as they sign now. An id
/// that cannot be one is a miss, once the cache is allowed.
async fn serve(
    state: &AppState,
    caller: &Caller,
    name: &str,
    id: Result<DrvOutputId, RealisationError>,
) -> ServerResult<Response> {
    let cache = caller.pullable_cache(state, &cache_name(name)?).await?;
    let id = id.map_err(|_| ServerError::NoSuchObject)?;
    let mut realisation = state
        .database
        .find_realisation(cache.id, &id)
        .await?
        .ok_or(ServerError::NoSuchObject)?;
    sign(&cache, &mut realisation, now());
    Ok(([(CONTENT_TYPE, "application/json")], realisation.to_doi()).into_response())
}

/// Signs as narinfos are signed: the current key and, during a rotation's
/// overlap, the previous one.
fn sign(cache: &Cache, realisation: &mut Realisation, now: i64) {
    cache.drop_previous_key_signatures(&mut realisation.signatures);
    for key in cache.signing_keys(now) {
        realisation.sign(key);
    }
}

/// Records a realisation whose out path the cache holds.
async fn store(
    state: &AppState,
    caller: &Caller,
    name: &str,
    id: Result<DrvOutputId, RealisationError>,
    request: Request,
) -> ServerResult<StatusCode> {
    let cache = caller
        .require_cache(state, &cache_name(name)?, Permission::Push)
        .await?;
    let bad = |e: RealisationError| ServerError::bad_request("InvalidRealisation", e.to_string());
    let id = id.map_err(bad)?;
    let body = read_body(request).await?;
    let realisation = Realisation::parse_upload(id, &body).map_err(bad)?;
    if !state
        .database
        .put_realisation(cache.id, &realisation)
        .await?
    {
        return Err(ServerError::bad_request(
            "RealisationPathMissing",
            format!(
                "this cache does not hold {}: push the path before its realisation",
                cache.store_dir.display(&realisation.out_path)
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
