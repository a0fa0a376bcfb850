//! `[compression]`: how new chunks are compressed at rest (Attic's types
//! and levels), and the level build logs are compressed at.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[compression]`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CompressionConfig {
    /// `zstd`, `xz`, `brotli` or `none`.
    #[serde(default, rename = "type")]
    pub kind: CompressionKind,
    /// The level for `kind`; absent, [`CompressionKind::default_level`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
}

/// How new chunks are compressed at rest. Every chunk is compressed on
/// its own, so a chunk shared by many NARs is decoded alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionKind {
    /// One zstd frame per chunk, so a NAR of zstd chunks is served as
    /// its frames concatenated, with no recompression.
    #[default]
    Zstd,
    /// One xz stream per chunk: smaller, slower. NARs holding such chunks
    /// are served decompressed (`.nar`).
    Xz,
    /// One brotli stream per chunk; served decompressed, as `xz`.
    Brotli,
    /// Stored as is.
    None,
}

impl CompressionKind {
    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionKind::Zstd => "zstd",
            CompressionKind::Xz => "xz",
            CompressionKind::Brotli => "brotli",
            CompressionKind::None => "none",
        }
    }

    /// The level used when `level` is absent. Attic's for xz (2) and
    /// brotli (5); for zstd our 3 rather than Attic's 8, which costs about
    /// three times the CPU per uploaded byte for a few percent: chunks are
    /// compressed on the upload path, and compaction recompresses cold
    /// packs at `garbage-collection.compaction-level` later.
    pub fn default_level(self) -> i32 {
        match self {
            CompressionKind::Zstd => 3,
            CompressionKind::Xz => 2,
            CompressionKind::Brotli => 5,
            CompressionKind::None => 0,
        }
    }

    /// The levels this kind takes.
    fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            CompressionKind::Zstd => 1..=19,
            CompressionKind::Xz => 0..=9,
            CompressionKind::Brotli => 0..=11,
            CompressionKind::None => 0..=0,
        }
    }
}

impl CompressionConfig {
    /// The level new chunks are compressed at.
    pub fn level(&self) -> i32 {
        self.level.unwrap_or(self.kind.default_level())
    }

    /// The zstd level for what is always zstd (build logs): `level` when
    /// the type is zstd, else zstd's default.
    pub fn zstd_level(&self) -> i32 {
        match self.kind {
            CompressionKind::Zstd => self.level(),
            _ => CompressionKind::Zstd.default_level(),
        }
    }

    /// Checks the level against the type's range; `none` takes any level
    /// (Attic ignores it there).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.kind == CompressionKind::None {
            return Ok(());
        }
        let levels = self.kind.levels();
        if !levels.contains(&self.level()) {
            return Err(ConfigError::Invalid {
                key: "compression.level",
                reason: format!(
                    "{} is outside {}..={} for {}",
                    self.level(),
                    levels.start(),
                    levels.end(),
                    self.kind.as_str()
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::CompressionKind;
    use crate::config::test_support::{key_line, parse};

    #[test]
    fn every_attic_compression_type_parses_with_its_default_level() {
        for (kind, name, level) in [
            (CompressionKind::Zstd, "zstd", 3),
            (CompressionKind::Xz, "xz", 2),
            (CompressionKind::Brotli, "brotli", 5),
            (CompressionKind::None, "none", 0),
        ] {
            let config =
                parse(&format!("{}[compression]\ntype = \"{name}\"\n", key_line())).expect(name);
            assert_eq!(config.compression.kind, kind);
            assert_eq!(config.compression.level(), level, "{name}");
        }
    }

    #[test]
    fn an_explicit_level_is_honoured_within_the_types_range() {
        let config = parse(&format!(
            "{}[compression]\ntype = \"xz\"\nlevel = 9\n",
            key_line()
        ))
        .expect("xz 9");
        assert_eq!(config.compression.level(), 9);
        // Logs stay zstd, at zstd's default level.
        assert_eq!(config.compression.zstd_level(), 3);
        let config = parse(&format!("{}[compression]\nlevel = 8\n", key_line())).expect("zstd 8");
        assert_eq!(config.compression.zstd_level(), 8);
        for (text, bad) in [
            ("type = \"xz\"\nlevel = 10\n", "10"),
            ("type = \"brotli\"\nlevel = 12\n", "12"),
            ("type = \"zstd\"\nlevel = 0\n", "0"),
            ("type = \"lz4\"\n", "lz4"),
        ] {
            let err = parse(&format!("{}[compression]\n{text}", key_line())).expect_err(text);
            assert!(err.to_string().contains(bad), "{text}: {err}");
        }
        let config = parse(&format!(
            "{}[compression]\ntype = \"none\"\nlevel = 5\n",
            key_line()
        ))
        .expect("none ignores the level");
        assert_eq!(config.compression.kind, CompressionKind::None);
    }
}
