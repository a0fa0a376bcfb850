//! Garbage collection: retention from last access, quotas in LRU order,
//! destroyed caches, orphans, crashes at every stage, races with uploads,
//! and compaction. Paths are real store paths; survivors are substituted
//! with real Nix.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, noise, path_hash};
use serde_json::json;

/// No background collection, and no grace: each `atticadm gc` reclaims
/// everything reclaimable at once.
const NO_GRACE: &str = "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"0s\"\n";

/// A store path holding `files` (name, content).
fn store_path(files: &[(&str, &[u8])]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join(format!("p-{}", nix::nonce()));
    std::fs::create_dir(&root).expect("mkdir");
    for (name, content) in files {
        std::fs::write(root.join(name), content).expect("write");
    }
    nix::add(&root)
}

/// Rows nothing needs and blobs no row knows: none may be left after a
/// collection without grace.
async fn assert_nothing_orphaned(server: &TestServer) {
    let orphans = server.orphans().await;
    assert_eq!(orphans.nars, 0, "NARs no object holds");
    assert_eq!(orphans.chunks, 0, "chunks no NAR references");
    assert_eq!(orphans.packs, 0, "packs without chunks");
    let packs = server.row_counts().await.packs;
    assert_eq!(
        server.blob_count() as u64,
        packs,
        "blobs and pack rows differ"
    );
    assert_eq!(server.temp_file_count(), 0, "temporary files left");
}

/// Deletes `paths` from the local store and substitutes them all back.
fn all_substitute(server: &TestServer, cache: &str, key: &str, paths: &[String]) {
    nix::delete(paths);
    let out = nix::run_unchecked(
        nix::command("nix-store")
            .arg("--realise")
            .args(paths)
            .args(["--option", "substituters"])
            .arg(format!("{}/{cache}", server.url))
            .args(["--option", "trusted-public-keys", key]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn substitutes(server: &TestServer, cache: &str, key: &str, path: &str) {
    nix::delete(&[path.to_owned()]);
    let out = nix::substitute(path, &format!("{}/{cache}", server.url), key);
    assert!(
        out.status.success(),
        "{path} does not substitute: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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

/// An upload killed midway leaves a temporary file on local disk; a
/// collection sweeps it only once it is older than the grace period. (On
/// S3 what a killed upload leaves is an open multipart upload, which a
/// bucket lifecycle rule aborts: see the production page of the book.)
#[tokio::test]
async fn orphans_of_a_killed_upload_are_swept_after_the_grace_period() {
    let mut server = TestServer::start_with_config(
        "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"1h\"\n\
         [storage]\ntype = \"local\"\n",
    );
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "c", false).await;
    // Half of a large NAR, then the server dies.
    let path = store_path(&[("f", &noise(8 << 20, 81))]);
    let info = integration_tests::upload::nar_info_from_nix("c", &path);
    let nar = nix::dump(Path::new(&path));
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    write!(
        stream,
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         X-Attic-Nar-Info: {}\r\nContent-Length: {}\r\n\r\n",
        serde_json::to_string(&info).expect("json"),
        nar.len()
    )
    .expect("headers");
    stream
        .write_all(&nar[..nar.len() / 2])
        .expect("half the body");
    // Wait until the pack's temporary file exists.
    for _ in 0..200 {
        if server.temp_file_count() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.temp_file_count(), 1, "no temporary file to orphan");
    server.kill();
    drop(stream);

    server.gc();
    assert_eq!(server.temp_file_count(), 1, "swept within the grace period");
    let config = server.config_path();
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("grace-period = \"1h\"", "grace-period = \"0s\"");
    std::fs::write(&config, text).expect("write config");
    let report = server.gc();
    assert!(report.contains("orphans swept: 1"), "{report}");
    assert_eq!(server.temp_file_count(), 0);
}

/// Runs `atticadm gc` with `ATTIC_GC_CRASH_AT=point`: the collector
/// aborts there, as a SIGKILL would stop it. Returns whether it did.
fn gc_crashing_at(server: &TestServer, point: &str) -> bool {
    let output = server
        .home()
        .command("atticadm")
        .arg("gc")
        .env("ATTIC_GC_CRASH_AT", point)
        .output()
        .expect("run atticadm");
    // A point with nothing to do this run is passed without crashing.
    if output.status.success() {
        eprintln!("crash point {point} was not reached");
        false
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("aborting"), "gc failed otherwise: {stderr}");
        true
    }
}

/// Garbage of every kind: an expired path sharing chunks with a live one
/// (so its pack is partly live, to be compacted), and a destroyed cache.
async fn make_garbage(api: &Api, token: &str, round: u64) -> String {
    let shared = noise(300_000, 1000 + round);
    let expired = store_path(&[("shared", &shared), ("own", &noise(200_000, 2000 + round))]);
    let live = store_path(&[("shared", &shared), ("mine", &noise(50_000, 3000 + round))]);
    api.push_path(token, "short", &expired).await;
    api.push_path(token, "kept", &live).await;
    let doomed = format!("doomed-{round}");
    api.create_cache(token, &doomed, false).await;
    let gone = store_path(&[("f", &noise(100_000, 4000 + round))]);
    api.push_path(token, &doomed, &gone).await;
    api.destroy_cache(token, &doomed).await;
    live
}

/// A collector killed at any stage leaves a state the next run finishes:
/// no orphan row, no orphan blob, and every live path substitutes.
#[tokio::test]
async fn a_collector_killed_at_any_stage_is_finished_by_the_next_run() {
    let server = TestServer::start_with_config(
        "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"0s\"\ncompact-below = 0.95\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "short", true).await;
    api.create_cache(token, "kept", true).await;
    api.configure(token, "short", json!({"retention_period": {"Period": 1}}))
        .await;
    api.configure(token, "kept", json!({"retention_period": {"Period": 0}}))
        .await;
    let points = [
        "expire",
        "quota",
        "destroyed",
        "nars",
        "chunks",
        "mark-packs",
        "compact-written",
        "compact",
        "pack-blob-deleted",
        "delete-packs",
    ];
    let mut live = Vec::new();
    let mut crashes = 0;
    for (round, point) in points.iter().enumerate() {
        live.push(make_garbage(&api, token, round as u64).await);
        std::thread::sleep(Duration::from_millis(2100));
        if gc_crashing_at(&server, point) {
            crashes += 1;
        }
        server.gc();
        assert_nothing_orphaned(&server).await;
        let store = server.store().await;
        let expired = store
            .cache_paths(store.cache("short").await.id)
            .await
            .expect("list paths");
        store.close().await;
        assert!(expired.is_empty(), "after a crash at {point}: {expired:?}");
    }
    // Every run passes `expire`: without a single crash, atticadm was built
    // without the hook and this test checked nothing.
    assert!(
        crashes > 0,
        "no crash point was reached: atticadm lacks the server's `fault-injection` feature"
    );
    let key = api.public_key(token, "kept").await;
    all_substitute(&server, "kept", &key, &live);
}

/// Uploads `nar` as `path` to `cache`, pausing after `pause_after`
/// bytes to run `atticadm gc`: the upload has looked its first chunks up
/// by then, and reuses them if they exist. Returns the status.
async fn upload_around_a_collection(
    server: &TestServer,
    token: &str,
    cache: &str,
    path: &str,
    pause_after: usize,
) -> (reqwest::StatusCode, String) {
    let info = integration_tests::upload::nar_info_from_nix(cache, path);
    let nar = nix::dump(Path::new(path));
    let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    let upload = tokio::spawn({
        let api = Api::new(&server.url);
        let token = token.to_owned();
        async move {
            let response = api
                .upload(Some(&token), &info, reqwest::Body::wrap_stream(receiver))
                .await;
            (response.status(), response.text().await.expect("body"))
        }
    });
    sender
        .unbounded_send(Ok(nar[..pause_after].to_vec()))
        .expect("send");
    // Let the server chunk and look up what it has so far.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut command = server.home().command("atticadm");
    command.arg("gc");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run atticadm"))
        .await
        .expect("join");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    sender
        .unbounded_send(Ok(nar[pause_after..].to_vec()))
        .expect("send");
    drop(sender);
    upload.await.expect("join")
}

/// GC racing an upload of a NAR that shares chunks with one just expired:
/// the collection runs while the upload is midway, after it chose to
/// reuse chunks the collection then reclaims. The upload is refused with
/// 503 `RetryUpload` (never committed referencing a reclaimed chunk), its
/// retry stores them again, and the new NAR is whole and substitutes.
#[tokio::test]
async fn gc_racing_an_upload_of_shared_chunks_leaves_the_new_nar_whole() {
    // A grace period, so the upload in flight keeps its temporary pack,
    // short enough that the expired path's chunks (referenced longer ago)
    // are reclaimed, which is what races.
    let server = TestServer::start_with_config(
        "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"3s\"\n",
    );
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "short", true).await;
    api.create_cache(&token, "kept", true).await;
    api.configure(&token, "short", json!({"retention_period": {"Period": 1}}))
        .await;
    let mut fresh = Vec::new();
    let mut refused = 0;
    for round in 0..6u64 {
        // The shared file comes first in the NAR (entries are sorted).
        let shared = noise(1 << 20, 5000 + round);
        let old = store_path(&[
            ("0-shared", &shared),
            ("z-old", &noise(100_000, 6000 + round)),
        ]);
        let new = store_path(&[
            ("0-shared", &shared),
            ("z-new", &noise(100_000, 7000 + round)),
        ]);
        api.push_path(&token, "short", &old).await;
        // Past the retention (1 s) and the grace period (3 s).
        std::thread::sleep(Duration::from_millis(3100));
        let (status, body) =
            upload_around_a_collection(&server, &token, "kept", &new, 700_000).await;
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            assert!(body.contains("RetryUpload"), "{body}");
            refused += 1;
            api.push_path(&token, "kept", &new).await;
        } else {
            assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        }
        let served = api
            .get_bytes(&token, &format!("/kept/nar/{}.nar", path_hash(&new)))
            .await;
        assert!(
            served == nix::dump(Path::new(&new)).as_slice(),
            "round {round}: the new NAR is not whole"
        );
        fresh.push(new);
    }
    eprintln!("uploads refused for a chunk reclaimed under them: {refused} of 6");
    assert!(refused > 0, "the collection never raced an upload");
    let key = api.public_key(&token, "kept").await;
    all_substitute(&server, "kept", &key, &fresh);
}

/// Stored bytes of the chunks a path's NAR uses.
async fn stored_bytes_of(server: &TestServer, cache: &str, path: &str) -> u64 {
    let store = server.store().await;
    let hash = path_hash(path).parse().expect("a store path hash");
    let (_, nar) = store
        .find_object(store.cache(cache).await.id, &hash)
        .await
        .expect("read paths")
        .expect("the path");
    let chunks = store.nar_chunks(nar.id).await.expect("list chunks");
    store.close().await;
    // A chunk that recurs in the NAR is stored once.
    let stored: BTreeMap<_, _> = chunks.iter().map(|c| (c.id, c.stored_size)).collect();
    stored.values().sum()
}

fn system_file(name: &str) -> Vec<u8> {
    let path = Path::new("/usr/lib/x86_64-linux-gnu").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compaction recompresses: after a package's second version is pushed
/// and its first expires, the first's pack (partly live: the second shares
/// most of it) is compacted at a higher zstd level, and the second's bytes
/// on disk shrink. The package is real software: the machine's own
/// libraries, the second version replacing one of them.
#[tokio::test]
async fn compaction_recompresses_what_a_new_version_still_uses() {
    let server = TestServer::start_with_config(
        "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"0s\"\ncompact-below = 0.9\ncompaction-level = 19\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "v1", true).await;
    api.create_cache(token, "v2", true).await;
    api.configure(token, "v1", json!({"retention_period": {"Period": 1}}))
        .await;
    let libc = system_file("libc.so.6");
    let libstdcxx = system_file("libstdc++.so.6");
    let first = store_path(&[
        ("libc.so.6", &libc),
        ("libstdc++.so.6", &libstdcxx),
        ("libm.so.6", &system_file("libm.so.6")),
    ]);
    let second = store_path(&[
        ("libc.so.6", &libc),
        ("libstdc++.so.6", &libstdcxx),
        ("libgcc_s.so.1", &system_file("libgcc_s.so.1")),
    ]);
    api.push_path(token, "v1", &first).await;
    api.push_path(token, "v2", &second).await;
    let before = stored_bytes_of(&server, "v2", &second).await;
    std::thread::sleep(Duration::from_millis(2100));
    let report = server.gc();
    assert!(report.contains("1 compacted"), "{report}");
    let after = stored_bytes_of(&server, "v2", &second).await;
    eprintln!("stored bytes of the second version: {before} before compaction, {after} after");
    assert!(after < before, "{before} -> {after}");
    assert_nothing_orphaned(&server).await;
    let key = api.public_key(token, "v2").await;
    substitutes(&server, "v2", &key, &second);
}

/// `--mode garbage-collector` given `--listen` serves its health and its
/// counters there, so an orchestrator can probe it and Prometheus can see
/// its runs; and nothing else.
#[tokio::test]
async fn a_collector_asked_to_listen_serves_health_and_its_metrics() {
    let server = TestServer::start();
    let collector = server.start_collector();
    let probes = Api::new(&collector.url);
    assert_eq!(
        probes.get_text("/_health").await,
        (reqwest::StatusCode::OK, "OK".to_owned())
    );
    assert_eq!(
        probes.status(None, "/_api/v1/whoami").await,
        reqwest::StatusCode::NOT_FOUND
    );
    // It collects at once on start; its run shows up in its own counters.
    let mut metrics = String::new();
    for _ in 0..600 {
        metrics = probes.get_text("/metrics").await.1;
        if metrics.contains("attic_gc_runs_total{outcome=\"ok\"} 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no completed run in the collector's metrics:\n{metrics}");
}

/// Whether `cache` holds `path`, asked of the database so that asking is
/// not a read that changes what is least recently used.
async fn holds(server: &TestServer, cache: &str, path: &str) -> bool {
    let store = server.store().await;
    let paths = store
        .cache_paths(store.cache(cache).await.id)
        .await
        .expect("list paths");
    store.close().await;
    paths
        .iter()
        .any(|p| p.info.store_path_hash.as_str() == path_hash(path))
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

    let config = server.config_path();
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("grace-period = \"1h\"", "grace-period = \"0s\"");
    std::fs::write(&config, text).expect("write config");
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
