//! Every query `atticd` makes, as methods of [`Database`]; handlers never
//! touch sea-orm directly.
//!
//! Writes that must be atomic run in one transaction, begun `IMMEDIATE` on
//! SQLite so concurrent writers wait for the lock instead of failing.

pub mod entity;
mod gc;
mod logs;
mod metrics;
mod store;

pub use gc::{
    CompactionCandidate, EvictableObject, LruObject, MovedChunk, PacksAwaitingDeletion, Removal,
    RemovedPaths,
};
pub use logs::{LogLocation, LogRecord, LogSize};
pub use metrics::{DatabaseCounters, DatabaseOperation};
pub use store::{Claim, HeldByCache, NewChunk, NewNar, PackTotals, UploadedChunk};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, JoinType, QueryFilter, QuerySelect, RelationTrait,
    SqlErr, TransactionOptions, TransactionTrait,
};

use self::entity::{BlobState, cache, nar, object, revoked_token};
use crate::config::{DatabaseConfig, DatabaseKind};

/// The current time in Unix seconds.
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
    /// A chunk an upload reuses was found damaged or began to be
    /// reclaimed while the upload ran; the upload may simply be retried.
    #[error("a chunk this upload reuses is no longer stored")]
    ChunkGone,
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
}

/// The metadata database.
#[derive(Debug, Clone)]
pub struct Database {
    conn: DatabaseConnection,
}

/// A new cache's settings.
#[derive(Debug, Clone)]
pub struct NewCache {
    /// Name.
    pub name: String,
    /// Nix secret key.
    pub keypair: String,
    /// Public or private.
    pub is_public: bool,
    /// Store directory.
    pub store_dir: String,
    /// Priority.
    pub priority: i32,
    /// JSON array of upstream key names.
    pub upstream_cache_key_names: String,
}

/// Settings to change on a cache; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct CacheChanges {
    /// Nix secret key.
    pub keypair: Option<String>,
    /// Public or private.
    pub is_public: Option<bool>,
    /// Store directory.
    pub store_dir: Option<String>,
    /// Priority.
    pub priority: Option<i32>,
    /// JSON array of upstream key names.
    pub upstream_cache_key_names: Option<String>,
    /// Retention in seconds; `Some(None)` returns to the server default.
    pub retention_period: Option<Option<i64>>,
    /// Quota in bytes; `Some(None)` removes it.
    pub quota: Option<Option<i64>>,
}

/// The per-cache metadata of an uploaded path.
#[derive(Debug, Clone)]
pub struct NewObject {
    /// The cache.
    pub cache_id: i64,
    /// Hash part.
    pub store_path_hash: String,
    /// Full path.
    pub store_path: String,
    /// JSON array of full reference paths.
    pub references: String,
    /// Platform.
    pub system: Option<String>,
    /// Derivation path.
    pub deriver: Option<String>,
    /// JSON array of signatures.
    pub sigs: String,
    /// Content address.
    pub ca: Option<String>,
    /// Uploader.
    pub created_by: Option<String>,
}

/// Rows to touch per statement, kept under every backend's parameter limit.
const BATCH: usize = 500;

impl Database {
    /// Connects with the pool `settings` give, tuning SQLite for
    /// concurrent writers. A SQLite file is created if missing only when
    /// `create` is set.
    pub async fn connect(
        url: &str,
        settings: &DatabaseConfig,
        create: bool,
    ) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(settings.max_connections)
            .min_connections(1)
            .sqlx_logging(false)
            .connect_timeout(settings.acquire_timeout)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(settings.idle_timeout);
        if DatabaseKind::of_url(url) == Some(DatabaseKind::Sqlite) {
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
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.conn.ping().await
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.conn, None).await
    }

    /// The names of migrations not yet applied: empty when the schema is
    /// the one this build expects.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, DbErr> {
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

    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
    }

    /// A live cache by name.
    pub async fn find_cache(&self, name: &str) -> Result<Option<cache::Model>, DbErr> {
        cache::Entity::find()
            .filter(cache::Column::Name.eq(name))
            .filter(cache::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await
    }

    /// Creates a cache, refusing a name already live. The unique index on
    /// live names decides, so of two racing creates exactly one wins.
    pub async fn create_cache(&self, new: NewCache) -> Result<cache::Model, DatabaseError> {
        let created = cache::ActiveModel {
            name: Set(new.name),
            keypair: Set(new.keypair),
            is_public: Set(new.is_public),
            store_dir: Set(new.store_dir),
            priority: Set(new.priority),
            upstream_cache_key_names: Set(new.upstream_cache_key_names),
            retention_period: Set(None),
            created_at: Set(now()),
            deleted_at: Set(None),
            ..Default::default()
        }
        .insert(&self.conn)
        .await;
        match created {
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Err(DatabaseError::CacheExists)
            }
            other => Ok(other?),
        }
    }

    /// Applies the settings given in `changes`; leaves the rest.
    pub async fn configure_cache(
        &self,
        cache: cache::Model,
        changes: CacheChanges,
    ) -> Result<cache::Model, DbErr> {
        use sea_orm::IntoActiveModel;
        let mut row = cache.into_active_model();
        if let Some(keypair) = changes.keypair {
            row.keypair = Set(keypair);
        }
        if let Some(is_public) = changes.is_public {
            row.is_public = Set(is_public);
        }
        if let Some(store_dir) = changes.store_dir {
            row.store_dir = Set(store_dir);
        }
        if let Some(priority) = changes.priority {
            row.priority = Set(priority);
        }
        if let Some(names) = changes.upstream_cache_key_names {
            row.upstream_cache_key_names = Set(names);
        }
        if let Some(retention_period) = changes.retention_period {
            row.retention_period = Set(retention_period);
        }
        if let Some(quota) = changes.quota {
            row.quota = Set(quota);
        }
        row.update(&self.conn).await
    }

    /// Destroys a cache: it and its paths vanish at once; GC reclaims the data.
    pub async fn destroy_cache(&self, cache_id: i64) -> Result<(), DbErr> {
        let txn = self.begin_write().await?;
        cache::Entity::update_many()
            .col_expr(cache::Column::DeletedAt, now().into())
            .filter(cache::Column::Id.eq(cache_id))
            .exec(&txn)
            .await?;
        // Its logs and unclaimed `nix copy` uploads go with it; its paths'
        // data is the garbage collector's to reclaim.
        entity::build_log::Entity::delete_many()
            .filter(entity::build_log::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?;
        entity::staged_nar::Entity::delete_many()
            .filter(entity::staged_nar::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?;
        txn.commit().await
    }

    /// Which of `hashes` the cache does not hold whole: paths whose NAR is
    /// damaged count as missing, so the next push stores them again.
    pub async fn find_missing_paths(
        &self,
        cache_id: i64,
        hashes: &[String],
    ) -> Result<Vec<String>, DbErr> {
        let mut present = std::collections::HashSet::new();
        for batch in hashes.chunks(BATCH) {
            let found: Vec<String> = object::Entity::find()
                .select_only()
                .column(object::Column::StorePathHash)
                .join(JoinType::InnerJoin, object::Relation::Nar.def())
                .filter(object::Column::CacheId.eq(cache_id))
                .filter(object::Column::StorePathHash.is_in(batch.iter().cloned()))
                .filter(nar::Column::State.eq(BlobState::Valid))
                .into_tuple()
                .all(&self.conn)
                .await?;
            present.extend(found);
        }
        Ok(hashes
            .iter()
            .filter(|h| !present.contains(*h))
            .cloned()
            .collect())
    }

    /// A path in a cache, with its NAR.
    pub async fn find_object(
        &self,
        cache_id: i64,
        store_path_hash: &str,
    ) -> Result<Option<(object::Model, nar::Model)>, DbErr> {
        // One round trip: this is on every narinfo and NAR request.
        let found = object::Entity::find()
            .find_also_related(nar::Entity)
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::StorePathHash.eq(store_path_hash))
            .filter(nar::Column::State.eq(BlobState::Valid))
            .one(&self.conn)
            .await?;
        Ok(found.and_then(|(object, nar)| nar.map(|nar| (object, nar))))
    }

    /// Adds an existing NAR to a cache after the uploader proved it holds it.
    /// `ChunkGone` if the NAR was reclaimed (or found damaged) while the
    /// upload proving possession of it ran.
    pub async fn attach_existing_nar(
        &self,
        nar_id: i64,
        new: NewObject,
    ) -> Result<(), DatabaseError> {
        let txn = self.begin_write().await?;
        attach_object(&txn, nar_id, new).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Whether any of a token's revocation ids is revoked.
    pub async fn is_revoked(&self, ids: &[String]) -> Result<bool, DbErr> {
        let found = revoked_token::Entity::find()
            .filter(revoked_token::Column::RevocationId.is_in(ids.iter().cloned()))
            .one(&self.conn)
            .await?;
        Ok(found.is_some())
    }

    /// Revokes tokens by revocation id.
    pub async fn revoke(&self, ids: &[String]) -> Result<(), DbErr> {
        let rows = ids.iter().map(|id| revoked_token::ActiveModel {
            revocation_id: Set(id.clone()),
            revoked_at: Set(now()),
        });
        revoked_token::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(revoked_token::Column::RevocationId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.conn)
            .await?;
        Ok(())
    }

    /// Marks objects as read at `when`.
    pub async fn touch_objects(&self, ids: &[i64], when: i64) -> Result<(), DbErr> {
        for batch in ids.chunks(BATCH) {
            object::Entity::update_many()
                .col_expr(object::Column::LastAccessedAt, when.into())
                .filter(object::Column::Id.is_in(batch.iter().copied()))
                .exec(&self.conn)
                .await?;
        }
        Ok(())
    }
}

/// Makes NAR `nar_id` the path `new` of its cache, replacing what the path
/// was (an upsert, so concurrent pushes of one path both succeed), after
/// re-checking and stamping the NAR so a collector cannot take it away.
async fn attach_object(
    txn: &DatabaseTransaction,
    nar_id: i64,
    new: NewObject,
) -> Result<(), DatabaseError> {
    let when = now();
    store::stamp_nar(txn, nar_id, when).await?;
    let row = object::ActiveModel {
        cache_id: Set(new.cache_id),
        nar_id: Set(nar_id),
        store_path_hash: Set(new.store_path_hash),
        store_path: Set(new.store_path),
        references: Set(new.references),
        system: Set(new.system),
        deriver: Set(new.deriver),
        sigs: Set(new.sigs),
        ca: Set(new.ca),
        created_at: Set(when),
        last_accessed_at: Set(None),
        created_by: Set(new.created_by),
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
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}
