//! `[database]`: which database holds the metadata (SQLite or PostgreSQL,
//! told apart by the URL's scheme) and the connection pool's limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

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

    use super::DatabaseKind;
    use crate::config::test_support::{key_line, parse};

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
