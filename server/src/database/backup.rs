//! What `atticadm backup` asks of the database: a consistent copy of a live
//! SQLite database, opened on its own, and the blobs that copy names.

use std::path::Path;

use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

use super::entity::{build_log, pack};
use super::ids::LogId;
use super::records::PackRecord;
use super::{Database, DatabaseError};
use crate::pack::PackId;

/// A log whose text is in a blob of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBlob {
    /// Its row.
    pub id: LogId,
    /// The blob's storage key, as `build_log` stored it.
    pub key: String,
}

impl Database {
    /// Whether this is a SQLite database (the only kind `snapshot_into`
    /// can copy).
    pub fn is_sqlite(&self) -> bool {
        self.conn.get_database_backend() == DbBackend::Sqlite
    }

    /// Writes a consistent copy of the whole database to `file` with
    /// `VACUUM INTO`, while writers go on: the copy is what one read
    /// transaction saw, so every upload committed before it began is in it
    /// and none is half in it. `file` must not exist or be empty. SQLite
    /// only.
    pub async fn snapshot_into(&self, file: &Path) -> Result<(), DatabaseError> {
        let target = file.to_string_lossy().into_owned();
        self.conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "VACUUM INTO ?",
                [target.into()],
            ))
            .await?;
        Ok(())
    }

    /// Opens a snapshot `snapshot_into` wrote, alone and in rollback-journal
    /// mode (so closing it leaves one self-contained file), with no
    /// migrations run: it is read and pruned, never served.
    pub async fn open_snapshot(file: &Path) -> Result<Self, DatabaseError> {
        let url = format!("sqlite://{}?mode=rw", file.display());
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(1)
            .min_connections(1)
            .sqlx_logging(false);
        options.map_sqlx_sqlite_opts(|opts| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            opts.journal_mode(SqliteJournalMode::Delete)
                .synchronous(SqliteSynchronous::Full)
                .create_if_missing(false)
        });
        let conn = sea_orm::Database::connect(options).await?;
        Ok(Self { conn })
    }

    /// Closes every connection; for a snapshot, whose file is copied or
    /// synced next.
    pub async fn close(self) -> Result<(), DatabaseError> {
        Ok(self.conn.close().await?)
    }

    /// The packs after `after` (by id), `limit` of them, every state
    /// included: a backup copies what its database names.
    pub async fn packs_page(
        &self,
        after: Option<PackId>,
        limit: u64,
    ) -> Result<Vec<PackRecord>, DatabaseError> {
        pack::Entity::find()
            .filter(pack::Column::Id.gt(after.map_or(0, PackId::get)))
            .order_by_asc(pack::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(PackRecord::try_from)
            .collect()
    }

    /// The logs kept in blobs, after `after` (by id), `limit` of them.
    pub async fn log_blobs_page(
        &self,
        after: Option<LogId>,
        limit: u64,
    ) -> Result<Vec<LogBlob>, DatabaseError> {
        let rows: Vec<(i64, Option<String>)> = build_log::Entity::find()
            .select_only()
            .column(build_log::Column::Id)
            .column(build_log::Column::StorageKey)
            .filter(build_log::Column::Id.gt(after.map_or(0, LogId::get)))
            .filter(build_log::Column::StorageKey.is_not_null())
            .order_by_asc(build_log::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, key)| {
                key.map(|key| LogBlob {
                    id: LogId::new(id),
                    key,
                })
            })
            .collect())
    }
}
