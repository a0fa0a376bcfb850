//! `server.toml`: parsed strictly, validated before anything is opened.
//!
//! Every key is optional but `token-root-key`; the defaults are the embedded
//! set-up (SQLite and local blobs under the data directory). An unknown key
//! or a bad value is an error that names the key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use attic::chunking::ChunkingParams;
use attic_token::RootKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
}

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
    /// Host names the server answers to; empty allows any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The key that signs tokens: `ed25519-private/<hex>`.
    pub token_root_key: String,
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
}

/// `[tls]`: the certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[garbage-collection]`, with Attic's keys (`interval`,
/// `default-retention-period`) and ours. Durations are written as `12
/// hours`, `6 months`, `30s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GcConfig {
    /// How often `monolithic` and `garbage-collector` mode collect; `0s`
    /// never (run `atticadm gc` instead).
    #[serde(default = "default_gc_interval", with = "duration")]
    pub interval: Duration,
    /// How long a path nobody reads is kept, for caches without their own
    /// retention period; `0s` keeps paths for ever.
    #[serde(default = "default_retention_period", with = "duration")]
    pub default_retention_period: Duration,
    /// How old leftovers must be before they are reclaimed: blobs no row
    /// knows of and temporary files (uploads in flight write them),
    /// `nix copy` uploads no narinfo claimed, and packs marked for
    /// deletion (reads in flight finish first).
    #[serde(default = "default_grace_period", with = "duration")]
    pub grace_period: Duration,
    /// A pack whose live chunks hold less than this fraction of its bytes
    /// is compacted; `0` never compacts.
    #[serde(default = "default_compact_below")]
    pub compact_below: f64,
    /// zstd level chunks are recompressed at when compacted (1 to 19).
    #[serde(default = "default_compaction_level")]
    pub compaction_level: i32,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval: default_gc_interval(),
            default_retention_period: default_retention_period(),
            grace_period: default_grace_period(),
            compact_below: default_compact_below(),
            compaction_level: default_compaction_level(),
        }
    }
}

fn default_gc_interval() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_retention_period() -> Duration {
    // Six months of 30.44 days, as humantime counts them.
    Duration::from_secs(6 * 2_630_016)
}
fn default_grace_period() -> Duration {
    Duration::from_secs(3600)
}
fn default_compact_below() -> f64 {
    0.5
}
fn default_compaction_level() -> i32 {
    15
}

/// `[http]`: timeouts and the connection caps. Durations are written as
/// `30s`, `2m`, `1h`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// Time a client has to send a request's headers; also the longest a
    /// kept-alive connection may sit idle between requests.
    #[serde(default = "default_header_timeout", with = "duration")]
    pub header_timeout: Duration,
    /// Longest a request body (an upload) may go without a byte arriving.
    #[serde(default = "default_body_timeout", with = "duration")]
    pub body_timeout: Duration,
    /// Connections served at once; more are closed as they arrive (but
    /// for the `probe-connections` past it).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may hold open at once (IPv6
    /// addresses count by their /64); more are closed as they arrive.
    /// Trusted proxies are exempt: through them the limit applies to
    /// requests in flight per forwarded address instead.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Connections accepted past `max-connections` that answer only
    /// `/_health` and `/metrics` (one request each, then closed), so probes
    /// still get through when every other slot is taken.
    #[serde(default = "default_probe_connections")]
    pub probe_connections: usize,
    /// When three quarters of `max-connections` are open, a connection
    /// whose last request began this long ago is closed (after the
    /// response in flight, if any) instead of waiting out
    /// `header-timeout`.
    #[serde(default = "default_idle_timeout_under_pressure", with = "duration")]
    pub idle_timeout_under_pressure: Duration,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is
    /// believed. Their connections are exempt from
    /// `max-connections-per-address`; the forwarded client address is
    /// limited per request instead. Empty: no header is believed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<AddressRange>,
    /// How long shutdown waits for requests in flight before closing them.
    #[serde(default = "default_shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            probe_connections: default_probe_connections(),
            idle_timeout_under_pressure: default_idle_timeout_under_pressure(),
            trusted_proxies: Vec::new(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

impl HttpConfig {
    /// Whether `address` is one of `trusted-proxies`.
    pub fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|r| r.contains(address))
    }
}

/// An address or a CIDR range (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`), as
/// written in `trusted-proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressRange {
    network: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Whether `address` is in the range. An IPv4-mapped IPv6 address
    /// counts as the IPv4 address it maps.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for AddressRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.as_str(), None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let network = network.to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={bits}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl From<AddressRange> for String {
    fn from(range: AddressRange) -> Self {
        format!("{}/{}", range.network, range.prefix)
    }
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_address() -> usize {
    // Nix opens up to 25 (`http-connections`) per process, and a CI host
    // runs several, or several hosts share one NAT address; benchmarks
    // from one address use 64. Eight such addresses fill the default cap.
    128
}
fn default_probe_connections() -> usize {
    16
}
fn default_idle_timeout_under_pressure() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Durations as humane text (`30s`, `2m`) in the config file.
/// Replaces `${VAR}` and `${VAR:-default}` in the strings of `value`
/// (whose dotted key is `key`) with what `lookup` gives.
fn expand_variables(
    value: &mut toml::Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) => *text = expand_string(text, key, lookup)?,
        toml::Value::Array(items) => {
            for item in items {
                expand_variables(item, key, lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                expand_variables(item, &format!("{key}.{name}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_string(
    text: &str,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(inner) = after.strip_prefix("${") {
            let end = inner
                .find('}')
                .ok_or_else(|| ConfigError::UnclosedVariable {
                    key: key.to_owned(),
                })?;
            let (name, default) = match inner[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&inner[..end], None),
            };
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(ConfigError::UnsetVariable {
                        key: key.to_owned(),
                        variable: name.to_owned(),
                    });
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\": {e}"))
        })
    }
}

/// `[database]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DatabaseConfig {
    /// `sqlite://PATH?mode=rwc` or `postgres://USER:PASSWORD@HOST/DB`.
    /// Defaults to SQLite in `server.db` of the data directory.
    #[serde(default)]
    pub url: Option<String>,
    /// Connections each atticd process keeps open at most. Replicas
    /// times this must stay under PostgreSQL's `max_connections`.
    #[serde(default = "default_database_connections")]
    pub max_connections: u32,
    /// How long a request waits for a free connection (or for a new one
    /// to open) before it fails with 503.
    #[serde(default = "default_acquire_timeout", with = "duration")]
    pub acquire_timeout: Duration,
    /// How long an idle connection is kept before it is closed.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_database_connections(),
            acquire_timeout: default_acquire_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_database_connections() -> u32 {
    8
}

fn default_acquire_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

/// The database systems this build speaks, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `sqlite:`: one file, one machine.
    Sqlite,
    /// `postgres://` or `postgresql://`: what replicas share.
    Postgres,
}

impl DatabaseKind {
    /// The kind a URL names, if this build speaks it.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "type")]
pub enum StorageConfig {
    /// Files on local disk.
    #[serde(rename = "local")]
    Local {
        /// The directory; defaults to `storage` in the data directory.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// An S3-compatible bucket.
    #[serde(rename = "s3")]
    S3(S3StorageConfig),
}

/// `[storage] type = "s3"`: Attic's keys (`region`, `bucket`, `endpoint`,
/// `[storage.credentials]`), in its snake_case spelling too, so an Attic
/// config carries over.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3StorageConfig {
    /// The region, e.g. `us-east-1`; S3-compatible servers mostly ignore it.
    pub region: String,
    /// The bucket, which must exist.
    pub bucket: String,
    /// The server's URL for S3-compatible services (MinIO, Garage, R2,
    /// Ceph); unset means AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A key prefix, so that one bucket can hold several servers' blobs.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`) rather than a host name per
    /// bucket; defaults to true when `endpoint` is set.
    #[serde(default, alias = "force_path_style")]
    pub force_path_style: Option<bool>,
    /// When requests carry checksums and responses are checked; defaults
    /// to `when-required` for a custom endpoint (many S3-compatible servers
    /// reject the SDK's default checksums), `when-supported` for AWS.
    #[serde(default)]
    pub checksums: Option<S3Checksums>,
    /// Attempts per request (the first plus retries, with exponential
    /// backoff and jitter) on throttling, 5xx and connection errors.
    #[serde(default = "default_s3_max_attempts", alias = "max_attempts")]
    pub max_attempts: u32,
    /// How long connecting to the S3 server may take, per attempt.
    #[serde(
        default = "default_s3_connect_timeout",
        with = "duration",
        alias = "connect_timeout"
    )]
    pub connect_timeout: Duration,
    /// How long a request may take from the start of sending to the head
    /// of the answer (an upload part gets this per 8 MiB of its size), and
    /// a download may wait for each next piece; past it the request fails
    /// (and is retried, but for a download already under way), so a server
    /// that stops answering cannot hang uploads and NAR responses.
    #[serde(
        default = "default_s3_read_timeout",
        with = "duration",
        alias = "read_timeout"
    )]
    pub read_timeout: Duration,
    /// Answer requests for a `.nar.zst` that is one whole pack with a
    /// redirect to a presigned URL, so its bytes skip the server.
    #[serde(default, alias = "redirect_reads")]
    pub redirect_reads: bool,
    /// How long a presigned URL of a redirect stays valid.
    #[serde(
        default = "default_redirect_expiry",
        with = "duration",
        alias = "redirect_expiry"
    )]
    pub redirect_expiry: Duration,
    /// Static credentials; without them the standard AWS chain (the
    /// `AWS_*` environment variables, `~/.aws` profiles, instance roles).
    #[serde(default)]
    pub credentials: Option<S3Credentials>,
}

/// `[storage.credentials]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Credentials {
    /// The access key id.
    #[serde(alias = "access_key_id")]
    pub access_key_id: String,
    /// The secret access key. Secret.
    #[serde(alias = "secret_access_key")]
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// `[storage] checksums`: when the S3 client adds and checks checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3Checksums {
    /// Only where an operation requires one.
    WhenRequired,
    /// On every request and response that can carry one (AWS's default).
    WhenSupported,
}

impl S3StorageConfig {
    /// `force-path-style`, defaulted.
    pub fn path_style(&self) -> bool {
        self.force_path_style.unwrap_or(self.endpoint.is_some())
    }

    /// `checksums`, defaulted.
    pub fn checksum_mode(&self) -> S3Checksums {
        self.checksums.unwrap_or(if self.endpoint.is_some() {
            S3Checksums::WhenRequired
        } else {
            S3Checksums::WhenSupported
        })
    }

    /// The key prefix without surrounding slashes; empty for none.
    pub fn key_prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("").trim_matches('/')
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        if self.bucket.is_empty() {
            return Err(invalid("storage.bucket", "must not be empty"));
        }
        if self.region.is_empty() {
            return Err(invalid("storage.region", "must not be empty"));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "storage.endpoint",
                &format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        let prefix = self.key_prefix();
        if !prefix.is_empty() && crate::storage::StorageKey::new(prefix).is_err() {
            return Err(invalid(
                "storage.prefix",
                "must be `/`-separated segments of a-z, 0-9, `.`, `_` and `-`",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("storage.max-attempts", "must be at least 1"));
        }
        for (key, value) in [
            ("storage.connect-timeout", self.connect_timeout),
            ("storage.read-timeout", self.read_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        // SigV4 presigned URLs live at most a week.
        if self.redirect_expiry < Duration::from_secs(1)
            || self.redirect_expiry > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(invalid(
                "storage.redirect-expiry",
                "must be between 1s and 7 days",
            ));
        }
        Ok(())
    }
}

fn default_s3_max_attempts() -> u32 {
    5
}
fn default_s3_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_s3_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_redirect_expiry() -> Duration {
    Duration::from_secs(5 * 60)
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self::Local { path: None }
    }
}

/// `[chunking]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChunkingConfig {
    /// NARs up to this size are stored as one chunk.
    #[serde(default = "default_nar_size_threshold")]
    pub nar_size_threshold: u64,
    /// FastCDC minimum chunk size.
    #[serde(default = "default_min_size")]
    pub min_size: u32,
    /// FastCDC average chunk size.
    #[serde(default = "default_avg_size")]
    pub avg_size: u32,
    /// FastCDC maximum chunk size.
    #[serde(default = "default_max_size")]
    pub max_size: u32,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            nar_size_threshold: default_nar_size_threshold(),
            min_size: default_min_size(),
            avg_size: default_avg_size(),
            max_size: default_max_size(),
        }
    }
}

impl ChunkingConfig {
    /// The FastCDC sizes.
    pub fn params(&self) -> ChunkingParams {
        ChunkingParams {
            min_size: self.min_size,
            avg_size: self.avg_size,
            max_size: self.max_size,
        }
    }
}

/// `[compression]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CompressionConfig {
    /// `zstd` or `none`.
    #[serde(default, rename = "type")]
    pub kind: CompressionKind,
    /// zstd level, 1 to 19.
    #[serde(default = "default_zstd_level")]
    pub level: i32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            kind: CompressionKind::default(),
            level: default_zstd_level(),
        }
    }
}

/// How chunks are compressed at rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionKind {
    /// One zstd frame per chunk, so a NAR is served as its frames concatenated.
    #[default]
    Zstd,
    /// Stored as is.
    None,
}

impl CompressionKind {
    /// The name in the database and in narinfo `Compression:`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionKind::Zstd => "zstd",
            CompressionKind::None => "none",
        }
    }
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
fn default_nar_size_threshold() -> u64 {
    64 * 1024
}
fn default_min_size() -> u32 {
    ChunkingParams::default().min_size
}
fn default_avg_size() -> u32 {
    ChunkingParams::default().avg_size
}
fn default_max_size() -> u32 {
    ChunkingParams::default().max_size
}
fn default_zstd_level() -> i32 {
    3
}

impl ServerConfig {
    /// Parses TOML text; `path` is only for messages.
    /// `${VAR}` and `${VAR:-default}` in any string value are replaced
    /// from the environment (`$${` is a literal `${`), so secrets can live
    /// there rather than in the file.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        for (key, value) in table.iter_mut() {
            expand_variables(value, key, &|name| std::env::var(name).ok())?;
        }
        let config = Self::deserialize(table).map_err(|e| parse_error(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// A fresh embedded-default configuration with a new token key.
    pub fn generate() -> Self {
        Self {
            listen: default_listen(),
            metrics_listen: None,
            metrics_token: None,
            api_endpoint: None,
            allowed_hosts: Vec::new(),
            token_root_key: RootKey::generate().to_config_string(),
            max_nar_size: default_max_nar_size(),
            max_log_size: default_max_log_size(),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            chunking: ChunkingConfig::default(),
            compression: CompressionConfig::default(),
            http: HttpConfig::default(),
            garbage_collection: GcConfig::default(),
            tls: None,
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
        RootKey::parse(&self.token_root_key).map_err(|e| ConfigError::Invalid {
            key: "token-root-key",
            reason: e.to_string(),
        })?;
        self.chunking
            .params()
            .validate()
            .map_err(|e| ConfigError::Invalid {
                key: "chunking",
                reason: e.to_string(),
            })?;
        if self.chunking.nar_size_threshold > u64::from(self.chunking.max_size) {
            return Err(ConfigError::Invalid {
                key: "chunking.nar-size-threshold",
                reason: "must not exceed chunking.max-size".into(),
            });
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max-connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.http.max_connections_per_address == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max-connections-per-address",
                reason: "must be at least 1".into(),
            });
        }
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
        for (key, value) in [
            ("http.header-timeout", self.http.header_timeout),
            ("http.body-timeout", self.http.body_timeout),
            (
                "http.idle-timeout-under-pressure",
                self.http.idle_timeout_under_pressure,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        if !(1..=19).contains(&self.compression.level) {
            return Err(ConfigError::Invalid {
                key: "compression.level",
                reason: format!("{} is outside 1..=19", self.compression.level),
            });
        }
        if let Some(url) = &self.database.url
            && DatabaseKind::of_url(url).is_none()
        {
            return Err(ConfigError::Invalid {
                key: "database.url",
                // The scheme only: the rest may hold a password.
                reason: format!(
                    "{:?} is not a database this build speaks: use `sqlite://PATH?mode=rwc` or \
                     `postgres://USER:PASSWORD@HOST/DATABASE`",
                    url.split("://").next().unwrap_or("")
                ),
            });
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "database.max-connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.database.acquire_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "database.acquire-timeout",
                reason: "must be longer than zero".into(),
            });
        }
        let gc = &self.garbage_collection;
        if !(1..=19).contains(&gc.compaction_level) {
            return Err(ConfigError::Invalid {
                key: "garbage-collection.compaction-level",
                reason: format!("{} is outside 1..=19", gc.compaction_level),
            });
        }
        if !(0.0..=1.0).contains(&gc.compact_below) {
            return Err(ConfigError::Invalid {
                key: "garbage-collection.compact-below",
                reason: format!("{} is outside 0..=1", gc.compact_below),
            });
        }
        if let Some(endpoint) = &self.api_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "api-endpoint",
                reason: format!("{endpoint:?} is not an http:// or https:// URL"),
            });
        }
        if let StorageConfig::S3(s3) = &self.storage {
            s3.validate()?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(text, Path::new("server.toml"))
    }

    fn key_line() -> String {
        format!(
            "token-root-key = {:?}\n",
            RootKey::generate().to_config_string()
        )
    }

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
        assert_eq!(config.compression.level, 3);
        // What a `nix copy` NAR may decode to: 32 GiB, not 64.
        assert_eq!(config.max_nar_size, 32 << 30);
        assert!(
            config
                .database_url(Path::new("/d"))
                .starts_with("sqlite:///d/server.db")
        );
    }

    #[test]
    fn postgres_urls_and_pool_settings_are_accepted() {
        let config = parse(&format!(
            "{}[database]\nurl = \"postgresql://u:secret@db/attic\"\nmax-connections = 32\n\
             acquire-timeout = \"5s\"\n",
            key_line()
        ))
        .expect("postgres parses");
        assert_eq!(config.database.max_connections, 32);
        assert_eq!(config.database.acquire_timeout, Duration::from_secs(5));
        assert_eq!(
            DatabaseKind::of_url(&config.database_url(Path::new("/d"))),
            Some(DatabaseKind::Postgres)
        );
    }

    #[test]
    fn a_database_this_build_cannot_open_is_refused() {
        let err = parse(&format!(
            "{}[database]\nurl = \"mysql://u:secret@db/attic\"\n",
            key_line()
        ))
        .expect_err("mysql");
        assert!(err.to_string().contains("database.url"), "{err}");
        assert!(
            !err.to_string().contains("secret"),
            "the password leaked: {err}"
        );
    }

    #[test]
    fn variables_expand_from_the_environment() {
        let env = |name: &str| match name {
            "SECRET" => Some("s3cr3t".to_owned()),
            _ => None,
        };
        let expand = |text: &str| expand_string(text, "storage.key", &env);
        assert_eq!(expand("${SECRET}").expect("set"), "s3cr3t");
        assert_eq!(expand("a-${SECRET}-b").expect("set"), "a-s3cr3t-b");
        assert_eq!(expand("${MISSING:-fallback}").expect("default"), "fallback");
        assert_eq!(expand("${SECRET:-fallback}").expect("set wins"), "s3cr3t");
        assert_eq!(
            expand("$${SECRET} costs $5").expect("literal"),
            "${SECRET} costs $5"
        );
        let err = expand("${MISSING}").expect_err("unset");
        assert!(err.to_string().contains("MISSING"), "{err}");
        assert!(err.to_string().contains("storage.key"), "{err}");
        assert!(expand("${SECRET").is_err());
    }

    #[test]
    fn attic_style_gc_durations_parse() {
        let config = parse(&format!(
            "{}[garbage-collection]\ninterval = \"12 hours\"\ndefault-retention-period = \"6 months\"\n",
            key_line()
        ))
        .expect("parses");
        assert_eq!(
            config.garbage_collection.interval,
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            config.garbage_collection.default_retention_period,
            GcConfig::default().default_retention_period
        );
        let err = parse(&format!(
            "{}[garbage-collection]\ncompaction-level = 30\n",
            key_line()
        ))
        .expect_err("level out of range");
        assert!(err.to_string().contains("compaction-level"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(&format!("{}listn = \"x\"\n", key_line())).expect_err("unknown key");
        assert!(err.to_string().contains("listn"), "{err}");
        let err = parse(&format!("{}[chunking]\nmin = 1\n", key_line())).expect_err("unknown key");
        assert!(err.to_string().contains("min"), "{err}");
    }

    #[test]
    fn an_attic_s3_config_carries_over() {
        let text = format!(
            "{}[storage]\ntype = \"s3\"\nregion = \"us-east-1\"\nbucket = \"cache\"\n\
             endpoint = \"http://127.0.0.1:9000\"\n\
             [storage.credentials]\naccess_key_id = \"AK\"\nsecret_access_key = \"SK\"\n",
            key_line()
        );
        let config = parse(&text).expect("parses");
        let StorageConfig::S3(s3) = &config.storage else {
            panic!("not s3: {:?}", config.storage);
        };
        assert_eq!(s3.bucket, "cache");
        assert!(s3.path_style(), "a custom endpoint defaults to path style");
        assert_eq!(s3.checksum_mode(), S3Checksums::WhenRequired);
        let credentials = s3.credentials.as_ref().expect("credentials");
        assert_eq!(credentials.secret_access_key, "SK");
        assert!(!format!("{s3:?}").contains("SK"), "Debug hides the secret");
        assert_eq!(config.local_storage_path(Path::new("/d")), None);
        assert_eq!(config.read_redirect_expiry(), None);

        // Our own spelling, and the AWS defaults without an endpoint.
        let text = format!(
            "{}[storage]\ntype = \"s3\"\nregion = \"eu-west-1\"\nbucket = \"b\"\n\
             prefix = \"/atticd/\"\nredirect-reads = true\nredirect-expiry = \"2m\"\n",
            key_line()
        );
        let config = parse(&text).expect("parses");
        let StorageConfig::S3(s3) = &config.storage else {
            panic!("not s3");
        };
        assert!(!s3.path_style());
        assert_eq!(s3.checksum_mode(), S3Checksums::WhenSupported);
        assert_eq!(s3.key_prefix(), "atticd");
        assert_eq!(
            config.read_redirect_expiry(),
            Some(Duration::from_secs(120))
        );
        let again = parse(&format!(
            "{}{}",
            key_line(),
            toml::to_string(&ServerConfig {
                token_root_key: String::new(),
                ..config.clone()
            })
            .expect("serialises")
            .replace("token-root-key = \"\"\n", "")
        ))
        .expect("round trips");
        assert!(matches!(again.storage, StorageConfig::S3(_)));
    }

    #[test]
    fn unknown_storage_keys_are_named() {
        let s3 = "[storage]\ntype = \"s3\"\nregion = \"r\"\nbucket = \"b\"\n";
        for (text, key) in [
            (format!("{s3}buckt = \"x\"\n"), "buckt"),
            (
                format!(
                    "{s3}[storage.credentials]\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\nsession = \"t\"\n"
                ),
                "session",
            ),
            // S3-only keys are unknown to local storage.
            (
                "[storage]\ntype = \"local\"\nredirect-reads = true\n".to_owned(),
                "redirect-reads",
            ),
        ] {
            let err = parse(&format!("{}{text}", key_line())).expect_err(&text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("[compression]\nlevel = 30\n", "compression.level"),
            ("[chunking]\nmin-size = 3\n", "chunking"),
            ("api-endpoint = \"ftp://x\"\n", "api-endpoint"),
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

    #[test]
    fn trusted_proxies_take_addresses_and_cidr_ranges() {
        let config = parse(&format!(
            "{}[http]\ntrusted-proxies = [\"10.1.0.0/16\", \"192.0.2.7\", \"fd00::/8\"]\n",
            key_line()
        ))
        .expect("parses");
        let http = &config.http;
        for trusted in ["10.1.200.3", "192.0.2.7", "fd12::1", "::ffff:10.1.0.1"] {
            assert!(
                http.is_trusted_proxy(trusted.parse().expect("ip")),
                "{trusted}"
            );
        }
        for untrusted in ["10.2.0.1", "192.0.2.8", "fe80::1", "127.0.0.1"] {
            assert!(
                !http.is_trusted_proxy(untrusted.parse().expect("ip")),
                "{untrusted}"
            );
        }
        assert!(!HttpConfig::default().is_trusted_proxy("127.0.0.1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nowhere", "::/129", "10.0.0.0/x"] {
            let err = parse(&format!(
                "{}[http]\ntrusted-proxies = [\"{bad}\"]\n",
                key_line()
            ))
            .expect_err(bad);
            assert!(err.to_string().contains("trusted-proxies"), "{bad}: {err}");
        }
    }

    #[test]
    fn connection_limits_that_cannot_work_are_refused() {
        for (text, key) in [
            (
                "[http]\nmax-connections-per-address = 0\n",
                "http.max-connections-per-address",
            ),
            (
                "[http]\nidle-timeout-under-pressure = \"0s\"\n",
                "http.idle-timeout-under-pressure",
            ),
            ("metrics-token = \"short\"\n", "metrics-token"),
        ] {
            let err = parse(&format!("{}{text}", key_line())).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }
}
