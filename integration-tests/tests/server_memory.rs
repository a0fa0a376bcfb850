//! Peak memory of the server while it receives and serves a 1 GiB NAR,
//! read from the kernel's record of the process (`VmHWM`), not a timer.

use attic::hash::{Sha256Hash, Sha256Hasher};
use bytes::Bytes;
use futures::StreamExt;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path};
use reqwest::{Method, StatusCode};

const FILE_SIZE: u64 = 1 << 30;
const PIECE: usize = 1 << 20;
const LIMIT_KIB: u64 = 200 * 1024;

/// The NAR of one 1 GiB regular file of incompressible bytes, produced
/// piece by piece so the test holds at most one piece.
fn nar_pieces() -> impl Iterator<Item = Bytes> {
    let mut header = Vec::new();
    for token in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        header.extend_from_slice(&(token.len() as u64).to_le_bytes());
        header.extend_from_slice(token);
        header.resize(header.len().div_ceil(8) * 8, 0);
    }
    header.extend_from_slice(&FILE_SIZE.to_le_bytes());
    let mut trailer = Vec::new();
    trailer.extend_from_slice(&1u64.to_le_bytes());
    trailer.extend_from_slice(b")\0\0\0\0\0\0\0");

    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let body = (0..FILE_SIZE as usize / PIECE).map(move |_| {
        let mut piece = Vec::with_capacity(PIECE);
        for _ in 0..PIECE / 8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            piece.extend_from_slice(&state.to_le_bytes());
        }
        Bytes::from(piece)
    });
    std::iter::once(Bytes::from(header))
        .chain(body)
        .chain(std::iter::once(Bytes::from(trailer)))
}

fn nar_hash_and_size() -> (Sha256Hash, u64) {
    let mut hasher = Sha256Hasher::new();
    for piece in nar_pieces() {
        hasher.update(&piece);
    }
    hasher.finish()
}

async fn download_hash(api: &Api, token: &str, path: &str) -> (Sha256Hash, u64) {
    let response = api
        .request(Method::GET, path, Some(token))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let mut hasher = Sha256Hasher::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        hasher.update(&piece.expect("body"));
    }
    hasher.finish()
}

#[tokio::test]
async fn server_memory_stays_bounded_for_a_1_gib_nar() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.root_token.clone();
    api.create_cache(&token, "big", false).await;

    let (nar_hash, nar_size) = nar_hash_and_size();
    let path = fake_store_path("one-gib");
    let info = attic::api::v1::upload_path::UploadPathNarInfo {
        cache: "big".parse().expect("name"),
        store_path_hash: integration_tests::upload::path_hash(&path)
            .parse()
            .expect("hash"),
        store_path: path.clone(),
        references: Vec::new(),
        system: None,
        deriver: None,
        sigs: Vec::new(),
        ca: None,
        nar_hash,
        nar_size,
    };
    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        nar_pieces().map(Ok::<_, std::io::Error>),
    ));
    let reply = api.upload_ok(&token, &info, body).await;
    assert_eq!(reply["kind"], "Uploaded", "{reply}");
    let after_upload = server.peak_rss_kib();

    let hash = integration_tests::upload::path_hash(&path);
    let (plain_hash, plain_size) =
        download_hash(&api, &token, &format!("/big/nar/{hash}.nar")).await;
    assert_eq!(
        (plain_hash, plain_size),
        (nar_hash, nar_size),
        "served NAR differs"
    );
    let (_, zstd_size) = download_hash(&api, &token, &format!("/big/nar/{hash}.nar.zst")).await;
    assert!(zstd_size > nar_size / 2, "zstd stream is {zstd_size} bytes");
    let after_download = server.peak_rss_kib();

    eprintln!(
        "atticd peak RSS: {} MiB after receiving 1 GiB, {} MiB after serving it twice",
        after_upload / 1024,
        after_download / 1024
    );
    assert!(
        after_upload < LIMIT_KIB,
        "peak RSS {after_upload} KiB while receiving"
    );
    assert!(
        after_download < LIMIT_KIB,
        "peak RSS {after_download} KiB while serving"
    );
}
