//! Pushing with Nix alone: `nix copy --to http://host/cache`, build logs
//! through `nix store copy-log` and `nix log`, and the bad input the
//! `PUT` routes refuse.

use std::path::{Path, PathBuf};

use attic::hash::Sha256Hash;
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, path_hash};
use reqwest::{Method, StatusCode};

fn host(server: &TestServer) -> &str {
    server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host")
}

/// `nix copy --to URL paths` with credentials from `netrc`.
fn nix_copy(url: &str, netrc: &Path, paths: &[String]) -> std::process::Output {
    nix::run_unchecked(
        nix::command("nix")
            .args(["copy", "--to", url, "--option", "netrc-file"])
            .arg(netrc)
            .args(paths),
    )
}

async fn uploads_staged(server: &TestServer) -> u64 {
    server.row_counts().await.staged_nars
}

/// `nix copy` pushes a closure, with zstd and with Nix's default xz; it
/// substitutes back, signed by the cache's own key; a second copy uploads
/// nothing, and a copy to a second cache stores no new chunk.
#[tokio::test]
async fn nix_copy_pushes_a_closure_that_substitutes_back() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let admin = &server.root_token;
    let dir = tempfile::tempdir().expect("tempdir");
    let pusher = server.make_token(&["--pull", "team-*", "--push", "team-*"]);
    let netrc = nix::write_netrc(dir.path(), host(&server), &pusher);

    for (cache, query) in [("team-zstd", "?compression=zstd"), ("team-xz", "")] {
        api.create_cache(admin, cache, false).await;
        let key = api.public_key(admin, cache).await;
        let closure = nix::build_closure(dir.path(), 512 * 1024);
        let url = format!("{}/{cache}{query}", server.url);
        let out = nix_copy(&url, &netrc, &closure.paths);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hashes: Vec<&str> = closure.paths.iter().map(|p| path_hash(p)).collect();
        assert!(api.missing(admin, cache, &hashes).await.is_empty());
        assert_eq!(uploads_staged(&server).await, 0, "every NAR was claimed");

        nix::delete(&closure.paths);
        let out = nix::substitute_with_netrc(
            closure.top(),
            &format!("{}/{cache}", server.url),
            &key,
            Some(&netrc),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(closure.paths.iter().all(|p| nix::is_valid(p)));

        // Again: every narinfo is found, nothing is uploaded.
        let before = server.row_counts().await;
        let out = nix_copy(&url, &netrc, &closure.paths);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let again = server.row_counts().await;
        assert_eq!(again.packs, before.packs);
        assert_eq!(again.nars, before.nars);
        assert_eq!(uploads_staged(&server).await, 0);

        // To a second cache: the NARs go up (possession is proven by
        // sending them) but no new chunk is stored.
        let second = format!("{cache}-again");
        api.create_cache(admin, &second, false).await;
        let chunks = server.row_counts().await.chunks;
        let out = nix_copy(
            &format!("{}/{second}{query}", server.url),
            &netrc,
            &closure.paths,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = server.row_counts().await;
        assert_eq!(after.chunks, chunks);
        assert_eq!(after.packs, before.packs);
        assert!(api.missing(admin, &second, &hashes).await.is_empty());
    }
}

/// `nix store copy-log` then `nix log` round-trip a build log.
#[tokio::test]
async fn build_logs_round_trip_through_the_cache() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "logs", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let netrc = nix::write_netrc(dir.path(), host(&server), &server.root_token);
    let marker = format!("build log marker {}", nix::nonce());
    let expr = dir.path().join("logged.nix");
    std::fs::write(
        &expr,
        format!(
            r#"derivation {{
  name = "logged";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo '{marker}'; /bin/mkdir $out" ];
}}"#
        ),
    )
    .expect("write");
    let drv = nix::stdout_of(nix::command("nix-instantiate").arg(&expr));
    let output = nix::stdout_of(nix::command("nix-store").args(["--realise", &drv]));
    let url = format!("{}/logs", server.url);
    // The output goes up too: `nix log` finds the derivation through the
    // output's narinfo (its Deriver), as users look logs up.
    let out = nix_copy(&url, &netrc, std::slice::from_ref(&output));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nix::run_unchecked(
        nix::command("nix")
            .args([
                "store",
                "copy-log",
                "--to",
                &url,
                "--option",
                "substituters",
                "",
            ])
            .args(["--option", "netrc-file"])
            .arg(&netrc)
            .arg(&drv),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.row_counts().await.build_logs, 1);
    let out = nix::run_unchecked(
        nix::command("nix")
            .args(["log", "--store", &url, "--option", "substituters", ""])
            .args(["--option", "netrc-file"])
            .arg(&netrc)
            .arg(&output),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&marker),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A pull-only token reads it; without one, the private cache refuses.
    let reader = server.make_token(&["--pull", "logs"]);
    let name = Path::new(&drv)
        .file_name()
        .expect("name")
        .to_str()
        .expect("utf-8");
    let log_path = format!("/logs/log/{name}");
    assert_eq!(api.status(Some(&reader), &log_path).await, StatusCode::OK);
    assert_eq!(api.status(None, &log_path).await, StatusCode::UNAUTHORIZED);
    let put = api
        .request(Method::PUT, &log_path, Some(&reader))
        .body("forged")
        .send()
        .await
        .expect("request");
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
}

/// A NAR file for the `PUT` routes: the NAR of a small file, zstd.
struct NarFile {
    nar: Vec<u8>,
    body: Vec<u8>,
    name: String,
}

fn nar_file(dir: &Path, content: &[u8]) -> NarFile {
    let file: PathBuf = dir.join(format!("f-{}", nix::nonce()));
    std::fs::write(&file, content).expect("write");
    let nar = nix::dump(&file);
    let body = zstd::encode_all(nar.as_slice(), 3).expect("compress");
    let name = format!("{}.nar.zst", Sha256Hash::digest(&body).to_nix32());
    NarFile { nar, body, name }
}

fn narinfo(store_path: &str, file: &NarFile, references: &str) -> String {
    format!(
        "StorePath: {store_path}\nURL: nar/{}\nCompression: zstd\nNarHash: {}\nNarSize: {}\nReferences: {references}\n",
        file.name,
        Sha256Hash::digest(&file.nar).to_typed_nix32(),
        file.nar.len()
    )
}

async fn put(api: &Api, token: &str, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let response = api
        .request(Method::PUT, path, Some(token))
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

/// Every bad `PUT` is a clear 4xx and leaves no path.
#[tokio::test]
async fn bad_nix_uploads_are_refused_and_change_nothing() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "a", false).await;
    api.create_cache(token, "b", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = async || server.row_counts().await.paths;

    // A body that does not hash to its file name.
    let good = nar_file(dir.path(), b"good content");
    let other = nar_file(dir.path(), b"other content");
    let (status, body) = put(
        &api,
        token,
        &format!("/a/nar/{}", good.name),
        other.body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("NarMismatch"), "{body}");
    assert_eq!(uploads_staged(&server).await, 0);

    // An unknown compression: 415 naming the fix.
    let lz4 = good.name.replace(".nar.zst", ".nar.lz4");
    let (status, body) = put(&api, token, &format!("/a/nar/{lz4}"), good.body.clone()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body.contains("compression=zstd"), "{body}");

    // A staged NAR is invisible until claimed.
    let (status, body) = put(
        &api,
        token,
        &format!("/a/nar/{}", good.name),
        good.body.clone(),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(uploads_staged(&server).await, 1);
    assert_eq!(
        api.status(Some(token), &format!("/a/nar/{}", good.name))
            .await,
        StatusCode::NOT_FOUND
    );

    let path = fake_store_path("p");
    let info_path = format!("/a/{}.narinfo", path_hash(&path));
    // A NarHash that differs from the staged NAR's.
    let lying = narinfo(&path, &good, "").replace(
        &Sha256Hash::digest(&good.nar).to_typed_nix32(),
        &Sha256Hash::digest(&other.nar).to_typed_nix32(),
    );
    let (status, body) = put(&api, token, &info_path, lying.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("NarMismatch"), "{body}");
    // A newline in a reference.
    let injected = narinfo(&path, &good, &format!("{}\nPriority: 0", &path[11..]));
    let (status, body) = put(&api, token, &info_path, injected.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A narinfo in cache b naming the NAR staged for cache a.
    let b_path = format!("/b/{}.narinfo", path_hash(&path));
    let (status, body) = put(&api, token, &b_path, narinfo(&path, &good, "").into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("NarNotUploaded"), "{body}");
    // A narinfo with no NAR staged at all.
    let (status, body) = put(
        &api,
        token,
        &info_path,
        narinfo(&path, &other, "").into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("NarNotUploaded"), "{body}");
    // A pull-only token writes nothing.
    let reader = server.make_token(&["--pull", "a"]);
    let (status, _) = put(
        &api,
        &reader,
        &info_path,
        narinfo(&path, &good, "").into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = put(
        &api,
        &reader,
        &format!("/a/nar/{}", good.name),
        good.body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A nix-cache-info for another store.
    let (status, body) = put(
        &api,
        token,
        "/a/nix-cache-info",
        b"StoreDir: /other/store\n".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(paths().await, 0, "a bad narinfo made a path");

    // The good narinfo claims it; the path appears and the staged row goes.
    let (status, body) = put(
        &api,
        token,
        &info_path,
        narinfo(&path, &good, "").into_bytes(),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(paths().await, 1);
    assert_eq!(uploads_staged(&server).await, 0);
    let served = api
        .get_bytes(token, &format!("/a/nar/{}.nar", path_hash(&path)))
        .await;
    assert!(served == good.nar.as_slice());
    let (status, _) = put(
        &api,
        token,
        "/a/nix-cache-info",
        b"StoreDir: /nix/store\n".to_vec(),
    )
    .await;
    assert!(status.is_success());
}

/// A NAR `nix copy` uploaded that no narinfo ever claimed is reclaimed by
/// garbage collection once older than the grace period.
#[tokio::test]
async fn unclaimed_uploads_are_reclaimed_by_gc() {
    let server = TestServer::start_with_config(
        "[garbage-collection]\ninterval = \"0s\"\ngrace-period = \"0s\"\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "a", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = nar_file(dir.path(), &integration_tests::upload::noise(100_000, 3));
    let (status, body) = put(&api, token, &format!("/a/nar/{}", file.name), file.body).await;
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(uploads_staged(&server).await, 1);
    assert_eq!(server.blob_count(), 1);
    // Let the upload be older than the (zero) grace period.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let output = server.atticadm(&["gc"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("unclaimed nix-copy uploads: 1"), "{report}");
    assert_eq!(uploads_staged(&server).await, 0);
    assert_eq!(server.row_counts().await.nars, 0);
    assert_eq!(server.blob_count(), 0, "the upload's pack stayed");
}
