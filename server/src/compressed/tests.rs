use attic::hash::Sha256Hash;
use tokio::io::AsyncReadExt;

use super::{Compression, DecodedBody, RefusedBody};
use crate::error::ServerError;

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("compress")
}

async fn decode(
    body: Vec<u8>,
    compression: Compression,
    limit: u64,
    file_hash: Option<Sha256Hash>,
) -> Result<Vec<u8>, ServerError> {
    let mut reader = DecodedBody::new(body.as_slice(), compression, limit, file_hash);
    let mut out = Vec::new();
    match reader.read_to_end(&mut out).await {
        Ok(_) => Ok(out),
        Err(e) => Err(RefusedBody::take(e).expect("a refusal, not an I/O error")),
    }
}

#[tokio::test]
async fn decodes_and_checks_the_file_hash() {
    let data = b"hello, world".repeat(1000);
    let body = zstd(&data);
    let hash = Sha256Hash::digest(&body);
    let out = decode(body.clone(), Compression::Zstd, 1 << 20, Some(hash))
        .await
        .expect("decodes");
    assert_eq!(out, data);
    // Two frames, as `attic push` or Nix may send, decode to both.
    let mut two = body.clone();
    two.extend_from_slice(&zstd(b"more"));
    let mut expected = data.clone();
    expected.extend_from_slice(b"more");
    assert_eq!(
        decode(two, Compression::Zstd, 1 << 20, None)
            .await
            .expect("decodes"),
        expected
    );
    let plain = decode(
        data.clone(),
        Compression::None,
        1 << 20,
        Some(Sha256Hash::digest(&data)),
    )
    .await
    .expect("plain");
    assert_eq!(plain, data);
}

#[tokio::test]
async fn refuses_a_wrong_hash_corrupt_data_trailing_bytes_and_excess() {
    let data = b"some NAR bytes".repeat(100);
    let body = zstd(&data);
    let wrong = Sha256Hash::digest(b"other");
    let err = decode(body.clone(), Compression::Zstd, 1 << 20, Some(wrong))
        .await
        .expect_err("wrong hash");
    assert!(matches!(err, ServerError::NarMismatch(_)), "{err:?}");

    let err = decode(
        b"not zstd at all".to_vec(),
        Compression::Zstd,
        1 << 20,
        None,
    )
    .await
    .expect_err("corrupt");
    assert!(
        err.to_string().contains("zstd") || format!("{err:?}").contains("zstd"),
        "{err:?}"
    );

    let err = decode(b"not xz".to_vec(), Compression::Xz, 1 << 20, None)
        .await
        .expect_err("corrupt");
    assert!(format!("{err:?}").contains("InvalidCompression"), "{err:?}");

    let err = decode(body.clone(), Compression::Zstd, 10, None)
        .await
        .expect_err("over the limit");
    assert!(matches!(err, ServerError::TooLarge(_)), "{err:?}");
}

#[test]
fn extensions_name_compressions() {
    assert_eq!(Compression::from_extension(""), Some(Compression::None));
    assert_eq!(Compression::from_extension(".zst"), Some(Compression::Zstd));
    assert_eq!(Compression::from_extension(".xz"), Some(Compression::Xz));
    assert_eq!(
        Compression::from_extension(".bz2"),
        Some(Compression::Bzip2)
    );
    assert_eq!(Compression::from_extension(".lz4"), None);
}
