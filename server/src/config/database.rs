//! `[database]`: which database holds the metadata (SQLite or PostgreSQL,
//! told apart by the URL's scheme) and the connection pool's limits.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[database]`. Its `Debug` shows the URL without its password.
#[derive(Clone, Serialize, Deserialize)]
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
    /// Attic's key: send `SELECT 1` every minute, so that a connection a
    /// firewall or proxy would drop for idleness is kept in use.
    #[serde(default)]
    pub heartbeat: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_database_connections(),
            acquire_timeout: default_acquire_timeout(),
            idle_timeout: default_idle_timeout(),
            heartbeat: false,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat", &self.heartbeat)
            .finish()
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

/// A database URL as messages and logs show it: the password of its
/// user-info (`postgres://USER:PASSWORD@HOST`) and the value of any query
/// parameter named like a password (`?password=`, `?sslpassword=`)
/// replaced by `***`. Everything else stays, so an operator can tell which
/// database is meant.
pub fn redact_url(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (url, None),
    };
    let mut shown = match before_query.split_once("://") {
        // The last `@`: an unescaped `@` in a password must not leave the
        // rest of the password showing.
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
                None => before_query.to_owned(),
            },
            None => before_query.to_owned(),
        },
        None => before_query.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().ends_with("password") => {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// `text` (an error's message, say) with every secret `url` holds replaced
/// by `***`, whether it appears as written or percent-decoded: for messages
/// built by code that may quote the URL (a driver's errors), which we do
/// not control.
pub fn redact_secrets_of(url: &str, text: &str) -> String {
    let mut secrets = Vec::new();
    let before_query = url.split('?').next().unwrap_or_default();
    if let Some((_, rest)) = before_query.split_once("://")
        && let Some((credentials, _)) = rest.rsplit_once('@')
        && let Some((_, password)) = credentials.split_once(':')
    {
        secrets.push(password.to_owned());
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && name.to_ascii_lowercase().ends_with("password")
            {
                secrets.push(value.to_owned());
            }
        }
    }
    let mut redacted = text.to_owned();
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        let decoded = percent_decode(&secret);
        // Only the secret is replaced: the URL around it, as `redact_url`
        // shows it, stays readable.
        for form in [secret, decoded] {
            if !form.is_empty() {
                redacted = redacted.replace(&form, "***");
            }
        }
    }
    redacted
}

/// `%XX` escapes decoded; anything malformed is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The file a `sqlite:` URL names, and whether atticd may create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteFile {
    /// The database file, as the URL gives it (relative to the working
    /// directory if it is not absolute).
    pub path: PathBuf,
    /// Whether a missing file is created by the first start (monolithic
    /// mode or `--mode db-migrations`): unless the URL's `mode` is `ro` or
    /// `rw`, which ask for an existing file.
    pub may_create: bool,
}

impl SqliteFile {
    /// The file `url` names, if it is a SQLite URL of a file (not
    /// `:memory:` or `mode=memory`).
    pub fn of_url(url: &str) -> Option<Self> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mode = query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("mode="))
            .next_back();
        if path.is_empty() || path == ":memory:" || mode == Some("memory") {
            return None;
        }
        Some(Self {
            path: PathBuf::from(path),
            may_create: !matches!(mode, Some("ro" | "rw")),
        })
    }
}

impl DatabaseConfig {
    /// Checks the URL's scheme and the pool's limits.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url
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
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "database.max-connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.acquire_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "database.acquire-timeout",
                reason: "must be longer than zero".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::{DatabaseKind, SqliteFile, redact_secrets_of, redact_url};
    use crate::config::test_support::{key_line, parse};

    #[test]
    fn urls_are_shown_without_their_passwords() {
        for (url, shown) in [
            (
                "postgres://attic:s3cret@db:5432/attic",
                "postgres://attic:***@db:5432/attic",
            ),
            // An unescaped `@` in the password hides all of it.
            (
                "postgresql://attic:p@ss@db/attic?sslmode=require",
                "postgresql://attic:***@db/attic?sslmode=require",
            ),
            (
                "postgres://db/attic?user=attic&password=s3cret",
                "postgres://db/attic?user=attic&password=***",
            ),
            ("postgres://attic@db/attic", "postgres://attic@db/attic"),
            (
                "sqlite:///var/lib/atticd/server.db?mode=rwc",
                "sqlite:///var/lib/atticd/server.db?mode=rwc",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn a_drivers_message_quoting_the_password_is_redacted() {
        let url = "postgres://attic:p%40ss%2Fword@db/attic?sslpassword=k3y";
        let message =
            "connecting with password p@ss/word (escaped p%40ss%2Fword) and key k3y failed";
        let redacted = redact_secrets_of(url, message);
        assert_eq!(
            redacted,
            "connecting with password *** (escaped ***) and key *** failed"
        );
    }

    #[test]
    fn debug_output_of_the_config_hides_the_password() {
        let config = parse(&format!(
            "{}[database]\nurl = \"postgres://u:hunter2@db/attic\"\n",
            key_line()
        ))
        .expect("parses");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("postgres://u:***@db/attic"), "{debug}");
    }

    #[test]
    fn sqlite_urls_name_their_file_and_whether_it_may_be_created() {
        let file = |url| SqliteFile::of_url(url);
        assert_eq!(
            file("sqlite:///var/lib/a/server.db?mode=rwc"),
            Some(SqliteFile {
                path: "/var/lib/a/server.db".into(),
                may_create: true
            })
        );
        assert_eq!(
            file("sqlite:server.db").map(|f| f.path),
            Some("server.db".into())
        );
        assert!(file("sqlite:///a.db").is_some_and(|f| f.may_create));
        assert!(file("sqlite:///a.db?mode=rw").is_some_and(|f| !f.may_create));
        assert!(file("sqlite:///a.db?mode=ro").is_some_and(|f| !f.may_create));
        assert_eq!(file("sqlite::memory:"), None);
        assert_eq!(file("postgres://u@db/attic"), None);
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
}
