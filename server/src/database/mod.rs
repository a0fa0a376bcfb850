//! Every query `atticd` makes, as methods of [`Database`]; only this module
//! knows tables and column encodings. It hands out typed records
//! ([`Cache`], [`StoredPath`], [`NarRecord`], [`PackRecord`]) with typed
//! ids, built from rows by `TryFrom`, so a row that does not decode is a
//! [`DatabaseError::CorruptRow`], never a panic or a string passed on.
//!
//! One file per thing callers do: caches, paths, uploads (commit, stage,
//! claim) and the rows they write, chunks and damage, tokens, logs,
//! realisations, the garbage collector's queries, and statement metrics.
//! The sea-orm entities are private to this module. Writes that must be
//! atomic run in one transaction, begun `IMMEDIATE` on SQLite so concurrent
//! writers wait for the lock instead of failing.

mod attach;
mod audit;
mod backup;
mod caches;
mod chunks;
mod entity;
mod gc;
mod ids;
pub mod inspect;
mod json;
mod listings;
mod logs;
mod metrics;
mod paths;
mod pins;
mod realisations;
mod records;
#[cfg(test)]
mod testing;
mod tokens;
mod unheld;
mod upload_rows;
mod uploads;
mod usage;

pub use attach::{NewObject, PathTimestamps};
pub use audit::{Actor, AuditAction, AuditEvent, AuditQuery, AuditRecord, AuditScope};
pub use backup::LogBlob;
pub use caches::CacheStats;
pub use caches::{CacheChanges, NewCache};
pub use chunks::PackTotals;
pub use gc::{
    CompactionCandidate, CompactionRule, EvictableObject, LruObject, MovedChunk,
    PacksAwaitingDeletion, Removal, RemovedPaths,
};
pub use ids::{AuditId, CacheId, LogId, NarId, ObjectId, PinId, StagedNarId};
pub use listings::{DebugInfoMember, StoredListing};
pub use logs::{LogLocation, LogRecord, LogSize};
pub use metrics::{DatabaseCounters, DatabaseOperation};
pub use pins::{PinRecord, PinnedPath};
pub use records::{Cache, NarRecord, PackRecord, PathInfo, StagedNar, StoredPath};
pub use tokens::{IssuedToken, RegisteredToken, Revoked, TokenGrant};
pub use upload_rows::{NewChunk, UploadedChunk};
pub use uploads::{Claim, HeldByCache, NewNar};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, DatabaseConnection, DatabaseTransaction, DbErr, TransactionOptions,
    TransactionTrait,
};

use crate::config::{DatabaseConfig, DatabaseKind, SqliteFile};

/// The current time in Unix seconds, as every timestamp column holds it.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// A live cache of that name exists.
    #[error("a cache of that name already exists")]
    CacheExists,
    /// The name was a cache's that was destroyed with
    /// `soft-delete-caches` on: it stays reserved.
    #[error("the name belonged to a destroyed cache and stays reserved")]
    CacheNameReserved,
    /// A chunk an upload reuses was found damaged or began to be
    /// reclaimed while the upload ran; the upload may simply be retried.
    #[error("a chunk this upload reuses is no longer stored")]
    ChunkGone,
    /// A row that does not decode into its record: written by something
    /// other than this server, or damaged.
    #[error("row {id} of table {table} is corrupt: {reason}")]
    CorruptRow {
        /// The table.
        table: &'static str,
        /// The row's id.
        id: i64,
        /// What did not decode.
        reason: String,
    },
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
}

impl DatabaseError {
    /// Whether the database is passing unavailable (see [`is_unavailable`]):
    /// the same request will likely succeed shortly.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Db(e) if is_unavailable(e))
    }

    /// Whether the database refused a write for want of space.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Db(e) if is_full(e))
    }
}

/// Whether a database error is passing: the pool had no connection within
/// `database.acquire-timeout`, the connection broke, the server is
/// restarting, or (PostgreSQL) the transaction lost a serialization or
/// deadlock conflict and was rolled back; SQLite still busy after its
/// busy timeout.
fn is_unavailable(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => {
            use sea_orm::sqlx::Error;
            match sqlx.as_ref() {
                Error::PoolTimedOut | Error::PoolClosed | Error::Io(_) | Error::Tls(_) => true,
                Error::Database(db) => db.code().is_some_and(|code| {
                    // serialization_failure, deadlock_detected, the
                    // 08 connection exceptions, admin/crash shutdown and
                    // cannot_connect_now; SQLITE_BUSY and SQLITE_LOCKED.
                    matches!(
                        &*code,
                        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "5" | "6"
                    ) || code.starts_with("08")
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether the database refused a write for want of space: SQLite's
/// SQLITE_FULL (13), PostgreSQL's disk_full (53100).
fn is_full(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx))) = e
    else {
        return false;
    };
    sqlx.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "13" || code == "53100")
}

/// The metadata database.
#[derive(Debug, Clone)]
pub struct Database {
    conn: DatabaseConnection,
}

/// Rows to touch per statement, kept under every backend's parameter limit.
const BATCH: usize = 500;

/// A pooled connection idle this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

impl Database {
    /// Connects with the pool `settings` give, tuning SQLite for
    /// concurrent writers. A SQLite file is created if missing only when
    /// `create` is set.
    pub async fn connect(
        url: &str,
        settings: &DatabaseConfig,
        create: bool,
    ) -> Result<Self, DatabaseError> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(settings.max_connections)
            .min_connections(1)
            .sqlx_logging(false)
            .connect_timeout(settings.acquire_timeout)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(settings.idle_timeout);
        if DatabaseKind::of_url(url) == Some(DatabaseKind::Sqlite) {
            // A SQLite connection lives in this process: nothing drops it,
            // and a ping on every checkout costs a round trip to its
            // thread per statement.
            options.test_before_acquire(false);
            // A URL asking for an existing file (`mode=rw`, `mode=ro`) is
            // taken at its word.
            let create = create && SqliteFile::of_url(url).is_none_or(|file| file.may_create);
            options.map_sqlx_sqlite_opts(move |opts| {
                use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                opts.journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk before it is acknowledged, so an
                    // upload the client saw succeed survives a power loss.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
                    .create_if_missing(create)
            });
        } else {
            // A connection just in use is handed out as it is; one idle
            // longer may have been dropped by the server, a proxy or a
            // firewall, and is pinged first.
            options.test_before_acquire_if_idle_for(PING_IF_IDLE_FOR);
        }
        let conn = sea_orm::Database::connect(options).await?;
        Ok(Self { conn })
    }

    /// Counts every statement from now on into `counters`.
    pub fn instrument(&mut self, counters: DatabaseCounters) {
        self.conn.set_metric_callback(move |info| {
            counters.record(&info.statement.sql, info.elapsed, info.failed);
        });
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), DatabaseError> {
        Ok(self.conn.ping().await?)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), DatabaseError> {
        Ok(Migrator::up(&self.conn, None).await?)
    }

    /// The names of migrations not yet applied: empty when the schema is
    /// the one this build expects.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, DatabaseError> {
        // Read-only: checking (`--check-config`, a replica's start) must
        // not create the migrations table in an empty database.
        Ok(Migrator::get_pending_migrations_read_only(&self.conn)
            .await?
            .iter()
            .map(|m| m.name().to_owned())
            .collect())
    }

    /// The underlying connection, for tests and tools.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// A transaction that writes: begun `IMMEDIATE` on SQLite, so it
    /// waits for the write lock instead of failing when it upgrades.
    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
    }
}

/// `SELECT 1 FROM table WHERE reference = target`, correlated with the
/// outer statement's `target`: under `EXISTS`, whether any row of `table`
/// points at the row looked at (one the collector would reclaim, say).
fn rows_pointing_at(
    table: impl sea_orm::sea_query::IntoTableRef,
    reference: impl sea_orm::sea_query::IntoColumnRef,
    target: impl sea_orm::sea_query::IntoColumnRef,
) -> sea_orm::sea_query::SelectStatement {
    use sea_orm::sea_query::{Expr, ExprTrait, Query};
    Query::select()
        .expr(Expr::val(1))
        .from(table)
        .and_where(Expr::col(reference).equals(target))
        .to_owned()
}

/// `SELECT nar_id FROM chunkref WHERE chunk_id IN (chunk_ids)`: the NARs
/// holding any of `chunk_ids`, for a statement that changes those NARs
/// (healing them, or resizing them after compaction).
fn nars_holding(chunk_ids: &[i64]) -> sea_orm::sea_query::SelectStatement {
    use sea_orm::sea_query::{Expr, ExprTrait, Query};

    use self::entity::chunkref;
    Query::select()
        .column((chunkref::Entity, chunkref::Column::NarId))
        .from(chunkref::Entity)
        .and_where(
            Expr::col((chunkref::Entity, chunkref::Column::ChunkId))
                .is_in(chunk_ids.iter().copied()),
        )
        .to_owned()
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;

    /// `.cargo/config.toml` builds the bundled SQLite with the query
    /// planner stability guarantee, so that statements with a bound
    /// `LIMIT` are prepared once per connection, not on every run.
    #[tokio::test]
    async fn sqlite_is_built_to_reuse_statements_with_a_bound_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let database = Database::connect(&url, &DatabaseConfig::default(), true)
            .await
            .expect("connect");
        let rows = (database.conn)
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA compile_options",
            ))
            .await
            .expect("compile options");
        let options: Vec<String> = (rows.iter())
            .map(|row| row.try_get_by_index(0).expect("text"))
            .collect();
        assert!(options.iter().any(|o| o == "ENABLE_QPSG"), "{options:?}");
    }
}
