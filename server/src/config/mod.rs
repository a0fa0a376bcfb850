//! `server.toml`: parsed strictly, validated before anything is opened.
//!
//! Every key is optional, but a token key is required: `token-root-key`, or
//! Attic's `[jwt.signing]` (see [`jwt`]). The defaults are the embedded
//! set-up (SQLite and local blobs under the data directory). An unknown key
//! or a bad value is an error that names the key.
//!
//! Each section lives in its own module with its defaults, its checks and
//! their tests; this one holds the top-level keys, the error type, and the
//! reading, writing and checking of the whole file.

mod chunking;
mod compression;
mod database;
pub(crate) mod duration;
mod gc;
mod http;
pub mod jwt;
mod key_report;
pub mod oidc;
mod storage;
mod tls;
mod variables;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attic_token::RootKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use chunking::ChunkingConfig;
pub use compression::{CompressionConfig, CompressionKind};
pub use database::{DatabaseConfig, DatabaseKind, SqliteFile, redact_secrets_of, redact_url};
pub use gc::GcConfig;
pub use http::{AddressRange, HttpConfig};
pub use jwt::{JwtConfig, TokenKeys};
pub use key_report::describe_keys;
pub use oidc::{OidcConfig, OidcIssuer, OidcRule};
pub use storage::{S3Checksums, S3Credentials, S3StorageConfig, StorageConfig};
pub use tls::TlsConfig;
use variables::expand_variables;

use crate::pull_through::PullThroughConfig;

/// Why the configuration is unusable.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("cannot access the config file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A string refers to an environment variable that is not set.
    #[error(
        "`{key}` refers to ${{{variable}}}, which is not set in the environment (write ${{{variable}:-default}} to give a default)"
    )]
    UnsetVariable {
        /// The key, as a dotted path.
        key: String,
        /// The variable.
        variable: String,
    },
    /// A `${` without its closing `}`.
    #[error("`{key}` has a `${{` without a closing `}}` (write `$${{` for a literal `${{`)")]
    UnclosedVariable {
        /// The key, as a dotted path.
        key: String,
    },
    /// A value that parses but cannot work.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key, as written in the file.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A value that parses but cannot work, in an array of tables (e.g.
    /// `oidc.issuers[0].rules[1].push`).
    #[error("invalid value for `{key}`: {reason}")]
    InvalidAt {
        /// The key, as a dotted path with indices.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The environment variable holding the whole config, base64-encoded
/// (Attic's), read when no `-f`/`--config` is given.
pub const CONFIG_BASE64_VARIABLE: &str = "ATTIC_SERVER_CONFIG_BASE64";

/// The environment variable holding the database URL (Attic's), used when
/// `[database] url` is absent.
pub const DATABASE_URL_VARIABLE: &str = "ATTIC_SERVER_DATABASE_URL";

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the operators' listener, which serves `/_health` and
    /// `/metrics` alone. Unset, `/metrics` is served nowhere (unless
    /// `metrics-token` is set): the public listener never serves it to
    /// anyone, since a global stored-bytes counter tells a pusher whether
    /// another tenant already held what it pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// A bearer token that makes the public listener serve `/metrics` to
    /// whoever presents it (for a Prometheus that can reach only that
    /// listener). Unset, the public listener does not serve `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<String>,
    /// Public base URL of the server, e.g. `https://cache.example.com/`.
    /// Defaults to `http://<Host header>/`.
    #[serde(default)]
    pub api_endpoint: Option<String>,
    /// Public base URL of the binary cache (Attic's key): clients are told
    /// a cache's substituter is `<substituter-endpoint><cache>`. Defaults
    /// to the API endpoint, for deployments that serve both from one place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substituter_endpoint: Option<String>,
    /// Attic's key: a destroyed cache keeps its name reserved, so a new
    /// cache cannot take it over and serve other paths to its old users.
    /// Its paths stop being served at once either way.
    #[serde(default)]
    pub soft_delete_caches: bool,
    /// Attic's key: whether attaching a NAR the store already holds to a
    /// cache needs the whole NAR sent again. Off, knowing a NAR's hash is
    /// enough to get its content into one's own cache, whoever pushed it.
    #[serde(default = "default_require_proof_of_possession")]
    pub require_proof_of_possession: bool,
    /// Attic's key: largest metadata preamble (the JSON before the NAR of
    /// an `upload-path` body), in bytes. It is read into memory whole.
    #[serde(default = "default_max_nar_info_size")]
    pub max_nar_info_size: usize,
    /// Host names the server answers to; empty allows any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The key that signs biscuit tokens: `ed25519-private/<hex>`. Unset,
    /// it is derived from the `[jwt.signing]` secret (see [`jwt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_root_key: Option<String>,
    /// Largest NAR accepted, in bytes. It is also all that bounds what a
    /// `nix copy` NAR may decode to (its narinfo, with `NarSize`, comes
    /// after it), so it is no larger than real store paths need.
    #[serde(default = "default_max_nar_size")]
    pub max_nar_size: u64,
    /// Largest build log accepted, uncompressed, in bytes.
    #[serde(default = "default_max_log_size")]
    pub max_log_size: u64,
    /// Where metadata lives.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Where blobs live.
    #[serde(default)]
    pub storage: StorageConfig,
    /// How NARs are cut into chunks.
    #[serde(default)]
    pub chunking: ChunkingConfig,
    /// How chunks are compressed.
    #[serde(default)]
    pub compression: CompressionConfig,
    /// Limits that keep slow or idle clients from holding the server.
    #[serde(default)]
    pub http: HttpConfig,
    /// When and how storage is reclaimed.
    #[serde(default)]
    pub garbage_collection: GcConfig,
    /// Serve HTTPS directly, for deployments without a proxy in front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Attic's JWTs, accepted beside biscuit tokens.
    #[serde(default, skip_serializing_if = "JwtConfig::is_unset")]
    pub jwt: JwtConfig,
    /// CI identity providers whose ID tokens are exchanged for ours.
    #[serde(default, skip_serializing_if = "OidcConfig::is_unset")]
    pub oidc: OidcConfig,
    /// Upstream caches every matching cache pulls missing paths through
    /// from, and the bounds on asking any upstream.
    #[serde(default, skip_serializing_if = "PullThroughConfig::is_default")]
    pub pull_through: PullThroughConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_nar_size() -> u64 {
    32 << 30
}
fn default_max_log_size() -> u64 {
    64 << 20
}
fn default_require_proof_of_possession() -> bool {
    true
}
fn default_max_nar_info_size() -> usize {
    1 << 20
}

/// The largest `max-nar-info-size` accepted: every upload may hold this
/// much in memory before its NAR starts.
pub const MAX_NAR_INFO_SIZE_LIMIT: usize = 64 << 20;

impl ServerConfig {
    /// Parses TOML text; `path` is only for messages.
    /// `${VAR}` and `${VAR:-default}` in any string value are replaced
    /// from the environment (`$${` is a literal `${`), so secrets can live
    /// there rather than in the file.
    ///
    /// As in Attic, `ATTIC_SERVER_DATABASE_URL` is the database when
    /// `[database] url` is absent (and only then).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_environment(text, path, &|name| std::env::var(name).ok())
    }

    /// [`ServerConfig::parse`] with the environment read through `lookup`.
    fn parse_with_environment(
        text: &str,
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        for (key, value) in table.iter_mut() {
            expand_variables(value, key, lookup)?;
        }
        jwt::refuse_deprecated_keys(&table)?;
        let mut config = Self::deserialize(table).map_err(|e| parse_error(e.to_string()))?;
        if config.database.url.is_none() {
            config.database.url = lookup(DATABASE_URL_VARIABLE).filter(|url| !url.is_empty());
        }
        config.validate()?;
        Ok(config)
    }

    /// The text of a whole config given base64-encoded, as Attic reads
    /// `ATTIC_SERVER_CONFIG_BASE64`; `source` names it in messages.
    pub fn decode_base64(encoded: &str, source: &Path) -> Result<String, ConfigError> {
        use base64::Engine;
        let bad = |reason: String| ConfigError::Parse {
            path: source.to_owned(),
            message: reason,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| bad(format!("not base64: {e}")))?;
        String::from_utf8(bytes).map_err(|_| bad("not UTF-8 once decoded".into()))
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&Self::read_text(path)?, path)
    }

    /// A config file's text, unparsed.
    pub fn read_text(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// A fresh embedded-default configuration with a new token key.
    pub fn generate() -> Self {
        Self {
            listen: default_listen(),
            metrics_listen: None,
            metrics_token: None,
            api_endpoint: None,
            substituter_endpoint: None,
            soft_delete_caches: false,
            require_proof_of_possession: default_require_proof_of_possession(),
            max_nar_info_size: default_max_nar_info_size(),
            allowed_hosts: Vec::new(),
            token_root_key: Some(RootKey::generate().to_config_string()),
            max_nar_size: default_max_nar_size(),
            max_log_size: default_max_log_size(),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            chunking: ChunkingConfig::default(),
            compression: CompressionConfig::default(),
            http: HttpConfig::default(),
            garbage_collection: GcConfig::default(),
            tls: None,
            jwt: JwtConfig::default(),
            oidc: OidcConfig::default(),
            pull_through: PullThroughConfig::default(),
        }
    }

    /// Writes the config, readable by its owner only (it holds the token key).
    pub fn write_new(&self, path: &Path) -> Result<(), ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io_error = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        let text = toml::to_string_pretty(self).expect("the config serialises");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        let header = "# atticd configuration, written on first start. Every key is documented in\n\
                      # the book (book/src/server.md). Keep it secret: it holds the token key.\n\n";
        file.write_all(header.as_bytes())
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io_error)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // With several bad values, the first checked is the one reported:
        // the checks run in the order they always have, hence `[http]` in
        // two halves around `metrics-token`.
        let token_keys = self.token_keys()?;
        if !self.oidc.resolve()?.is_empty() && token_keys.biscuit_root_key().is_err() {
            return Err(ConfigError::InvalidAt {
                key: "oidc.issuers".to_owned(),
                reason: "exchanging ID tokens mints biscuit tokens, which needs token-root-key \
                         (the [jwt.signing] key is an RS256 public key, which cannot sign them)"
                    .to_owned(),
            });
        }
        self.chunking.validate()?;
        self.http.validate_connection_caps()?;
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|token| token.len() < 16)
        {
            return Err(ConfigError::Invalid {
                key: "metrics-token",
                reason: "must be at least 16 characters".into(),
            });
        }
        self.http.validate_timeouts()?;
        self.compression.validate()?;
        self.database.validate()?;
        self.garbage_collection.validate()?;
        self.pull_through.resolve()?;
        for (key, endpoint) in [
            ("api-endpoint", &self.api_endpoint),
            ("substituter-endpoint", &self.substituter_endpoint),
        ] {
            if let Some(endpoint) = endpoint
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{endpoint:?} is not an http:// or https:// URL"),
                });
            }
        }
        if !(1..=MAX_NAR_INFO_SIZE_LIMIT).contains(&self.max_nar_info_size) {
            return Err(ConfigError::Invalid {
                key: "max-nar-info-size",
                reason: format!(
                    "{} is outside 1..={MAX_NAR_INFO_SIZE_LIMIT} (each upload may hold this much in memory)",
                    self.max_nar_info_size
                ),
            });
        }
        self.storage.validate()?;
        if self.max_nar_size == 0 {
            return Err(ConfigError::Invalid {
                key: "max-nar-size",
                reason: "must be positive".into(),
            });
        }
        if self.max_log_size == 0 {
            return Err(ConfigError::Invalid {
                key: "max-log-size",
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }

    /// The keys tokens are checked with: `token-root-key` and `[jwt]`, with
    /// Attic's signing-key variables read from the environment.
    pub fn token_keys(&self) -> Result<TokenKeys, ConfigError> {
        self.jwt.resolve(self.token_root_key.as_deref(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// The database URL, defaulting to SQLite in `data_dir`.
    pub fn database_url(&self, data_dir: &Path) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", data_dir.join("server.db").display())
        })
    }

    /// Whether anything lives in the data directory: the default SQLite
    /// database, or local blobs without a `path` of their own.
    pub fn uses_data_dir(&self) -> bool {
        self.database.url.is_none() || matches!(self.storage, StorageConfig::Local { path: None })
    }

    /// The local storage directory, defaulting to `storage` in `data_dir`;
    /// `None` when blobs live elsewhere.
    pub fn local_storage_path(&self, data_dir: &Path) -> Option<PathBuf> {
        match &self.storage {
            StorageConfig::Local { path } => {
                Some(path.clone().unwrap_or_else(|| data_dir.join("storage")))
            }
            StorageConfig::S3(_) => None,
        }
    }

    /// How long a presigned URL of a NAR redirect lives, when
    /// `[storage] redirect-reads` is on.
    pub fn read_redirect_expiry(&self) -> Option<Duration> {
        match &self.storage {
            StorageConfig::S3(s3) if s3.redirect_reads => Some(s3.redirect_expiry),
            StorageConfig::S3(_) | StorageConfig::Local { .. } => None,
        }
    }
}

/// What the tests of every section need: a parse of the whole file, and
/// the one key it cannot do without.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use attic_token::RootKey;

    use super::{ConfigError, ServerConfig};

    pub(super) fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(text, Path::new("server.toml"))
    }

    pub(super) fn key_line() -> String {
        format!(
            "token-root-key = {:?}\n",
            RootKey::generate().to_config_string()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::test_support::{key_line, parse};
    use super::*;

    #[test]
    fn a_generated_config_round_trips() {
        let config = ServerConfig::generate();
        let text = toml::to_string_pretty(&config).expect("serialises");
        let again = parse(&text).expect("parses");
        assert_eq!(again.token_root_key, config.token_root_key);
        assert_eq!(again.listen, config.listen);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(&key_line()).expect("parses");
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.chunking.avg_size, 64 * 1024);
        assert_eq!(config.compression.kind, CompressionKind::Zstd);
        assert_eq!(config.compression.level(), 3);
        // What a `nix copy` NAR may decode to: 32 GiB, not 64.
        assert_eq!(config.max_nar_size, 32 << 30);
        assert!(
            config
                .database_url(Path::new("/d"))
                .starts_with("sqlite:///d/server.db")
        );
    }

    #[test]
    fn attics_top_level_keys_parse_with_attics_defaults() {
        let config = parse(&key_line()).expect("parses");
        assert!(!config.soft_delete_caches);
        assert!(config.require_proof_of_possession);
        assert_eq!(config.max_nar_info_size, 1 << 20);
        assert_eq!(config.substituter_endpoint, None);
        assert!(!config.database.heartbeat);
        let config = parse(&format!(
            "{}soft-delete-caches = true\nrequire-proof-of-possession = false\n\
             max-nar-info-size = 4096\nsubstituter-endpoint = \"https://nix.example.com/\"\n\
             allowed-hosts = [\"cache.example.com\"]\napi-endpoint = \"https://api.example.com/\"\n\
             [database]\nheartbeat = true\n",
            key_line()
        ))
        .expect("parses");
        assert!(config.soft_delete_caches);
        assert!(!config.require_proof_of_possession);
        assert_eq!(config.max_nar_info_size, 4096);
        assert_eq!(
            config.substituter_endpoint.as_deref(),
            Some("https://nix.example.com/")
        );
        assert!(config.database.heartbeat);
    }

    #[test]
    fn max_nar_info_size_outside_its_bounds_is_refused_naming_the_key() {
        for size in [0, MAX_NAR_INFO_SIZE_LIMIT + 1] {
            let err = parse(&format!("{}max-nar-info-size = {size}\n", key_line()))
                .expect_err("out of bounds");
            assert!(err.to_string().contains("max-nar-info-size"), "{err}");
        }
    }

    #[test]
    fn the_database_url_variable_fills_an_absent_url_only() {
        let env = |name: &str| {
            (name == DATABASE_URL_VARIABLE).then(|| "postgres://u:p@db/attic".to_owned())
        };
        let path = Path::new("server.toml");
        let config = ServerConfig::parse_with_environment(&key_line(), path, &env).expect("parses");
        assert_eq!(
            config.database.url.as_deref(),
            Some("postgres://u:p@db/attic")
        );
        let text = format!("{}[database]\nurl = \"sqlite:///x.db\"\n", key_line());
        let config = ServerConfig::parse_with_environment(&text, path, &env).expect("parses");
        assert_eq!(config.database.url.as_deref(), Some("sqlite:///x.db"));
        let config =
            ServerConfig::parse_with_environment(&key_line(), path, &|_| None).expect("parses");
        assert_eq!(config.database.url, None);
    }

    #[test]
    fn a_base64_config_decodes_and_bad_base64_is_named() {
        use base64::Engine;
        let text = key_line();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&text);
        let source = Path::new("$ATTIC_SERVER_CONFIG_BASE64");
        assert_eq!(
            ServerConfig::decode_base64(&encoded, source).expect("decodes"),
            text
        );
        let err = ServerConfig::decode_base64("%%%", source).expect_err("not base64");
        assert!(
            err.to_string().contains("ATTIC_SERVER_CONFIG_BASE64"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(&format!("{}listn = \"x\"\n", key_line())).expect_err("unknown key");
        assert!(err.to_string().contains("listn"), "{err}");
        let err = parse(&format!("{}[chunking]\nmin = 1\n", key_line())).expect_err("unknown key");
        assert!(err.to_string().contains("min"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("[compression]\nlevel = 30\n", "compression.level"),
            ("[chunking]\nmin-size = 3\n", "chunking"),
            ("api-endpoint = \"ftp://x\"\n", "api-endpoint"),
            (
                "substituter-endpoint = \"ftp://x\"\n",
                "substituter-endpoint",
            ),
            ("listen = \"nowhere\"\n", "listen"),
            ("[storage]\ntype = \"floppy\"\n", "floppy"),
        ];
        for (text, key) in cases {
            let err = parse(&format!("{}{text}", key_line())).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        let s3 = "[storage]\ntype = \"s3\"\nregion = \"r\"\nbucket = \"b\"\n";
        let s3_cases = [
            ("endpoint = \"localhost:9000\"\n", "storage.endpoint"),
            ("prefix = \"Big/Letters\"\n", "storage.prefix"),
            ("max-attempts = 0\n", "storage.max-attempts"),
            ("redirect-expiry = \"30d\"\n", "storage.redirect-expiry"),
            ("checksums = \"always\"\n", "always"),
        ];
        for (text, key) in s3_cases {
            let err = parse(&format!("{}{s3}{text}", key_line())).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        let err = parse("token-root-key = \"nope\"\n").expect_err("bad key");
        assert!(err.to_string().contains("token-root-key"), "{err}");
        let err = parse("listen = \"127.0.0.1:1\"\n").expect_err("missing key");
        assert!(err.to_string().contains("token-root-key"), "{err}");
    }
}
