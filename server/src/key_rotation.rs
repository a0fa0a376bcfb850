//! Rotating a cache's signing key without an outage: a new key becomes the
//! cache's key and the one it replaces keeps signing beside it until an
//! overlap ends, so Nix clients trusting either key keep substituting while
//! they move to the new one. Everything that changes a cache's key on
//! purpose goes through [`rotate_signing_key`], the one place to audit.

use std::time::Duration;

use attic::cache::CacheName;
use attic::signing::SigningKey;

use crate::config::ServerConfig;
use crate::database::{Cache, now};
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// How often a rotation that lost a race to another key change on the same
/// cache looks again before giving up.
const ATTEMPTS: usize = 3;

/// Replaces the key of cache `name` with a freshly generated one; the old
/// key signs too until `overlap` has passed (`Duration::ZERO` drops it at
/// once). A rotation during an overlap makes the current key the previous
/// one and forgets the one before it. Returns the cache as it now is.
pub async fn rotate_signing_key(
    state: &AppState,
    name: &CacheName,
    overlap: Duration,
) -> ServerResult<Cache> {
    for _ in 0..ATTEMPTS {
        let cache = state
            .database
            .find_cache(name)
            .await?
            .ok_or_else(|| ServerError::NoSuchCache(name.to_string()))?;
        let new_key = generate_key(&state.config, name, next_key_generation(&cache.signing_key))?;
        let signs_until = overlap_end(now(), overlap);
        let replaced = state
            .database
            .replace_signing_key(&cache, &new_key, signs_until)
            .await?;
        if replaced {
            state.read_cache.forget_cache(&cache.name, cache.id);
            tracing::info!(
                cache = %cache.name,
                new_key = %new_key.public_key(),
                previous_key = %cache.signing_key.public_key(),
                previous_signs_until = ?signs_until,
                "rotated the cache's signing key"
            );
            return state
                .database
                .find_cache(name)
                .await?
                .ok_or_else(|| ServerError::NoSuchCache(name.to_string()));
        }
    }
    Err(ServerError::KeyChangedMeanwhile)
}

/// When a previous key rotated out at `now` stops signing: `None` for no
/// overlap at all.
fn overlap_end(now: i64, overlap: Duration) -> Option<i64> {
    if overlap.is_zero() {
        return None;
    }
    // Part of a second counts as a whole one: an overlap asked for is
    // never cut short.
    let seconds = overlap
        .as_secs()
        .saturating_add(u64::from(overlap.subsec_nanos() > 0));
    Some(now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX)))
}

/// A new key for cache `cache`, named
/// `[<api-endpoint host>-]<cache>-<generation>`. The host comes from the
/// configured endpoint only, never from a request header; the generation
/// counts rotations, so Nix, which keeps one trusted key per name, can
/// trust an old and a new key side by side.
pub fn generate_key(
    config: &ServerConfig,
    cache: &CacheName,
    generation: u32,
) -> ServerResult<SigningKey> {
    let host: Option<String> = config.api_endpoint.as_ref().map(|endpoint| {
        endpoint
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    });
    let name = match host {
        Some(host) => format!("{host}-{cache}-{generation}"),
        None => format!("{cache}-{generation}"),
    };
    SigningKey::generate(&name).map_err(ServerError::KeyGeneration)
}

/// The generation of the key that replaces `current`: one more than the
/// number its name ends with (`…-1` → 2), or 2 for a name without one.
pub fn next_key_generation(current: &SigningKey) -> u32 {
    current
        .name()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .map_or(2, |n| n.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlap_ends_whole_seconds_after_the_rotation_and_zero_has_none() {
        assert_eq!(overlap_end(1000, Duration::ZERO), None);
        assert_eq!(
            overlap_end(1000, Duration::from_secs(7 * 86400)),
            Some(1000 + 7 * 86400)
        );
        assert_eq!(overlap_end(1000, Duration::from_millis(1500)), Some(1002));
        assert_eq!(overlap_end(1000, Duration::MAX), Some(i64::MAX));
    }

    #[test]
    fn generations_count_up_from_the_current_key_name() {
        let key = |name: &str| SigningKey::generate(name).expect("randomness");
        assert_eq!(next_key_generation(&key("demo-1")), 2);
        assert_eq!(next_key_generation(&key("host-demo-41")), 42);
        assert_eq!(next_key_generation(&key("imported")), 2);
    }
}
