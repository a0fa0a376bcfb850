//! Telling the user, once per command, that the token in use expires soon
//! or has expired, before a request fails with a bare 401.
//!
//! The expiry is read from the token itself without verifying it (the
//! client holds no root key), so it serves this notice and nothing else:
//! the server alone decides what a token allows.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Warn when the token expires within this long.
pub const WARN_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// What to tell the user about a token's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryNotice {
    /// It expired this long ago.
    Expired {
        /// How long ago.
        ago: Duration,
        /// It came from `attic login --oidc`, which gets a fresh one.
        exchanged: bool,
    },
    /// It expires in this long, within [`WARN_WITHIN`].
    ExpiresSoon(Duration),
}

impl ExpiryNotice {
    /// What `token` calls for at `now`; `None` for a token without an
    /// expiry, one far from it, or one that cannot be read. A token
    /// exchanged for a CI job's ID token (subject `oidc:...`) is meant to
    /// be short-lived: only its expiry is worth saying.
    pub fn of(token: &str, now: SystemTime) -> Option<Self> {
        let claims = attic_token::read_unverified(token)?;
        let exchanged = claims
            .subject
            .as_deref()
            .is_some_and(|s| s.starts_with("oidc:"));
        match claims.expires_at?.duration_since(now) {
            Ok(left) if left <= WARN_WITHIN && !exchanged => Some(Self::ExpiresSoon(left)),
            Ok(_) => None,
            Err(past) => Some(Self::Expired {
                ago: past.duration(),
                exchanged,
            }),
        }
    }

    /// The message for the server logged in to as `server` at `endpoint`.
    pub fn message(&self, server: &str, endpoint: &str) -> String {
        let login = format!("attic login {server} {endpoint} NEW_TOKEN");
        match self {
            Self::Expired {
                ago,
                exchanged: true,
            } => format!(
                "error: the token for server {server:?} has expired ({} ago): the server will \
                 refuse it; exchange a new ID token with `attic login {server} {endpoint} --oidc`",
                approximately(*ago)
            ),
            Self::Expired {
                ago,
                exchanged: false,
            } => format!(
                "error: the token for server {server:?} has expired ({} ago): the server will \
                 refuse it; get a new token and run `{login}`",
                approximately(*ago)
            ),
            Self::ExpiresSoon(left) => format!(
                "warning: the token for server {server:?} expires in {}: get a new token \
                 before then and run `{login}`",
                approximately(*left)
            ),
        }
    }
}

/// Prints the notice the token of `server` calls for on stderr, at most
/// once per server in this process (a command may open several clients).
pub fn warn_once(server: &str, endpoint: &str, token: Option<&str>) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let Some(token) = token else { return };
    let Some(notice) = ExpiryNotice::of(token, SystemTime::now()) else {
        return;
    };
    let key = format!("{server}\n{endpoint}");
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.insert(key) {
        eprintln!("{}", notice.message(server, endpoint));
    }
}

/// A duration as people say it, to the nearest unit: `2 days`, `1 hour`,
/// `15 minutes`, `less than a minute`.
pub fn approximately(d: Duration) -> String {
    let seconds = d.as_secs();
    let (n, unit) = if seconds >= 24 * 3600 {
        ((seconds + 12 * 3600) / (24 * 3600), "day")
    } else if seconds >= 3600 {
        ((seconds + 1800) / 3600, "hour")
    } else if seconds >= 60 {
        ((seconds + 30) / 60, "minute")
    } else {
        return "less than a minute".to_owned();
    };
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    crate::report::count(n, unit, &format!("{unit}s"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use attic_token::{CacheNamePattern, Permission, RootKey, TokenSpec};

    fn token_expiring_at(at: SystemTime) -> String {
        token_of("ci", at)
    }

    fn token_of(subject: &str, at: SystemTime) -> String {
        TokenSpec {
            subject: subject.to_owned(),
            expires_at: Some(at),
            grants: vec![(
                "*".parse::<CacheNamePattern>().expect("pattern"),
                Permission::Pull,
            )],
        }
        .sign(&RootKey::generate())
        .expect("sign")
        .to_base64()
        .expect("base64")
    }

    #[test]
    fn warns_within_a_week_and_says_when_expired() {
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let soon = token_expiring_at(now + 2 * day);
        let notice = ExpiryNotice::of(&soon, now).expect("a notice");
        assert!(matches!(notice, ExpiryNotice::ExpiresSoon(_)), "{notice:?}");
        let message = notice.message("local", "http://h/");
        assert!(
            message.starts_with("warning: the token for server \"local\" expires in 2 days"),
            "{message}"
        );
        assert!(
            message.contains("attic login local http://h/ NEW_TOKEN"),
            "{message}"
        );

        let expired = token_expiring_at(now - 3 * day);
        let message = ExpiryNotice::of(&expired, now)
            .expect("a notice")
            .message("local", "http://h/");
        assert!(message.contains("has expired (3 days ago)"), "{message}");

        assert_eq!(
            ExpiryNotice::of(&token_expiring_at(now + 30 * day), now),
            None
        );
        // A CI job's exchanged token is short-lived by design.
        let exchanged = token_of("oidc:token.actions.githubusercontent.com:repo", now + day);
        assert_eq!(ExpiryNotice::of(&exchanged, now), None);
        let exchanged = token_of("oidc:issuer:job", now - day);
        let message = ExpiryNotice::of(&exchanged, now)
            .expect("a notice")
            .message("ci", "http://h/");
        assert!(message.contains("--oidc"), "{message}");
        assert_eq!(ExpiryNotice::of("not a token", now), None);
    }

    #[test]
    fn durations_are_rounded_and_pluralised() {
        let hour = Duration::from_secs(3600);
        assert_eq!(approximately(Duration::from_secs(20)), "less than a minute");
        assert_eq!(approximately(Duration::from_secs(60)), "1 minute");
        assert_eq!(approximately(Duration::from_secs(150)), "3 minutes");
        assert_eq!(approximately(hour), "1 hour");
        assert_eq!(
            approximately(47 * hour + Duration::from_secs(3599)),
            "2 days"
        );
        assert_eq!(approximately(24 * hour), "1 day");
    }
}
