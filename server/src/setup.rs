//! From configuration to a running server: default locations, the
//! first-start set-up, opening the database and storage, serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use attic::chunking::FastCdcChunker;
use attic_token::{CacheNamePattern, Permission, TokenSpec};

use crate::config::{
    CONFIG_BASE64_VARIABLE, DATABASE_URL_VARIABLE, ServerConfig, SqliteFile, StorageConfig,
    describe_keys, redact_secrets_of, redact_url,
};
use crate::database::Database;
use crate::metrics::Metrics;
use crate::state::{AccessLog, AppState, ReadCache, spawn_access_log_flusher};
use crate::storage::{LocalStorage, MeteredStorage, S3Storage, StorageBackend};

/// `$XDG_CONFIG_HOME/attic/server.toml`, or `~/.config/attic/server.toml`.
pub fn default_config_path() -> Result<PathBuf> {
    Ok(xdg_dir("XDG_CONFIG_HOME", ".config")?.join("attic/server.toml"))
}

/// `$XDG_DATA_HOME/attic`, or `~/.local/share/attic`.
pub fn default_data_dir() -> Result<PathBuf> {
    Ok(xdg_dir("XDG_DATA_HOME", ".local/share")?.join("attic"))
}

/// The data directory: `explicit` (`--data-dir`) when given, else the
/// default when `config` keeps something there (the SQLite database, local
/// blobs). A deployment on PostgreSQL and S3 keeps nothing there, so it
/// needs no `HOME`: its data directory is an empty path nothing reads.
pub fn data_dir(explicit: Option<PathBuf>, config: &ServerConfig) -> Result<PathBuf> {
    match explicit {
        Some(dir) => Ok(dir),
        None if config.uses_data_dir() => default_data_dir(),
        None => Ok(PathBuf::new()),
    }
}

fn xdg_dir(variable: &str, fallback: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(variable).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .with_context(|| format!("neither {variable} nor HOME is set"))?;
    Ok(PathBuf::from(home).join(fallback))
}

/// A configuration, where it lives, and whether it is yet to be written.
pub struct LoadedConfig {
    /// The configuration.
    pub config: ServerConfig,
    /// Where it is, or is to be written.
    pub path: PathBuf,
    /// Whether it was generated just now and is not on disk yet: atticd's
    /// first start writes it with [`LoadedConfig::persist`] once the server
    /// has started, so a failed first start leaves nothing behind.
    pub generated: bool,
    /// Whether the generated configuration's database URL came from
    /// `ATTIC_SERVER_DATABASE_URL`: it is then not written to the file,
    /// which later starts read the variable for again.
    database_url_from_environment: bool,
    /// What `--mode check-config` says of each key the file sets (empty
    /// for a generated configuration).
    pub key_report: Vec<String>,
}

impl LoadedConfig {
    /// Writes a generated configuration (a no-op for one read from disk).
    pub fn persist(&self) -> Result<()> {
        if !self.generated {
            return Ok(());
        }
        let mut config = self.config.clone();
        if self.database_url_from_environment {
            config.database.url = None;
        }
        config.write_new(&self.path).with_context(|| {
            format!(
                "writing the new configuration {} (if another atticd wrote it meanwhile, start again)",
                self.path.display()
            )
        })
    }
}

/// Loads `explicit`, or the default config. An explicit path must exist;
/// when the default does not, a fresh configuration is generated but not
/// written (see [`LoadedConfig::persist`]).
///
/// Without `explicit`, a config in `ATTIC_SERVER_CONFIG_BASE64` comes
/// before the default file, as in Attic.
pub fn load_or_generate_config(explicit: Option<&Path>) -> Result<LoadedConfig> {
    if let Some(loaded) = load_from_environment(explicit)? {
        return Ok(loaded);
    }
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => default_config_path()?,
    };
    if explicit.is_some() || path.exists() {
        let text = ServerConfig::read_text(&path)?;
        return loaded_from_text(&text, path);
    }
    let mut config = ServerConfig::generate();
    config.database.url = std::env::var(DATABASE_URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty());
    Ok(LoadedConfig {
        database_url_from_environment: config.database.url.is_some(),
        config,
        path,
        generated: true,
        key_report: Vec::new(),
    })
}

/// The config `ATTIC_SERVER_CONFIG_BASE64` holds, when no path was given
/// and the variable is set.
fn load_from_environment(explicit: Option<&Path>) -> Result<Option<LoadedConfig>> {
    if explicit.is_some() {
        return Ok(None);
    }
    let Some(encoded) = std::env::var_os(CONFIG_BASE64_VARIABLE) else {
        return Ok(None);
    };
    let path = PathBuf::from(format!("${CONFIG_BASE64_VARIABLE}"));
    let encoded = encoded
        .into_string()
        .map_err(|_| anyhow::anyhow!("{CONFIG_BASE64_VARIABLE} is not valid UTF-8"))?;
    let text = ServerConfig::decode_base64(&encoded, &path)?;
    loaded_from_text(&text, path).map(Some)
}

/// A configuration read from `text`, which came from `path`.
fn loaded_from_text(text: &str, path: PathBuf) -> Result<LoadedConfig> {
    let config = ServerConfig::parse(text, &path)?;
    Ok(LoadedConfig {
        key_report: describe_keys(text, &config),
        config,
        path,
        generated: false,
        database_url_from_environment: false,
    })
}

/// Loads `explicit`, or the default config, which must exist: for tools
/// that act on a server set up already and must never make a new one.
///
/// Without `explicit`, a config in `ATTIC_SERVER_CONFIG_BASE64` comes
/// before the default file, as in Attic.
pub fn load_existing_config(explicit: Option<&Path>) -> Result<LoadedConfig> {
    if let Some(loaded) = load_from_environment(explicit)? {
        return Ok(loaded);
    }
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => default_config_path()?,
    };
    if !path.exists() {
        anyhow::bail!(
            "there is no server configuration at {} (looked there {}). Run this as the user \
             atticd runs as, or pass --config; atticd writes the configuration on its first start",
            path.display(),
            if explicit.is_some() {
                "as --config says"
            } else {
                "by default: $XDG_CONFIG_HOME/attic/server.toml, or ~/.config/attic/server.toml"
            }
        );
    }
    let text = ServerConfig::read_text(&path)?;
    loaded_from_text(&text, path)
}

/// How [`open_database`] treats a database that is missing or behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenDatabase {
    /// Create a missing SQLite database and apply pending migrations.
    CreateAndMigrate,
    /// The database must exist with its schema up to date: for replicas
    /// (migrations are one `--mode db-migrations` run's job) and tools.
    Existing,
}

/// Opens the database as `how` says.
pub async fn open_database(
    config: &ServerConfig,
    data_dir: &Path,
    how: OpenDatabase,
) -> Result<Database> {
    let create = how == OpenDatabase::CreateAndMigrate;
    if config.database.url.is_none() {
        let path = data_dir.join("server.db");
        if create {
            create_private_dir(data_dir)
                .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
            // The database holds every cache's signing key: create it
            // readable by this user alone, before SQLite creates it under
            // the umask.
            create_private_file(&path)
                .with_context(|| format!("creating the database {}", path.display()))?;
        } else if !path.exists() {
            anyhow::bail!(
                "there is no database at {}. Pass the --data-dir atticd uses, or run this as \
                 the user atticd runs as",
                path.display()
            );
        }
    }
    let url = config.database_url(data_dir);
    let database = Database::connect(&url, &config.database, create)
        .await
        .map_err(|e| without_secrets(&url, e.into()))
        .with_context(|| format!("connecting to the database {}", redact_url(&url)))?;
    if create {
        database
            .migrate()
            .await
            .context("applying database migrations")?;
    } else {
        let pending = database
            .pending_migrations()
            .await
            .context("reading the database's schema version")?;
        if !pending.is_empty() {
            anyhow::bail!(
                "the database schema is not up to date ({} migrations pending, from {}): run \
                 `atticd --mode db-migrations` (or start atticd in monolithic mode) first",
                pending.len(),
                pending[0]
            );
        }
    }
    Ok(database)
}

/// Creates a directory (and its parents) that only this user may enter;
/// an existing directory is left as its owner set it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates an empty file only this user may read, unless it exists.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens blob storage as configured.
pub async fn open_storage(
    config: &ServerConfig,
    data_dir: &Path,
) -> Result<Arc<dyn StorageBackend>> {
    match &config.storage {
        StorageConfig::Local { .. } => {
            let storage_path = config
                .local_storage_path(data_dir)
                .expect("local storage has a path");
            let storage = LocalStorage::open(&storage_path)
                .await
                .with_context(|| format!("opening local storage at {}", storage_path.display()))?;
            Ok(Arc::new(storage))
        }
        StorageConfig::S3(s3) => Ok(Arc::new(S3Storage::open(s3).await)),
    }
}

/// For `--check-config`: connects to the database and storage the config
/// names, and says which is unreachable. A SQLite database that does not
/// exist yet is fine if the first start will create it. The database's
/// URL is shown, and put in errors, without its password.
pub async fn check_services(config: &ServerConfig, data_dir: &Path) -> Result<Vec<String>> {
    let mut found = config.token_keys()?.describe();
    let url = config.database_url(data_dir);
    let shown = redact_url(&url);
    match SqliteFile::of_url(&url).filter(|file| !file.path.exists()) {
        Some(file) if file.may_create => {
            // The default database's directory is the data directory, which
            // the first start creates; SQLite creates a file, never its
            // directory.
            let directory = file
                .path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty());
            if config.database.url.is_some()
                && let Some(directory) = directory
                && !directory.is_dir()
            {
                anyhow::bail!(
                    "the database {} cannot be created: its directory {} does not exist",
                    file.path.display(),
                    directory.display()
                );
            }
            found.push(format!(
                "database: {} will be created by the first start (it does not exist yet)",
                file.path.display()
            ));
        }
        Some(file) => anyhow::bail!(
            "the database {} does not exist, and the URL ({shown}) asks for an existing file: \
             `mode=rwc` lets the first start create it",
            file.path.display()
        ),
        None => {
            let database = Database::connect(&url, &config.database, false)
                .await
                .map_err(|e| without_secrets(&url, e.into()))
                .with_context(|| format!("the database {shown} is unreachable"))?;
            database
                .ping()
                .await
                .map_err(|e| without_secrets(&url, e.into()))
                .with_context(|| format!("the database {shown} does not answer"))?;
            let pending = database
                .pending_migrations()
                .await
                .map_err(|e| without_secrets(&url, e.into()))
                .with_context(|| format!("reading the schema version of {shown}"))?;
            found.push(if pending.is_empty() {
                format!("database: {shown} answers; its schema is up to date")
            } else {
                format!(
                    "database: {shown} answers; {} migrations pending (monolithic mode or --mode db-migrations applies them)",
                    pending.len()
                )
            });
        }
    }
    let what = match &config.storage {
        StorageConfig::Local { .. } => format!(
            "local storage {}",
            config
                .local_storage_path(data_dir)
                .expect("local storage has a path")
                .display()
        ),
        StorageConfig::S3(s3) => format!(
            "S3 bucket {:?}{}",
            s3.bucket,
            s3.endpoint
                .as_ref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        ),
    };
    if let StorageConfig::Local { .. } = &config.storage {
        let path = config
            .local_storage_path(data_dir)
            .expect("local storage has a path");
        if !path.exists() {
            found.push(format!(
                "storage: {what} does not exist yet; the first start creates it"
            ));
            return Ok(found);
        }
    }
    let storage = open_storage(config, data_dir)
        .await
        .with_context(|| format!("{what} is unusable"))?;
    // A key nobody writes: "not found" proves the store answers.
    let probe = crate::storage::StorageKey::new("attic-check-config").expect("a valid key");
    match storage.get(&probe, 0..1).await {
        Ok(_) | Err(crate::storage::StorageError::NotFound(_)) => {
            found.push(format!("storage: {what} answers"));
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{what} is unreachable"))),
    }
    Ok(found)
}

/// `error` as it is, unless its messages quote a secret of `url` (a
/// driver's error may quote the URL it was given): then one error with
/// those messages, the secrets replaced by `***`.
pub fn without_secrets(url: &str, error: anyhow::Error) -> anyhow::Error {
    let rendered = format!("{error:#}");
    let redacted = redact_secrets_of(url, &rendered);
    if redacted == rendered {
        error
    } else {
        anyhow::anyhow!(redacted)
    }
}

/// Builds the shared state: database (opened as `how` says), storage, keys.
pub async fn build_state(
    config: ServerConfig,
    data_dir: &Path,
    how: OpenDatabase,
) -> Result<Arc<AppState>> {
    let mut database = open_database(&config, data_dir, how).await?;
    let metrics = Metrics::default();
    database.instrument(metrics.database.clone());
    let storage = Arc::new(MeteredStorage::new(
        open_storage(&config, data_dir).await?,
        metrics.storage.clone(),
    ));
    let tokens = crate::access::TokenVerifier::new(config.token_keys()?);
    let chunker = FastCdcChunker::new(config.chunking.params())?;
    let oidc = crate::oidc::OidcExchanger::new(&config)?;
    let pull_through = crate::pull_through::PullThrough::new(&config.pull_through)?;
    let state = Arc::new(AppState {
        config,
        database,
        storage,
        tokens,
        chunker,
        access_log: AccessLog::default(),
        metrics,
        read_cache: ReadCache::default(),
        cache_stats: crate::cache_stats::CacheStatsMemo::default(),
        oidc,
        pull_through,
    });
    spawn_access_log_flusher(state.clone(), crate::state::ACCESS_LOG_FLUSH_INTERVAL);
    if state.config.database.heartbeat {
        spawn_database_heartbeat(state.clone());
    }
    Ok(state)
}

/// How often `[database] heartbeat` pings the database (Attic's minute).
const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// `[database] heartbeat`: pings the database every minute for as long as
/// the server runs; a failed ping is logged, and the next one tries again.
fn spawn_database_heartbeat(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = state.database.ping().await {
                tracing::warn!(error = %error, "database heartbeat failed");
            }
        }
    });
}

/// A token with every permission on every cache, for the first start.
pub fn root_token(config: &ServerConfig) -> Result<String> {
    let keys = config.token_keys()?;
    let root = keys.biscuit_root_key()?;
    let spec = TokenSpec {
        subject: "root".into(),
        expires_at: None,
        grants: Permission::ALL
            .iter()
            .map(|p| (CacheNamePattern::any(), *p))
            .collect(),
    };
    Ok(spec.sign(root)?.to_base64()?)
}

/// `--mode garbage-collector`: collects now and then every interval until
/// SIGINT or SIGTERM (a minute after a run that was skipped or failed);
/// once if the interval is zero, failing if that run did.
pub async fn collect_garbage_until_stopped(state: Arc<AppState>) -> Result<()> {
    let interval = state.config.garbage_collection.interval;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let result = tokio::select! {
            result = crate::gc::collect(&state) => result,
            () = &mut stop => return Ok(()),
        };
        if interval.is_zero() {
            return result
                .map(|_| ())
                .context("the garbage collection did not complete");
        }
        let wait = crate::gc::next_run_after(&result, interval);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut stop => return Ok(()),
        }
    }
}

/// Serves `/_health` and `/metrics` alone on `listener`, in the
/// background, for a process that serves no API (the collector).
pub fn serve_probes(state: Arc<AppState>, listener: tokio::net::TcpListener) {
    let app = crate::api::probe_router(state.clone());
    tokio::spawn(crate::serve::serve_connections(
        listener,
        app,
        state,
        None,
        std::future::pending(),
    ));
}

/// Serves until SIGINT or SIGTERM, then flushes pending access times.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<()> {
    let app = crate::api::router(state.clone());
    crate::serve::serve_connections(listener, app, state.clone(), tls, shutdown_signal()).await;
    state.access_log.flush(&state.database).await;
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Binds the listen address.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address}"))
}
