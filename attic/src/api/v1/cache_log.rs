//! `GET /_api/v1/cache-log/{cache}?since=&after=&limit=`: a cache's audit
//! log, oldest first, one page at a time; and how an entry is printed for
//! people, shared by `attic cache log` and `atticadm audit`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Most entries one page holds, and what a request without `limit` gets.
pub const MAX_PAGE: u64 = 1000;

/// The query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLogQuery {
    /// Only events at or after this time, in Unix seconds.
    pub since: Option<i64>,
    /// Only events after this one (the `next_after` of the previous page).
    pub after: Option<i64>,
    /// At most this many events (capped at [`MAX_PAGE`]).
    pub limit: Option<u64>,
}

/// One page of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLogPage {
    /// Events, oldest first.
    pub events: Vec<AuditEntry>,
    /// Set when the page is full: pass it as `after` for the next page.
    pub next_after: Option<i64>,
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log: later events have larger ids.
    pub id: i64,
    /// When, in Unix seconds.
    pub at: i64,
    /// When, as RFC 3339 (UTC).
    pub time: String,
    /// What happened: `push`, `import`, `create-cache`, `configure-cache`,
    /// `destroy-cache`, `issue-token`, `revoke-token`, `revoke-subject`, `delete-path`,
    /// `pin`, `unpin`, `rotate-key`.
    pub action: String,
    /// Who acted: `token` (a request bearing a token) or `atticadm` (the
    /// operator on the server's own machine).
    pub actor: String,
    /// The token's subject (`sub`), when the actor is a token that has one.
    pub subject: Option<String>,
    /// The cache changed, if any.
    pub cache: Option<String>,
    /// The store path changed, if any.
    pub store_path: Option<String>,
    /// What else there is to say (settings changed, the token revoked).
    pub detail: Option<String>,
}

/// The heading of the table [`AuditEntry::table_row`] writes lines of.
pub const TABLE_HEADING: &str =
    "TIME                  ACTION           WHO                  CACHE            PATH / DETAIL";

impl AuditEntry {
    /// The entry as one line of a table for people. Everything a client
    /// could have chosen is escaped ([`printable`]), so no recorded value
    /// can break the line, move the cursor or forge another entry.
    pub fn table_row(&self) -> String {
        let who = match (self.actor.as_str(), &self.subject) {
            ("token", Some(subject)) => printable(subject),
            ("token", None) => "(token without subject)".to_owned(),
            (actor, Some(subject)) => format!("{} {}", printable(actor), printable(subject)),
            (actor, None) => format!("({})", printable(actor)),
        };
        let what = [self.store_path.as_deref(), self.detail.as_deref()]
            .into_iter()
            .flatten()
            .map(printable)
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{:<21} {:<16} {:<20} {:<16} {}",
            printable(&self.time),
            printable(&self.action),
            who,
            printable(self.cache.as_deref().unwrap_or("-")),
            what
        )
        .trim_end()
        .to_owned()
    }
}

/// `text` with every control character (line breaks, escape sequences,
/// C1 controls) and every backslash written as a Rust-style escape
/// (`\n`, `\u{1b}`, `\\`), so printing it can neither start a new line nor
/// drive a terminal, and an escape in the output always came from here.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A `--since` as people write it, in Unix seconds: a duration back from
/// `now` (`2h`, `7d`, `1month`) or a time in RFC 3339 (`2026-12-01T00:00:00Z`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, String> {
    let when = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!("{text:?} is neither a duration (`2h`, `7d`) nor an RFC 3339 time (`2026-12-01T00:00:00Z`)")
        })?,
    };
    Ok(when
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
}

/// Unix seconds as RFC 3339 (UTC), as [`AuditEntry::time`] shows them.
pub fn format_time(unix_seconds: i64) -> String {
    let time =
        UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = UNIX_EPOCH + std::time::Duration::from_secs(10_000);
        assert_eq!(parse_since("1h", now), Ok(10_000 - 3600));
        assert_eq!(parse_since("1970-01-01T00:01:40Z", now), Ok(100));
        assert_eq!(parse_since("1d", now), Ok(0));
        assert!(parse_since("yesterday-ish", now).is_err());
        assert_eq!(format_time(100), "1970-01-01T00:01:40Z");
    }

    use super::*;

    fn entry(store_path: &str, subject: &str) -> AuditEntry {
        AuditEntry {
            id: 1,
            at: 0,
            time: "1970-01-01T00:00:00Z".to_owned(),
            action: "push".to_owned(),
            actor: "token".to_owned(),
            subject: Some(subject.to_owned()),
            cache: Some("team-a".to_owned()),
            store_path: Some(store_path.to_owned()),
            detail: None,
        }
    }

    #[test]
    fn control_characters_cannot_break_a_table_line() {
        let row = entry("/nix/store/x\nforged line", "ci\u{1b}[2J\r\u{85}").table_row();
        assert_eq!(row.lines().count(), 1, "{row}");
        assert!(!row.chars().any(char::is_control), "{row:?}");
        assert!(row.contains("ci\\u{1b}[2J\\r\\u{85}"), "{row}");
        assert!(row.contains("/nix/store/x\\nforged line"), "{row}");
    }

    #[test]
    fn a_backslash_is_escaped_so_escapes_cannot_be_forged() {
        assert_eq!(printable("a\\nb"), "a\\\\nb");
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable("plain text, ünïcode"), "plain text, ünïcode");
    }

    #[test]
    fn an_entry_round_trips_through_json_on_one_line() {
        let entry = entry("/nix/store/x\nforged", "ci");
        let line = serde_json::to_string(&entry).expect("serialise");
        assert_eq!(line.lines().count(), 1);
        let back: AuditEntry = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, entry);
    }
}
