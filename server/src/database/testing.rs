//! Rows for unit tests that need a store in a given shape (old reads,
//! reference graphs) faster than real uploads could make it. Compiled for
//! tests only.

use attic::signing::SigningKey;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};

use super::Database;
use super::caches::NewCache;
use super::entity::{BlobState, StoredCompression, nar, object};
use super::ids::{CacheId, NarId, ObjectId};
use super::json::Json;
use super::records::Cache;
use crate::config::DatabaseConfig;

impl Database {
    /// A fresh database: SQLite in `dir`, or, with `ATTIC_TEST_POSTGRES`
    /// set to a server's URL, a new database on that PostgreSQL server, so
    /// the same queries are checked on both backends.
    pub(crate) async fn for_tests(dir: &tempfile::TempDir) -> Self {
        use sea_orm::ConnectionTrait;
        let url = match std::env::var("ATTIC_TEST_POSTGRES") {
            Ok(server) => {
                let name = format!(
                    "gc_{}_{}",
                    std::process::id(),
                    dir.path()
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("db")
                        .to_lowercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                );
                let admin = sea_orm::Database::connect(format!("{server}/postgres"))
                    .await
                    .expect("connect to PostgreSQL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create database");
                format!("{server}/{name}")
            }
            Err(_) => format!("sqlite://{}?mode=rwc", dir.path().join("db").display()),
        };
        let database = Self::connect(&url, &DatabaseConfig::default(), true)
            .await
            .expect("connect");
        database.migrate().await.expect("migrate");
        database
    }

    /// A private cache named `name` storing `/nix/store` paths.
    pub(crate) async fn seed_cache(&self, name: &str) -> Cache {
        self.create_cache(NewCache {
            name: name.parse().expect("a valid cache name"),
            signing_key: SigningKey::generate(&format!("{name}-1")).expect("a key"),
            is_public: false,
            store_dir: attic::store_path::StoreDir::default(),
            priority: 40,
            upstream_cache_key_names: Vec::new(),
        })
        .await
        .expect("create the cache")
    }

    /// A valid NAR of 1000 bytes stored as 100, named by `seed`, with no
    /// chunks, created at `created_at`.
    pub(crate) async fn seed_nar(&self, seed: &str, created_at: i64) -> NarId {
        let row = nar::ActiveModel {
            nar_hash: Set(format!("sha256:{seed:0>52}")),
            nar_size: Set(1000),
            compression: Set(StoredCompression::Zstd),
            file_size: Set(100),
            state: Set(BlobState::Valid),
            num_chunks: Set(1),
            created_at: Set(created_at),
            ..Default::default()
        }
        .insert(&self.conn)
        .await
        .expect("insert a NAR");
        NarId::new(row.id)
    }

    /// Path `store_path` (whose hash part is `hash`) of `cache` on `nar`,
    /// pushed at `created_at`, referencing `references`.
    pub(crate) async fn seed_path(
        &self,
        cache: CacheId,
        nar: NarId,
        (hash, store_path): (&str, &str),
        references: &[String],
        created_at: i64,
    ) -> ObjectId {
        let row = object::ActiveModel {
            cache_id: Set(cache.get()),
            nar_id: Set(nar.get()),
            store_path: Set(store_path.to_owned()),
            store_path_hash: Set(hash.to_owned()),
            references: Set(Json(references.to_vec()).encode()),
            sigs: Set(Json(Vec::<String>::new()).encode()),
            created_at: Set(created_at),
            ..Default::default()
        }
        .insert(&self.conn)
        .await
        .expect("insert a path");
        ObjectId::new(row.id)
    }

    /// Paths `(hash, store path)` of `cache` on `nar`, with no references,
    /// inserted many to a statement: thousands in well under a second.
    pub(crate) async fn seed_paths(&self, cache: CacheId, nar: NarId, paths: &[(String, String)]) {
        for batch in paths.chunks(500) {
            let rows = batch.iter().map(|(hash, store_path)| object::ActiveModel {
                cache_id: Set(cache.get()),
                nar_id: Set(nar.get()),
                store_path: Set(store_path.clone()),
                store_path_hash: Set(hash.clone()),
                references: Set(Json(Vec::<String>::new()).encode()),
                sigs: Set(Json(Vec::<String>::new()).encode()),
                created_at: Set(0),
                ..Default::default()
            });
            object::Entity::insert_many(rows)
                .exec(&self.conn)
                .await
                .expect("insert paths");
        }
    }
}
