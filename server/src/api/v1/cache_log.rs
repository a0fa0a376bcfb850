//! `GET /_api/v1/cache-log/{cache}?since=&after=&limit=`: a cache's audit
//! log for its admins (configure_cache), a page at a time, oldest first.
//! A token granting nothing on the cache is told it does not exist, as for
//! a missing one.

use attic::api::v1::cache_log::{AuditEntry, CacheLogPage, CacheLogQuery, MAX_PAGE, format_time};
use attic_token::Permission;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use std::sync::Arc;

use super::super::cache_name;
use crate::access::Caller;
use crate::database::{Actor, AuditId, AuditQuery, AuditRecord, AuditScope};
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// One page of a cache's log.
pub async fn cache_log(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<CacheLogQuery>, QueryRejection>,
) -> ServerResult<Json<CacheLogPage>> {
    let name = cache_name(&name)?;
    let cache = caller
        .require_cache_undiscoverable(&state, &name, Permission::ConfigureCache)
        .await?;
    let Query(query) =
        query.map_err(|e| ServerError::bad_request("InvalidQuery", e.body_text()))?;
    let limit = query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let records = state
        .database
        .read_audit(&AuditQuery {
            scope: AuditScope::Cache(cache.id),
            since: query.since,
            after: query.after.map(AuditId::new),
            limit,
        })
        .await?;
    let next_after = (records.len() as u64 == limit)
        .then(|| records.last().map(|r| r.id.get()))
        .flatten();
    Ok(Json(CacheLogPage {
        events: records.iter().map(entry).collect(),
        next_after,
    }))
}

/// A recorded event as the API (and `atticadm audit --json`) shows it.
pub fn entry(record: &AuditRecord) -> AuditEntry {
    let (actor, subject) = match &record.actor {
        Actor::Token(subject) => ("token", subject.clone()),
        Actor::Atticadm => ("atticadm", None),
    };
    AuditEntry {
        id: record.id.get(),
        at: record.at,
        time: format_time(record.at),
        action: record.action.as_str().to_owned(),
        actor: actor.to_owned(),
        subject,
        cache: record.cache_name.clone(),
        store_path: record.store_path.clone(),
        detail: record.detail.clone(),
    }
}
