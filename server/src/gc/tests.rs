//! The collector over a store seeded in a given shape.

use super::*;
use crate::database::CacheChanges;
use crate::storage::MemoryStorage;

fn store_path(name: &str) -> String {
    format!("/nix/store/{:a>32}-{name}", name)
}

/// Path `name` of `cache`, last used at `used`, on a NAR of 100 bytes
/// of its own, referencing `references` (and itself).
async fn push(
    database: &Database,
    cache: CacheId,
    name: &str,
    used: i64,
    references: &[&str],
) -> ObjectId {
    let nar = database.seed_nar(name, used).await;
    let mut references: Vec<String> = references.iter().map(|r| store_path(r)).collect();
    references.push(store_path(name));
    let hash = format!("{:a>32}", name);
    database
        .seed_path(cache, nar, (&hash, &store_path(name)), &references, used)
        .await
}

/// A diamond (top -> a, b -> leaf), an unrelated root, and a kept root
/// (used last) over the oldest path of all. Over quota by four paths:
/// the unrelated root goes first (least recently used root), then the
/// top, then a and b as they become roots, each before anything newer;
/// the leaf (still needed by nothing, but not needed to fit) and the
/// oldest path (a kept path references it) stay.
#[tokio::test]
async fn a_quota_evicts_in_lru_order_among_the_paths_that_may_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Database::for_tests(&dir).await;
    let cache = database.seed_cache("c").await;
    let id = cache.id;
    let oldest = push(&database, id, "oldest", 50, &[]).await;
    let leaf = push(&database, id, "leaf", 100, &[]).await;
    push(&database, id, "a", 200, &["leaf"]).await;
    push(&database, id, "b", 300, &["leaf"]).await;
    push(&database, id, "unrelated", 350, &[]).await;
    push(&database, id, "top", 400, &["a", "b", "leaf"]).await;
    let kept = push(&database, id, "kept", 1000, &["oldest"]).await;
    database
        .configure_cache(
            &cache,
            CacheChanges {
                quota: Some(Some(300)),
                ..CacheChanges::default()
            },
        )
        .await
        .expect("quota");

    let config = GcConfig {
        default_retention_period: Duration::ZERO,
        grace_period: Duration::ZERO,
        ..GcConfig::default()
    };
    let report = Collector::new(&database, Arc::new(MemoryStorage::new()), &config, &Quiet)
        .run()
        .await
        .expect("collect");
    assert_eq!(report.objects_evicted, 4, "{report}");
    assert_eq!(report.removed_nar_bytes, 400);
    let mut left: Vec<ObjectId> = database
        .least_recent_objects(id, 10)
        .await
        .expect("left")
        .iter()
        .map(|o| o.id)
        .collect();
    left.sort_unstable();
    assert_eq!(left, [oldest, leaf, kept]);
}

/// Attic's default: with no `default-retention-period` in the config and
/// none on the cache, a path nobody read for decades stays.
#[tokio::test]
async fn paths_unread_for_decades_stay_when_no_retention_is_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Database::for_tests(&dir).await;
    let cache = database.seed_cache("c").await;
    let ancient = push(&database, cache.id, "ancient", 50, &[]).await;
    let config = GcConfig {
        grace_period: Duration::ZERO,
        ..GcConfig::default()
    };
    let report = Collector::new(&database, Arc::new(MemoryStorage::new()), &config, &Quiet)
        .run()
        .await
        .expect("collect");
    assert_eq!(report.objects_expired, 0, "{report}");
    let left: Vec<ObjectId> = database
        .least_recent_objects(cache.id, 10)
        .await
        .expect("left")
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(left, [ancient]);
}
