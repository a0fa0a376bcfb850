//! The core library's formats checked against real Nix as the oracle.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use attic::nar::{NarNode, dump_path, dump_path_to, validate_nar};
use attic::narinfo::NarInfo;
use attic::signing::{PublicKey, SigningKey};
use attic::store_path::StoreDir;
use futures::TryStreamExt;
use integration_tests::nix::{self, command, run, stdout_of};

/// Our NAR of `path`, through both the blocking writer and the stream.
async fn our_dump(path: &Path) -> Vec<u8> {
    let mut nar = Vec::new();
    let size = dump_path_to(path, &mut nar).expect("dump succeeds");
    assert_eq!(size, nar.len() as u64, "reported size is the bytes written");
    let pieces: Vec<bytes::Bytes> = dump_path(path)
        .try_collect()
        .await
        .expect("stream succeeds");
    assert!(
        pieces.concat() == nar,
        "the stream differs from the blocking writer"
    );
    nar
}

/// A tree with every kind of node and names that sort differently by bytes
/// than by any locale.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("nested/deeper/empty")).expect("mkdir");
    std::fs::write(root.join("plain"), b"hello\n").expect("write");
    std::fs::write(root.join("nested/deeper/seven"), b"1234567").expect("write");
    std::fs::write(root.join("zero"), b"").expect("write");
    let script = root.join("script");
    std::fs::write(&script, b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Group/other execute bits alone do not make a file executable to Nix.
    let odd = root.join("group-exec");
    std::fs::write(&odd, b"x").expect("write");
    std::fs::set_permissions(&odd, std::fs::Permissions::from_mode(0o654)).expect("chmod");
    symlink("nested/deeper/seven", root.join("link")).expect("symlink");
    symlink("/does/not/exist", root.join("dangling")).expect("symlink");
    for name in ["B", "a", "a-b", "a.b", "a_b", "\u{e4}", "Z9"] {
        std::fs::write(root.join(name), name.as_bytes()).expect("write");
    }
    // 3 MiB and 3 bytes: larger than any read buffer, and not 8-aligned.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 3)
        .map(|i: u32| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(root.join("nested/big"), big).expect("write");
}

#[tokio::test]
async fn nar_of_a_tree_is_byte_identical_to_nix_store_dump() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tree");
    make_tree(&root);

    let ours = our_dump(&root).await;
    let theirs = nix::dump(&root);
    assert_eq!(ours.len(), theirs.len(), "NAR sizes differ");
    assert!(ours == theirs, "NAR bytes differ from nix-store --dump");

    // Our parser accepts what Nix wrote and sees the same tree.
    let tree = NarNode::from_nar(&theirs).expect("Nix's NAR parses");
    assert_eq!(tree.to_nar(), theirs);
}

#[tokio::test]
async fn nar_of_a_single_file_and_symlink_matches_nix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"just a file").expect("write");
    assert_eq!(our_dump(&file).await, nix::dump(&file));
    let link = dir.path().join("link");
    symlink("file", &link).expect("symlink");
    assert_eq!(our_dump(&link).await, nix::dump(&link));
}

#[tokio::test]
async fn nar_hash_and_size_match_nix_path_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 2 * 1024 * 1024 + 5);
    for path in &closure.paths {
        let info = nix::path_info(path);
        let nar = our_dump(Path::new(path)).await;
        let summary = validate_nar(&nar[..]).await.expect("our NAR validates");
        assert_eq!(summary.nar_size, info.nar_size, "{path}");
        assert_eq!(summary.nar_hash, info.nar_hash, "{path}");
    }
}

#[test]
fn a_key_from_nix_loads_and_signs_what_nix_verifies_with_its_public_half() {
    let (secret, public) = nix::generate_key("oracle-1");
    let key: SigningKey = secret.parse().expect("Nix's secret key loads");
    assert_eq!(key.public_key().to_string(), public);
    let nix_public: PublicKey = public.parse().expect("Nix's public key loads");
    let sig = key.sign(b"message");
    nix_public.verify(b"message", &sig).expect("verifies");
}

#[test]
fn narinfos_nix_writes_parse_and_reserialise_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    let (secret, public) = nix::generate_key("nix-wrote-1");
    let key_file = dir.path().join("secret");
    std::fs::write(&key_file, &secret).expect("write key");
    let cache = dir.path().join("cache");
    run(command("nix").args([
        "copy",
        "--to",
        &format!(
            "file://{}?compression=zstd&secret-key={}",
            cache.display(),
            key_file.display()
        ),
        closure.top(),
    ]));
    let public: PublicKey = public.parse().expect("public key");
    let store = StoreDir::default();
    for path in &closure.paths {
        let hash = store.parse_path(path).expect("store path").hash().clone();
        let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo")))
            .expect("Nix wrote the narinfo");
        let info: NarInfo = text.parse().expect("Nix's narinfo parses");
        assert_eq!(info.to_string(), text, "re-serialised narinfo differs");
        assert_eq!(info.full_store_path(), *path);
        assert_eq!(info.compression.as_deref(), Some("zstd"));
        assert!(info.file_hash.is_some() && info.file_size.is_some());
        let path_info = nix::path_info(path);
        assert_eq!(info.nar_hash, path_info.nar_hash);
        assert_eq!(info.nar_size, path_info.nar_size);
        assert!(
            info.is_signed_by_any(std::slice::from_ref(&public)),
            "Nix's signature verifies"
        );
    }
}

/// Writes an uncompressed binary cache for `paths` with our NAR writer and
/// our signatures, the way the server will serve them.
async fn write_our_cache(dir: &Path, paths: &[String], key: &SigningKey) {
    std::fs::create_dir_all(dir.join("nar")).expect("mkdir");
    nix::write_cache_info(dir);
    let store = StoreDir::default();
    for path in paths {
        let nar = our_dump(Path::new(path)).await;
        let summary = validate_nar(&nar[..]).await.expect("valid");
        let nix_info = nix::path_info(path);
        let store_path = store.parse_path(path).expect("store path");
        let url = format!("nar/{}.nar", summary.nar_hash.to_nix32());
        std::fs::write(dir.join(&url), &nar).expect("write NAR");
        let mut info = NarInfo {
            store_dir: store.clone(),
            store_path: store_path.clone(),
            url,
            compression: Some("none".into()),
            file_hash: Some(summary.nar_hash),
            file_size: Some(summary.nar_size),
            nar_hash: summary.nar_hash,
            nar_size: summary.nar_size,
            references: nix_info
                .references
                .iter()
                .map(|r| store.parse_path(r).expect("reference"))
                .collect(),
            deriver: nix_info
                .deriver
                .as_deref()
                .map(|d| store.parse_path(d).expect("deriver")),
            system: None,
            sigs: Vec::new(),
            ca: None,
            extra_fields: Vec::new(),
        };
        info.sign(key);
        std::fs::write(
            dir.join(format!("{}.narinfo", store_path.hash())),
            info.to_string(),
        )
        .expect("write narinfo");
    }
}

#[tokio::test]
async fn nix_substitutes_paths_we_sign_and_refuses_a_wrong_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 300_000);
    let original = nix::dump(Path::new(closure.top()));
    let key = SigningKey::generate("ours-1").expect("key");
    let cache = dir.path().join("cache");
    write_our_cache(&cache, &closure.paths, &key).await;
    let url = format!("file://{}", cache.display());

    nix::delete(&closure.paths);
    for path in &closure.paths {
        assert!(!nix::is_valid(path), "{path} still in the store");
    }

    // A key of the same name but other bits: Nix must refuse every path.
    let impostor = SigningKey::generate("ours-1").expect("key").public_key();
    let refused = nix::substitute(closure.top(), &url, &impostor.to_string());
    assert!(
        !refused.status.success(),
        "Nix accepted a path signed by another key"
    );
    assert!(!nix::is_valid(closure.top()));

    let accepted = nix::substitute(closure.top(), &url, &key.public_key().to_string());
    assert!(
        accepted.status.success(),
        "Nix refused our signatures:\n{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    for path in &closure.paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
    assert_eq!(nix::dump(Path::new(closure.top())), original);
    let data = stdout_of(command("cat").arg(format!("{}/share/data", closure.paths[0])));
    assert!(data.starts_with("leaf "), "{data}");
}
