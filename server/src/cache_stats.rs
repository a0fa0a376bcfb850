//! What each cache holds (paths, stored bytes, last push), remembered for
//! [`STATS_TTL`]. The landing page shows it to anyone, and working it out
//! reads every path of the cache: a stranger repeating the request must
//! not repeat the work. Misses are worked out one at a time, so a burst
//! of requests for a cache costs one reading of it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::database::{CacheId, CacheStats, Database, DatabaseError};

/// How long a cache's figures are shown before they are read again.
pub const STATS_TTL: Duration = Duration::from_secs(30);

/// Caches whose figures are held at most.
const HELD_MAX: usize = 4096;

/// Recently read figures, by cache.
#[derive(Debug, Default)]
pub struct CacheStatsMemo {
    held: Mutex<HashMap<CacheId, (Instant, CacheStats)>>,
    /// Held while a miss is worked out.
    reading: tokio::sync::Mutex<()>,
}

impl CacheStatsMemo {
    /// The figures of `cache`, read at most [`STATS_TTL`] ago.
    pub async fn get(
        &self,
        database: &Database,
        cache: CacheId,
    ) -> Result<CacheStats, DatabaseError> {
        self.get_or_read(cache, || async move {
            Ok(database
                .cache_stats(&[cache])
                .await?
                .pop()
                .map(|(_, stats)| stats)
                .unwrap_or_default())
        })
        .await
    }

    async fn get_or_read<F, Fut>(
        &self,
        cache: CacheId,
        read: F,
    ) -> Result<CacheStats, DatabaseError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CacheStats, DatabaseError>>,
    {
        if let Some(stats) = self.fresh(cache) {
            return Ok(stats);
        }
        let _reading = self.reading.lock().await;
        // Another request may have read them while this one waited.
        if let Some(stats) = self.fresh(cache) {
            return Ok(stats);
        }
        let stats = read().await?;
        let now = Instant::now();
        let mut held = self.held.lock().expect("stats lock is never poisoned");
        if held.len() >= HELD_MAX {
            held.retain(|_, (at, _)| now.duration_since(*at) < STATS_TTL);
            if held.len() >= HELD_MAX {
                held.clear();
            }
        }
        held.insert(cache, (now, stats));
        Ok(stats)
    }

    fn fresh(&self, cache: CacheId) -> Option<CacheStats> {
        let held = self.held.lock().expect("stats lock is never poisoned");
        held.get(&cache)
            .filter(|(at, _)| at.elapsed() < STATS_TTL)
            .map(|(_, stats)| *stats)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn figures_are_read_once_however_often_they_are_asked_for() {
        let memo = CacheStatsMemo::default();
        let reads = AtomicUsize::new(0);
        let cache = CacheId::new(7);
        let asks = (0..50).map(|i| {
            let (memo, reads) = (&memo, &reads);
            async move {
                memo.get_or_read(cache, || async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok(CacheStats {
                        paths: 3,
                        ..CacheStats::default()
                    })
                })
                .await
                .map(|stats| (i, stats.paths))
            }
        });
        let answers = futures::future::join_all(asks).await;
        assert!(answers.iter().all(|a| matches!(a, Ok((_, 3)))));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one reading for 50 asks");
        // Another cache is read on its own.
        memo.get_or_read(CacheId::new(8), || async { Ok(CacheStats::default()) })
            .await
            .expect("read");
        assert_eq!(memo.held.lock().expect("lock").len(), 2);
    }
}
