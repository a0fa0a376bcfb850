//! Which database and blob store the end-to-end tests run `atticd` on.
//!
//! `ATTIC_TEST_BACKEND` picks one for the whole run: `sqlite-local` (the
//! default: the embedded set-up a new user gets) or `postgres-s3` (what a
//! production deployment runs: a throwaway database on the PostgreSQL
//! server `ATTIC_TEST_POSTGRES` names, and an s3s-fs per server).
//! `scripts/test` starts PostgreSQL and runs the suite once per backend.
//! A backend whose service is missing fails the test; it never skips.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::s3::S3Server;

/// The environment variable that picks the backend.
pub const BACKEND_VARIABLE: &str = "ATTIC_TEST_BACKEND";
/// The environment variable holding the PostgreSQL server's URL (a
/// superuser that may create databases, without a database name).
pub const POSTGRES_VARIABLE: &str = "ATTIC_TEST_POSTGRES";

/// The database and storage behind every [`crate::server::TestServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite and local disk in the data directory, as configured by a
    /// first start.
    SqliteLocal,
    /// A fresh PostgreSQL database and a fresh S3 bucket per server.
    PostgresS3,
}

impl Backend {
    /// The backend `ATTIC_TEST_BACKEND` names; SQLite and disk if unset.
    pub fn from_env() -> Self {
        match std::env::var(BACKEND_VARIABLE).as_deref() {
            Err(_) | Ok("") | Ok("sqlite-local") => Self::SqliteLocal,
            Ok("postgres-s3") => Self::PostgresS3,
            Ok(other) => panic!(
                "{BACKEND_VARIABLE}={other:?} is not a backend: use sqlite-local or postgres-s3"
            ),
        }
    }
}

/// The services a [`Backend::PostgresS3`] server runs on, stopped (the
/// S3 server) when dropped; the database is left to the throwaway cluster.
pub struct Services {
    /// The S3 server holding the bucket.
    pub s3: S3Server,
    /// The server's own database.
    pub database_url: String,
}

impl Services {
    /// A fresh database and a fresh S3 server.
    pub fn start() -> Self {
        Self {
            s3: S3Server::start(),
            database_url: fresh_postgres_database(),
        }
    }

    /// The `[database]` and `[storage]` sections of atticd's config.
    pub fn config_toml(&self) -> String {
        format!(
            "[database]\nurl = \"{}\"\n{}",
            self.database_url,
            self.s3.storage_toml("")
        )
    }
}

/// Creates an empty database on the PostgreSQL server that
/// `ATTIC_TEST_POSTGRES` names, and returns its URL.
pub fn fresh_postgres_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = std::env::var(POSTGRES_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_VARIABLE} is not set: it names the PostgreSQL server the tests use, \
             e.g. postgres://attic@127.0.0.1:5432 (scripts/test starts one and sets it)"
        )
    });
    let server = server.trim_end_matches('/').to_owned();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "attic_test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin_url = format!("{server}/postgres");
    let statement = format!("CREATE DATABASE {name}");
    // Tests may call this from inside their own runtime: use another.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            use sea_orm::ConnectionTrait;
            let admin = sea_orm::Database::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} does not answer: {e}"));
            admin
                .execute_unprepared(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
            admin.close().await.expect("close");
        });
    })
    .join()
    .expect("created the database");
    format!("{server}/{name}")
}
