//! Build logs, one per (cache, derivation): the row says where the log is
//! stored and how big it is; the bytes live in blob storage (rows written
//! before logs moved there hold them inline).

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::build_log;
use super::ids::{CacheId, LogId};
use super::records::{corrupt, size};
use super::{Database, DatabaseError, now};

/// Where a stored log's compressed bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLocation {
    /// In a blob of its own: one zstd stream under this storage key.
    Blob(String),
    /// In the row, as one zstd frame (logs stored before blobs).
    Inline(Vec<u8>),
}

/// A log as a quota sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSize {
    /// Its row.
    pub id: LogId,
    /// Bytes it takes in storage.
    pub stored_size: i64,
}

/// A stored build log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Uncompressed bytes.
    pub size: u64,
    /// Where it is.
    pub location: LogLocation,
}

impl TryFrom<build_log::Model> for LogRecord {
    type Error = DatabaseError;

    fn try_from(row: build_log::Model) -> Result<Self, Self::Error> {
        Ok(Self {
            size: size(row.size, "size").map_err(corrupt("build_log", row.id))?,
            location: match row.storage_key {
                Some(key) => LogLocation::Blob(key),
                None => LogLocation::Inline(row.data),
            },
        })
    }
}

impl Database {
    /// Records (or replaces) a derivation's log in a cache, stored under
    /// `storage_key`. A replaced log's blob is left to the orphan sweep,
    /// so a reader streaming it finishes.
    pub async fn put_log(
        &self,
        cache_id: CacheId,
        drv: &str,
        size: u64,
        stored_size: u64,
        storage_key: &str,
    ) -> Result<(), DatabaseError> {
        let row = build_log::ActiveModel {
            cache_id: Set(cache_id.get()),
            drv: Set(drv.to_owned()),
            size: Set(size as i64),
            data: Set(Vec::new()),
            storage_key: Set(Some(storage_key.to_owned())),
            stored_size: Set(stored_size as i64),
            created_at: Set(now()),
            ..Default::default()
        };
        build_log::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([build_log::Column::CacheId, build_log::Column::Drv])
                    .update_columns([
                        build_log::Column::Size,
                        build_log::Column::Data,
                        build_log::Column::StorageKey,
                        build_log::Column::StoredSize,
                        build_log::Column::CreatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.conn)
            .await?;
        Ok(())
    }

    /// A derivation's log in a cache.
    pub async fn find_log(
        &self,
        cache_id: CacheId,
        drv: &str,
    ) -> Result<Option<LogRecord>, DatabaseError> {
        build_log::Entity::find()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .filter(build_log::Column::Drv.eq(drv))
            .one(&self.conn)
            .await?
            .map(LogRecord::try_from)
            .transpose()
    }

    /// Deletes a cache's logs stored before `cutoff` (retention); how many.
    /// Their blobs are left to the orphan sweep.
    pub async fn expire_logs(&self, cache_id: CacheId, cutoff: i64) -> Result<u64, DatabaseError> {
        let result = build_log::Entity::delete_many()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .filter(build_log::Column::CreatedAt.lt(cutoff))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// A cache's oldest logs, oldest first, with their stored sizes: what a
    /// quota evicts before any path.
    pub async fn oldest_logs(
        &self,
        cache_id: CacheId,
        limit: u64,
    ) -> Result<Vec<LogSize>, DatabaseError> {
        let rows: Vec<(i64, i64)> = build_log::Entity::find()
            .select_only()
            .column(build_log::Column::Id)
            .column(build_log::Column::StoredSize)
            .filter(build_log::Column::CacheId.eq(cache_id))
            .order_by_asc(build_log::Column::CreatedAt)
            .order_by_asc(build_log::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, stored_size)| LogSize {
                id: LogId::new(id),
                stored_size,
            })
            .collect())
    }

    /// Deletes logs by id; how many went. Their blobs are left to the
    /// orphan sweep.
    pub async fn delete_logs(&self, ids: &[LogId]) -> Result<u64, DatabaseError> {
        let result = build_log::Entity::delete_many()
            .filter(build_log::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// Of `keys` (blobs under the log prefix), those a log row names, for
    /// the orphan sweep.
    pub async fn log_keys_in_use(&self, keys: &[String]) -> Result<Vec<String>, DatabaseError> {
        let mut in_use = Vec::new();
        // Bounded statements: a listing may hold many keys.
        for batch in keys.chunks(500) {
            let rows: Vec<Option<String>> = build_log::Entity::find()
                .select_only()
                .column(build_log::Column::StorageKey)
                .filter(build_log::Column::StorageKey.is_in(batch.iter().cloned()))
                .into_tuple()
                .all(&self.conn)
                .await?;
            in_use.extend(rows.into_iter().flatten());
        }
        Ok(in_use)
    }
}
