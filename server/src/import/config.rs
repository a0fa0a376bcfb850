//! Attic's `server.toml`, read for the few keys an import needs: where its
//! database is (`[database] url`, or `ATTIC_SERVER_DATABASE_URL` as Attic
//! itself prefers) and where its chunks are (`[storage]`, local `path` or
//! S3 `region`, `bucket`, `endpoint`, `[storage.credentials]`).
//!
//! Deliberately tolerant: every other key and section is ignored, so a
//! config written for any Attic version reads, whatever it holds that our
//! own `ServerConfig` does not know.

use std::path::{Path, PathBuf};

use toml::Table;

use super::ImportError;
use crate::config::S3StorageConfig;

/// The environment variable Attic reads its database URL from, before the
/// config file.
pub const DATABASE_URL_VARIABLE: &str = "ATTIC_SERVER_DATABASE_URL";

/// Where an Attic server keeps its data.
#[derive(Debug, Clone)]
pub struct AtticConfig {
    /// Its database: `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Its chunk files.
    pub storage: AtticStorage,
}

/// Where Attic's chunk files live.
#[derive(Debug, Clone)]
pub enum AtticStorage {
    /// Files under a directory, as Attic's local backend lays them out.
    Local {
        /// `[storage] path`.
        path: PathBuf,
    },
    /// Objects in a bucket. Attic's row names the bucket of each chunk; the
    /// config gives the endpoint and credentials to reach it.
    S3(Box<S3StorageConfig>),
}

impl AtticConfig {
    /// Reads Attic's config file, taking the database URL from
    /// `ATTIC_SERVER_DATABASE_URL` when that is set, as Attic does.
    pub fn load(path: &Path) -> Result<Self, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        let from_env = std::env::var(DATABASE_URL_VARIABLE)
            .ok()
            .filter(|url| !url.is_empty());
        Self::parse(&text, from_env)
    }

    /// Parses a config's text; `database_url` overrides `[database] url`.
    pub fn parse(text: &str, database_url: Option<String>) -> Result<Self, ImportError> {
        let table: Table = text.parse().map_err(ImportError::ConfigSyntax)?;
        let database_url = match database_url {
            Some(url) => url,
            None => section(&table, "database")?
                .and_then(|database| database.get("url"))
                .map(|url| string(url, "database.url"))
                .transpose()?
                .ok_or(ImportError::ConfigMissing("[database] url"))?,
        };
        let storage = section(&table, "storage")?.ok_or(ImportError::ConfigMissing("[storage]"))?;
        let kind = storage
            .get("type")
            .map(|kind| string(kind, "storage.type"))
            .transpose()?
            .ok_or(ImportError::ConfigMissing("[storage] type"))?;
        let storage = match kind.as_str() {
            "local" => AtticStorage::Local {
                path: storage
                    .get("path")
                    .map(|path| string(path, "storage.path"))
                    .transpose()?
                    .ok_or(ImportError::ConfigMissing("[storage] path"))?
                    .into(),
            },
            "s3" => AtticStorage::S3(Box::new(s3_config(storage)?)),
            other => {
                return Err(ImportError::ConfigInvalid {
                    key: "storage.type",
                    reason: format!("{other:?} is not a storage type Attic has (local, s3)"),
                });
            }
        };
        Ok(Self {
            database_url,
            storage,
        })
    }
}

/// Our S3 client settings from Attic's: its four keys, our defaults for
/// the rest (retries, timeouts, path style for a custom endpoint).
fn s3_config(storage: &Table) -> Result<S3StorageConfig, ImportError> {
    let mut kept = Table::new();
    for key in ["region", "bucket", "endpoint", "credentials"] {
        if let Some(value) = storage.get(key) {
            kept.insert(key.to_owned(), value.clone());
        }
    }
    if let Some(toml::Value::Table(credentials)) = kept.get_mut("credentials") {
        credentials.retain(|key, _| key == "access_key_id" || key == "secret_access_key");
    }
    toml::Value::Table(kept)
        .try_into()
        .map_err(|e: toml::de::Error| ImportError::ConfigInvalid {
            key: "storage",
            reason: e.message().to_owned(),
        })
}

/// A section, if present; an error if the key holds something else.
fn section<'a>(table: &'a Table, name: &'static str) -> Result<Option<&'a Table>, ImportError> {
    match table.get(name) {
        None => Ok(None),
        Some(toml::Value::Table(section)) => Ok(Some(section)),
        Some(_) => Err(ImportError::ConfigInvalid {
            key: name,
            reason: "must be a section".to_owned(),
        }),
    }
}

fn string(value: &toml::Value, key: &'static str) -> Result<String, ImportError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ImportError::ConfigInvalid {
            key,
            reason: "must be a string".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Attic config as its own `atticd` writes one, with keys we do not
    /// know, and an S3 store.
    const ATTIC_S3: &str = r#"
listen = "[::]:8080"
allowed-hosts = []
api-endpoint = "https://cache.example.com/"
[jwt.signing]
token-rs256-secret-base64 = "c2VjcmV0"
[database]
url = "postgres://attic@db/attic"
heartbeat = true
[storage]
type = "s3"
region = "eu-west-1"
bucket = "attic-chunks"
endpoint = "http://127.0.0.1:9000"
[storage.credentials]
access_key_id = "AKIA"
secret_access_key = "secret"
[chunking]
nar-size-threshold = 65536
min-size = 16384
avg-size = 65536
max-size = 262144
[compression]
type = "xz"
[garbage-collection]
interval = "12 hours"
"#;

    #[test]
    fn reads_database_and_s3_storage_ignoring_other_keys() {
        let config = AtticConfig::parse(ATTIC_S3, None).expect("parses");
        assert_eq!(config.database_url, "postgres://attic@db/attic");
        let AtticStorage::S3(s3) = config.storage else {
            panic!("an S3 store");
        };
        assert_eq!(s3.region, "eu-west-1");
        assert_eq!(s3.bucket, "attic-chunks");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let credentials = s3.credentials.as_ref().expect("credentials");
        assert_eq!(credentials.access_key_id, "AKIA");
        assert_eq!(credentials.secret_access_key, "secret");
        assert!(s3.path_style(), "a custom endpoint is addressed path-style");
    }

    #[test]
    fn database_url_from_the_environment_wins() {
        let config = AtticConfig::parse(ATTIC_S3, Some("sqlite:///var/lib/attic/db".into()))
            .expect("parses");
        assert_eq!(config.database_url, "sqlite:///var/lib/attic/db");
    }

    #[test]
    fn reads_local_storage() {
        let text = "[database]\nurl = \"sqlite:///a/server.db?mode=rwc\"\n\
                    [storage]\ntype = \"local\"\npath = \"/var/lib/atticd/storage\"\n";
        let config = AtticConfig::parse(text, None).expect("parses");
        let AtticStorage::Local { path } = config.storage else {
            panic!("a local store");
        };
        assert_eq!(path, Path::new("/var/lib/atticd/storage"));
    }

    #[test]
    fn rejects_config_without_database_url() {
        let text = "[storage]\ntype = \"local\"\npath = \"/x\"\n";
        let error = AtticConfig::parse(text, None).expect_err("no database");
        assert!(matches!(
            error,
            ImportError::ConfigMissing("[database] url")
        ));
    }

    #[test]
    fn rejects_config_without_storage() {
        let text = "[database]\nurl = \"sqlite:///a.db\"\n";
        let error = AtticConfig::parse(text, None).expect_err("no storage");
        assert!(matches!(error, ImportError::ConfigMissing("[storage]")));
    }

    #[test]
    fn rejects_unknown_storage_type() {
        let text = "[database]\nurl = \"sqlite:///a.db\"\n[storage]\ntype = \"gcs\"\n";
        let error = AtticConfig::parse(text, None).expect_err("unknown type");
        assert!(matches!(
            error,
            ImportError::ConfigInvalid {
                key: "storage.type",
                ..
            }
        ));
    }

    #[test]
    fn rejects_s3_storage_without_bucket() {
        let text =
            "[database]\nurl = \"sqlite:///a.db\"\n[storage]\ntype = \"s3\"\nregion = \"x\"\n";
        let error = AtticConfig::parse(text, None).expect_err("no bucket");
        assert!(matches!(
            error,
            ImportError::ConfigInvalid { key: "storage", .. }
        ));
    }

    #[test]
    fn rejects_text_that_is_not_toml() {
        let error = AtticConfig::parse("[database\nurl=", None).expect_err("not TOML");
        assert!(matches!(error, ImportError::ConfigSyntax(_)));
    }
}
