//! The collector's queries, checked on SQLite (and on PostgreSQL when
//! `ATTIC_TEST_POSTGRES` names a server).

use super::*;
use crate::database::{NarId, ObjectId};

async fn database(dir: &tempfile::TempDir) -> Database {
    Database::for_tests(dir).await
}

async fn new_cache(database: &Database, name: &str) -> CacheId {
    database.seed_cache(name).await.id
}

fn store_path(n: u8) -> String {
    format!("/nix/store/{n:0>32}-p")
}

async fn new_nar(database: &Database, n: u8, created_at: i64) -> NarId {
    database.seed_nar(&n.to_string(), created_at).await
}

/// Path `n` of `cache` on NAR `nar`, pushed at `created_at`,
/// referencing the paths `references` (itself among them if listed).
async fn attach(
    database: &Database,
    cache: CacheId,
    n: u8,
    nar: NarId,
    created_at: i64,
    references: &[u8],
) -> ObjectId {
    let references: Vec<String> = references.iter().map(|&r| store_path(r)).collect();
    database
        .seed_path(
            cache,
            nar,
            (&format!("{n:0>32}"), &store_path(n)),
            &references,
            created_at,
        )
        .await
}

/// Path `n` of `cache` on a NAR of its own.
async fn push_referencing(
    database: &Database,
    cache: CacheId,
    n: u8,
    created_at: i64,
    references: &[u8],
) -> ObjectId {
    let nar = new_nar(database, n, created_at).await;
    attach(database, cache, n, nar, created_at, references).await
}

/// A path of `cache` on a NAR of its own, pushed at `created_at`.
async fn push(database: &Database, cache: CacheId, n: u8, created_at: i64) -> ObjectId {
    push_referencing(database, cache, n, created_at, &[]).await
}

async fn roots(database: &Database, cache: CacheId) -> Vec<LruObject> {
    database
        .evictable_objects(cache, 10)
        .await
        .expect("roots")
        .into_iter()
        .map(|e| e.object)
        .collect()
}

fn ids(objects: &[LruObject]) -> Vec<ObjectId> {
    objects.iter().map(|o| o.id).collect()
}

#[tokio::test]
async fn eviction_spares_a_path_read_after_it_was_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database(&dir).await;
    let cache = new_cache(&database, "c").await;
    let old = push(&database, cache, 1, 1_000).await;
    let older = push(&database, cache, 2, 500).await;
    let newest = push(&database, cache, 3, 2_000).await;

    let page = roots(&database, cache).await[..2].to_vec();
    assert_eq!(
        page.iter().map(|o| (o.id, o.last_used)).collect::<Vec<_>>(),
        [(older, 500), (old, 1_000)]
    );
    // Read between the listing and the eviction: no longer least recent.
    database.touch_objects(&[old], 3_000).await.expect("touch");

    let removed = database
        .remove_objects(cache, &page, Removal::Evicted)
        .await
        .expect("evict");
    assert_eq!(removed.paths, 1);
    assert_eq!(removed.nar_bytes, 100, "only the evicted path's NAR");
    let left = database
        .least_recent_objects(cache, 10)
        .await
        .expect("left");
    assert_eq!(ids(&left), [newest, old]);
    let nothing = database
        .remove_objects(cache, &[], Removal::Evicted)
        .await
        .expect("nothing");
    assert_eq!(nothing, RemovedPaths::default());
}

/// top -> middle -> leaf (each also referencing itself, as Nix paths
/// often do), and an unrelated path: only roots may be evicted, least
/// recently used first, however old the leaf is; a path of another
/// cache referencing the leaf does not protect it here.
#[tokio::test]
async fn eviction_takes_only_roots_so_closures_stay_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database(&dir).await;
    let cache = new_cache(&database, "c").await;
    let other_cache = new_cache(&database, "other").await;
    let leaf = push_referencing(&database, cache, 3, 1_000, &[3]).await;
    let middle = push_referencing(&database, cache, 2, 2_000, &[2, 3]).await;
    let top = push_referencing(&database, cache, 1, 3_000, &[1, 2, 3]).await;
    let unrelated = push(&database, cache, 4, 2_500).await;
    push_referencing(&database, other_cache, 5, 100, &[3]).await;

    let page = roots(&database, cache).await;
    assert_eq!(
        ids(&page),
        [unrelated, top],
        "the leaf is least recently used, yet referenced"
    );
    let listed = database.evictable_objects(cache, 10).await.expect("roots");
    assert_eq!(
        listed[1].references,
        [store_path(2), store_path(3)],
        "what the top references, itself left out"
    );
    let below = database
        .objects_at_paths(cache, &listed[1].references)
        .await
        .expect("below");
    let mut below: Vec<(ObjectId, String)> = below
        .into_iter()
        .map(|o| (o.object.id, o.store_path))
        .collect();
    below.sort();
    assert_eq!(below, [(leaf, store_path(3)), (middle, store_path(2))]);
    let mut counts = database
        .referrer_counts(cache, &[store_path(2), store_path(3), store_path(1)])
        .await
        .expect("counts");
    counts.sort();
    // The leaf has two referrers here (the top and the middle), not
    // counting itself or the other cache's path; nothing references
    // the top.
    assert_eq!(counts, [(store_path(2), 1), (store_path(3), 2)]);

    let removed = database
        .remove_objects(cache, &page[1..], Removal::Evicted)
        .await
        .expect("evict top");
    assert_eq!(removed.paths, 1);
    let page = roots(&database, cache).await;
    assert_eq!(ids(&page), [middle, unrelated], "the middle is a root now");
    database
        .remove_objects(cache, &page[..1], Removal::Evicted)
        .await
        .expect("evict middle");
    let page = roots(&database, cache).await;
    assert_eq!(ids(&page), [leaf, unrelated]);
}

/// A root listed for eviction that a path pushed meanwhile references
/// is no longer a root when the eviction runs: it stays.
#[tokio::test]
async fn eviction_spares_a_path_referenced_after_it_was_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database(&dir).await;
    let cache = new_cache(&database, "c").await;
    let dependency = push(&database, cache, 1, 1_000).await;
    let page = roots(&database, cache).await;
    assert_eq!(ids(&page), [dependency]);
    push_referencing(&database, cache, 2, 2_000, &[1]).await;
    let removed = database
        .remove_objects(cache, &page, Removal::Evicted)
        .await
        .expect("evict");
    assert_eq!(removed.paths, 0);
}

/// An expired path a kept path references stays; an expired path only
/// expired paths reference goes once they have gone.
#[tokio::test]
async fn expiry_keeps_what_kept_paths_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database(&dir).await;
    let cache = new_cache(&database, "c").await;
    let cutoff = 5_000;
    let needed = push(&database, cache, 1, 1_000).await;
    push_referencing(&database, cache, 2, 9_000, &[1, 2]).await;
    let old_dependency = push(&database, cache, 3, 1_000).await;
    let old_top = push_referencing(&database, cache, 4, 2_000, &[3, 4]).await;

    let page = database
        .expired_roots(cache, cutoff, 10)
        .await
        .expect("page");
    assert_eq!(ids(&page), [old_top]);
    let removed = database
        .remove_objects(cache, &page, Removal::Expired { cutoff })
        .await
        .expect("expire");
    assert_eq!(removed.paths, 1);
    let page = database
        .expired_roots(cache, cutoff, 10)
        .await
        .expect("page");
    assert_eq!(ids(&page), [old_dependency]);
    database
        .remove_objects(cache, &page, Removal::Expired { cutoff })
        .await
        .expect("expire");
    assert!(
        database
            .expired_roots(cache, cutoff, 10)
            .await
            .expect("page")
            .is_empty()
    );
    assert_eq!(
        database
            .count_last_used_before(cache, cutoff)
            .await
            .expect("count"),
        1,
        "the kept path's dependency stays"
    );
    let left = database
        .least_recent_objects(cache, 10)
        .await
        .expect("left");
    assert!(ids(&left).contains(&needed));
}

/// Removing a path whose NAR another cache holds frees none of it, and
/// the report's numbers say so.
#[tokio::test]
async fn removing_a_path_another_cache_holds_counts_its_nar_as_held_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database(&dir).await;
    let cache = new_cache(&database, "c").await;
    let other = new_cache(&database, "other").await;
    let shared = new_nar(&database, 1, 1_000).await;
    attach(&database, cache, 1, shared, 1_000, &[]).await;
    attach(&database, other, 1, shared, 1_000, &[]).await;
    push(&database, cache, 2, 1_000).await;

    let page = database
        .least_recent_objects(cache, 10)
        .await
        .expect("page");
    let removed = database
        .remove_objects(cache, &page, Removal::Destroyed)
        .await
        .expect("remove");
    assert_eq!(
        removed,
        RemovedPaths {
            paths: 2,
            nar_bytes: 200,
            held_elsewhere_bytes: 100,
        }
    );
}

/// Unheld NARs go in the run that removed their last path, however
/// recently an upload attached them: no time cutoff, the row lock (on
/// PostgreSQL) is what keeps an upload in flight safe.
#[tokio::test]
async fn unheld_nars_go_at_once_and_held_ones_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database(&dir).await;
    let cache = new_cache(&database, "c").await;
    let held = push(&database, cache, 1, now()).await;
    let unheld = new_nar(&database, 2, now()).await;
    assert_eq!(
        database.delete_unheld_nars(0, 10,).await.expect("delete"),
        (Some(unheld.get()), 1)
    );
    let left: Vec<ObjectId> = database
        .least_recent_objects(cache, 10)
        .await
        .expect("left")
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(left, [held]);
    assert_eq!(
        database
            .delete_unreferenced_chunks(0, 10)
            .await
            .expect("chunks"),
        (None, 0)
    );
}
