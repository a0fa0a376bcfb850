//! The whole round trip with real Nix: build a closure, upload its NARs to
//! a fresh `atticd`, delete it, and have Nix substitute it back.

use std::path::Path;

use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, nar_info_from_nix};

#[tokio::test]
async fn nix_substitutes_a_closure_from_two_caches_that_share_its_chunks() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let admin = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    api.create_cache(&admin, "alpha", false).await;
    api.create_cache(&admin, "beta", true).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 2 * 1024 * 1024);
    let original = nix::dump(Path::new(closure.top()));

    // Everything is missing at first, then uploaded to alpha.
    let hashes: Vec<&str> = closure
        .paths
        .iter()
        .map(|p| integration_tests::upload::path_hash(p))
        .collect();
    assert_eq!(api.missing(&admin, "alpha", &hashes).await.len(), 3);
    for path in &closure.paths {
        let reply = api
            .upload_ok(
                &admin,
                &nar_info_from_nix("alpha", path),
                nix::dump(Path::new(path)),
            )
            .await;
        assert_eq!(reply["kind"], "Uploaded", "{reply}");
    }
    assert!(api.missing(&admin, "alpha", &hashes).await.is_empty());
    let counts = server.row_counts().await;
    let chunks = counts.chunks;
    let blobs = server.blob_count();
    assert_eq!(blobs, 3, "one pack per upload that brought new chunks");
    assert_eq!(counts.packs, 3);
    assert!(chunks > 3, "the 2 MiB file was split into chunks: {chunks}");

    // The same paths in beta are deduplicated: no new chunk, no new blob,
    // though the reply speaks of beta alone, which held none of them.
    for path in &closure.paths {
        let reply = api
            .upload_ok(
                &admin,
                &nar_info_from_nix("beta", path),
                nix::dump(Path::new(path)),
            )
            .await;
        assert_eq!(reply["kind"], "Uploaded", "{reply}");
        assert_eq!(reply["bytes_stored"], reply["file_size"], "{reply}");
    }
    let counts = server.row_counts().await;
    assert_eq!(counts.chunks, chunks);
    assert_eq!(counts.nars, 3);
    assert_eq!(counts.paths, 6);
    assert_eq!(server.blob_count(), blobs);

    let alpha_key = api.public_key(&admin, "alpha").await;
    let beta_key = api.public_key(&admin, "beta").await;
    assert_ne!(alpha_key, beta_key);
    let host = server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host");
    let netrc = nix::write_netrc(dir.path(), host, &admin);

    // Private alpha, with credentials from netrc, as Nix users configure it.
    nix::delete(&closure.paths);
    let out = nix::substitute_with_netrc(
        closure.top(),
        &format!("{}/alpha", server.url),
        &alpha_key,
        Some(&netrc),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(nix::dump(Path::new(closure.top())), original);

    // Public beta, anonymously: a wrong key is refused, the right one accepted.
    nix::delete(&closure.paths);
    let refused = nix::substitute(closure.top(), &format!("{}/beta", server.url), &alpha_key);
    assert!(
        !refused.status.success(),
        "Nix accepted beta's paths under alpha's key"
    );
    assert!(!nix::is_valid(closure.top()));
    let out = nix::substitute(closure.top(), &format!("{}/beta", server.url), &beta_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &closure.paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
    assert_eq!(nix::dump(Path::new(closure.top())), original);
}
