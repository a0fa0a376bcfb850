//! Durations as humane text (`30s`, `2m`, `6 months`) in the config file:
//! the `#[serde(with = "duration")]` of every duration key.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*value))
}

/// Whole days as days (`90d`): humantime counts a month as 30.44 days, so
/// it would write 90 days as `2months 29days 2h 52m 48s`.
fn format(value: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    let secs = value.as_secs();
    if secs >= DAY && secs.is_multiple_of(DAY) && value.subsec_nanos() == 0 {
        format!("{}d", secs / DAY)
    } else {
        humantime::format_duration(value).to_string()
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\": {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_days_are_written_as_days_and_read_back() {
        let ninety_days = Duration::from_secs(90 * 24 * 3600);
        assert_eq!(format(ninety_days), "90d");
        assert_eq!(humantime::parse_duration("90d").ok(), Some(ninety_days));
        assert_eq!(format(Duration::from_secs(12 * 3600)), "12h");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
