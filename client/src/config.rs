//! `$XDG_CONFIG_HOME/attic/config.toml`: the servers the user logged in to.
//!
//! ```toml
//! default-server = "main"
//!
//! [servers.main]
//! endpoint = "https://cache.example.com/"
//! token = "..."
//! used-caches = ["team-a", "team-b"]
//!
//! [servers.ci]
//! endpoint = "https://cache.example.com/"
//! token-file = "/run/secrets/attic-token"
//! ```
//!
//! This is Attic's client config as it is: an Attic user's file works
//! unchanged (`token-file` included), and ours adds `used-caches`.
//! It holds tokens, so it is written with mode 0600, atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use attic::cache::CacheName;
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    /// The server a bare cache name refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_server: Option<String>,
    /// Servers by the name given at `attic login`.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerEntry>,
}

/// One server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerEntry {
    /// Base URL, ending in `/`.
    pub endpoint: String,
    /// Bearer token, if any. With `token-file`, the file's content, read
    /// when the config is loaded and never written back into the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the token (Attic's `token-file`, for a secret a
    /// deployment mounts); surrounding whitespace is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Why `token-file` could not be read, reported when the server is used
    /// rather than when any command loads the config.
    #[serde(skip)]
    pub token_file_error: Option<String>,
    /// Caches `attic use` made substituters of. Nix sends one netrc password
    /// per host, so the netrc entry `attic use` writes must cover all of
    /// them; it is regenerated from this list each time.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub used_caches: BTreeSet<CacheName>,
}

/// `$XDG_CONFIG_HOME`, or `~/.config`.
pub fn config_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config"))
}

/// Where the config lives.
pub fn config_path() -> Result<PathBuf> {
    Ok(config_home()?.join("attic/config.toml"))
}

impl ClientConfig {
    /// Loads the config; a missing file is an empty config.
    pub fn load() -> Result<Self> {
        Self::load_from(&config_path()?)
    }

    /// Loads a config file; a missing file is an empty config.
    pub fn load_from(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut config: Self = toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?;
                config.read_token_files(path)?;
                Ok(config)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Puts each `token-file`'s token in its server's `token`. A file that
    /// cannot be read leaves the server without a token and the reason in
    /// `token_file_error`, so one missing secret does not stop commands on
    /// other servers.
    fn read_token_files(&mut self, path: &Path) -> Result<()> {
        for (name, server) in &mut self.servers {
            let Some(file) = &server.token_file else {
                continue;
            };
            if server.token.is_some() {
                bail!(
                    "invalid config file {}: server {name:?} has both `token` and `token-file`; keep one",
                    path.display()
                );
            }
            match std::fs::read_to_string(file) {
                Ok(token) => server.token = Some(token.trim().to_owned()),
                Err(e) => {
                    server.token_file_error = Some(format!(
                        "the token file {} of server {name:?} cannot be read: {e}",
                        file.display()
                    ))
                }
            }
        }
        Ok(())
    }

    /// Saves the config, readable by its owner only.
    pub fn save(&self) -> Result<()> {
        self.save_to(&config_path()?)
    }

    /// Saves to a given file: temporary file, fsync, rename.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("config path has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let temp = path.with_extension("toml.tmp");
        // A token read from `token-file` stays in its file.
        let mut stored = self.clone();
        for server in stored.servers.values_mut() {
            if server.token_file.is_some() {
                server.token = None;
            }
        }
        let text = toml::to_string_pretty(&stored).context("serialising the config")?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, path)
        };
        write().with_context(|| format!("writing {}", path.display()))
    }

    /// Adds or replaces a server. A server logged in to again at the same
    /// endpoint keeps its list of used caches.
    pub fn login(
        &mut self,
        name: &str,
        endpoint: &str,
        token: Option<String>,
        set_default: bool,
    ) -> Result<()> {
        if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
            bail!("{name:?} is not a server name: use letters, digits, `-` or `_`");
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("{endpoint:?} is not an http:// or https:// URL");
        }
        let mut endpoint = endpoint.to_owned();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        let used_caches = self
            .servers
            .get(name)
            .filter(|old| old.endpoint == endpoint)
            .map(|old| old.used_caches.clone())
            .unwrap_or_default();
        self.servers.insert(
            name.to_owned(),
            ServerEntry {
                endpoint,
                token,
                // A token given at login replaces the file's.
                token_file: None,
                token_file_error: None,
                used_caches,
            },
        );
        if set_default || self.default_server.is_none() {
            self.default_server = Some(name.to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_login_becomes_the_default_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("attic/config.toml");
        let mut config = ClientConfig::load_from(&path).expect("missing file is empty");
        config
            .login("main", "http://localhost:8080", Some("t".into()), false)
            .expect("login");
        config
            .login("other", "https://x.example/", None, false)
            .expect("login");
        assert_eq!(config.default_server.as_deref(), Some("main"));
        config
            .login("other", "https://x.example/", None, true)
            .expect("login");
        assert_eq!(config.default_server.as_deref(), Some("other"));
        config.save_to(&path).expect("save");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = ClientConfig::load_from(&path).expect("load");
        assert_eq!(again, config);
        assert_eq!(again.servers["main"].endpoint, "http://localhost:8080/");
    }

    #[test]
    fn logging_in_again_keeps_the_used_caches_of_the_same_endpoint() {
        let mut config = ClientConfig::default();
        config
            .login("main", "http://a/", Some("t1".into()), false)
            .expect("login");
        let demo: CacheName = "demo".parse().expect("name");
        config
            .servers
            .get_mut("main")
            .expect("server")
            .used_caches
            .insert(demo.clone());
        config
            .login("main", "http://a", Some("t2".into()), false)
            .expect("login");
        assert!(config.servers["main"].used_caches.contains(&demo));
        config
            .login("main", "http://b/", Some("t3".into()), false)
            .expect("login");
        assert!(config.servers["main"].used_caches.is_empty());
    }

    #[test]
    fn reads_an_attic_config_with_a_token_file_and_keeps_the_file_on_save() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("token");
        std::fs::write(&secret, "secret-token\n").expect("write token");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                "default-server = \"ci\"\n[servers.ci]\nendpoint = \"https://c.example/\"\ntoken-file = {:?}\n\
                 [servers.missing]\nendpoint = \"https://m.example/\"\ntoken-file = \"/nonexistent/token\"\n",
                secret.display().to_string()
            ),
        )
        .expect("write config");
        let config = ClientConfig::load_from(&path).expect("Attic's layout loads");
        assert_eq!(config.servers["ci"].token.as_deref(), Some("secret-token"));
        let missing = &config.servers["missing"];
        assert_eq!(missing.token, None);
        assert!(
            missing
                .token_file_error
                .as_deref()
                .is_some_and(|e| e.contains("/nonexistent/token")),
            "{missing:?}"
        );
        config.save_to(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read back");
        assert!(!text.contains("secret-token"), "{text}");
        assert!(text.contains("token-file"), "{text}");
    }

    #[test]
    fn refuses_both_a_token_and_a_token_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[servers.a]\nendpoint = \"http://a/\"\ntoken = \"t\"\ntoken-file = \"/f\"\n",
        )
        .expect("write");
        let err = ClientConfig::load_from(&path).expect_err("both");
        assert!(err.to_string().contains("token-file"), "{err}");
    }

    #[test]
    fn rejects_bad_names_and_urls() {
        let mut config = ClientConfig::default();
        assert!(config.login("a:b", "http://x/", None, false).is_err());
        assert!(config.login("a", "ftp://x/", None, false).is_err());
    }
}
