//! `[chunking]`: how NARs are cut into chunks (FastCDC sizes, and the size
//! under which a NAR stays whole, with Attic's meaning).

use attic::chunking::ChunkingParams;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[chunking]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChunkingConfig {
    /// Attic's meaning: a NAR smaller than this is stored as one chunk
    /// (`1` chunks every NAR); `0` turns chunking off, and every NAR is
    /// stored as fixed pieces of `max-size`. At most `max-size`, since
    /// telling whether a NAR is that small means reading that much of it.
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
                reason: format!(
                    "{} exceeds chunking.max-size ({}): whether a NAR is under the threshold \
                     is known only after reading that much of it, which is held in memory",
                    self.nar_size_threshold, self.max_size
                ),
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

#[cfg(test)]
mod tests {
    use crate::config::test_support::{key_line, parse};

    #[test]
    fn attic_threshold_values_zero_and_one_are_accepted() {
        for threshold in [0, 1, 65536, 262144] {
            let config = parse(&format!(
                "{}[chunking]\nnar-size-threshold = {threshold}\n",
                key_line()
            ))
            .expect("parses");
            assert_eq!(config.chunking.nar_size_threshold, threshold);
        }
    }

    #[test]
    fn a_threshold_past_max_size_is_refused_naming_the_key() {
        let err = parse(&format!(
            "{}[chunking]\nnar-size-threshold = 262145\n",
            key_line()
        ))
        .expect_err("past max-size");
        assert!(
            err.to_string().contains("chunking.nar-size-threshold"),
            "{err}"
        );
    }
}
