//! `atticadm backup` while pushes go on, `atticadm restore` into an empty
//! home, and a server started there: `atticadm verify` is clean, and real
//! Nix substitutes every path acknowledged before the backup started. On
//! PostgreSQL, `backup` refuses and points to the book's recipe.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use integration_tests::backend::Backend;
use integration_tests::client::text;
use integration_tests::gc::store_path;
use integration_tests::nix;
use integration_tests::server::{TestHome, TestServer};
use integration_tests::upload::{Api, fake_store_path, nar_info_for, nar_of_file, noise};

/// Substitutes every one of `paths` (none of them in the local store) from
/// `cache` on `server` in one run of real Nix, trusting only `key`.
fn all_substitute_from(server: &TestServer, cache: &str, key: &str, paths: &[String]) {
    let out = nix::run_unchecked(
        nix::command("nix-store")
            .arg("--realise")
            .args(paths)
            .args(["--option", "substituters"])
            .arg(format!("{}/{cache}", server.url))
            .args(["--option", "trusted-public-keys", key])
            .args(["--option", "require-sigs", "true"]),
    );
    assert!(
        out.status.success(),
        "the restored server does not substitute them: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
}

/// Uploads made-up paths one after another until `stop` is set; sends each
/// acknowledged path on `acknowledged`.
async fn push_until_stopped(
    url: String,
    token: String,
    stop: Arc<AtomicBool>,
    acknowledged: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let api = Api::new(&url);
    let mut seed = 1000;
    while !stop.load(Ordering::SeqCst) {
        seed += 1;
        let path = fake_store_path("streamed");
        let nar = nar_of_file(noise(96 << 10, seed));
        api.upload_ok(&token, &nar_info_for("team", &path, &nar), nar)
            .await;
        if acknowledged.send(path).is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_pushes_restores_to_a_server_that_substitutes_every_acknowledged_path()
 {
    let server = TestServer::start();
    let destination = tempfile::tempdir().expect("tempdir");
    let backup_dir = destination.path().join("backup");
    let backup_arg = backup_dir.to_str().expect("UTF-8 path");

    if Backend::from_env() == Backend::PostgresS3 {
        // pg_dump is PostgreSQL's own tool: the book gives the recipe.
        let refused = server.atticadm(&["backup", backup_arg]);
        assert!(!refused.status.success(), "{}", text(&refused));
        let message = text(&refused);
        assert!(
            message.contains("pg_dump") && message.contains("book/src/backup.md"),
            "{message}"
        );
        assert!(!backup_dir.exists(), "a refused backup left a directory");
        return;
    }

    let root_token = server.root_token.clone();
    let token = &root_token;
    let api = Api::new(&server.url);
    api.create_cache(token, "team", true).await;
    let key = api.public_key(token, "team").await;
    let mut real_paths = Vec::new();
    for seed in 0..4u64 {
        let path = store_path(&[
            ("big", &noise(300 << 10, 70 + seed)),
            ("small", format!("small {seed}").as_bytes()),
        ]);
        api.push_path(token, "team", &path).await;
        real_paths.push(path);
    }

    // A stream of pushes, running before, during and after the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let (sender, mut acknowledged) = tokio::sync::mpsc::unbounded_channel();
    let pusher = tokio::spawn(push_until_stopped(
        server.url.clone(),
        token.clone(),
        stop.clone(),
        sender,
    ));
    let mut streamed = vec![acknowledged.recv().await.expect("a first streamed push")];
    while let Ok(path) = acknowledged.try_recv() {
        streamed.push(path);
    }
    let acknowledged_before_backup = streamed.clone();

    let home = server.home().path().to_owned();
    let backup_target = backup_dir.clone();
    let backup = tokio::task::spawn_blocking(move || {
        std::process::Command::new(integration_tests::server::binary("atticadm"))
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .arg("backup")
            .arg(&backup_target)
            .output()
            .expect("run atticadm backup")
    })
    .await
    .expect("backup task");
    // One more acknowledged push: the stream, which pushes one path after
    // another, was running from before the backup began until after it
    // ended.
    streamed.push(acknowledged.recv().await.expect("a push after the backup"));
    stop.store(true, Ordering::SeqCst);
    pusher.await.expect("the pusher");
    let report = text(&backup);
    assert!(backup.status.success(), "atticadm backup failed: {report}");
    assert!(report.contains("backed up to"), "{report}");

    // Private: the copy holds every cache's signing key and the token key.
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&backup_dir), 0o700);
    assert_eq!(mode(&backup_dir.join("server.db")), 0o600);
    assert_eq!(mode(&backup_dir.join("server.toml")), 0o600);
    assert!(
        !backup_dir.join("server.db-wal").exists(),
        "the copy is not one self-contained file"
    );

    // A fresh machine: an empty home, the backup restored into it.
    let fresh = TestHome::new();
    let backup_arg = backup_dir.to_str().expect("UTF-8 path");
    let restored = fresh.run("atticadm", &["restore", backup_arg]);
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(
        text(&restored).contains("wrote the config"),
        "{}",
        text(&restored)
    );
    // A second restore onto it is refused: restore is for a fresh server.
    let again = fresh.run("atticadm", &["restore", backup_arg]);
    assert!(!again.status.success(), "restored over a database");
    assert!(text(&again).contains("already"), "{}", text(&again));
    drop(server);

    let restored = TestServer::start_on_written_config(fresh, &[]);
    let verify = restored.atticadm(&["verify"]);
    assert!(
        verify.status.success(),
        "verify found damage: {}",
        text(&verify)
    );
    assert!(
        text(&verify).contains("found 0 damaged"),
        "{}",
        text(&verify)
    );

    // The old root token still works (the config, and its key, came along),
    // and the cache kept its signing key.
    let api = Api::new(&restored.url);
    assert_eq!(api.public_key(token, "team").await, key);
    let mut expected = real_paths.clone();
    expected.extend(acknowledged_before_backup);
    nix::delete(&real_paths);
    all_substitute_from(&restored, "team", &key, &expected);

    // The restored server takes pushes.
    let path = fake_store_path("after-restore");
    let nar = nar_of_file(noise(64 << 10, 9));
    api.upload_ok(token, &nar_info_for("team", &path, &nar), nar)
        .await;
}

/// A directory without `backup.json` is an interrupted backup, and a
/// backup goes only into a new or empty directory.
#[test]
fn an_interrupted_backup_is_not_restored_and_a_backup_never_mixes_into_a_full_directory() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let interrupted = scratch.path().join("interrupted");
    std::fs::create_dir_all(interrupted.join("storage")).expect("mkdir");
    std::fs::write(interrupted.join("server.db"), b"").expect("write");
    let fresh = TestHome::new();
    let refused = fresh.run(
        "atticadm",
        &["restore", interrupted.to_str().expect("UTF-8")],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("not a complete backup"),
        "{}",
        text(&refused)
    );
    assert!(
        !fresh.path().join("data/attic/server.db").exists(),
        "a refused restore wrote a database"
    );

    let server = TestServer::start_embedded();
    let full = server.atticadm(&["backup", interrupted.to_str().expect("UTF-8")]);
    assert!(!full.status.success());
    assert!(text(&full).contains("not empty"), "{}", text(&full));
}

/// Every pack file of an embedded server, by path.
fn pack_files(server: &TestServer) -> std::collections::BTreeSet<std::path::PathBuf> {
    fn walk(dir: &Path, found: &mut std::collections::BTreeSet<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.insert(path);
            }
        }
    }
    let mut found = std::collections::BTreeSet::new();
    walk(&server.data_dir().join("storage/packs"), &mut found);
    found
}

/// A pack the collector is deleting may be gone by the time the backup
/// reaches it (the restored server does not miss it); a pack the database
/// copy names as live that is gone fails the backup, saying why, rather
/// than leaving a copy that names a pack it lacks.
#[tokio::test]
async fn a_backup_tolerates_packs_being_deleted_but_never_lacks_a_live_one() {
    let server = TestServer::start_embedded();
    let token = server.root_token.clone();
    let api = Api::new(&server.url);
    api.create_cache(&token, "keep", true).await;
    api.create_cache(&token, "drop", false).await;
    let key = api.public_key(&token, "keep").await;
    let kept = store_path(&[("big", &noise(200 << 10, 81))]);
    api.push_path(&token, "keep", &kept).await;
    let kept_pack = pack_files(&server);
    assert_eq!(kept_pack.len(), 1);
    let dropped = fake_store_path("dropped");
    let nar = nar_of_file(noise(200 << 10, 82));
    api.upload_ok(&token, &nar_info_for("drop", &dropped, &nar), nar)
        .await;
    let dropped_pack: Vec<_> = pack_files(&server)
        .difference(&kept_pack)
        .cloned()
        .collect();
    assert_eq!(dropped_pack.len(), 1);
    api.destroy_cache(&token, "drop").await;
    // Marks the dropped pack; its blob waits for the grace period.
    let report = server.gc();
    assert!(report.contains("1 marked for deletion"), "{report}");
    // The collector finishing that deletion while a backup runs.
    std::fs::remove_file(&dropped_pack[0]).expect("remove the marked pack");

    let scratch = tempfile::tempdir().expect("tempdir");
    let backup_dir = scratch.path().join("backup");
    let backup_arg = backup_dir.to_str().expect("UTF-8");
    let backup = server.atticadm(&["backup", backup_arg]);
    assert!(backup.status.success(), "{}", text(&backup));
    assert!(
        text(&backup).contains("1 packs the garbage collector was deleting were already gone"),
        "{}",
        text(&backup)
    );

    let fresh = TestHome::new();
    let restored = fresh.run("atticadm", &["restore", backup_arg]);
    assert!(restored.status.success(), "{}", text(&restored));
    let restored = TestServer::start_on_written_config(fresh, &[]);
    let verify = restored.atticadm(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    nix::delete(std::slice::from_ref(&kept));
    all_substitute_from(&restored, "keep", &key, std::slice::from_ref(&kept));

    // A live pack gone (as if the backup outlasted the grace period): the
    // backup fails and says so.
    for pack in &kept_pack {
        std::fs::remove_file(pack).expect("remove the live pack");
    }
    let second = scratch.path().join("second");
    let failed = server.atticadm(&["backup", second.to_str().expect("UTF-8")]);
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains("was deleted while the backup ran"),
        "{}",
        text(&failed)
    );
    assert!(
        !second.join("backup.json").exists(),
        "a failed backup looks complete"
    );
}
