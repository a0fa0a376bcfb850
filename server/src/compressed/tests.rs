use attic::hash::Sha256Hash;
use tokio::io::AsyncReadExt;

use super::{
    Compression, DecodedBody, DecodedSize, EXPANSION_ALLOWANCE, MAX_EXPANSION_RATIO, RefusedBody,
};
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
    decode_sized(body, compression, limit, file_hash, DecodedSize::Declared).await
}

async fn decode_sized(
    body: Vec<u8>,
    compression: Compression,
    limit: u64,
    file_hash: Option<Sha256Hash>,
    size: DecodedSize,
) -> Result<Vec<u8>, ServerError> {
    let mut reader = DecodedBody::new(body.as_slice(), compression, limit, file_hash, size);
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

/// CRC-32 (IEEE), as xz headers carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// An xz stream of `data` in LZMA2's uncompressed chunks, whose header
/// asks for a dictionary of the size that `dictionary` encodes
/// (`(2 | (b & 1)) << (b / 2 + 11)`): what the decoder allocates is the
/// header's to say, whatever the data needs.
fn xz_with_dictionary(data: &[u8], dictionary: u8) -> Vec<u8> {
    let mut out = vec![0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0];
    out.extend_from_slice(&crc32(&[0, 0]).to_le_bytes());
    // Block header: 12 bytes; one filter, LZMA2, one property byte.
    let mut header = vec![2, 0, 0x21, 1, dictionary, 0, 0, 0];
    header.extend_from_slice(&crc32(&header).to_le_bytes());
    out.extend_from_slice(&header);
    let mut compressed = 0u64;
    for (i, piece) in data.chunks(1 << 16).enumerate() {
        // 1: an uncompressed chunk resetting the dictionary; 2: one that does not.
        out.push(if i == 0 { 1 } else { 2 });
        out.extend_from_slice(&((piece.len() - 1) as u16).to_be_bytes());
        out.extend_from_slice(piece);
        compressed += 3 + piece.len() as u64;
    }
    out.push(0);
    compressed += 1;
    while out.len() % 4 != 0 {
        out.push(0);
    }
    let mut index = vec![0];
    varint(1, &mut index);
    varint(header.len() as u64 + compressed, &mut index);
    varint(data.len() as u64, &mut index);
    while index.len() % 4 != 0 {
        index.push(0);
    }
    index.extend_from_slice(&crc32(&index).to_le_bytes());
    out.extend_from_slice(&index);
    let mut footer = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
    footer.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&crc32(&footer).to_le_bytes());
    out.extend_from_slice(&footer);
    out.extend_from_slice(b"YZ");
    out
}

#[tokio::test]
async fn refuses_an_xz_stream_whose_dictionary_needs_too_much_memory() {
    let data = b"a NAR, or so".repeat(10_000);
    // 64 MiB, xz -9's dictionary: decodes.
    let out = decode(
        xz_with_dictionary(&data, 28),
        Compression::Xz,
        1 << 20,
        None,
    )
    .await
    .expect("a 64 MiB dictionary decodes");
    assert_eq!(out, data);
    // 1.5 GiB: refused at the block header, before anything is allocated.
    let err = decode(
        xz_with_dictionary(&data, 37),
        Compression::Xz,
        1 << 20,
        None,
    )
    .await
    .expect_err("a 1.5 GiB dictionary");
    let ServerError::BadRequest { error, message } = &err else {
        panic!("not a 400: {err:?}");
    };
    assert_eq!(*error, "XzDictionaryTooLarge", "{message}");
    assert!(message.contains("65 MiB"), "{message}");
}

/// A stream that reads `size` zeros without holding them.
fn zeros(size: u64) -> impl std::io::Read {
    use std::io::Read;
    std::io::repeat(0).take(size)
}

#[tokio::test]
async fn refuses_an_undeclared_body_that_expands_past_the_ratio() {
    let size = 16u64 << 20;
    let zstd_bomb = zstd::stream::encode_all(zeros(size), 19).expect("compress");
    let mut bzip2_bomb = Vec::new();
    async_compression::tokio::bufread::BzEncoder::new(tokio::io::BufReader::new(
        &vec![0u8; size as usize][..],
    ))
    .read_to_end(&mut bzip2_bomb)
    .await
    .expect("compress");
    for (bomb, compression) in [
        (zstd_bomb, Compression::Zstd),
        (bzip2_bomb, Compression::Bzip2),
    ] {
        assert!(
            (bomb.len() as u64) * MAX_EXPANSION_RATIO < size,
            "{compression:?} is no bomb"
        );
        let err = decode_sized(
            bomb.clone(),
            compression,
            1 << 30,
            None,
            DecodedSize::Undeclared,
        )
        .await
        .expect_err("a bomb");
        assert!(format!("{err:?}").contains("ExpansionTooLarge"), "{err:?}");
        // Declared, the size downstream is the bound instead.
        let out = decode_sized(bomb, compression, 1 << 30, None, DecodedSize::Declared)
            .await
            .expect("declared");
        assert_eq!(out.len() as u64, size);
    }
    // Ordinary data expands far less, and small bodies any amount.
    let mut text = Vec::new();
    for i in 0..200_000u32 {
        text.extend_from_slice(format!("line {i} of a build script\n").as_bytes());
    }
    let out = decode_sized(
        zstd(&text),
        Compression::Zstd,
        1 << 30,
        None,
        DecodedSize::Undeclared,
    )
    .await
    .expect("text");
    assert_eq!(out, text);
    let small = vec![0u8; EXPANSION_ALLOWANCE as usize];
    let out = decode_sized(
        zstd(&small),
        Compression::Zstd,
        1 << 30,
        None,
        DecodedSize::Undeclared,
    )
    .await
    .expect("within the allowance");
    assert_eq!(out, small);
}
