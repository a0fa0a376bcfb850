//! Garbage collection: retention from last access, quotas in LRU order
//! and from the roots of the reference graph, destroyed caches, and what
//! the report says. Paths are real store paths; survivors are substituted
//! with real Nix. Crashes, races and compaction are in `gc_safety.rs`.

use std::path::Path;
use std::time::Duration;

use integration_tests::gc::{
    NO_GRACE, all_substitute, assert_nothing_orphaned, end_grace_period, holds, store_path,
    substitutes,
};
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, noise, path_hash};
use serde_json::json;

/// An object past retention goes, and the bytes only it used leave the
/// disk; chunks shared with a live NAR stay, and that NAR substitutes.
#[tokio::test]
async fn retention_expires_unread_paths_and_only_their_own_bytes() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "short", true).await;
    api.create_cache(token, "kept", true).await;
    api.configure(token, "short", json!({"retention_period": {"Period": 1}}))
        .await;
    api.configure(token, "kept", json!({"retention_period": {"Period": 0}}))
        .await;
    let shared = noise(1 << 20, 41);
    let old = store_path(&[("shared", &shared), ("own", &noise(1 << 20, 42))]);
    let live = store_path(&[("shared", &shared), ("other", &noise(256 << 10, 43))]);
    api.push_path(token, "short", &old).await;
    api.push_path(token, "kept", &live).await;
    let chunks_before = server.row_counts().await.chunks;
    std::thread::sleep(Duration::from_millis(2100));

    let report = server.gc();
    assert!(report.contains("1 expired"), "{report}");
    let after = server.row_counts().await;
    assert_eq!(after.paths, 1);
    let chunks_after = after.chunks;
    assert!(
        chunks_after < chunks_before,
        "the expired path's own chunks stayed: {chunks_before} -> {chunks_after}"
    );
    // The shared megabyte's chunks stay: the live NAR references them,
    // and every chunk left is one it references.
    assert_eq!(server.orphans().await.chunks, 0);
    assert_nothing_orphaned(&server).await;
    let key = api.public_key(token, "kept").await;
    substitutes(&server, "kept", &key, &live);
    assert_eq!(
        api.status(None, &format!("/short/{}.narinfo", path_hash(&old)))
            .await,
        reqwest::StatusCode::NOT_FOUND
    );
}

/// Retention counts from the last read: a path read lately survives one
/// as old that nobody read.
#[tokio::test]
async fn a_path_read_lately_survives_retention() {
    let mut server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token.clone();
    api.create_cache(token, "c", true).await;
    api.configure(token, "c", json!({"retention_period": {"Period": 6}}))
        .await;
    let read = store_path(&[("f", &noise(10_000, 51))]);
    let unread = store_path(&[("f", &noise(10_000, 52))]);
    api.push_path(token, "c", &read).await;
    api.push_path(token, "c", &unread).await;
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        api.status(None, &format!("/c/{}.narinfo", path_hash(&read)))
            .await,
        reqwest::StatusCode::OK
    );
    // A clean stop writes the reads it gathered.
    assert!(server.terminate_within(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_secs(3));
    server.gc();
    server.restart();
    let status = |path: &str| {
        let path = format!("/c/{}.narinfo", path_hash(path));
        let api = Api::new(&server.url);
        async move { api.status(None, &path).await }
    };
    assert_eq!(status(&read).await, reqwest::StatusCode::OK);
    assert_eq!(status(&unread).await, reqwest::StatusCode::NOT_FOUND);
}

/// Over its quota, a cache loses its least recently read paths first.
#[tokio::test]
async fn a_quota_evicts_the_least_recently_read_first() {
    let mut server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token.clone();
    api.create_cache(token, "q", true).await;
    let paths: Vec<String> = (0..3)
        .map(|i| store_path(&[("f", &noise(200_000, 60 + i))]))
        .collect();
    for path in &paths {
        api.push_path(token, "q", path).await;
    }
    std::thread::sleep(Duration::from_millis(1100));
    // Read the oldest: the second is now the least recently read.
    assert_eq!(
        api.status(None, &format!("/q/{}.narinfo", path_hash(&paths[0])))
            .await,
        reqwest::StatusCode::OK
    );
    let used = api.used_bytes(token, "q").await;
    // Room for two of the three.
    let quota = used * 5 / 6;
    api.configure(token, "q", json!({"quota": {"Bytes": quota}}))
        .await;
    assert!(server.terminate_within(Duration::from_secs(30)));
    let report = server.gc();
    assert!(report.contains("1 evicted"), "{report}");
    server.restart();
    let api = Api::new(&server.url);
    let present = |path: &str| {
        let path = format!("/q/{}.narinfo", path_hash(path));
        let api = Api::new(&server.url);
        async move { api.status(None, &path).await == reqwest::StatusCode::OK }
    };
    assert!(present(&paths[0]).await, "the path read lately was evicted");
    assert!(!present(&paths[1]).await, "the least recently read stayed");
    assert!(present(&paths[2]).await);
    assert_nothing_orphaned(&server).await;
    assert!(api.used_bytes(token, "q").await <= quota);
}

/// A destroyed cache's data leaves the disk; another cache's stays.
#[tokio::test]
async fn a_destroyed_caches_data_leaves_the_disk() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "doomed", false).await;
    api.create_cache(token, "kept", true).await;
    let doomed = store_path(&[("f", &noise(500_000, 71))]);
    let kept = store_path(&[("f", &noise(100_000, 72))]);
    api.push_path(token, "doomed", &doomed).await;
    api.push_path(token, "kept", &kept).await;
    assert_eq!(server.blob_count(), 2);
    api.destroy_cache(token, "doomed").await;
    let report = server.gc();
    assert!(report.contains("1 of destroyed caches"), "{report}");
    assert_eq!(server.blob_count(), 1, "the destroyed cache's pack stayed");
    // Its row is forgotten, not only hidden.
    let store = server.store().await;
    let destroyed = store.destroyed_caches().await.expect("list caches");
    let live = store.live_caches().await.expect("list caches");
    store.close().await;
    assert!(destroyed.is_empty(), "{destroyed:?}");
    let live: Vec<String> = live.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(live, ["kept"]);
    assert_nothing_orphaned(&server).await;
    let key = api.public_key(token, "kept").await;
    substitutes(&server, "kept", &key, &kept);
    // The name is free again.
    api.create_cache(token, "doomed", false).await;
}

/// A quota evicts from the roots of the cache's reference graph: the leaf
/// of a real Nix closure is its least recently used path, yet its parents
/// reference it, so the top goes first, then the middle, and only then the
/// leaf. After each collection every path left substitutes with its whole
/// closure from the cache alone.
#[tokio::test]
async fn a_quota_evicts_from_the_roots_so_every_path_left_substitutes() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "q", true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 300_000);
    let [leaf, middle, top] = [0, 1, 2].map(|i| closure.paths[i].clone());
    // Leaf first, as `nix copy` pushes: the leaf is the least recently used.
    for path in &closure.paths {
        api.push_path(token, "q", path).await;
    }
    std::thread::sleep(Duration::from_millis(1100));
    let unrelated = store_path(&[("f", &noise(20_000, 90))]);
    api.push_path(token, "q", &unrelated).await;

    // One byte over: one path must go, and only the top may.
    let used = api.used_bytes(token, "q").await;
    api.configure(token, "q", json!({"quota": {"Bytes": used - 1}}))
        .await;
    let report = server.gc();
    assert!(report.contains("1 evicted"), "{report}");
    assert!(!holds(&server, "q", &top).await, "the top stayed");
    for path in [&leaf, &middle, &unrelated] {
        assert!(holds(&server, "q", path).await, "{path} was evicted");
    }

    // Room for little more than the unrelated path: the closure goes, from
    // the middle down to the leaf; the unrelated path, used last, stays.
    api.configure(token, "q", json!({"quota": {"Bytes": 30_000}}))
        .await;
    let report = server.gc();
    assert!(report.contains("2 evicted"), "{report}");
    assert!(!holds(&server, "q", &middle).await);
    assert!(!holds(&server, "q", &leaf).await);
    assert!(holds(&server, "q", &unrelated).await);
    assert_nothing_orphaned(&server).await;
    let key = api.public_key(token, "q").await;
    nix::delete(&[top.clone(), middle.clone(), leaf.clone()]);
    all_substitute(&server, "q", &key, &[unrelated]);
}

/// The first eviction of the test above, substituted: with only the top
/// evicted, the middle (which needs the leaf) and the leaf substitute from
/// the cache, every remaining path with its whole closure.
#[tokio::test]
async fn after_eviction_every_remaining_path_substitutes_with_its_closure() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "q", true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 300_000);
    for path in &closure.paths {
        api.push_path(token, "q", path).await;
    }
    let used = api.used_bytes(token, "q").await;
    api.configure(token, "q", json!({"quota": {"Bytes": used - 1}}))
        .await;
    let report = server.gc();
    assert!(report.contains("1 evicted"), "{report}");
    let remaining: Vec<String> = closure.paths[..2].to_vec();
    nix::delete(&[closure.top().to_owned()]);
    let key = api.public_key(token, "q").await;
    all_substitute(&server, "q", &key, &remaining);
}

/// Retention keeps what a kept path references: the top of a closure read
/// lately stays, and so do its middle and leaf though nobody read them
/// within the retention period; an unrelated path as old goes. The read
/// was made just before `atticadm gc` ran, in the running server, so the
/// collection also shows it waits for the server's batch of reads.
#[tokio::test]
async fn retention_keeps_what_a_path_read_lately_references() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "r", true).await;
    api.configure(token, "r", json!({"retention_period": {"Period": 6}}))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 100_000);
    for path in &closure.paths {
        api.push_path(token, "r", path).await;
    }
    let unrelated = store_path(&[("f", &noise(20_000, 91))]);
    api.push_path(token, "r", &unrelated).await;
    // Past the retention; the read below is then well inside it, whole
    // seconds and the collector's wait for reads included.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        api.status(None, &format!("/r/{}.narinfo", path_hash(closure.top())))
            .await,
        reqwest::StatusCode::OK
    );

    let report = server.gc();
    assert!(report.contains("1 expired"), "{report}");
    assert!(report.contains("kept past retention: 2"), "{report}");
    assert!(!holds(&server, "r", &unrelated).await);
    for path in &closure.paths {
        assert!(holds(&server, "r", path).await, "{path} expired");
    }
    let key = api.public_key(token, "r").await;
    all_substitute(&server, "r", &key, &closure.paths);
}

/// `atticadm gc`, another process than the server, counts a read the
/// server made just before it started: the least recently read path goes,
/// not the one read a moment ago.
#[tokio::test]
async fn atticadm_gc_counts_a_read_made_just_before_it() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "q", true).await;
    let paths: Vec<String> = (0..3)
        .map(|i| store_path(&[("f", &noise(200_000, 95 + i))]))
        .collect();
    for path in &paths {
        api.push_path(token, "q", path).await;
    }
    std::thread::sleep(Duration::from_millis(1100));
    let used = api.used_bytes(token, "q").await;
    api.configure(token, "q", json!({"quota": {"Bytes": used * 5 / 6}}))
        .await;
    // The oldest is read; the collection starts at once.
    assert_eq!(
        api.status(None, &format!("/q/{}.narinfo", path_hash(&paths[0])))
            .await,
        reqwest::StatusCode::OK
    );
    let report = server.gc();
    assert!(report.contains("1 evicted"), "{report}");
    assert!(
        holds(&server, "q", &paths[0]).await,
        "the path just read went"
    );
    assert!(!holds(&server, "q", &paths[1]).await);
    assert!(holds(&server, "q", &paths[2]).await);
}

/// Evicting a path another cache holds frees nothing, and the report says
/// why rather than only "freed: 0 B".
#[tokio::test]
async fn the_report_says_when_evicted_bytes_are_held_by_another_cache() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "small", true).await;
    api.create_cache(token, "big", true).await;
    let path = store_path(&[("f", &noise(100_000, 97))]);
    api.push_path(token, "small", &path).await;
    api.push_path(token, "big", &path).await;
    api.configure(token, "small", json!({"quota": {"Bytes": 1}}))
        .await;
    let report = server.gc();
    assert!(report.contains("1 evicted"), "{report}");
    assert!(report.contains("freed: 0 B"), "{report}");
    assert!(
        report.contains("still held by other paths"),
        "the report does not say why nothing was freed: {report}"
    );
    assert!(holds(&server, "big", &path).await);
}

/// A destroyed cache is reclaimed in one run: its objects, NARs and chunks
/// go and its pack is marked at once; only the pack's blob waits for the
/// grace period, and the report says how much waits and from when. The
/// next run after the grace period deletes it.
#[tokio::test]
async fn one_run_takes_a_destroyed_cache_as_far_as_the_grace_period_allows() {
    let server = TestServer::start_with_config(
        "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"1h\"\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "doomed", false).await;
    let doomed = store_path(&[("f", &noise(300_000, 98))]);
    api.push_path(token, "doomed", &doomed).await;
    api.destroy_cache(token, "doomed").await;

    let report = server.gc();
    assert!(report.contains("1 of destroyed caches"), "{report}");
    assert_eq!(server.row_counts().await.nars, 0, "{report}");
    assert_eq!(server.row_counts().await.chunks, 0, "{report}");
    assert!(report.contains("1 marked for deletion"), "{report}");
    assert!(
        report.contains("waiting for the grace period (1h)") && report.contains("deletable from"),
        "{report}"
    );
    assert_eq!(server.blob_count(), 1, "deleted within the grace period");

    end_grace_period(&server);
    let report = server.gc();
    assert!(report.contains("1 deleted"), "{report}");
    assert!(!report.contains("waiting for the grace period"), "{report}");
    assert_eq!(server.blob_count(), 0);
    assert_nothing_orphaned(&server).await;
}

/// References are what the uploader claims: two paths claiming each other
/// form a cycle no real store path can, in which neither is a root. Over
/// its quota, the cache still sheds them (the cycle is broken at its least
/// recently read path) instead of staying over its quota for ever.
#[tokio::test]
async fn forged_reference_cycles_do_not_hold_a_cache_past_its_quota() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "cyclic", true).await;
    let first = store_path(&[("f", &noise(50_000, 98))]);
    let second = store_path(&[("f", &noise(50_000, 99))]);
    for (path, claimed) in [(&first, &second), (&second, &first)] {
        let mut info = integration_tests::upload::nar_info_from_nix("cyclic", path);
        info.references = vec![claimed.clone(), path.clone()];
        api.upload_ok(token, &info, nix::dump(Path::new(path)))
            .await;
    }
    api.configure(token, "cyclic", json!({"quota": {"Bytes": 1}}))
        .await;
    let report = server.gc();
    assert!(report.contains("2 evicted"), "{report}");
    assert!(!holds(&server, "cyclic", &first).await);
    assert!(!holds(&server, "cyclic", &second).await);
    assert_nothing_orphaned(&server).await;
}
