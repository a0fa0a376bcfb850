//! Garbage collection that must not lose data: a collector killed at any
//! stage, a collection racing an upload that reuses chunks it reclaims,
//! orphans of killed uploads, compaction, and the collector as a service.
//! Survivors are substituted with real Nix.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use integration_tests::gc::{
    all_substitute, assert_nothing_orphaned, end_grace_period, store_path, substitutes,
};
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, noise, path_hash, send_half_an_upload};
use serde_json::json;

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
    let stream = send_half_an_upload(&server.url, &token, &info, &nar);
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
    end_grace_period(&server);
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

/// `recompress-after`: a pack an upload wrote, older than that, is
/// rewritten at `compaction-level` though all of it is live, and only
/// once (the new pack records its level); what it serves is unchanged.
#[tokio::test]
async fn cold_packs_are_recompressed_once() {
    let server = TestServer::start_with_config(
        "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"0s\"\ncompact-below = 0\nrecompress-after = \"1s\"\ncompaction-level = 15\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "cold", true).await;
    let path = store_path(&[
        ("libc.so.6", &system_file("libc.so.6")),
        ("libm.so.6", &system_file("libm.so.6")),
    ]);
    api.push_path(token, "cold", &path).await;
    let before = stored_bytes_of(&server, "cold", &path).await;
    // Pack times are in whole seconds: older than 1 s by the next run.
    std::thread::sleep(Duration::from_millis(2100));
    let report = server.gc();
    assert!(report.contains("1 compacted"), "{report}");
    let after = stored_bytes_of(&server, "cold", &path).await;
    eprintln!("stored bytes: {before} at the ingest level, {after} recompressed");
    assert!(after < before, "{before} -> {after}");
    std::thread::sleep(Duration::from_millis(2100));
    let again = server.gc();
    assert!(again.contains("0 compacted"), "{again}");
    assert_eq!(stored_bytes_of(&server, "cold", &path).await, after);
    assert_nothing_orphaned(&server).await;
    let key = api.public_key(token, "cold").await;
    substitutes(&server, "cold", &key, &path);
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
