//! `[chunking]`: how NARs are cut into chunks (FastCDC sizes, and the size
//! under which a NAR stays whole).

use attic::chunking::ChunkingParams;
use serde::{Deserialize, Serialize};

use super::ConfigError;

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

    /// Checks the FastCDC sizes against each other.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.params().validate().map_err(|e| ConfigError::Invalid {
            key: "chunking",
            reason: e.to_string(),
        })?;
        if self.nar_size_threshold > u64::from(self.max_size) {
            return Err(ConfigError::Invalid {
                key: "chunking.nar-size-threshold",
                reason: "must not exceed chunking.max-size".into(),
            });
        }
        Ok(())
    }
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
