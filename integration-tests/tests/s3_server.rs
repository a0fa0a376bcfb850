//! `atticd` on S3 (`[storage] type = "s3"`, a real S3 server on loopback):
//! Nix substitutes through it, by redirect and proxied, and an S3 outage in
//! the middle of a push fails it cleanly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use attic::nar::NarNode;
use bytes::Bytes;
use integration_tests::nix;
use integration_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use integration_tests::server::{TestHome, TestServer};
use integration_tests::upload::{
    Api, fake_store_path, nar_info_for, nar_info_from_nix, noise, path_hash,
};
use reqwest::StatusCode;
use serde_json::Value;

/// Waits until `condition` holds; panics after a minute.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("waited a minute for {what}");
}

/// A counter's value in `/metrics`, 0 when absent.
async fn metric(server: &TestServer, series: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.metrics_url))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The `URL:` of a path's narinfo.
async fn nar_url(server: &TestServer, cache: &str, path: &str) -> String {
    let narinfo = Api::new(&server.url)
        .get_bytes(
            &server.root_token,
            &format!("/{cache}/{}.narinfo", path_hash(path)),
        )
        .await;
    let narinfo = String::from_utf8(narinfo.to_vec()).expect("UTF-8");
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("a URL line")
        .to_owned()
}

#[tokio::test]
async fn nix_substitutes_from_atticd_on_s3_by_redirect_and_proxied() {
    let s3 = S3Server::start();
    let mut server = TestServer::start_with_config(&s3.storage_toml("redirect-reads = true"));
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    // Private: Nix authenticates to atticd from a netrc, and what it sends
    // there must not break its GET of the presigned URL.
    api.create_cache(&token, "alpha", false).await;
    let key = api.public_key(&token, "alpha").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 2 * 1024 * 1024);
    let netrc = nix::write_netrc(dir.path(), "127.0.0.1", &token);
    let substitute = |server: &TestServer| {
        nix::delete(&closure.paths);
        let out = nix::substitute_with_netrc(
            closure.top(),
            &format!("{}/alpha", server.url),
            &key,
            Some(&netrc),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let original = nix::dump(Path::new(closure.top()));
    for path in &closure.paths {
        let reply = api
            .upload_ok(
                &token,
                &nar_info_from_nix("alpha", path),
                nix::dump(Path::new(path)),
            )
            .await;
        assert_eq!(reply["kind"], "Uploaded", "{reply}");
    }
    assert_eq!(s3.objects("packs").len(), 3, "one pack per upload, in S3");
    assert_eq!(server.blob_count(), 0, "nothing on local disk");

    // Every path is one whole pack: its .nar.zst is a redirect to S3.
    let url = nar_url(&server, "alpha", closure.top()).await;
    assert!(url.ends_with(".nar.zst"), "{url}");
    let response = no_redirects()
        .get(format!("{}/alpha/{url}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET NAR");
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().expect("ASCII");
    assert!(location.starts_with(&s3.endpoint()), "{location}");

    // Real Nix follows the redirects.
    substitute(&server);
    assert_eq!(nix::dump(Path::new(closure.top())), original);
    // One redirect for the GET above, one per path for Nix.
    assert!(metric(&server, "attic_nar_redirects_total").await >= 4);

    // A NAR that shares chunks with an earlier one is not a whole pack:
    // it is proxied, read from S3 range by range.
    let shared = noise(1024 * 1024, 7);
    let first = NarNode::Regular {
        executable: false,
        contents: shared.clone(),
    }
    .to_nar();
    let second = NarNode::Directory(BTreeMap::from([
        (
            b"a".to_vec(),
            NarNode::Regular {
                executable: false,
                contents: shared,
            },
        ),
        (
            b"b".to_vec(),
            NarNode::Regular {
                executable: true,
                contents: b"#!/bin/sh\n".to_vec(),
            },
        ),
    ]))
    .to_nar();
    let (first_path, second_path) = (fake_store_path("first"), fake_store_path("second"));
    api.upload_ok(&token, &nar_info_for("alpha", &first_path, &first), first)
        .await;
    let reply = api
        .upload_ok(
            &token,
            &nar_info_for("alpha", &second_path, &second),
            second.clone(),
        )
        .await;
    let stored = reply["bytes_stored"].as_u64().expect("bytes_stored");
    let file_size = reply["file_size"].as_u64().expect("file_size");
    assert!(stored < file_size / 2, "most chunks are shared: {reply}");
    let url = nar_url(&server, "alpha", &second_path).await;
    let response = no_redirects()
        .get(format!("{}/alpha/{url}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET NAR");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    assert!(zstd::decode_all(&body[..]).expect("zstd") == second);

    // Without redirect-reads every NAR is proxied, and Nix gets it so.
    let config = std::fs::read_to_string(server.config_path()).expect("read config");
    std::fs::write(
        server.config_path(),
        config.replace("redirect-reads = true", "redirect-reads = false"),
    )
    .expect("write config");
    server.restart();
    let url = nar_url(&server, "alpha", closure.top()).await;
    let status = no_redirects()
        .get(format!("{}/alpha/{url}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET NAR")
        .status();
    assert_eq!(status, StatusCode::OK);
    substitute(&server);
    assert_eq!(nix::dump(Path::new(closure.top())), original);
}

#[tokio::test]
async fn an_s3_outage_mid_push_fails_it_cleanly_until_s3_is_back() {
    let mut s3 = S3Server::start();
    let server = TestServer::start_with_config(&s3.storage_toml("max-attempts = 2"));
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "c", false).await;

    // 14 MiB of noise: a first 8 MiB part, then the rest, which is sent
    // only once the body ends.
    let nar = Bytes::from(
        NarNode::Regular {
            executable: false,
            contents: noise(14 << 20, 3),
        }
        .to_nar(),
    );
    let path = fake_store_path("outage");
    let info = nar_info_for("c", &path, &nar);
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let body = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|piece| (piece, receiver))
    });
    let upload = tokio::spawn({
        let (api, token, info) = (api.clone(), token.clone(), info.clone());
        async move {
            let response = api
                .upload(Some(&token), &info, reqwest::Body::wrap_stream(body))
                .await;
            let status = response.status();
            (status, response.text().await.expect("body"))
        }
    });
    let pieces: Vec<Bytes> = (0..nar.len())
        .step_by(64 << 10)
        .map(|start| nar.slice(start..(start + (64 << 10)).min(nar.len())))
        .collect();
    let (before, after) = pieces.split_at((12 << 20) / (64 << 10));
    for piece in before {
        sender.send(Ok(piece.clone())).await.expect("send");
    }
    wait_until("the first part to be stored", || s3.uploaded_parts() == 1).await;

    s3.stop();
    for piece in after {
        sender.send(Ok(piece.clone())).await.expect("send");
    }
    drop(sender);
    let (status, text) = upload.await.expect("the upload task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let reply: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(reply["error"], "StorageUnavailable", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .expect("message")
            .contains("try again"),
        "{reply}"
    );
    assert!(metric(&server, "attic_storage_errors_total{operation=\"put\"}").await >= 1);

    // Nothing is visible, and once S3 is back the upload is aborted.
    let hash = path_hash(&path);
    assert_eq!(api.missing(&token, "c", &[hash]).await, [hash]);
    let counts = server.row_counts().await;
    assert_eq!(counts.nars, 0);
    assert_eq!(counts.packs, 0);
    s3.restart();
    wait_until("the failed multipart upload to be aborted", || {
        s3.open_uploads() == 0
    })
    .await;
    assert_eq!(s3.uploaded_parts(), 0);
    assert!(s3.objects("").is_empty(), "{:?}", s3.objects(""));

    // The same push now succeeds.
    let reply = api.upload_ok(&token, &info, nar.clone()).await;
    assert_eq!(reply["kind"], "Uploaded", "{reply}");
    assert!(api.missing(&token, "c", &[hash]).await.is_empty());
    let served = api.get_bytes(&token, &format!("/c/nar/{hash}.nar")).await;
    assert!(served == nar, "the NAR reads back whole");
}

#[tokio::test]
async fn without_credentials_in_the_config_the_aws_environment_supplies_them() {
    let s3 = S3Server::start();
    let config = s3.storage_toml_without_credentials("max-attempts = 1");
    let home = |secret: &str| {
        TestHome::new()
            .with_env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .with_env("AWS_SECRET_ACCESS_KEY", secret)
    };
    let nar = NarNode::Regular {
        executable: false,
        contents: noise(200 * 1024, 5),
    }
    .to_nar();

    let server = TestServer::start_with_config_in(home(SECRET_KEY), &config);
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    let path = fake_store_path("from-the-environment");
    api.upload_ok(
        &server.root_token,
        &nar_info_for("c", &path, &nar),
        nar.clone(),
    )
    .await;
    assert_eq!(s3.objects("packs").len(), 1);

    // A wrong secret is refused by S3: the upload fails and stores nothing.
    let server = TestServer::start_with_config_in(home("not-the-secret"), &config);
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    let path = fake_store_path("refused");
    let response = api
        .upload(
            Some(&server.root_token),
            &nar_info_for("c", &path, &nar),
            nar,
        )
        .await;
    assert!(response.status().is_server_error(), "{}", response.status());
    assert_eq!(s3.objects("packs").len(), 1);
}

/// `--check-config` connects to the database and the bucket: it names the
/// one that does not answer, and says both answer when they do.
#[test]
fn check_config_names_the_service_that_does_not_answer() {
    let mut s3 = S3Server::start();
    let home = TestHome::new();
    let path = home.path().join("server.toml");
    let data = home.path().join("data");
    let key_line = format!("token-root-key = \"ed25519-private/{}\"\n", "11".repeat(32));
    let check = |config: &str| {
        std::fs::write(&path, config).expect("write config");
        home.run(
            "atticd",
            &[
                "--config",
                path.to_str().expect("utf-8"),
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--check-config",
            ],
        )
    };
    let storage = s3.storage_toml("max-attempts = 1");
    let ok = check(&format!("{key_line}{storage}"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("storage: S3 bucket") && stdout.contains("answers"),
        "{stdout}"
    );

    s3.stop();
    let down = check(&format!("{key_line}{storage}"));
    assert!(!down.status.success(), "a dead bucket passed");
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains("S3 bucket") && stderr.contains(&s3.endpoint()),
        "{stderr}"
    );

    let missing_db = check(&format!(
        "{key_line}[database]\nurl = \"sqlite:///nonexistent/dir/server.db?mode=rw\"\n"
    ));
    assert!(
        !missing_db.status.success(),
        "an unreachable database passed"
    );
    assert!(
        String::from_utf8_lossy(&missing_db.stderr).contains("/nonexistent/dir/server.db"),
        "{}",
        String::from_utf8_lossy(&missing_db.stderr)
    );
}
