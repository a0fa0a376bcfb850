//! `[compression]`: how chunks are compressed at rest.

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

impl CompressionConfig {
    /// Checks the zstd level.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=19).contains(&self.level) {
            return Err(ConfigError::Invalid {
                key: "compression.level",
                reason: format!("{} is outside 1..=19", self.level),
            });
        }
        Ok(())
    }
}

fn default_zstd_level() -> i32 {
    3
}
