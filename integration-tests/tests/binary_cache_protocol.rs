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
            (format!("bytes={middle}-{}", middle + 9), &full[middle..middle + 10]),
            (format!("bytes=1000-{}", total - 1000), &full[1000..total - 999]),
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
        let (status, headers, _) =
            get_range(&api, &token, &path, &format!("bytes={total}-")).await;
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
    let (forbidden, _, _) = get_range(&api, &outsider, &format!("/ranges/{url}"), "bytes=0-9").await;
    let (missing, _, _) = get_range(&api, &outsider, &format!("/nowhere/{url}"), "bytes=0-9").await;
    assert_eq!(forbidden, missing);
}
