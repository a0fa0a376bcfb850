//! An Attic server's data, built from scratch for `atticadm import-attic`
//! to read: Attic's final database schema (written here from its published
//! migrations: `cache`, `nar`, `object`, `chunk`, `chunkref`) on SQLite or
//! on a PostgreSQL database of its own, and chunk files laid out as Attic's
//! local backend keeps them (`<dir>/<c>/<cc>/<name>`) or as objects in an
//! S3 bucket, each compressed `none`, `zstd`, `xz` or `br` as Attic writes
//! them. Which follows `ATTIC_TEST_BACKEND`, like the server under test:
//! SQLite and a directory, or PostgreSQL and an s3s-fs bucket.
//!
//! Tests add real NARs (cut into chunks or whole), caches with real Nix
//! keys, and objects with Attic's encodings (references as base names,
//! JSON lists in text columns, timestamps as its drivers write them), then
//! damage what they want to see skipped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use async_compression::tokio::bufread::{BrotliEncoder, XzEncoder};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use tokio::io::AsyncReadExt;

use crate::backend::{Backend, fresh_postgres_database};
use crate::nix;
use crate::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

/// How a chunk file is compressed, by Attic's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCompression {
    /// `none`.
    None,
    /// `zstd`.
    Zstd,
    /// `xz`.
    Xz,
    /// `br`: brotli.
    Brotli,
}

impl ChunkCompression {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Brotli => "br",
        }
    }

    async fn compress(self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::None => out.extend_from_slice(data),
            Self::Zstd => out = zstd::bulk::compress(data, 8).expect("zstd"),
            Self::Xz => {
                XzEncoder::new(data)
                    .read_to_end(&mut out)
                    .await
                    .expect("xz");
            }
            Self::Brotli => {
                BrotliEncoder::new(data)
                    .read_to_end(&mut out)
                    .await
                    .expect("brotli");
            }
        }
        out
    }
}

/// Attic's `nar.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarState {
    /// `V`.
    Valid,
    /// `P`: an upload that never completed.
    PendingUpload,
}

/// Where the chunk files go.
enum ChunkStore {
    Local(PathBuf),
    S3(S3Server),
}

/// One Attic server's database and storage.
pub struct AtticStore {
    dir: tempfile::TempDir,
    database_url: String,
    conn: DatabaseConnection,
    backend: DbBackend,
    chunks: ChunkStore,
}

/// A chunk file written, to damage later.
#[derive(Debug, Clone)]
pub struct ChunkFile {
    /// Attic's name for it (the S3 key, or the local file name).
    pub name: String,
}

/// An object row to write.
pub struct NewAtticObject<'a> {
    /// Attic's cache id.
    pub cache_id: i64,
    /// Attic's NAR id.
    pub nar_id: i64,
    /// The full store path.
    pub store_path: &'a str,
    /// References as base names, as Attic's client sends them.
    pub references: Vec<String>,
    /// The deriver, as a base name.
    pub deriver: Option<String>,
    /// Signatures.
    pub sigs: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_accessed_at: Option<i64>,
    /// Who pushed it.
    pub created_by: Option<&'a str>,
}

static NEXT_CHUNK: AtomicU32 = AtomicU32::new(0);

impl AtticStore {
    /// An empty Attic store on the backend `ATTIC_TEST_BACKEND` names.
    pub async fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (database_url, chunks) = match Backend::from_env() {
            Backend::SqliteLocal => {
                let db = dir.path().join("server.db");
                std::fs::File::create(&db).expect("create the database file");
                let storage = dir.path().join("storage");
                std::fs::create_dir(&storage).expect("storage dir");
                std::fs::write(storage.join("VERSION"), "1").expect("VERSION");
                (
                    format!("sqlite://{}?mode=rwc", db.display()),
                    ChunkStore::Local(storage),
                )
            }
            Backend::PostgresS3 => (fresh_postgres_database(), ChunkStore::S3(S3Server::start())),
        };
        let conn = sea_orm::Database::connect(&database_url)
            .await
            .expect("connect to Attic's database");
        let backend = conn.get_database_backend();
        let store = Self {
            dir,
            database_url,
            conn,
            backend,
            chunks,
        };
        store.create_schema().await;
        store
    }

    /// Attic's tables as its last migration leaves them.
    async fn create_schema(&self) {
        let (id, timestamp) = match self.backend {
            DbBackend::Postgres => ("BIGSERIAL PRIMARY KEY", "TIMESTAMPTZ"),
            _ => (
                "INTEGER PRIMARY KEY AUTOINCREMENT",
                "timestamp_with_timezone_text",
            ),
        };
        let tables = [
            format!(
                "CREATE TABLE cache (id {id}, name VARCHAR(50) NOT NULL UNIQUE, \
                 keypair VARCHAR NOT NULL, is_public BOOLEAN NOT NULL, store_dir VARCHAR NOT NULL, \
                 priority INTEGER NOT NULL, upstream_cache_key_names VARCHAR NOT NULL, \
                 created_at {timestamp} NOT NULL, deleted_at {timestamp} NULL, \
                 retention_period INTEGER NULL)"
            ),
            format!(
                "CREATE TABLE nar (id {id}, state CHAR(1) NOT NULL, nar_hash VARCHAR NOT NULL, \
                 nar_size BIGINT NOT NULL, compression VARCHAR NOT NULL, \
                 num_chunks INTEGER NOT NULL DEFAULT 1, holders_count INTEGER NOT NULL DEFAULT 0, \
                 created_at {timestamp} NOT NULL)"
            ),
            format!(
                "CREATE TABLE object (id {id}, cache_id BIGINT NOT NULL REFERENCES cache (id) \
                 ON DELETE CASCADE, nar_id BIGINT NOT NULL REFERENCES nar (id) ON DELETE CASCADE, \
                 store_path_hash VARCHAR(32) NOT NULL, store_path VARCHAR NOT NULL, \
                 \"references\" VARCHAR NOT NULL, system VARCHAR, deriver VARCHAR, \
                 sigs VARCHAR NOT NULL, ca VARCHAR, created_at {timestamp} NOT NULL, \
                 last_accessed_at {timestamp} NULL, created_by VARCHAR NULL)"
            ),
            format!(
                "CREATE TABLE chunk (id {id}, state CHAR(1) NOT NULL, chunk_hash VARCHAR NOT NULL, \
                 chunk_size BIGINT NOT NULL, file_hash VARCHAR NULL, file_size BIGINT NULL, \
                 compression VARCHAR NOT NULL, remote_file VARCHAR NOT NULL, \
                 remote_file_id VARCHAR NOT NULL UNIQUE, holders_count INTEGER NOT NULL DEFAULT 0, \
                 created_at {timestamp} NOT NULL)"
            ),
            format!(
                "CREATE TABLE chunkref (id {id}, nar_id BIGINT NOT NULL REFERENCES nar (id) \
                 ON DELETE CASCADE, seq INTEGER NOT NULL, chunk_id BIGINT NULL REFERENCES chunk (id) \
                 ON DELETE SET NULL)"
            ),
            "CREATE INDEX \"idx-object-cache-hash\" ON object (cache_id, store_path_hash)"
                .to_owned(),
            "CREATE INDEX \"idx-chunk-nar-id\" ON chunkref (nar_id)".to_owned(),
            "CREATE INDEX \"idx-nar-nar-hash\" ON nar (nar_hash)".to_owned(),
            "CREATE INDEX \"idx-chunk-chunk-hash\" ON chunk (chunk_hash)".to_owned(),
        ];
        for sql in tables {
            self.conn
                .execute_unprepared(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// Attic's `server.toml` for this store, with keys our server does not
    /// know (the import must ignore them).
    pub fn write_config(&self) -> PathBuf {
        let storage = match &self.chunks {
            ChunkStore::Local(dir) => {
                format!(
                    "[storage]\ntype = \"local\"\npath = \"{}\"\n",
                    dir.display()
                )
            }
            ChunkStore::S3(s3) => format!(
                "[storage]\ntype = \"s3\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\n\
                 endpoint = \"{}\"\n[storage.credentials]\naccess_key_id = \"{ACCESS_KEY}\"\n\
                 secret_access_key = \"{SECRET_KEY}\"\n",
                s3.endpoint()
            ),
        };
        let text = format!(
            "listen = \"[::]:8080\"\nallowed-hosts = []\n\
             [jwt.signing]\ntoken-rs256-secret-base64 = \"c2VjcmV0\"\n\
             [database]\nurl = \"{}\"\nheartbeat = true\n{storage}\
             [chunking]\nnar-size-threshold = 65536\nmin-size = 16384\navg-size = 65536\n\
             max-size = 262144\n[compression]\ntype = \"zstd\"\n\
             [garbage-collection]\ninterval = \"12 hours\"\n",
            self.database_url
        );
        let path = self.dir.path().join("attic-server.toml");
        std::fs::write(&path, text).expect("write Attic's config");
        path
    }

    fn placeholders(&self, n: usize) -> String {
        (1..=n)
            .map(|i| match self.backend {
                DbBackend::Postgres => format!("${i}"),
                _ => "?".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A timestamp as Attic's driver stores it: RFC 3339 text on SQLite,
    /// a `TIMESTAMPTZ` on PostgreSQL.
    fn timestamp(&self, placeholder: &str) -> String {
        match self.backend {
            DbBackend::Postgres => format!("CAST({placeholder} AS TIMESTAMPTZ)"),
            _ => placeholder.to_owned(),
        }
    }

    async fn insert(
        &self,
        table: &str,
        columns: &[&str],
        values: Vec<Value>,
        times: &[&str],
    ) -> i64 {
        let placeholders: Vec<String> = self
            .placeholders(columns.len())
            .split(", ")
            .zip(columns)
            .map(|(p, column)| {
                if times.contains(column) {
                    self.timestamp(p)
                } else {
                    p.to_owned()
                }
            })
            .collect();
        let quoted: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({}) RETURNING id",
            quoted.join(", "),
            placeholders.join(", ")
        );
        let row = self
            .conn
            .query_one_raw(Statement::from_sql_and_values(self.backend, &sql, values))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .expect("a row id");
        row.try_get_by_index::<i64>(0).expect("id")
    }

    /// A cache with Nix secret key `keypair`; `deleted` soft-deletes it.
    pub async fn add_cache(
        &self,
        name: &str,
        keypair: &str,
        is_public: bool,
        retention_period: Option<i32>,
        deleted: bool,
    ) -> i64 {
        self.insert(
            "cache",
            &[
                "name",
                "keypair",
                "is_public",
                "store_dir",
                "priority",
                "upstream_cache_key_names",
                "created_at",
                "deleted_at",
                "retention_period",
            ],
            vec![
                name.into(),
                keypair.into(),
                is_public.into(),
                "/nix/store".into(),
                41i32.into(),
                r#"["cache.nixos.org-1"]"#.into(),
                rfc3339(1_700_000_000).into(),
                deleted.then(|| rfc3339(1_700_000_500)).into(),
                retention_period.into(),
            ],
            &["created_at", "deleted_at"],
        )
        .await
    }

    /// A NAR cut into pieces of the given lengths (the last takes the
    /// rest), each compressed as given; returns its id and chunk files.
    pub async fn add_nar(
        &self,
        nar: &[u8],
        pieces: &[(usize, ChunkCompression)],
        state: NarState,
    ) -> (i64, Vec<ChunkFile>) {
        let nar_hash = format!("sha256:{}", hex(&sha256(nar)));
        let nar_id = self
            .insert(
                "nar",
                &[
                    "state",
                    "nar_hash",
                    "nar_size",
                    "compression",
                    "num_chunks",
                    "created_at",
                ],
                vec![
                    match state {
                        NarState::Valid => "V",
                        NarState::PendingUpload => "P",
                    }
                    .into(),
                    nar_hash.into(),
                    (nar.len() as i64).into(),
                    "zstd".into(),
                    (pieces.len() as i32).into(),
                    rfc3339(1_700_000_100).into(),
                ],
                &["created_at"],
            )
            .await;
        let mut files = Vec::new();
        let mut offset = 0;
        for (seq, &(length, compression)) in pieces.iter().enumerate() {
            let end = if seq + 1 == pieces.len() {
                nar.len()
            } else {
                (offset + length).min(nar.len())
            };
            let data = &nar[offset..end];
            offset = end;
            let file = self.write_chunk(&compression.compress(data).await).await;
            let remote_file = match &self.chunks {
                ChunkStore::Local(_) => {
                    serde_json::json!({"Local": {"name": file.name}}).to_string()
                }
                ChunkStore::S3(_) => serde_json::json!({"S3": {
                    "region": "us-east-1", "bucket": BUCKET, "key": file.name
                }})
                .to_string(),
            };
            let chunk_id = self
                .insert(
                    "chunk",
                    &[
                        "state",
                        "chunk_hash",
                        "chunk_size",
                        "compression",
                        "remote_file",
                        "remote_file_id",
                        "created_at",
                    ],
                    vec![
                        "V".into(),
                        format!("sha256:{}", hex(&sha256(data))).into(),
                        (data.len() as i64).into(),
                        compression.name().into(),
                        remote_file.into(),
                        format!("local:{}", file.name).into(),
                        rfc3339(1_700_000_100).into(),
                    ],
                    &["created_at"],
                )
                .await;
            self.insert(
                "chunkref",
                &["nar_id", "seq", "chunk_id"],
                vec![nar_id.into(), (seq as i32).into(), chunk_id.into()],
                &[],
            )
            .await;
            files.push(file);
        }
        (nar_id, files)
    }

    async fn write_chunk(&self, bytes: &[u8]) -> ChunkFile {
        let name = format!(
            "{:08x}-{}-{:04}.chunk",
            std::process::id(),
            crate::nix::nonce().replace(['-', '_'], ""),
            NEXT_CHUNK.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.chunk_path(&name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write a chunk");
        ChunkFile { name }
    }

    /// Where a chunk's bytes are on disk (s3s-fs keeps an object as a file).
    pub fn chunk_path(&self, name: &str) -> PathBuf {
        match &self.chunks {
            ChunkStore::Local(dir) => local_path(dir, name),
            ChunkStore::S3(s3) => s3.object_path(name),
        }
    }

    /// Overwrites the middle of a chunk file, as disk rot would.
    pub fn corrupt_chunk(&self, file: &ChunkFile) {
        let path = self.chunk_path(&file.name);
        let mut bytes = std::fs::read(&path).expect("read the chunk");
        let middle = bytes.len() / 2;
        let end = (middle + 16).min(bytes.len());
        for byte in &mut bytes[middle..end] {
            *byte ^= 0x5a;
        }
        std::fs::write(&path, bytes).expect("write the chunk");
    }

    /// An object row.
    pub async fn add_object(&self, object: NewAtticObject<'_>) -> i64 {
        let base = object
            .store_path
            .strip_prefix("/nix/store/")
            .expect("a store path");
        self.insert(
            "object",
            &[
                "cache_id",
                "nar_id",
                "store_path_hash",
                "store_path",
                "references",
                "system",
                "deriver",
                "sigs",
                "ca",
                "created_at",
                "last_accessed_at",
                "created_by",
            ],
            vec![
                object.cache_id.into(),
                object.nar_id.into(),
                base[..32].to_owned().into(),
                object.store_path.to_owned().into(),
                serde_json::to_string(&object.references)
                    .expect("JSON")
                    .into(),
                Some("x86_64-linux".to_owned()).into(),
                object.deriver.into(),
                serde_json::to_string(&object.sigs).expect("JSON").into(),
                Option::<String>::None.into(),
                rfc3339(object.created_at).into(),
                object.last_accessed_at.map(rfc3339).into(),
                object.created_by.map(str::to_owned).into(),
            ],
            &["created_at", "last_accessed_at"],
        )
        .await
    }

    /// An object for `path` of the local Nix store, with Attic's
    /// encodings: references and deriver as base names.
    pub async fn add_path_object(&self, cache_id: i64, nar_id: i64, path: &str) -> i64 {
        let info = nix::path_info(path);
        self.add_object(NewAtticObject {
            cache_id,
            nar_id,
            store_path: path,
            references: info.references.iter().map(|r| base_name(r)).collect(),
            deriver: info.deriver.as_deref().map(base_name),
            sigs: Vec::new(),
            created_at: 1_700_001_000,
            last_accessed_at: Some(1_700_002_000),
            created_by: Some("ci"),
        })
        .await
    }

    /// Adds `path` of the local Nix store to Attic cache `cache_id`, its
    /// NAR cut as `pieces` say; returns the NAR's id and chunk files.
    pub async fn add_path(
        &self,
        cache_id: i64,
        path: &str,
        pieces: &[(usize, ChunkCompression)],
        state: NarState,
    ) -> (i64, Vec<ChunkFile>) {
        let nar = nix::dump(Path::new(path));
        let (nar_id, files) = self.add_nar(&nar, pieces, state).await;
        self.add_path_object(cache_id, nar_id, path).await;
        (nar_id, files)
    }

    /// Closes the fixture's own connections.
    pub async fn close(&self) {
        let _ = self.conn.close_by_ref().await;
    }

    /// Closes the fixture and keeps its directory (database, chunks,
    /// `server.toml`) past this process, for a benchmark to read; returns it.
    pub async fn keep(self) -> PathBuf {
        self.close().await;
        self.dir.keep()
    }
}

/// The base name of a full store path, as Attic's client sends references.
pub fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

/// Attic's local layout: `<dir>/<c>/<cc>/<name>`.
fn local_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(&name[0..1]).join(&name[0..2]).join(name)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = attic::hash::Sha256Hash::digest(data);
    *digest.as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix seconds as RFC 3339 text with nanoseconds, as sqlx writes a
/// `DateTime<Utc>` into SQLite (PostgreSQL parses it as well).
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000000000+00:00",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_unix_seconds_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000+00:00");
        assert_eq!(
            rfc3339(1_700_000_000),
            "2023-11-14T22:13:20.000000000+00:00"
        );
    }
}
