//! The reads and writes of the binary cache protocol beyond narinfo and
//! NAR: byte ranges on NARs (resuming a download), `.ls` listings, and
//! compressed narinfo, log and listing uploads.

use std::path::Path;

use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, path_hash};
use reqwest::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};

/// The `URL:` of a path's narinfo in `cache`.
async fn nar_url(api: &Api, token: &str, cache: &str, path: &str) -> String {
    let narinfo = api
        .get_bytes(token, &format!("/{cache}/{}.narinfo", path_hash(path)))
        .await;
    let narinfo = String::from_utf8(narinfo.to_vec()).expect("UTF-8");
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap_or_else(|| panic!("a URL line in {narinfo}"))
        .to_owned()
}

/// A GET of `path` with `Range: range`: status, headers and body.
async fn get_range(
    api: &Api,
    token: &str,
    path: &str,
    range: &str,
) -> (StatusCode, reqwest::header::HeaderMap, bytes::Bytes) {
    let response = api
        .request(Method::GET, path, Some(token))
        .header(RANGE, range)
        .send()
        .await
        .expect("GET");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body"))
}

/// A NAR advertises ranges; a download cut off after some bytes resumes
/// with `Range: bytes=N-` to exactly the rest, and any range gives exactly
/// those bytes of the full body, for `.nar.zst` and `.nar` alike.
#[tokio::test]
async fn nar_downloads_resume_from_where_they_stopped() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "ranges", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Noise of 2 MiB: some thirty chunks.
    let closure = nix::build_closure(dir.path(), 2 * 1024 * 1024);
    let leaf = &closure.paths[0];
    api.push_path(&token, "ranges", leaf).await;

    let url = nar_url(&api, &token, "ranges", leaf).await;
    assert!(url.ends_with(".nar.zst"), "{url}");
    let plain_url = url.trim_end_matches(".zst").to_owned();
    for url in [url, plain_url] {
        let path = format!("/ranges/{url}");
        let response = api
            .request(Method::GET, &path, Some(&token))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[ACCEPT_RANGES], "bytes");
        // An interrupted download: the first bytes, then the connection goes.
        let mut response = response;
        let mut received = Vec::new();
        while received.len() < 300_000 {
            let piece = response.chunk().await.expect("read").expect("more");
            received.extend_from_slice(&piece);
        }
        drop(response);
        let full = api.get_bytes(&token, &path).await;
        let total = full.len();
        if url.ends_with(".nar") {
            assert_eq!(full, nix::dump(Path::new(leaf)), "the NAR itself");
        }
        assert!(total > 1_000_000, "{url}: {total} bytes");

        // Resumed where it stopped.
        let (status, headers, rest) =
            get_range(&api, &token, &path, &format!("bytes={}-", received.len())).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            headers[CONTENT_RANGE],
            format!("bytes {}-{}/{total}", received.len(), total - 1).as_str()
        );
        assert_eq!(
            headers[CONTENT_LENGTH],
            (total - received.len()).to_string().as_str()
        );
        received.extend_from_slice(&rest);
        assert_eq!(received, full, "{url}: resumed download");

        // Ranges inside one chunk, across many, at the start and the end.
        let middle = total / 2;
        for (range, expected) in [
            ("bytes=0-0".to_owned(), &full[..1]),
            (
                format!("bytes={middle}-{}", middle + 9),
                &full[middle..middle + 10],
            ),
            (
                format!("bytes=1000-{}", total - 1000),
                &full[1000..total - 999],
            ),
            ("bytes=-100".to_owned(), &full[total - 100..]),
            (format!("bytes={}-999999999", total - 1), &full[total - 1..]),
        ] {
            let (status, headers, body) = get_range(&api, &token, &path, &range).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(
                headers[CONTENT_LENGTH],
                expected.len().to_string().as_str(),
                "{range}"
            );
            assert!(body == expected, "{url} {range}: wrong bytes");
        }

        // Past the end: 416, saying how long the body is.
        let (status, headers, _) = get_range(&api, &token, &path, &format!("bytes={total}-")).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[CONTENT_RANGE], format!("bytes */{total}").as_str());
        // Several ranges at once: the whole body.
        let (status, _, body) = get_range(&api, &token, &path, "bytes=0-1,5-6").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, full);
    }

    // Ranges on a path of a cache the caller may not pull are refused
    // like a missing path: the same 404 either way.
    let outsider = server.make_token(&["--pull", "elsewhere"]);
    let url = nar_url(&api, &token, "ranges", leaf).await;
    let (forbidden, _, _) =
        get_range(&api, &outsider, &format!("/ranges/{url}"), "bytes=0-9").await;
    let (missing, _, _) = get_range(&api, &outsider, &format!("/nowhere/{url}"), "bytes=0-9").await;
    assert_eq!(forbidden, missing);
}

fn host(server: &TestServer) -> String {
    server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host")
        .to_owned()
}

/// Compresses with an async-compression encoder.
async fn encode(mut encoder: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut encoded = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut encoder, &mut encoded)
        .await
        .expect("encode");
    encoded
}

/// `nix copy --to 'http://…?write-nar-listing=true'` goes through (the
/// listing Nix sends is taken); the `.ls` served is the NAR's listing as
/// Nix writes it, with offsets into the NAR served, as JSON or as zstd to
/// a client that accepts it; `nix store ls` and `nix store cat` browse the
/// cache; and a caller who may not pull gets a missing path's answer.
#[tokio::test]
async fn listings_describe_each_path_and_nix_browses_the_cache() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "browse", true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let netrc = nix::write_netrc(dir.path(), &host(&server), &token);
    let closure = nix::build_closure(dir.path(), 300 * 1024);
    let leaf = closure.paths[0].clone();
    let out = nix::run_unchecked(
        nix::command("nix")
            .args([
                "copy",
                "--to",
                &format!(
                    "{}/browse?write-nar-listing=true&compression=zstd",
                    server.url
                ),
                "--option",
                "netrc-file",
            ])
            .arg(&netrc)
            .args(&closure.paths),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The listing, as JSON.
    let listing_path = format!("/browse/{}.ls", path_hash(&leaf));
    let response = api
        .request(Method::GET, &listing_path, None)
        .send()
        .await
        .expect("GET .ls");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("content-encoding").is_none());
    let json = response.bytes().await.expect("body");
    let listing: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(listing["version"], 1);
    let root = &listing["root"]["entries"];
    assert_eq!(root["bin"]["entries"]["hello"]["executable"], true);
    assert_eq!(
        root["bin"]["entries"]["link"],
        serde_json::json!({"type": "symlink", "target": "../share/data"})
    );
    assert_eq!(root["share"]["entries"]["empty"]["type"], "directory");
    let big = &root["share"]["entries"]["big"];
    assert_eq!(big["size"], 300 * 1024);
    // narOffset points at the file's bytes in the NAR the cache serves.
    let offset = big["narOffset"].as_u64().expect("narOffset");
    let nar_url = nar_url(&api, &token, "browse", &leaf).await;
    let plain = format!("/browse/{}", nar_url.trim_end_matches(".zst"));
    let (status, _, bytes) = get_range(
        &api,
        &token,
        &plain,
        &format!("bytes={offset}-{}", offset + 300 * 1024 - 1),
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let file = std::fs::read(Path::new(&leaf).join("share/big")).expect("read");
    assert!(bytes == file, "narOffset points at the file");

    // As zstd, to a client that takes it.
    let response = api
        .request(Method::GET, &listing_path, None)
        .header("Accept-Encoding", "zstd")
        .send()
        .await
        .expect("GET .ls");
    assert_eq!(response.headers()["content-encoding"], "zstd");
    let compressed = response.bytes().await.expect("body");
    assert_eq!(zstd::decode_all(&compressed[..]).expect("zstd"), json);

    // Nix browses the cache.
    let store = format!("{}/browse", server.url);
    let out = nix::run(nix::command("nix").args(["store", "ls", "--store", &store, "-lR", &leaf]));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("bin/hello"), "{listed}");
    assert!(listed.contains("bin/link -> ../share/data"), "{listed}");
    let data = format!("{leaf}/share/data");
    let out = nix::run(nix::command("nix").args(["store", "cat", "--store", &store, &data]));
    assert_eq!(out.stdout, std::fs::read(&data).expect("read"));

    // Private: a caller who may not pull cannot tell it from a miss.
    api.create_cache(&token, "hidden", false).await;
    api.push_path(&token, "hidden", &leaf).await;
    let reader = server.make_token(&["--pull", "hidden"]);
    let hidden = format!("/hidden/{}.ls", path_hash(&leaf));
    assert_eq!(api.status(Some(&reader), &hidden).await, StatusCode::OK);
    let outsider = server.make_token(&["--pull", "elsewhere"]);
    let forbidden = api.status(Some(&outsider), &hidden).await;
    let missing_cache = api
        .status(
            Some(&outsider),
            &format!("/nowhere/{}.ls", path_hash(&leaf)),
        )
        .await;
    assert_eq!(forbidden, missing_cache);
    let missing_path = api
        .status(Some(&reader), &format!("/hidden/{}.ls", "0".repeat(32)))
        .await;
    assert_eq!(missing_path, StatusCode::NOT_FOUND);
}

/// A narinfo, a listing and a build log may come compressed, as newer Nix
/// sends them with `narinfo-compression`, `ls-compression` and
/// `log-compression` (Nix 2.8 sends them plain): each is decoded.
#[tokio::test]
async fn compressed_narinfo_listing_and_log_uploads_are_decoded() {
    use async_compression::tokio::bufread::{BzEncoder, XzEncoder, ZstdEncoder};
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "packed", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1024);
    let leaf = &closure.paths[0];
    let info = nix::path_info(leaf);

    // The NAR, then its narinfo as xz.
    let nar = nix::dump(Path::new(leaf));
    let body = zstd::encode_all(&nar[..], 3).expect("zstd");
    let file = format!(
        "{}.nar.zst",
        attic::hash::Sha256Hash::digest(&body).to_nix32()
    );
    let put = |path: String, body: Vec<u8>, encoding: &'static str| {
        api.request(Method::PUT, &path, Some(&token))
            .header("Content-Encoding", encoding)
            .body(body)
            .send()
    };
    let response = put(format!("/packed/nar/{file}"), body, "identity")
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let listing = br#"{"version":1,"root":{"type":"directory","entries":{}}}"#;
    let response = put(
        format!("/packed/{}.ls", path_hash(leaf)),
        encode(BzEncoder::new(&listing[..])).await,
        "bzip2",
    )
    .await
    .expect("PUT .ls");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let narinfo = format!(
        "StorePath: {leaf}\nURL: nar/{file}\nCompression: zstd\nNarHash: {}\nNarSize: {}\nReferences: \n",
        info.nar_hash.to_typed_nix32(),
        nar.len()
    );
    let response = put(
        format!("/packed/{}.narinfo", path_hash(leaf)),
        encode(XzEncoder::new(narinfo.as_bytes())).await,
        "xz",
    )
    .await
    .expect("PUT narinfo");
    let status = response.status();
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let served = api
        .get_bytes(&token, &format!("/packed/{}.narinfo", path_hash(leaf)))
        .await;
    let served = String::from_utf8_lossy(&served);
    assert!(served.contains(&format!("StorePath: {leaf}")), "{served}");
    // The listing served is ours, made from the NAR, not the one sent.
    let ours = api
        .get_bytes(&token, &format!("/packed/{}.ls", path_hash(leaf)))
        .await;
    let ours: serde_json::Value = serde_json::from_slice(&ours).expect("JSON");
    assert_eq!(
        ours["root"]["entries"]["bin"]["entries"]["hello"]["executable"],
        true
    );

    // A build log, as zstd.
    let drv = format!("{}-x.drv", "1".repeat(32));
    let log = "building x\n".repeat(1000);
    let response = put(
        format!("/packed/log/{drv}"),
        encode(ZstdEncoder::new(log.as_bytes())).await,
        "zstd",
    )
    .await
    .expect("PUT log");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let served = api.get_bytes(&token, &format!("/packed/log/{drv}")).await;
    assert_eq!(served, log.as_bytes());

    // An encoding not taken is 415.
    let response = put(format!("/packed/log/{drv}"), b"x".to_vec(), "compress")
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// With `redirect-reads`, a ranged GET of a whole-pack `.nar.zst` is
/// redirected like any other, and the client's `Range` is answered by S3
/// with exactly those bytes.
#[tokio::test]
async fn a_range_survives_the_redirect_to_s3() {
    let s3 = integration_tests::s3::S3Server::start();
    let server = TestServer::start_with_config(&s3.storage_toml("redirect-reads = true"));
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "redirected", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1024 * 1024);
    let leaf = &closure.paths[0];
    api.push_path(&token, "redirected", leaf).await;
    let url = nar_url(&api, &token, "redirected", leaf).await;
    let path = format!("/redirected/{url}");
    let unfollowed = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{}{path}", server.url))
        .bearer_auth(&token)
        .header(RANGE, "bytes=1000-1999")
        .send()
        .await
        .expect("GET");
    assert_eq!(unfollowed.status(), StatusCode::FOUND, "redirected");
    let full = api.get_bytes(&token, &path).await;
    let (status, _, body) = get_range(&api, &token, &path, "bytes=1000-1999").await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(body == full[1000..2000], "the range's bytes");
}

/// `nix copy --to 'http://…?index-debug-info=true'` goes through (Nix's own
/// link is taken); `debuginfo/{build id}` names the NAR this cache serves
/// and the member in it; a caller who may not pull gets a missing cache's
/// answer; and the link goes with the path.
#[tokio::test]
async fn debug_info_links_point_into_the_cache_and_go_with_the_path() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "debug", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let netrc = nix::write_netrc(dir.path(), &host(&server), &token);
    let tree = dir.path().join(format!("with-debug-{}", nix::nonce()));
    let id = format!(
        "{:0>38}",
        nix::nonce()
            .bytes()
            .map(|b| format!("{:x}", b % 16))
            .collect::<String>()
    );
    let id = &id[id.len() - 38..];
    let debug_dir = tree.join("lib/debug/.build-id/ab");
    std::fs::create_dir_all(&debug_dir).expect("mkdir");
    std::fs::write(debug_dir.join(format!("{id}.debug")), b"\x7fELF debug").expect("write");
    let path = nix::add(&tree);
    let out = nix::run_unchecked(
        nix::command("nix")
            .args([
                "copy",
                "--to",
                &format!(
                    "{}/debug?index-debug-info=true&compression=zstd",
                    server.url
                ),
                "--option",
                "netrc-file",
            ])
            .arg(&netrc)
            .arg(&path),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let build_id = format!("ab{id}");
    let link_path = format!("/debug/debuginfo/{build_id}");
    let link = api.get_bytes(&token, &link_path).await;
    let link: serde_json::Value = serde_json::from_slice(&link).expect("JSON");
    assert_eq!(link["member"], format!("lib/debug/.build-id/ab/{id}.debug"));
    let archive = link["archive"].as_str().expect("archive");
    let nar = archive.strip_prefix("../").expect("relative to debuginfo/");
    assert_eq!(nar, nar_url(&api, &token, "debug", &path).await);
    assert_eq!(
        api.status(Some(&token), &format!("/debug/{nar}")).await,
        StatusCode::OK
    );
    // Nix 2.8 names it with `.debug`.
    assert_eq!(
        api.status(Some(&token), &format!("{link_path}.debug"))
            .await,
        StatusCode::OK
    );

    let outsider = server.make_token(&["--pull", "elsewhere"]);
    assert_eq!(
        api.status(Some(&outsider), &link_path).await,
        api.status(Some(&outsider), &format!("/nowhere/debuginfo/{build_id}"))
            .await
    );

    // The path goes: so does its link.
    let response = api
        .request(
            Method::DELETE,
            &format!("/debug/{}.narinfo", path_hash(&path)),
            Some(&token),
        )
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        api.status(Some(&token), &link_path).await,
        StatusCode::NOT_FOUND
    );
}

/// A NAR stored without a listing (as before listings existed) gets one:
/// when a path of it is uploaded again, deduplicated (the proof of
/// possession walks the NAR anyway), or else made from the stored NAR on
/// the first request for it.
#[tokio::test]
async fn a_nar_without_a_listing_gets_one_by_a_new_upload_or_when_asked() {
    use sea_orm::{ConnectionTrait, Statement};

    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join(format!("listed-{}", nix::nonce()));
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::write(tree.join("bin/tool"), b"#!/bin/sh\necho tool\n").expect("write");
    let path = nix::add(&tree);
    api.create_cache(&token, "old", true).await;
    api.create_cache(&token, "new", true).await;
    api.push_path(&token, "old", &path).await;
    let url = server.database_url().replace("?mode=ro", "?mode=rw");
    let database = sea_orm::Database::connect(&url)
        .await
        .expect("open the database");
    let listings = || async {
        let row = database
            .query_one_raw(Statement::from_string(
                database.get_database_backend(),
                "SELECT COUNT(*) AS n FROM nar_listing",
            ))
            .await
            .expect("count")
            .expect("a row");
        row.try_get::<i64>("", "n").expect("n")
    };
    // As if stored before listings existed.
    let forget = || async {
        database
            .execute_unprepared("DELETE FROM nar_listing")
            .await
            .expect("forget the listing");
    };
    let listed = |cache: &'static str| {
        let api = &api;
        let path = &path;
        async move {
            let (status, json) = api
                .get_text(&format!("/{cache}/{}.ls", path_hash(path)))
                .await;
            assert_eq!(status, StatusCode::OK, "{cache}");
            let listing: serde_json::Value = serde_json::from_str(&json).expect("JSON");
            assert_eq!(
                listing["root"]["entries"]["bin"]["entries"]["tool"]["type"], "regular",
                "{json}"
            );
        }
    };
    forget().await;
    api.push_path(&token, "new", &path).await;
    assert_eq!(server.row_counts().await.nars, 1, "deduplicated");
    assert_eq!(listings().await, 1, "the deduplicated upload recorded it");
    for cache in ["old", "new"] {
        listed(cache).await;
    }

    forget().await;
    listed("old").await;
    assert_eq!(listings().await, 1, "made from the stored NAR, and kept");
    listed("new").await;
    database.close().await.expect("close");
}
