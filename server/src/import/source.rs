//! Attic's database, read as its final schema has it (`cache`, `object`,
//! `nar`, `chunkref`, `chunk`), through a connection of its own that cannot
//! write: SQLite is opened read-only, PostgreSQL sessions default to
//! read-only transactions, and this module only ever sends `SELECT`s.
//!
//! Every list is paged by id (or by `seq` within a NAR), so memory stays
//! flat however big the store. Only columns every Attic schema since
//! chunking (January 2023) has are read, so older and newer Attic
//! databases both import. Timestamps are converted to Unix seconds in SQL,
//! from whichever text form Attic's SQLite driver wrote them in.

use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement, Value,
};

use super::ImportError;

/// One row of Attic's `cache` table, a live (not soft-deleted) cache.
#[derive(Debug, Clone)]
pub struct AtticCache {
    /// Its row id in Attic.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// The signing key in Nix's secret-key form, `name:base64`.
    pub keypair: String,
    /// Whether anyone may pull.
    pub is_public: bool,
    /// The store directory of its paths.
    pub store_dir: String,
    /// Substituter priority.
    pub priority: i64,
    /// JSON array of upstream key names, as Attic encodes it.
    pub upstream_cache_key_names: String,
    /// Seconds to keep unread paths; `None` for Attic's global default.
    pub retention_period: Option<i64>,
}

/// What Attic's `nar.state` says of a NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarState {
    /// `V`: complete, its chunks listed.
    Valid,
    /// `P`: an upload that never completed; its chunks may not exist.
    PendingUpload,
    /// Anything else (`C` confirmed-deduplicated, `D` deleted, or a value
    /// we do not know): nothing to import.
    Other(String),
}

impl NarState {
    fn parse(state: &str) -> Self {
        match state.trim() {
            "V" => Self::Valid,
            "P" => Self::PendingUpload,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A NAR an object points at.
#[derive(Debug, Clone)]
pub struct AtticNar {
    /// Its row id in Attic.
    pub id: i64,
    /// Its state.
    pub state: NarState,
    /// `sha256:<hex>`, as Attic writes it.
    pub nar_hash: String,
    /// Bytes of the NAR.
    pub nar_size: i64,
    /// How many chunkrefs it should have.
    pub num_chunks: i64,
}

/// One row of Attic's `object` table with its NAR.
#[derive(Debug, Clone)]
pub struct AtticObject {
    /// Its row id in Attic, the paging key.
    pub id: i64,
    /// The 32-character hash part.
    pub store_path_hash: String,
    /// The full store path.
    pub store_path: String,
    /// JSON array of references: base names, as Attic's client sends them.
    pub references: String,
    /// Platform it was built for.
    pub system: Option<String>,
    /// Its derivation, a full path or a base name.
    pub deriver: Option<String>,
    /// JSON array of signatures the uploader supplied.
    pub sigs: String,
    /// Content address.
    pub ca: Option<String>,
    /// Unix seconds; `None` if the stored time did not parse.
    pub created_at: Option<i64>,
    /// Unix seconds of the last read, if any.
    pub last_accessed_at: Option<i64>,
    /// Subject of the token that pushed it.
    pub created_by: Option<String>,
    /// Its NAR.
    pub nar: AtticNar,
}

/// One chunk of a NAR, in order.
#[derive(Debug, Clone)]
pub struct AtticChunkRef {
    /// Zero-based position in the NAR.
    pub seq: i64,
    /// The chunk, or `None` where Attic lost its row (`chunk_id` NULL or
    /// pointing nowhere).
    pub chunk: Option<AtticChunk>,
}

/// One row of Attic's `chunk` table.
#[derive(Debug, Clone)]
pub struct AtticChunk {
    /// `V` when it is complete; anything else is not to be trusted.
    pub valid: bool,
    /// How its file is compressed: `none`, `zstd`, `xz`, `br`, `bzip2`.
    pub compression: String,
    /// JSON of Attic's `RemoteFile`: where its bytes are.
    pub remote_file: String,
    /// Bytes once decompressed.
    pub chunk_size: i64,
}

/// Counts for the progress display and the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceTotals {
    /// Paths in live caches.
    pub paths: u64,
    /// Their NARs' bytes, counted per path.
    pub nar_bytes: u64,
    /// Caches Attic soft-deleted, which are not imported.
    pub deleted_caches: u64,
    /// NARs stuck in `PendingUpload`.
    pub pending_nars: u64,
}

/// A read-only connection to Attic's database.
#[derive(Debug, Clone)]
pub struct AtticSource {
    conn: DatabaseConnection,
    backend: DbBackend,
}

impl AtticSource {
    /// Connects to Attic's database at `url`, read-only.
    pub async fn connect(url: &str) -> Result<Self, ImportError> {
        let backend = if url.starts_with("sqlite:") {
            DbBackend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbBackend::Postgres
        } else {
            return Err(ImportError::UnsupportedDatabase(
                url.split(':').next().unwrap_or_default().to_owned(),
            ));
        };
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(4)
            .min_connections(1)
            .sqlx_logging(false);
        match backend {
            DbBackend::Sqlite => {
                options.map_sqlx_sqlite_opts(|opts| opts.read_only(true).create_if_missing(false));
            }
            _ => {
                options.map_sqlx_postgres_opts(|opts| {
                    opts.options([("default_transaction_read_only", "on")])
                });
            }
        }
        let conn = sea_orm::Database::connect(options)
            .await
            .map_err(ImportError::SourceDatabase)?;
        Ok(Self { conn, backend })
    }

    /// Closes the connections.
    pub async fn close(self) {
        // Nothing was written: a failure to close loses nothing.
        let _ = self.conn.close().await;
    }

    /// The `n`th (1-based) parameter placeholder of this backend.
    fn parameter(&self, n: usize) -> String {
        match self.backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// `column` (a timestamp) as Unix seconds, NULL if it does not parse.
    fn epoch(&self, column: &str) -> String {
        match self.backend {
            DbBackend::Postgres => format!("CAST(EXTRACT(EPOCH FROM {column}) AS BIGINT)"),
            // SQLite's date functions read every form sqlx has written
            // (`T` or space, fractions, `Z`, `+00:00`, ` +00:00`).
            _ => format!("CAST(strftime('%s', {column}) AS INTEGER)"),
        }
    }

    async fn select(
        &self,
        sql: String,
        values: Vec<Value>,
    ) -> Result<Vec<QueryResult>, ImportError> {
        self.conn
            .query_all_raw(Statement::from_sql_and_values(self.backend, sql, values))
            .await
            .map_err(ImportError::SourceDatabase)
    }

    /// Counts for the progress display: paths and their bytes in live
    /// caches, soft-deleted caches, pending NARs.
    pub async fn totals(&self) -> Result<SourceTotals, ImportError> {
        let rows = self
            .select(
                "SELECT CAST(COUNT(*) AS BIGINT) AS paths, \
                 CAST(COALESCE(SUM(n.nar_size), 0) AS BIGINT) AS nar_bytes \
                 FROM object o JOIN nar n ON n.id = o.nar_id JOIN cache c ON c.id = o.cache_id \
                 WHERE c.deleted_at IS NULL"
                    .to_owned(),
                Vec::new(),
            )
            .await?;
        let mut totals = SourceTotals::default();
        if let Some(row) = rows.first() {
            totals.paths = count(get::<i64>(row, "paths")?);
            totals.nar_bytes = count(get::<i64>(row, "nar_bytes")?);
        }
        let rows = self
            .select(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM cache WHERE deleted_at IS NOT NULL"
                    .to_owned(),
                Vec::new(),
            )
            .await?;
        if let Some(row) = rows.first() {
            totals.deleted_caches = count(get::<i64>(row, "n")?);
        }
        let rows = self
            .select(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM nar WHERE state = 'P'".to_owned(),
                Vec::new(),
            )
            .await?;
        if let Some(row) = rows.first() {
            totals.pending_nars = count(get::<i64>(row, "n")?);
        }
        Ok(totals)
    }

    /// Every live cache, by id. Soft-deleted caches (`deleted_at` set) are
    /// left out: Attic no longer serves them.
    pub async fn caches(&self) -> Result<Vec<AtticCache>, ImportError> {
        let rows = self
            .select(
                "SELECT id, name, keypair, is_public, store_dir, \
                 CAST(priority AS BIGINT) AS priority, upstream_cache_key_names, \
                 CAST(retention_period AS BIGINT) AS retention_period \
                 FROM cache WHERE deleted_at IS NULL ORDER BY id"
                    .to_owned(),
                Vec::new(),
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AtticCache {
                    id: get(row, "id")?,
                    name: get(row, "name")?,
                    keypair: get(row, "keypair")?,
                    is_public: get(row, "is_public")?,
                    store_dir: get(row, "store_dir")?,
                    priority: get(row, "priority")?,
                    upstream_cache_key_names: get(row, "upstream_cache_key_names")?,
                    retention_period: get(row, "retention_period")?,
                })
            })
            .collect()
    }

    /// Up to `limit` objects of a cache with ids above `after`, by id.
    pub async fn objects(
        &self,
        cache_id: i64,
        after: i64,
        limit: u64,
    ) -> Result<Vec<AtticObject>, ImportError> {
        let sql = format!(
            "SELECT o.id, o.store_path_hash, o.store_path, o.\"references\" AS refs, o.system, \
             o.deriver, o.sigs, o.ca, {created} AS created_at, {accessed} AS last_accessed_at, \
             o.created_by, n.id AS nar_id, n.state, n.nar_hash, n.nar_size, \
             CAST(n.num_chunks AS BIGINT) AS num_chunks \
             FROM object o JOIN nar n ON n.id = o.nar_id \
             WHERE o.cache_id = {p1} AND o.id > {p2} ORDER BY o.id LIMIT {p3}",
            created = self.epoch("o.created_at"),
            accessed = self.epoch("o.last_accessed_at"),
            p1 = self.parameter(1),
            p2 = self.parameter(2),
            p3 = self.parameter(3),
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .select(sql, vec![cache_id.into(), after.into(), limit.into()])
            .await?;
        rows.iter()
            .map(|row| {
                let state: String = get(row, "state")?;
                Ok(AtticObject {
                    id: get(row, "id")?,
                    store_path_hash: get(row, "store_path_hash")?,
                    store_path: get(row, "store_path")?,
                    references: get(row, "refs")?,
                    system: get(row, "system")?,
                    deriver: get(row, "deriver")?,
                    sigs: get(row, "sigs")?,
                    ca: get(row, "ca")?,
                    created_at: get(row, "created_at")?,
                    last_accessed_at: get(row, "last_accessed_at")?,
                    created_by: get(row, "created_by")?,
                    nar: AtticNar {
                        id: get(row, "nar_id")?,
                        state: NarState::parse(&state),
                        nar_hash: get(row, "nar_hash")?,
                        nar_size: get(row, "nar_size")?,
                        num_chunks: get(row, "num_chunks")?,
                    },
                })
            })
            .collect()
    }

    /// Up to `limit` chunks of a NAR with `seq` above `after`, in order.
    pub async fn chunks(
        &self,
        nar_id: i64,
        after: i64,
        limit: u64,
    ) -> Result<Vec<AtticChunkRef>, ImportError> {
        let sql = format!(
            "SELECT CAST(r.seq AS BIGINT) AS seq, c.id AS chunk_id, c.state, c.compression, \
             c.remote_file, c.chunk_size \
             FROM chunkref r LEFT JOIN chunk c ON c.id = r.chunk_id \
             WHERE r.nar_id = {p1} AND r.seq > {p2} ORDER BY r.seq LIMIT {p3}",
            p1 = self.parameter(1),
            p2 = self.parameter(2),
            p3 = self.parameter(3),
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .select(sql, vec![nar_id.into(), after.into(), limit.into()])
            .await?;
        rows.iter()
            .map(|row| {
                let chunk_id: Option<i64> = get(row, "chunk_id")?;
                let chunk = match chunk_id {
                    None => None,
                    Some(_) => {
                        let state: String = get(row, "state")?;
                        Some(AtticChunk {
                            valid: NarState::parse(&state) == NarState::Valid,
                            compression: get(row, "compression")?,
                            remote_file: get(row, "remote_file")?,
                            chunk_size: get(row, "chunk_size")?,
                        })
                    }
                };
                Ok(AtticChunkRef {
                    seq: get(row, "seq")?,
                    chunk,
                })
            })
            .collect()
    }
}

/// A column of a row, or an error naming it.
fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &'static str) -> Result<T, ImportError> {
    row.try_get("", column)
        .map_err(|source| ImportError::SourceColumn { column, source })
}

/// A count from SQL, which is never negative.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
