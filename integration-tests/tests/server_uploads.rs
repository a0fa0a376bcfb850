//! Uploads: chunk-level deduplication, bad input that changes nothing,
//! concurrency, and both ways of serving a NAR.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use attic::api::v1::upload_path::{NAR_INFO_PREAMBLE_SIZE_HEADER, UploadPathNarInfo};
use attic::hash::Sha256Hash;
use attic::nar::NarNode;
use client::upload_encoding::{CompressionChoice, UploadCompression};
use integration_tests::nix::nonce;
use integration_tests::server::TestServer;
use integration_tests::upload::{
    Api, fake_store_path, nar_info_for, nar_of_file, noise, path_hash, send_half_an_upload,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn setup() -> (TestServer, Api, String) {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "main", false).await;
    (server, api, token)
}

#[tokio::test]
async fn a_slightly_changed_large_file_stores_only_the_changed_chunks() {
    let (server, api, token) = setup().await;
    let original = noise(8 * 1024 * 1024, 1);
    let mut edited = original.clone();
    edited[4 * 1024 * 1024] ^= 0xff;

    let first = nar_of_file(original);
    let first_path = fake_store_path("big");
    let reply = api
        .upload_ok(
            &token,
            &nar_info_for("main", &first_path, &first),
            first.clone(),
        )
        .await;
    let first_stored = reply["bytes_stored"].as_u64().expect("bytes_stored");
    assert!(first_stored > 8 * 1024 * 1024, "{reply}");
    let chunks_before = server.row_counts().await.chunks;

    let second = nar_of_file(edited);
    let second_path = fake_store_path("big-edited");
    let reply = api
        .upload_ok(
            &token,
            &nar_info_for("main", &second_path, &second),
            second.clone(),
        )
        .await;
    assert_eq!(reply["kind"], "Uploaded");
    let second_stored = reply["bytes_stored"].as_u64().expect("bytes_stored");
    let new_chunks = server.row_counts().await.chunks - chunks_before;
    assert!(
        new_chunks <= 2,
        "{new_chunks} new chunks for a one-byte edit"
    );
    assert!(
        second_stored * 10 < first_stored,
        "a one-byte edit stored {second_stored} of {first_stored} bytes"
    );
    assert!(
        reply["frac_deduplicated"].as_f64().expect("fraction") > 0.9,
        "{reply}"
    );

    // Both read back whole, compressed and plain.
    for (path, nar) in [(&first_path, &first), (&second_path, &second)] {
        let hash = path_hash(path);
        let plain = api
            .get_bytes(&token, &format!("/main/nar/{hash}.nar"))
            .await;
        assert!(plain == nar.as_slice(), "plain NAR differs");
        let zstd = api
            .get_bytes(&token, &format!("/main/nar/{hash}.nar.zst"))
            .await;
        let mut decoded = Vec::new();
        zstd_decode(&zstd, &mut decoded);
        assert!(
            decoded == *nar,
            "concatenated zstd frames do not decode to the NAR"
        );
    }
}

fn zstd_decode(data: &[u8], out: &mut Vec<u8>) {
    // The test links libzstd through the server crate's zstd dependency.
    let mut decoder = server_zstd::Decoder::new(data).expect("zstd stream");
    decoder.read_to_end(out).expect("decode");
}

mod server_zstd {
    pub use zstd::stream::read::Decoder;
}

/// A bad upload: it must be refused with `status`, and leave the cache as it was.
async fn assert_refused(
    api: &Api,
    token: &str,
    info: &UploadPathNarInfo,
    body: Vec<u8>,
    status: StatusCode,
    error: &str,
) {
    let response = api.upload(Some(token), info, body).await;
    let got = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON error");
    assert_eq!(body["error"], error, "{text}");
    let hash = info.store_path_hash.as_str();
    assert_eq!(
        api.missing(token, "main", &[hash]).await,
        vec![hash.to_owned()],
        "a refused upload left a path"
    );
    let narinfo = api
        .request(Method::GET, &format!("/main/{hash}.narinfo"), Some(token))
        .send()
        .await
        .expect("request");
    assert_eq!(narinfo.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_uploads_are_refused_and_change_nothing() {
    let (server, api, token) = setup().await;
    let nar = nar_of_file(noise(300_000, 2));
    let small = nar_of_file(b"small".to_vec());

    // Wrong hash: the body is fine but not what was declared.
    let mut info = nar_info_for("main", &fake_store_path("wrong-hash"), &nar);
    info.nar_hash = Sha256Hash::digest(b"something else");
    assert_refused(
        &api,
        &token,
        &info,
        nar.clone(),
        StatusCode::BAD_REQUEST,
        "NarMismatch",
    )
    .await;
    let mut info = nar_info_for("main", &fake_store_path("wrong-hash-small"), &small);
    info.nar_hash = Sha256Hash::digest(b"something else");
    assert_refused(
        &api,
        &token,
        &info,
        small.clone(),
        StatusCode::BAD_REQUEST,
        "NarMismatch",
    )
    .await;

    // Truncated: declared whole, sent half.
    let info = nar_info_for("main", &fake_store_path("truncated"), &nar);
    assert_refused(
        &api,
        &token,
        &info,
        nar[..nar.len() / 2].to_vec(),
        StatusCode::BAD_REQUEST,
        "MalformedNar",
    )
    .await;

    // Longer than declared.
    let info = nar_info_for("main", &fake_store_path("long"), &nar);
    let mut long = nar.clone();
    long.extend_from_slice(&[0; 64]);
    assert_refused(
        &api,
        &token,
        &info,
        long,
        StatusCode::BAD_REQUEST,
        "NarMismatch",
    )
    .await;

    // Not a NAR at all, with a matching hash and size.
    let garbage = noise(100_000, 3);
    let info = nar_info_for("main", &fake_store_path("garbage"), &garbage);
    assert_refused(
        &api,
        &token,
        &info,
        garbage,
        StatusCode::BAD_REQUEST,
        "MalformedNar",
    )
    .await;

    // A NAR with a `..` entry, hash and size correct.
    let evil = evil_nar();
    let info = nar_info_for("main", &fake_store_path("evil"), &evil);
    assert_refused(
        &api,
        &token,
        &info,
        evil,
        StatusCode::BAD_REQUEST,
        "MalformedNar",
    )
    .await;

    // Over the size limit: refused before reading.
    let mut info = nar_info_for("main", &fake_store_path("huge"), &small);
    info.nar_size = 1 << 50;
    assert_refused(
        &api,
        &token,
        &info,
        small.clone(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "TooLarge",
    )
    .await;

    // Metadata that could escape the store or inject narinfo lines.
    let bad_metadata: [fn(&mut UploadPathNarInfo); 4] = [
        |info| info.store_path = "/nix/store/../../etc/passwd".into(),
        |info| info.sigs = vec!["k:sig\nStorePath: /nix/store/evil".into()],
        |info| info.references = vec!["/etc/passwd".into()],
        |info| info.store_path_hash = path_hash(&fake_store_path("other")).parse().expect("hash"),
    ];
    for corrupt in bad_metadata {
        let mut info = nar_info_for("main", &fake_store_path("meta"), &small);
        corrupt(&mut info);
        assert_refused(
            &api,
            &token,
            &info,
            small.clone(),
            StatusCode::BAD_REQUEST,
            "InvalidNarInfo",
        )
        .await;
    }

    let counts = server.row_counts().await;
    assert_eq!(counts.paths, 0);
    assert_eq!(counts.nars, 0);
    assert_eq!(counts.chunks, 0);
}

/// A directory with an entry named `..`.
fn evil_nar() -> Vec<u8> {
    let mut entries = BTreeMap::new();
    entries.insert(
        b"dotdot".to_vec(),
        NarNode::Regular {
            executable: false,
            contents: b"x".to_vec(),
        },
    );
    let mut nar = NarNode::Directory(entries).to_nar();
    // Same length, so only the name changes: "dotdot" becomes "..\0\0\0\0" is
    // invalid; rewrite the length field and name to ".." with padding.
    let at = nar
        .windows(6)
        .position(|w| w == b"dotdot")
        .expect("name in NAR");
    nar[at - 8..at].copy_from_slice(&2u64.to_le_bytes());
    nar[at..at + 6].copy_from_slice(b"..\0\0\0\0");
    nar
}

#[tokio::test]
async fn an_interrupted_upload_leaves_nothing() {
    let (server, api, token) = setup().await;
    let nar = nar_of_file(noise(2 * 1024 * 1024, 4));
    let path = fake_store_path("interrupted");
    let info = nar_info_for("main", &path, &nar);
    let stream = send_half_an_upload(&server.url, &token, &info, &nar);
    drop(stream);
    // The server notices the disconnect; give it a moment, then look.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let hash = path_hash(&path);
    assert_eq!(
        api.missing(&token, "main", &[hash]).await,
        vec![hash.to_owned()]
    );
    let counts = server.row_counts().await;
    assert_eq!(counts.nars, 0);
    assert_eq!(counts.chunks, 0);

    // The same upload, complete, then works.
    api.upload_ok(&token, &info, nar).await;
    assert!(api.missing(&token, "main", &[hash]).await.is_empty());
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_nar_end_with_one_copy() {
    let (server, api, token) = setup().await;
    api.create_cache(&token, "other", false).await;
    let nar = nar_of_file(noise(3 * 1024 * 1024, 5));
    let path = fake_store_path("race");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let cache = if i % 2 == 0 { "main" } else { "other" };
        let info = nar_info_for(cache, &path, &nar);
        let api = api.clone();
        let token = token.clone();
        let body = nar.clone();
        tasks.push(tokio::spawn(async move {
            api.upload_ok(&token, &info, body).await
        }));
    }
    for task in tasks {
        let reply = task.await.expect("task");
        assert!(
            reply["kind"] == "Uploaded" || reply["kind"] == "Deduplicated",
            "{reply}"
        );
    }
    let counts = server.row_counts().await;
    assert_eq!(counts.nars, 1);
    assert_eq!(counts.paths, 2);
    // Racing uploads each wrote a pack; the first to commit owns every
    // chunk row, the others' packs are dead bytes for GC.
    assert_eq!(
        counts.packs as usize,
        server.blob_count(),
        "every pack blob has its row"
    );
    let store = server.store().await;
    let chunks = store.all_chunks().await.expect("list chunks");
    store.close().await;
    let packs: BTreeSet<_> = chunks.iter().map(|c| c.pack_id).collect();
    assert_eq!(packs.len(), 1);
    assert!(
        chunks.iter().all(|c| c.uses > 0),
        "every chunk row is used exactly by the one NAR"
    );
}

#[tokio::test]
async fn metadata_may_come_as_a_preamble() {
    let (_server, api, token) = setup().await;
    let nar = nar_of_file(format!("preamble {}", nonce()).into_bytes());
    let path = fake_store_path("preamble");
    let info = serde_json::to_vec(&nar_info_for("main", &path, &nar)).expect("json");
    let mut body = info.clone();
    body.extend_from_slice(&nar);
    let response = api
        .request(Method::PUT, "/_api/v1/upload-path", Some(&token))
        .header(NAR_INFO_PREAMBLE_SIZE_HEADER, info.len().to_string())
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        response.text().await.unwrap_or_default()
    );
    assert!(
        api.missing(&token, "main", &[path_hash(&path)])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn knowing_a_nar_hash_does_not_grant_another_tenants_nar() {
    let (server, api, token) = setup().await;
    api.create_cache(&token, "other", false).await;
    let secret = nar_of_file(noise(200_000, 9));
    let path = fake_store_path("secret");
    api.upload_ok(
        &token,
        &nar_info_for("main", &path, &secret),
        secret.clone(),
    )
    .await;

    // A tenant who may push only to `other` claims the same NAR by its
    // (public) hash and size, without sending its content.
    let pusher = server.make_token(&["--pull", "other", "--push", "other"]);
    let claim = nar_info_for("other", &path, &secret);
    for body in [
        Vec::new(),
        vec![0u8; secret.len()],
        nar_of_file(b"decoy".to_vec()),
    ] {
        let response = api.upload(Some(&pusher), &claim, body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let hash = path_hash(&path);
    assert_eq!(
        api.missing(&pusher, "other", &[hash]).await,
        vec![hash.to_owned()]
    );
    let nar = api
        .request(
            Method::GET,
            &format!("/other/nar/{hash}.nar"),
            Some(&pusher),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(nar.status(), StatusCode::NOT_FOUND);

    // With the content, the claim is proven. Nothing new is stored, but
    // the reply does not say so: it speaks of `other` alone, which held
    // none of it, so it tells this tenant nothing about `main`.
    let blobs = server.blob_count();
    let reply = api.upload_ok(&pusher, &claim, secret).await;
    assert_eq!(reply["kind"], "Uploaded", "{reply}");
    assert_eq!(reply["bytes_stored"], reply["file_size"], "{reply}");
    assert_eq!(reply["frac_deduplicated"], 0.0, "{reply}");
    assert_eq!(server.blob_count(), blobs, "stored again");
}

/// Dedup is reported relative to the uploader's own cache: a near-copy of
/// another tenant's NAR reads as new, a near-copy of one's own as mostly
/// deduplicated, and the same NAR under a second path of one's own cache
/// as `Deduplicated`.
#[tokio::test]
async fn dedup_replies_speak_of_the_uploaders_own_cache_only() {
    let (server, api, token) = setup().await;
    api.create_cache(&token, "other", false).await;
    let original = noise(2 * 1024 * 1024, 21);
    let mut near = original.clone();
    near[1024 * 1024] ^= 0xff;
    let first = nar_of_file(original);
    api.upload_ok(
        &token,
        &nar_info_for("main", &fake_store_path("a"), &first),
        first.clone(),
    )
    .await;
    let pusher = server.make_token(&["--pull", "other", "--push", "other"]);
    let near = nar_of_file(near);
    let reply = api
        .upload_ok(
            &pusher,
            &nar_info_for("other", &fake_store_path("near"), &near),
            near.clone(),
        )
        .await;
    assert_eq!(reply["kind"], "Uploaded", "{reply}");
    assert_eq!(
        reply["frac_deduplicated"], 0.0,
        "another tenant's content leaked: {reply}"
    );
    assert_eq!(reply["bytes_stored"], reply["file_size"], "{reply}");

    let reply = api
        .upload_ok(
            &token,
            &nar_info_for("main", &fake_store_path("near-own"), &near),
            near.clone(),
        )
        .await;
    assert_eq!(reply["kind"], "Uploaded", "{reply}");
    let fraction = reply["frac_deduplicated"].as_f64().expect("fraction");
    assert!(fraction > 0.8, "{reply}");
    let stored = reply["bytes_stored"].as_u64().expect("bytes_stored");
    let file_size = reply["file_size"].as_u64().expect("file_size");
    assert!(stored * 4 < file_size, "{reply}");

    let reply = api
        .upload_ok(
            &token,
            &nar_info_for("main", &fake_store_path("copy"), &first),
            first,
        )
        .await;
    assert_eq!(reply["kind"], "Deduplicated", "{reply}");
    assert_eq!(reply["bytes_stored"], 0, "{reply}");
}

#[tokio::test]
async fn the_client_sends_large_metadata_as_a_preamble() {
    let (_server, api, token) = setup().await;
    let nar = nar_of_file(b"many references".to_vec());
    let path = fake_store_path("many-refs");
    let mut info = nar_info_for("main", &path, &nar);
    // About 7 KiB of references: too much for the header.
    info.references = (0..100)
        .map(|i| fake_store_path(&format!("ref-{i}")))
        .collect();
    let client = client::api::ApiClient::new(&client::config::ServerEntry {
        endpoint: format!("{}/", api.url),
        token: Some(token.clone()),
        ..Default::default()
    });
    // Plain, and compressed with the preamble inside the compressed body.
    for (zstd, info) in [
        (false, info.clone()),
        (true, {
            let mut info = info.clone();
            info.store_path = fake_store_path("many-refs-zstd");
            info.store_path_hash = path_hash(&info.store_path).parse().expect("hash");
            info
        }),
    ] {
        let body = futures::stream::iter([Ok(bytes::Bytes::from(nar.clone()))]);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mode = if zstd {
            UploadCompression::Zstd
        } else {
            UploadCompression::None
        };
        let compression = std::sync::Arc::new(CompressionChoice::new(mode, true, "127.0.0.1"));
        let reply = client
            .upload_path(&info, body, &compression, sent.clone())
            .await
            .expect("upload");
        assert!(sent.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert!(
            api.missing(&token, "main", &[info.store_path_hash.as_str()])
                .await
                .is_empty(),
            "zstd: {zstd}, {reply:?}"
        );
    }
}

/// Uploads of different NARs that bring the same new chunks at the same
/// moment all succeed: one copy of each shared chunk wins its row, and
/// every NAR reads back whole.
#[tokio::test]
async fn concurrent_uploads_sharing_new_chunks_all_succeed() {
    let (server, api, token) = setup().await;
    let shared = noise(2 * 1024 * 1024, 11);
    let mut uploads = Vec::new();
    for i in 0..6u64 {
        let mut contents = shared.clone();
        contents.extend(noise(256 * 1024, 100 + i));
        let nar = nar_of_file(contents);
        let path = fake_store_path(&format!("sharing-{i}"));
        uploads.push((path, nar));
    }
    let tasks: Vec<_> = uploads
        .iter()
        .map(|(path, nar)| {
            let (api, token) = (api.clone(), token.clone());
            let info = nar_info_for("main", path, nar);
            let body = nar.clone();
            tokio::spawn(async move { api.upload_ok(&token, &info, body).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task")["kind"], "Uploaded");
    }
    assert_eq!(server.row_counts().await.nars, 6);
    let store = server.store().await;
    let chunks = store.all_chunks().await.expect("list chunks");
    store.close().await;
    let distinct: BTreeSet<_> = chunks.iter().map(|c| c.hash).collect();
    assert_eq!(distinct.len(), chunks.len(), "one row per chunk");
    for (path, nar) in &uploads {
        let body = api
            .get_bytes(&token, &format!("/main/nar/{}.nar", path_hash(path)))
            .await;
        assert!(body == nar.as_slice(), "{path} reads back whole");
    }
}

/// `Content-Encoding: zstd` bodies are decompressed before they are
/// verified and chunked; the settings advertise it; other encodings are
/// 415 and a corrupt stream 400, both storing nothing.
#[tokio::test]
async fn zstd_encoded_uploads_are_decompressed_and_verified() {
    let (server, api, token) = setup().await;
    let config: Value = api
        .request(Method::GET, "/_api/v1/cache-config/main", Some(&token))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(config["upload_encodings"], serde_json::json!(["zstd"]));

    let nar = nar_of_file(noise(300_000, 31));
    let path = fake_store_path("encoded");
    let info = nar_info_for("main", &path, &nar);
    // A fresh connection each time: a refusal before the body is read
    // closes the connection under the client.
    let send = |encoding: &'static str, body: Vec<u8>| {
        Api::new(&server.url)
            .request(Method::PUT, "/_api/v1/upload-path", Some(&token))
            .header(
                attic::api::v1::upload_path::NAR_INFO_HEADER,
                serde_json::to_string(&info).expect("serialise"),
            )
            .header("Content-Encoding", encoding)
            .body(body)
            .send()
    };
    let blobs = server.blob_count();
    let response = send("br", nar.clone()).await.expect("request");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = send("zstd", b"not zstd".to_vec()).await.expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.text().await.expect("body");
    assert!(body.contains("InvalidCompression"), "{body}");
    assert_eq!(
        server.blob_count(),
        blobs,
        "a refused upload stored something"
    );

    let compressed = zstd::encode_all(nar.as_slice(), 1).expect("compress");
    let response = send("zstd", compressed).await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let served = api
        .get_bytes(&token, &format!("/main/nar/{}.nar", path_hash(&path)))
        .await;
    assert!(served == nar.as_slice(), "the stored NAR differs");
}
