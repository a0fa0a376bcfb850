//! What the garbage collection tests share: a configuration that
//! reclaims at once, store paths of given content, and checks that a
//! collection left nothing behind and that every survivor substitutes.

use crate::nix;
use crate::server::TestServer;
use crate::upload::path_hash;

/// No background collection, and no grace: each `atticadm gc` reclaims
/// everything reclaimable at once.
pub const NO_GRACE: &str = "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"0s\"\n";

/// A store path holding `files` (name, content).
pub fn store_path(files: &[(&str, &[u8])]) -> String {
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
pub async fn assert_nothing_orphaned(server: &TestServer) {
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
pub fn all_substitute(server: &TestServer, cache: &str, key: &str, paths: &[String]) {
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

/// Deletes `path` from the local store and substitutes it back alone.
pub fn substitutes(server: &TestServer, cache: &str, key: &str, path: &str) {
    nix::delete(&[path.to_owned()]);
    let out = nix::substitute(path, &format!("{}/{cache}", server.url), key);
    assert!(
        out.status.success(),
        "{path} does not substitute: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `cache` holds `path`, asked of the database so that asking is
/// not a read that changes what is least recently used.
pub async fn holds(server: &TestServer, cache: &str, path: &str) -> bool {
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

/// Rewrites the server's config from a grace period of an hour to none,
/// for the `atticadm gc` runs that follow.
pub fn end_grace_period(server: &TestServer) {
    let config = server.config_path();
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("grace-period = \"1h\"", "grace-period = \"0s\"");
    std::fs::write(&config, text).expect("write config");
}
