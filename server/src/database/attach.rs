//! The rows that make a stored NAR part of a cache: a path (an object
//! row) or, for `nix copy`, a NAR staged under its file name; each after
//! re-checking, under the NAR row's lock, that the NAR is still stored.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter};

use super::audit::{AuditEvent, insert_audit};
use super::entity::{BlobState, nar, object, staged_nar};
use super::ids::{CacheId, NarId};
use super::json::Json;
use super::records::PathInfo;
use super::{DatabaseError, now};

/// A path to attach to a cache.
#[derive(Debug, Clone)]
pub struct NewObject {
    /// The cache.
    pub cache_id: CacheId,
    /// What its narinfo says.
    pub info: PathInfo,
    /// Subject of the token that uploaded it.
    pub created_by: Option<String>,
    /// When the path was created and last read, for a path brought over
    /// from another server (`atticadm import-attic`); `None` for a new
    /// upload: created now, never read.
    pub timestamps: Option<PathTimestamps>,
    /// What the audit log records of this attachment (a push, an import),
    /// in the same transaction; `None` records nothing (tests).
    pub audit: Option<AuditEvent>,
}

/// A path's creation and last-read times, in Unix seconds, kept when it
/// moves from another server so that retention treats it as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTimestamps {
    /// When it was first pushed.
    pub created_at: i64,
    /// When it was last read, if ever.
    pub last_accessed_at: Option<i64>,
}

/// Makes NAR `nar_id` the path `new` of its cache, replacing what the path
/// was (an upsert, so concurrent pushes of one path both succeed), after
/// re-checking and stamping the NAR so a collector cannot take it away.
pub(super) async fn attach_object(
    txn: &DatabaseTransaction,
    nar_id: NarId,
    new: NewObject,
) -> Result<(), DatabaseError> {
    let when = now();
    stamp_nar(txn, nar_id, when).await?;
    if let Some(event) = new.audit {
        insert_audit(txn, event, when).await?;
    }
    let info = new.info;
    let (created_at, last_accessed_at) = match new.timestamps {
        Some(times) => (times.created_at, times.last_accessed_at),
        None => (when, None),
    };
    let row = object::ActiveModel {
        cache_id: Set(new.cache_id.get()),
        nar_id: Set(nar_id.get()),
        store_path_hash: Set(info.store_path_hash.as_str().to_owned()),
        store_path: Set(info.store_path),
        references: Set(Json(info.references).encode()),
        system: Set(info.system),
        deriver: Set(info.deriver),
        sigs: Set(Json(info.sigs).encode()),
        ca: Set(info.ca),
        created_at: Set(created_at),
        last_accessed_at: Set(last_accessed_at),
        created_by: Set(new.created_by),
        // Set by the claim of a NAR `nix copy` uploaded, after this.
        nix_upload_file: Set(None),
        ..Default::default()
    };
    object::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([object::Column::CacheId, object::Column::StorePathHash])
                .update_columns([
                    object::Column::NarId,
                    object::Column::StorePath,
                    object::Column::References,
                    object::Column::System,
                    object::Column::Deriver,
                    object::Column::Sigs,
                    object::Column::Ca,
                    object::Column::CreatedAt,
                    object::Column::LastAccessedAt,
                    object::Column::CreatedBy,
                    object::Column::NixUploadFile,
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

pub(super) async fn stage_nar(
    txn: &DatabaseTransaction,
    cache_id: CacheId,
    file: String,
    nar_id: NarId,
    when: i64,
) -> Result<(), DatabaseError> {
    stamp_nar(txn, nar_id, when).await?;
    let row = staged_nar::ActiveModel {
        cache_id: Set(cache_id.get()),
        file: Set(file),
        nar_id: Set(nar_id.get()),
        created_at: Set(when),
        ..Default::default()
    };
    staged_nar::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([staged_nar::Column::CacheId, staged_nar::Column::File])
                .update_columns([staged_nar::Column::NarId, staged_nar::Column::CreatedAt])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// Re-checks, under the row's lock, that a NAR is still valid, and stamps
/// it as referenced now: a collector deleting it concurrently waits for
/// this transaction, then finds the stamp and leaves it. `ChunkGone` if it
/// was reclaimed or found damaged meanwhile.
pub(super) async fn stamp_nar(
    txn: &DatabaseTransaction,
    nar_id: NarId,
    when: i64,
) -> Result<(), DatabaseError> {
    let stamped = nar::Entity::update_many()
        .col_expr(nar::Column::LastReferencedAt, Expr::value(when))
        .filter(nar::Column::Id.eq(nar_id))
        .filter(nar::Column::State.eq(BlobState::Valid))
        .exec(txn)
        .await?
        .rows_affected;
    if stamped == 1 {
        Ok(())
    } else {
        Err(DatabaseError::ChunkGone)
    }
}
