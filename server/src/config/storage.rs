//! `[storage]`: where blobs live, local disk or an S3-compatible bucket,
//! and the S3 client's settings, which accept an Attic config's spelling.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

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
        if !prefix.is_empty() && !crate::key_path::is_key_path(prefix) {
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

impl StorageConfig {
    /// Checks the S3 settings; local storage has none that can be wrong.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let StorageConfig::S3(s3) = self {
            s3.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::{S3Checksums, StorageConfig};
    use crate::config::ServerConfig;
    use crate::config::test_support::{key_line, parse};

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
                token_root_key: None,
                ..config.clone()
            })
            .expect("serialises")
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
}
