//! Paths no upstream gave, remembered briefly: a client asking again (Nix
//! asks for each path of a closure, and many clients ask for the same
//! ones) gets its 404 without the server asking every upstream again.
//! Bounded in entries, and each held at most `negative-ttl`.

use std::time::Duration;

use attic::store_path::StorePathHash;

use crate::database::CacheId;
use crate::recent::Recent;

/// Misses held, at most (about 100 bytes each).
const MISSES_HELD: usize = 64 * 1024;

/// Recent misses, by cache and path.
#[derive(Debug)]
pub struct NegativeCache {
    misses: Recent<(CacheId, StorePathHash), ()>,
}

impl NegativeCache {
    /// Holds each miss for `ttl` (`0s`: none at all).
    pub fn new(ttl: Duration) -> Self {
        Self {
            misses: Recent::new(MISSES_HELD, ttl),
        }
    }

    /// Whether `hash` was a miss in `cache` within the TTL.
    pub fn is_miss(&self, cache: CacheId, hash: &StorePathHash) -> bool {
        self.misses.get(&(cache, hash.clone())).is_some()
    }

    /// Remembers a miss.
    pub fn record(&self, cache: CacheId, hash: &StorePathHash) {
        self.misses.insert((cache, hash.clone()), ());
    }

    /// Forgets a cache's misses, after its upstreams changed.
    pub fn forget_cache(&self, cache: CacheId) {
        self.misses.remove_where(|(id, _)| *id == cache);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> StorePathHash {
        "0c6kzph7l0dcbfmjap64f0czdafn3b7x".parse().expect("a hash")
    }

    #[test]
    fn a_miss_is_remembered_for_its_cache_alone_until_forgotten() {
        let misses = NegativeCache::new(Duration::from_secs(60));
        misses.record(CacheId::new(1), &hash());
        assert!(misses.is_miss(CacheId::new(1), &hash()));
        assert!(!misses.is_miss(CacheId::new(2), &hash()));
        misses.forget_cache(CacheId::new(1));
        assert!(!misses.is_miss(CacheId::new(1), &hash()));
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let misses = NegativeCache::new(Duration::ZERO);
        misses.record(CacheId::new(1), &hash());
        assert!(!misses.is_miss(CacheId::new(1), &hash()));
    }
}
