//! `[garbage-collection]`: how often storage is reclaimed, how long unread
//! paths and leftovers are kept, and when packs are compacted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

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
    /// retention period; `0s`, the default (as in Attic), keeps paths for
    /// ever.
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
    /// A pack an upload wrote (its chunks at the fast ingest level) older
    /// than this is rewritten at `compaction_level` by the next
    /// collection, whatever its live fraction; `0s` never does.
    #[serde(default = "default_recompress_after", with = "duration")]
    pub recompress_after: Duration,
    /// How long audit log events are kept; each collection deletes older
    /// ones. `0s` keeps them for ever.
    #[serde(default = "default_audit_retention_period", with = "duration")]
    pub audit_retention_period: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval: default_gc_interval(),
            default_retention_period: default_retention_period(),
            grace_period: default_grace_period(),
            compact_below: default_compact_below(),
            compaction_level: default_compaction_level(),
            recompress_after: default_recompress_after(),
            audit_retention_period: default_audit_retention_period(),
        }
    }
}

fn default_gc_interval() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_retention_period() -> Duration {
    // Attic's: paths are kept until a cache's own retention says otherwise.
    Duration::ZERO
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
fn default_recompress_after() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_audit_retention_period() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

impl GcConfig {
    /// Checks the compaction settings, which parse but may not work.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=19).contains(&self.compaction_level) {
            return Err(ConfigError::Invalid {
                key: "garbage-collection.compaction-level",
                reason: format!("{} is outside 1..=19", self.compaction_level),
            });
        }
        if !(0.0..=1.0).contains(&self.compact_below) {
            return Err(ConfigError::Invalid {
                key: "garbage-collection.compact-below",
                reason: format!("{} is outside 0..=1", self.compact_below),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::GcConfig;
    use crate::config::test_support::{key_line, parse};

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
            Duration::from_secs(6 * 2_630_016),
            "six months of 30.44 days, as humantime counts them"
        );
        let err = parse(&format!(
            "{}[garbage-collection]\ncompaction-level = 30\n",
            key_line()
        ))
        .expect_err("level out of range");
        assert!(err.to_string().contains("compaction-level"), "{err}");
    }

    #[test]
    fn cold_packs_are_recompressed_after_a_week_unless_told_otherwise() {
        let config = parse(&key_line()).expect("parses");
        assert_eq!(
            config.garbage_collection.recompress_after,
            Duration::from_secs(7 * 24 * 3600)
        );
        let config = parse(&format!(
            "{}[garbage-collection]\nrecompress-after = \"0s\"\n",
            key_line()
        ))
        .expect("parses");
        assert!(config.garbage_collection.recompress_after.is_zero());
    }

    #[test]
    fn an_absent_retention_period_keeps_paths_for_ever() {
        let config = parse(&key_line()).expect("parses");
        assert_eq!(
            config.garbage_collection.default_retention_period,
            Duration::ZERO
        );
        assert_eq!(GcConfig::default().default_retention_period, Duration::ZERO);
    }
}
