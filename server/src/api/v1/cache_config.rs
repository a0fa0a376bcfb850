//! `/_api/v1/cache-config/{cache}`: GET (needs pull, or a public cache),
//! POST to create (create_cache), PATCH to configure (configure_cache;
//! configure_cache_retention for the retention period alone; a key
//! rotation, `rotate_keypair`, is [`crate::key_rotation`]'s), DELETE to
//! destroy (destroy_cache).

use std::sync::Arc;
use std::time::Duration;

use attic::api::v1::cache_config::{
    CacheConfig, CreateCacheRequest, KeypairConfig, QuotaConfig, RetentionPeriodConfig,
};
use attic::cache::CacheName;
use attic::signing::SigningKey;
use attic::store_path::StoreDir;
use attic_token::Permission;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::super::{JsonBody, cache_name, endpoint, substituter_url};
use crate::access::Caller;
use crate::database::{Actor, AuditAction, AuditEvent, CacheChanges, DatabaseError, NewCache, now};
use crate::error::{ServerError, ServerResult};
use crate::key_rotation::{generate_key, next_key_generation, rotate_signing_key};
use crate::pull_through::Upstream;
use crate::state::AppState;

/// A cache's settings, without its secret key.
pub async fn get_cache_config(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ServerResult<Json<CacheConfig>> {
    let name = cache_name(&name)?;
    // A pusher needs the settings too (the client skips paths its upstream
    // keys signed), so push grants this read as pull does.
    let cache = match caller.pullable_cache(&state, &name).await {
        Ok(cache) => cache,
        Err(denied) => caller
            .require_cache(&state, &name, Permission::Push)
            .await
            .map(Arc::new)
            .map_err(|_| denied)?,
    };
    let overlapping = cache.overlapping_key(now());
    Ok(Json(CacheConfig {
        keypair: None,
        rotate_keypair: None,
        substituter_endpoint: Some(substituter_url(&state, &headers, &cache.name)),
        api_endpoint: Some(endpoint(&state, &headers)),
        public_key: Some(cache.signing_key.public_key().to_string()),
        previous_public_key: overlapping
            .map(|previous| previous.signing_key.public_key().to_string()),
        previous_key_signs_until: overlapping.map(|previous| previous.signs_until),
        is_public: Some(cache.is_public),
        store_dir: Some(cache.store_dir.as_str().to_owned()),
        priority: Some(cache.priority),
        upstream_cache_key_names: Some(cache.upstream_cache_key_names.clone()),
        retention_period: Some(match cache.retention_period {
            None => RetentionPeriodConfig::Global,
            Some(seconds) => RetentionPeriodConfig::Period(seconds.try_into().unwrap_or(u32::MAX)),
        }),
        upload_encodings: Some(
            super::upload_path::UPLOAD_ENCODINGS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
        ),
        quota: Some(match cache.quota {
            None => QuotaConfig::Unlimited,
            Some(bytes) => QuotaConfig::Bytes(bytes),
        }),
        used_bytes: Some(u64::try_from(state.database.cache_usage(cache.id).await?).unwrap_or(0)),
        upstreams: Some(cache.upstreams.iter().map(Upstream::to_config).collect()),
    }))
}

/// Creates a cache.
pub async fn create_cache(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    request: Request,
) -> ServerResult<Json<Value>> {
    let name = cache_name(&name)?;
    caller.require(&name, Permission::CreateCache)?;
    let request: CreateCacheRequest = JsonBody::read(request).await?;
    let signing_key = make_key(&request.keypair, &state, &name, 1)?;
    let store_dir = store_dir(&request.store_dir)?;
    check_key_names(&request.upstream_cache_key_names)?;
    let created = state
        .database
        .create_cache(NewCache {
            name: name.clone(),
            signing_key,
            is_public: request.is_public,
            store_dir,
            priority: request.priority,
            upstream_cache_key_names: request.upstream_cache_key_names,
        })
        .await;
    match created {
        Ok(cache) => {
            let visibility = if cache.is_public { "public" } else { "private" };
            state
                .database
                .record_audit(
                    AuditEvent::new(AuditAction::CreateCache, Actor::Token(caller.subject()))
                        .on_cache(&cache)
                        .with_detail(visibility),
                )
                .await?;
            Ok(Json(json!({})))
        }
        Err(DatabaseError::CacheExists) => Err(ServerError::CacheExists(name.to_string())),
        Err(DatabaseError::CacheNameReserved) => {
            Err(ServerError::CacheNameReserved(name.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Changes the settings given; leaves the rest.
pub async fn configure_cache(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    request: Request,
) -> ServerResult<Json<Value>> {
    let name = cache_name(&name)?;
    // Which permission a patch needs depends on its fields; a caller with
    // neither is refused before its body is read.
    caller
        .require(&name, Permission::ConfigureCache)
        .or_else(|denied| {
            caller
                .require(&name, Permission::ConfigureCacheRetention)
                .map_err(|_| denied)
        })?;
    let patch: serde_json::Map<String, Value> = JsonBody::read(request).await?;
    let patch = parse_patch(patch)?;
    if patch.substituter_endpoint.is_some()
        || patch.api_endpoint.is_some()
        || patch.public_key.is_some()
        || patch.upload_encodings.is_some()
        || patch.used_bytes.is_some()
        || patch.previous_public_key.is_some()
        || patch.previous_key_signs_until.is_some()
    {
        return Err(ServerError::bad_request(
            "ReadOnlyField",
            "substituter_endpoint, api_endpoint, public_key, previous_public_key, previous_key_signs_until, upload_encodings and used_bytes cannot be set; send keypair or rotate_keypair to change the key",
        ));
    }
    if patch.keypair.is_some() && patch.rotate_keypair.is_some() {
        return Err(ServerError::bad_request(
            "ConflictingKeyChanges",
            "send keypair (replace the key at once) or rotate_keypair (with an overlap), not both",
        ));
    }
    // Retention and quota both decide how long data is kept.
    let only_retention = CacheConfig {
        retention_period: None,
        quota: None,
        ..patch.clone()
    } == CacheConfig::default();
    if patch.retention_period.is_some() || patch.quota.is_some() {
        caller.require(&name, Permission::ConfigureCacheRetention)?;
    }
    if !only_retention {
        caller.require(&name, Permission::ConfigureCache)?;
    }
    let cache = state
        .database
        .find_cache(&name)
        .await?
        .ok_or_else(|| ServerError::NoSuchCache(name.to_string()))?;
    let store_dir = patch.store_dir.as_deref().map(store_dir).transpose()?;
    if let Some(names) = &patch.upstream_cache_key_names {
        check_key_names(names)?;
    }
    let upstreams = patch
        .upstreams
        .as_deref()
        .map(Upstream::list)
        .transpose()
        .map_err(|e| ServerError::bad_request("InvalidUpstream", e.to_string()))?;
    let changed = changed_settings(&patch);
    let changes = CacheChanges {
        signing_key: patch
            .keypair
            .as_ref()
            .map(|k| {
                let generation = next_key_generation(&cache.signing_key);
                make_key(k, &state, &name, generation)
            })
            .transpose()?,
        is_public: patch.is_public,
        store_dir,
        priority: patch.priority,
        upstream_cache_key_names: patch.upstream_cache_key_names,
        retention_period: patch.retention_period.map(|retention| match retention {
            RetentionPeriodConfig::Global => None,
            RetentionPeriodConfig::Period(seconds) => Some(i64::from(seconds)),
        }),
        quota: patch.quota.map(|quota| match quota {
            QuotaConfig::Unlimited => None,
            QuotaConfig::Bytes(bytes) => Some(bytes),
        }),
        upstreams,
    };
    state.database.configure_cache(&cache, changes).await?;
    state.read_cache.forget_cache(&cache.name, cache.id);
    state.pull_through.forget_cache(cache.id);
    if let Some(rotation) = patch.rotate_keypair {
        let overlap = Duration::from_secs(rotation.overlap_seconds);
        let rotated = rotate_signing_key(&state, &name, overlap).await?;
        state
            .database
            .record_audit(
                AuditEvent::new(AuditAction::RotateKey, Actor::Token(caller.subject()))
                    .on_cache(&rotated)
                    .with_detail(format!(
                        "new key {}, the previous one signing for {}",
                        rotated.signing_key.name(),
                        humantime::format_duration(overlap)
                    )),
            )
            .await?;
    }
    state
        .database
        .record_audit(
            AuditEvent::new(AuditAction::ConfigureCache, Actor::Token(caller.subject()))
                .on_cache(&cache)
                .with_detail(changed),
        )
        .await?;
    Ok(Json(json!({})))
}

/// The settings a patch changes, for the audit log: `is_public=true,
/// keypair`. Never a key's secret: only that it changed.
fn changed_settings(patch: &CacheConfig) -> String {
    let mut changed = Vec::new();
    if patch.keypair.is_some() {
        changed.push("keypair".to_owned());
    }
    let mut value = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            changed.push(format!("{name}={value}"));
        }
    };
    value("is_public", patch.is_public.map(|v| v.to_string()));
    value("store_dir", patch.store_dir.clone());
    value("priority", patch.priority.map(|v| v.to_string()));
    value(
        "upstream_cache_key_names",
        patch
            .upstream_cache_key_names
            .as_ref()
            .map(|names| names.join(",")),
    );
    value(
        "retention_period",
        patch.retention_period.as_ref().map(|r| match r {
            RetentionPeriodConfig::Global => "global".to_owned(),
            RetentionPeriodConfig::Period(seconds) => format!("{seconds}s"),
        }),
    );
    value(
        "quota",
        patch.quota.as_ref().map(|q| match q {
            QuotaConfig::Unlimited => "unlimited".to_owned(),
            QuotaConfig::Bytes(bytes) => bytes.to_string(),
        }),
    );
    value(
        "upstreams",
        patch.upstreams.as_ref().map(|list| {
            let urls: Vec<&str> = list.iter().map(|u| u.url.as_str()).collect();
            format!("[{}]", urls.join(" "))
        }),
    );
    changed.join(", ")
}

/// Settings a PATCH may carry (and the read-only ones it may not).
const PATCHABLE: [&str; 9] = [
    "keypair",
    "rotate_keypair",
    "is_public",
    "store_dir",
    "priority",
    "upstream_cache_key_names",
    "retention_period",
    "quota",
    "upstreams",
];

/// A PATCH body, refusing any field it cannot change: a misspelt field
/// must not answer 200 and change nothing.
fn parse_patch(patch: serde_json::Map<String, Value>) -> ServerResult<CacheConfig> {
    if let Some(unknown) = patch
        .keys()
        .find(|key| !PATCHABLE.contains(&key.as_str()) && !is_read_only(key))
    {
        return Err(ServerError::bad_request(
            "UnknownField",
            format!(
                "{unknown:?} is not a cache setting; settings are {}",
                PATCHABLE.join(", ")
            ),
        ));
    }
    serde_json::from_value(Value::Object(patch))
        .map_err(|e| ServerError::bad_request("InvalidJson", e.to_string()))
}

fn is_read_only(key: &str) -> bool {
    [
        "substituter_endpoint",
        "api_endpoint",
        "public_key",
        "previous_public_key",
        "previous_key_signs_until",
        "upload_encodings",
        "used_bytes",
    ]
    .contains(&key)
}

/// Destroys a cache; its paths are gone at once.
pub async fn destroy_cache(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServerResult<Json<Value>> {
    let name = cache_name(&name)?;
    let cache = caller
        .require_cache(&state, &name, Permission::DestroyCache)
        .await?;
    state
        .database
        .destroy_cache(&cache, state.config.soft_delete_caches)
        .await?;
    state.read_cache.forget_cache(&cache.name, cache.id);
    state
        .database
        .record_audit(
            AuditEvent::new(AuditAction::DestroyCache, Actor::Token(caller.subject()))
                .on_cache(&cache),
        )
        .await?;
    Ok(Json(json!({})))
}

/// A store directory as a request gives it; 400 if it is none.
fn store_dir(dir: &str) -> ServerResult<StoreDir> {
    StoreDir::new(dir).map_err(|e| ServerError::bad_request("InvalidStoreDir", e.to_string()))
}

/// A key as asked: given, or generated (see [`generate_key`]).
fn make_key(
    config: &KeypairConfig,
    state: &AppState,
    cache: &CacheName,
    generation: u32,
) -> ServerResult<SigningKey> {
    match config {
        KeypairConfig::Generate => generate_key(&state.config, cache, generation),
        KeypairConfig::Keypair(secret) => {
            secret.parse().map_err(|e: attic::signing::SigningError| {
                ServerError::bad_request("InvalidKeypair", e.to_string())
            })
        }
    }
}

fn check_key_names(names: &[String]) -> ServerResult<()> {
    for name in names {
        if name.is_empty()
            || name.contains(':')
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ServerError::bad_request(
                "InvalidKeyName",
                format!("{name:?} is not a key name"),
            ));
        }
    }
    Ok(())
}
