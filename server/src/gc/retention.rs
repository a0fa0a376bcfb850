//! Which paths leave their caches: retention, quotas (logs first, then
//! paths from the roots of the reference graph, least recently used first)
//! and destroyed caches.

use super::*;

impl Collector<'_> {
    /// Expires each live cache's paths past its retention, from the roots
    /// down: a page of expired paths no other path references at a time,
    /// until none is left; an expired path a kept path references stays.
    pub(super) async fn expire(&mut self) -> Result<(), GcError> {
        let default = self.config.default_retention_period;
        for cache in self.database.live_caches().await? {
            let retention = match cache.retention_period {
                Some(seconds) => seconds,
                None => secs(default),
            };
            // Zero keeps paths for ever.
            if retention <= 0 {
                continue;
            }
            // A log is kept for the retention period from when it was
            // stored: nothing records its reads, and no path needs it.
            self.report.logs_removed += self
                .database
                .expire_logs(cache.id, now().saturating_sub(retention))
                .await?;
            loop {
                // Counted from when the reads are settled, not before.
                let cutoff = now().saturating_sub(retention);
                let page = self.database.expired_roots(cache.id, cutoff, PAGE).await?;
                if page.is_empty() {
                    self.report.objects_kept_for_closures += self
                        .database
                        .count_last_used_before(cache.id, cutoff)
                        .await?;
                    break;
                }
                if !self.reads_settled {
                    self.settle_reads().await;
                    continue;
                }
                let removed = self
                    .database
                    .remove_objects(cache.id, &page, Removal::Expired { cutoff })
                    .await?;
                self.report.objects_expired += removed.paths;
                self.count_removed(removed);
                self.renew().await?;
                if removed.paths == 0 {
                    // Every one was read or newly referenced meanwhile;
                    // the next run looks again.
                    break;
                }
            }
        }
        Ok(())
    }

    /// Evicts from each over-quota cache the least recently read of the
    /// paths no other path of the cache references, until the cache fits.
    /// Evicting a path can let what it references go in turn: such a path,
    /// if read before the next root, goes before it (see
    /// [`Collector::plan_evictions`]).
    pub(super) async fn enforce_quotas(&mut self) -> Result<(), GcError> {
        for cache in self.database.live_caches().await? {
            let Some(quota) = cache.quota else {
                continue;
            };
            let quota = i64::try_from(quota).unwrap_or(i64::MAX);
            let mut usage = self.database.cache_usage(cache.id).await?;
            if usage > quota && !self.reads_settled {
                self.settle_reads().await;
                usage = self.database.cache_usage(cache.id).await?;
            }
            if usage > quota {
                usage = self.evict_logs(cache.id, usage, quota).await?;
            }
            let mut stalled = 0;
            while usage > quota {
                let page = self.database.evictable_objects(cache.id, PAGE).await?;
                let (waves, why) = if page.is_empty() {
                    // Every path left is referenced by another: a cycle,
                    // which real store paths cannot form (only forged
                    // references do). Break it at its least recently read
                    // path rather than let the cache exceed its quota.
                    // What is left may all be pinned: the cache then stays
                    // over its quota, and refuses pushes until it fits.
                    let page = self
                        .database
                        .least_recent_unpinned_objects(cache.id, 1)
                        .await?;
                    let Some(object) = page.first() else { break };
                    tracing::warn!(
                        cache = %cache.name,
                        object = object.id.get(),
                        "every path of an over-quota cache is referenced by another: \
                         evicting the least recently read of a reference cycle"
                    );
                    (vec![page], Removal::EvictedFromCycle)
                } else {
                    let waves = self.plan_evictions(cache.id, page, usage, quota).await?;
                    (waves, Removal::Evicted)
                };
                let mut evicted = 0;
                // Referrers before what they reference: each statement
                // re-checks that nothing left references what it removes.
                for wave in waves {
                    for batch in wave.chunks(PAGE as usize) {
                        let removed = self.database.remove_objects(cache.id, batch, why).await?;
                        evicted += removed.paths;
                        self.report.objects_evicted += removed.paths;
                        self.count_removed(removed);
                        self.renew().await?;
                    }
                }
                stalled = if evicted == 0 { stalled + 1 } else { 0 };
                if stalled > 3 {
                    // Each plan was read, pushed or referenced again
                    // before its eviction: leave the cache to the next run.
                    break;
                }
                usage = self.database.cache_usage(cache.id).await?;
            }
        }
        Ok(())
    }

    /// Plans, from a page of roots (least recently read first), which
    /// paths to evict, in exactly least-recently-read order among the paths
    /// that may go at each moment, until the cache would fit: evicting a
    /// root may let the paths only it references go, and one read before
    /// the next root goes before it.
    ///
    /// Below the page, the paths its roots reference are looked up level
    /// by level (one pass over the cache's references per level, however
    /// many paths), each with how many paths of the cache reference it; at
    /// most `PLAN_LIMIT` of them, so memory stays bounded. The order is then
    /// worked out in memory. It stops where a root beyond the page could
    /// come first, or where a path's references were not looked up: the
    /// next listing carries on.
    ///
    /// Returns the paths in waves: no path references one of its own wave
    /// or a later one, so evicting wave by wave never removes a path while
    /// one referencing it remains.
    async fn plan_evictions(
        &self,
        cache_id: CacheId,
        page: Vec<EvictableObject>,
        mut usage: i64,
        quota: i64,
    ) -> Result<Vec<Vec<LruObject>>, GcError> {
        const PLAN_LIMIT: usize = 20_000;
        struct Below {
            object: EvictableObject,
            referrers: i64,
            wave: usize,
        }
        let key = |o: &LruObject| (o.last_used, o.id);
        // Roots past the page may come before anything past its last.
        let frontier = match page.last() {
            Some(last) if page.len() as u64 >= PAGE => key(&last.object),
            _ => (i64::MAX, ObjectId::new(i64::MAX)),
        };
        let mut below: HashMap<String, Below> = HashMap::new();
        let mut outside: HashSet<String> = HashSet::new();
        let mut level: Vec<String> = page
            .iter()
            .flat_map(|root| root.references.iter().cloned())
            .collect();
        level.sort_unstable();
        level.dedup();
        while !level.is_empty() && below.len() < PLAN_LIMIT {
            let found = self.database.objects_at_paths(cache_id, &level).await?;
            let counts: HashMap<String, i64> = self
                .database
                .referrer_counts(cache_id, &level)
                .await?
                .into_iter()
                .collect();
            let mut next = Vec::new();
            for object in found {
                next.extend(object.references.iter().cloned());
                let referrers = counts.get(&object.store_path).copied().unwrap_or(0);
                below.insert(
                    object.store_path.clone(),
                    Below {
                        object,
                        referrers,
                        wave: 0,
                    },
                );
            }
            for path in level {
                if !below.contains_key(&path) {
                    // Not in this cache (or gone meanwhile).
                    outside.insert(path);
                }
            }
            next.retain(|p| !below.contains_key(p) && !outside.contains(p));
            next.sort_unstable();
            next.dedup();
            level = next;
        }
        let unknown: HashSet<String> = level.into_iter().collect();

        let mut queue: BTreeMap<(i64, ObjectId), (EvictableObject, usize)> = page
            .into_iter()
            .map(|root| (key(&root.object), (root, 0)))
            .collect();
        let mut waves: Vec<Vec<LruObject>> = Vec::new();
        while usage > quota {
            let Some(entry) = queue.first_entry() else {
                break;
            };
            if *entry.key() > frontier {
                break;
            }
            let (object, wave) = entry.remove();
            usage -= object.object.file_size;
            if waves.len() <= wave {
                waves.resize_with(wave + 1, Vec::new);
            }
            waves[wave].push(object.object);
            let mut unexplored = false;
            for reference in &object.references {
                unexplored |= unknown.contains(reference);
                let Some(node) = below.get_mut(reference) else {
                    continue;
                };
                node.referrers -= 1;
                node.wave = node.wave.max(wave + 1);
                if node.referrers <= 0
                    && let Some(node) = below.remove(reference)
                {
                    queue.insert(key(&node.object.object), (node.object, node.wave));
                }
            }
            if unexplored {
                // What this path alone references was not looked up, and
                // may come next: the next listing decides.
                break;
            }
        }
        Ok(waves)
    }

    /// Evicts a cache's build logs, oldest first, until it fits its quota
    /// or has none: no path needs a log, so logs go before any path.
    /// Returns the usage left.
    async fn evict_logs(
        &mut self,
        cache_id: CacheId,
        mut usage: i64,
        quota: i64,
    ) -> Result<i64, GcError> {
        while usage > quota {
            let page = self.database.oldest_logs(cache_id, PAGE).await?;
            if page.is_empty() {
                break;
            }
            let mut chosen = Vec::new();
            for log in &page {
                if usage <= quota {
                    break;
                }
                usage -= log.stored_size;
                chosen.push(log.id);
            }
            self.report.logs_removed += self.database.delete_logs(&chosen).await?;
            self.renew().await?;
        }
        Ok(usage)
    }

    pub(super) async fn destroyed_caches(&mut self) -> Result<(), GcError> {
        for cache_id in self.database.destroyed_caches().await? {
            loop {
                let page = self.database.least_recent_objects(cache_id, PAGE).await?;
                if page.is_empty() {
                    break;
                }
                let removed = self
                    .database
                    .remove_objects(cache_id, &page, Removal::Destroyed)
                    .await?;
                self.report.objects_of_destroyed_caches += removed.paths;
                self.count_removed(removed);
                self.renew().await?;
            }
            self.report.logs_removed += self.database.forget_destroyed_cache(cache_id).await?;
            self.report.caches_forgotten += 1;
        }
        Ok(())
    }
}
