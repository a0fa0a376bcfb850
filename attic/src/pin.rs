//! Pin names: the name under which a cache keeps a store path (and its
//! closure) from garbage collection, as in `attic pin add CACHE NAME PATH`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Longest pin name accepted.
pub const MAX_PIN_NAME_LEN: usize = 100;

/// Why a string is not a pin name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "{0:?} is not a valid pin name: use 1 to 100 characters from [A-Za-z0-9._-], \
     starting with a letter or digit"
)]
pub struct BadPinName(String);

/// The name of a pin, unique within its cache.
///
/// It appears in URLs (`/_api/v1/pins/{cache}/{name}`) and in listings, so
/// it holds no separator, no space and no control character, and it starts
/// with a letter or digit so it is never `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PinName(String);

impl PinName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PinName {
    type Err = BadPinName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= MAX_PIN_NAME_LEN
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadPinName(s.to_owned()))
        }
    }
}

impl fmt::Display for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinName({})", self.0)
    }
}

impl Serialize for PinName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PinName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_release_like_names() {
        for name in ["release", "v1.2.3", "prod_2026-12", "0", &"x".repeat(100)] {
            let parsed = name.parse::<PinName>().expect(name);
            assert_eq!(parsed.as_str(), name);
        }
    }

    #[test]
    fn rejects_names_that_could_escape_or_confuse() {
        for name in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "a\nb",
            "a\u{7f}",
            "caf\u{e9}",
            "a:b",
            &"x".repeat(101),
        ] {
            assert!(name.parse::<PinName>().is_err(), "{name:?}");
        }
    }
}
