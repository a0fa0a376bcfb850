//! `atticadm import-attic`: an Attic server's database and chunk store,
//! built from Attic's schema and layout (`integration_tests::attic_store`),
//! brought into a running server. Real Nix then substitutes every imported
//! path with the cache's original public key. Damage (a corrupt chunk, a
//! NAR stuck in `PendingUpload`) is reported and skipped; a second run
//! duplicates nothing; a run killed midway completes when run again.
//! Attic's side follows `ATTIC_TEST_BACKEND`: SQLite and a directory, or
//! PostgreSQL and an S3 bucket.

use std::path::{Path, PathBuf};
use std::process::Output;

use integration_tests::attic_store::{
    AtticStore, ChunkCompression as C, NarState, NewAtticObject, base_name,
};
use integration_tests::gc::{all_substitute, store_path};
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, nar_info_from_nix, noise};

/// An Attic store with two public caches and a soft-deleted one.
struct Scenario {
    attic: AtticStore,
    config: PathBuf,
    alpha_key: String,
    beta_key: String,
    /// leaf, middle, top, in `alpha`; `middle` in `beta` too.
    closure: Vec<String>,
    /// In `alpha`, one of its chunks corrupt.
    damaged: String,
    /// In `alpha`, its NAR `PendingUpload`.
    pending: String,
    /// Only in the soft-deleted cache.
    deleted: String,
}

async fn scenario(dir: &Path) -> Scenario {
    let attic = AtticStore::create().await;
    let (alpha_secret, alpha_key) = nix::generate_key("alpha.example-1");
    let (beta_secret, beta_key) = nix::generate_key("beta.example-1");
    let (gone_secret, _) = nix::generate_key("gone.example-1");
    let alpha = attic
        .add_cache("alpha", &alpha_secret, true, Some(30 * 86_400), false)
        .await;
    let beta = attic
        .add_cache("beta", &beta_secret, true, None, false)
        .await;
    let gone = attic
        .add_cache("gone", &gone_secret, true, None, true)
        .await;

    let closure = nix::build_closure(dir, 400_000).paths;
    let (leaf, middle, top) = (&closure[0], &closure[1], &closure[2]);
    // The leaf cut in four, one chunk per compression; the others whole.
    attic
        .add_path(
            alpha,
            leaf,
            &[
                (100_000, C::None),
                (100_000, C::Zstd),
                (100_000, C::Xz),
                (0, C::Brotli),
            ],
            NarState::Valid,
        )
        .await;
    let (middle_nar, _) = attic
        .add_path(alpha, middle, &[(0, C::Zstd)], NarState::Valid)
        .await;
    attic.add_path_object(beta, middle_nar, middle).await;
    attic
        .add_path(alpha, top, &[(0, C::Xz)], NarState::Valid)
        .await;

    let damaged = store_path(&[("data", &noise(200_000, 71))]);
    let (_, files) = attic
        .add_path(
            alpha,
            &damaged,
            &[(70_000, C::Zstd), (70_000, C::None), (0, C::Zstd)],
            NarState::Valid,
        )
        .await;
    attic.corrupt_chunk(&files[0]);
    let pending = store_path(&[("data", &noise(5_000, 72))]);
    attic
        .add_path(alpha, &pending, &[(0, C::Zstd)], NarState::PendingUpload)
        .await;
    let deleted = store_path(&[("data", &noise(5_000, 73))]);
    attic
        .add_path(gone, &deleted, &[(0, C::Brotli)], NarState::Valid)
        .await;

    let config = attic.write_config();
    Scenario {
        attic,
        config,
        alpha_key,
        beta_key,
        closure,
        damaged,
        pending,
        deleted,
    }
}

fn import(server: &TestServer, config: &Path, env: &[(&str, &str)]) -> Output {
    server
        .home()
        .command("atticadm")
        .arg("import-attic")
        .arg("--attic-config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run atticadm")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every good path arrives with its metadata, times and cache settings,
/// and real Nix substitutes it with the cache's original key; the damaged
/// and pending NARs are reported with their paths and left out, as is the
/// soft-deleted cache; a second run changes nothing.
#[tokio::test]
async fn imports_caches_paths_and_nars_and_reports_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path()).await;
    let server = TestServer::start();

    let output = import(&server, &s.config, &[]);
    let report = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "damage makes the run fail: {report}"
    );
    assert!(
        report.contains("caches: 2 imported, 0 refused; 1 soft-deleted"),
        "{report}"
    );
    assert!(report.contains("paths: 3 imported, 1 attached"), "{report}");
    assert!(report.contains("2 damaged"), "{report}");
    assert!(
        report.contains(&format!("not imported: alpha: {}", s.damaged)),
        "{report}"
    );
    assert!(
        report.contains(&format!("not imported: alpha: {}", s.pending)),
        "{report}"
    );
    assert!(report.contains("PendingUpload"), "{report}");
    assert!(!report.contains(&s.deleted), "{report}");

    let store = server.store().await;
    let alpha = store.cache("alpha").await;
    assert_eq!(alpha.signing_key.public_key().to_string(), s.alpha_key);
    assert!(alpha.is_public);
    assert_eq!(alpha.priority, 41);
    assert_eq!(alpha.upstream_cache_key_names, ["cache.nixos.org-1"]);
    assert_eq!(alpha.retention_period, Some(30 * 86_400));
    let beta = store.cache("beta").await;
    assert_eq!(beta.signing_key.public_key().to_string(), s.beta_key);
    assert!(
        store
            .find_cache(&"gone".parse().expect("a name"))
            .await
            .expect("read")
            .is_none(),
        "a soft-deleted cache is not imported"
    );
    let mut expected = s.closure.clone();
    expected.sort();
    let history = store.path_history(alpha.id).await.expect("paths");
    let paths: Vec<&str> = history.iter().map(|p| p.store_path.as_str()).collect();
    assert_eq!(paths, expected);
    for path in &history {
        assert_eq!(path.created_at, 1_700_001_000, "{}", path.store_path);
        assert_eq!(path.last_accessed_at, Some(1_700_002_000));
        assert_eq!(path.created_by.as_deref(), Some("ci"));
    }
    let beta_paths = store.path_history(beta.id).await.expect("paths");
    assert_eq!(beta_paths.len(), 1);
    assert_eq!(beta_paths[0].store_path, s.closure[1]);
    let stored = store.cache_paths(alpha.id).await.expect("paths");
    let top = stored
        .iter()
        .find(|p| p.info.store_path == s.closure[2])
        .expect("top");
    assert_eq!(
        top.info.references,
        nix::path_info(&s.closure[2]).references,
        "references arrive as full paths"
    );
    store.close().await;

    // The audit log says the operator created the cache and brought each
    // path over, and who pushed it to Attic.
    let audit = server.atticadm(&["audit", "--cache", "alpha", "--json"]);
    assert!(audit.status.success());
    let events: Vec<serde_json::Value> = stdout(&audit)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(events[0]["action"], "create-cache", "{events:#?}");
    let mut imported: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "import" && e["actor"] == "atticadm")
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.contains("ci")))
        .filter_map(|e| e["store_path"].as_str())
        .collect();
    imported.sort_unstable();
    assert_eq!(imported, expected);

    let counts = server.row_counts().await;
    let again = import(&server, &s.config, &[]);
    let report = stdout(&again);
    assert!(report.contains("4 held already (skipped)"), "{report}");
    assert!(report.contains("paths: 0 imported, 0 attached"), "{report}");
    assert_eq!(
        server.row_counts().await,
        counts,
        "a second run adds nothing"
    );

    all_substitute(&server, "alpha", &s.alpha_key, &s.closure);
    // `middle` from `beta`, with beta's own key (`top` refers to it).
    nix::delete(&[s.closure[2].clone(), s.closure[1].clone()]);
    let out = nix::substitute(&s.closure[1], &format!("{}/beta", server.url), &s.beta_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.attic.close().await;
}

/// A run killed after its second NAR, run again, brings everything over
/// once: the same rows as a run never killed.
#[tokio::test]
async fn import_killed_midway_completes_when_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path()).await;
    let server = TestServer::start();

    let killed = import(&server, &s.config, &[("ATTIC_IMPORT_CRASH_AFTER", "2")]);
    assert!(!killed.status.success(), "the run was killed");
    assert!(
        String::from_utf8_lossy(&killed.stderr).contains("ATTIC_IMPORT_CRASH_AFTER=2"),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let partial = server.row_counts().await;
    assert!(partial.paths < 4, "it stopped before the end: {partial:?}");

    let output = import(&server, &s.config, &[]);
    let report = stdout(&output);
    assert!(report.contains("caches: 2 imported"), "{report}");
    let counts = server.row_counts().await;
    assert_eq!(counts.paths, 4, "3 paths in alpha, 1 in beta: {report}");
    assert_eq!(counts.nars, 3, "each NAR stored once");
    let third = import(&server, &s.config, &[]);
    assert!(stdout(&third).contains("4 held already (skipped)"));
    assert_eq!(server.row_counts().await, counts, "nothing duplicated");

    all_substitute(&server, "alpha", &s.alpha_key, &s.closure);
    s.attic.close().await;
}

/// A cache whose name is taken here by a cache with another key is
/// refused whole (its paths would be signed by a key clients do not
/// trust); a path whose row holds a reference that is no store path is
/// refused alone. Both are reported; everything else is imported.
#[tokio::test]
async fn refuses_cache_with_another_key_and_path_with_bad_references() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path()).await;
    let odd = store_path(&[("data", &noise(3_000, 74))]);
    let nar = nix::dump(Path::new(&odd));
    let (nar_id, _) = s
        .attic
        .add_nar(&nar, &[(0, C::Zstd)], NarState::Valid)
        .await;
    // `beta` is the second cache created, so its id is 2.
    s.attic
        .add_object(NewAtticObject {
            cache_id: 2,
            nar_id,
            store_path: &odd,
            references: vec!["not a store path".to_owned()],
            deriver: None,
            sigs: Vec::new(),
            created_at: 1_700_001_000,
            last_accessed_at: None,
            created_by: None,
        })
        .await;
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "alpha", true).await;
    let own_key = api.public_key(&server.root_token, "alpha").await;

    let output = import(&server, &s.config, &[]);
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("caches: 1 imported, 1 refused"), "{report}");
    assert!(
        report.contains(
            "refused cache alpha: a cache named alpha exists here with another signing key"
        ),
        "{report}"
    );
    assert!(
        report.contains(&format!("refused beta: {odd}: ")),
        "{report}"
    );
    assert!(report.contains("references"), "{report}");
    let store = server.store().await;
    let alpha = store.cache("alpha").await;
    assert_eq!(
        alpha.signing_key.public_key().to_string(),
        own_key,
        "left as it was"
    );
    assert!(store.cache_paths(alpha.id).await.expect("paths").is_empty());
    let beta = store.cache("beta").await;
    let beta_paths = store.path_history(beta.id).await.expect("paths");
    assert_eq!(beta_paths.len(), 1, "only middle: {beta_paths:?}");
    store.close().await;
    s.attic.close().await;
}

/// Attic's client writes references (and the deriver) as base names in
/// its upload preamble: `upload-path` takes them, stores full paths, and
/// real Nix substitutes the closure with the signatures that makes.
#[tokio::test]
async fn upload_path_accepts_references_as_base_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000).paths;
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "attic-client", true).await;
    for path in &closure {
        let mut info = nar_info_from_nix("attic-client", path);
        info.references = info.references.iter().map(|r| base_name(r)).collect();
        info.deriver = info.deriver.as_deref().map(base_name);
        api.upload_ok(token, &info, nix::dump(Path::new(path)))
            .await;
    }
    let store = server.store().await;
    let cache = store.cache("attic-client").await;
    let stored = store.cache_paths(cache.id).await.expect("paths");
    let top = stored
        .iter()
        .find(|p| p.info.store_path == closure[2])
        .expect("top");
    assert_eq!(top.info.references, nix::path_info(&closure[2]).references);
    store.close().await;
    let key = api.public_key(token, "attic-client").await;
    all_substitute(&server, "attic-client", &key, &closure);
}

/// A config that is not Attic's is refused before anything is written.
#[tokio::test]
async fn refuses_config_without_storage_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("attic.toml");
    std::fs::write(&config, "[database]\nurl = \"sqlite:///nonexistent.db\"\n").expect("write");
    let server = TestServer::start();
    let counts = server.row_counts().await;
    let output = import(&server, &config, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[storage]"), "{stderr}");
    assert_eq!(server.row_counts().await, counts);
}

/// The import's speed on a larger store: the machine's shared libraries as
/// store paths, chunked and zstd-compressed as Attic stores them. Prints
/// MiB/s; a benchmark, so run on demand (`--run-ignored only`), best on
/// the release profile.
#[tokio::test]
#[ignore = "benchmark: several hundred MiB"]
async fn import_speed_on_shared_libraries() {
    let attic = AtticStore::create().await;
    let (secret, _) = nix::generate_key("bench.example-1");
    let cache = attic.add_cache("bench", &secret, true, None, false).await;
    let mut total = 0usize;
    let limit = 300 << 20;
    let mut candidates: Vec<PathBuf> = ["/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/libexec"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    candidates.sort();
    for file in candidates {
        if total >= limit {
            break;
        }
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) as usize;
        if size < 64 << 10 {
            continue;
        }
        let content = std::fs::read(&file).expect("read");
        let path = store_path(&[("lib", &content)]);
        let nar = nix::dump(Path::new(&path));
        // Attic's default chunking: about 64 KiB chunks, zstd.
        let pieces: Vec<(usize, C)> = (0..nar.len().div_ceil(64 << 10))
            .map(|_| (64 << 10, C::Zstd))
            .collect();
        let (nar_id, _) = attic.add_nar(&nar, &pieces, NarState::Valid).await;
        attic.add_path_object(cache, nar_id, &path).await;
        total += nar.len();
    }
    let config = attic.write_config();
    let server = TestServer::start();
    // `ATTIC_BENCH_JOBS` sets `--jobs` (default 2).
    let jobs = std::env::var("ATTIC_BENCH_JOBS").unwrap_or_else(|_| "2".to_owned());
    let output = server
        .home()
        .command("atticadm")
        .args(["import-attic", "--jobs", &jobs, "--attic-config"])
        .arg(&config)
        .output()
        .expect("run atticadm");
    let report = stdout(&output);
    assert!(output.status.success(), "{report}");
    eprintln!("{report}");
    attic.close().await;
}
