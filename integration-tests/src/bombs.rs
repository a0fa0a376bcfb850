//! Hostile compressed NARs, generated as streams so that neither a test
//! nor a benchmark holds what they decode to: a NAR of one file of zeros
//! compressed by zstd or bzip2 (thousands to millions of times smaller
//! than what it decodes to), and an xz stream whose header asks the
//! decoder for a dictionary of any size.
//!
//! `cargo run -p integration-tests --example hostile_inputs` writes them
//! to files, for measuring what a server pays for them.

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt};

/// A NAR string: length, bytes, zeros to a multiple of 8.
fn nar_string(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// What comes before and after the contents of a NAR holding one regular
/// file of `size` bytes.
fn regular_file_frame(size: u64) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::new();
    for text in ["nix-archive-1", "(", "type", "regular", "contents"] {
        nar_string(&mut head, text.as_bytes());
    }
    head.extend_from_slice(&size.to_le_bytes());
    let mut tail = vec![0; (size.next_multiple_of(8) - size) as usize];
    nar_string(&mut tail, b")");
    (head, tail)
}

/// A valid NAR of one file of `size` zeros, read as a stream.
pub fn zeros_nar(size: u64) -> impl Read {
    let (head, tail) = regular_file_frame(size);
    let zeros = Read::take(io::repeat(0), size);
    Read::chain(
        Read::chain(io::Cursor::new(head), zeros),
        io::Cursor::new(tail),
    )
}

/// [`zeros_nar`] as an async stream.
pub fn zeros_nar_async(size: u64) -> impl AsyncRead + Unpin {
    let (head, tail) = regular_file_frame(size);
    let zeros = AsyncReadExt::take(tokio::io::repeat(0), size);
    AsyncReadExt::chain(
        AsyncReadExt::chain(io::Cursor::new(head), zeros),
        io::Cursor::new(tail),
    )
}

/// [`zeros_nar`] compressed by zstd at level 19: about 32 KB per GiB.
pub fn zstd_bomb(size: u64) -> Vec<u8> {
    zstd::stream::encode_all(zeros_nar(size), 19).expect("zstd compresses")
}

/// [`zeros_nar`] compressed by bzip2: about 31 KB per GiB.
pub async fn bzip2_bomb(size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    async_compression::tokio::bufread::BzEncoder::new(tokio::io::BufReader::new(zeros_nar_async(
        size,
    )))
    .read_to_end(&mut out)
    .await
    .expect("bzip2 compresses");
    out
}

/// The LZMA2 dictionary-size byte for `size` bytes, rounded up to the
/// next size it can say (`(2 | (b & 1)) << (b / 2 + 11)`): 37 is 1.5 GiB,
/// 28 is 64 MiB (`xz -9`), 22 is 8 MiB (`xz -6`, Nix's).
pub fn dictionary_byte(size: u64) -> u8 {
    (0u8..40)
        .find(|&b| (2 | u64::from(b & 1)) << (b / 2 + 11) >= size)
        .unwrap_or(40)
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

/// Writes `data` to `out` as one valid xz stream whose block header asks
/// for a dictionary of `dictionary` ([`dictionary_byte`]) whatever the
/// data needs: the data goes in LZMA2's uncompressed chunks, so writing
/// costs nothing, while a decoder without a memory limit allocates the
/// dictionary and fills it as it decodes (RSS grows to the dictionary's
/// size, or the data's if smaller). No integrity check, as `xz -C none`.
pub fn write_xz_with_dictionary(
    mut data: impl Read,
    dictionary: u8,
    mut out: impl Write,
) -> io::Result<()> {
    let mut stream_header = vec![0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0];
    stream_header.extend_from_slice(&crc32(&[0, 0]).to_le_bytes());
    out.write_all(&stream_header)?;
    // Block header: 12 bytes; one filter, LZMA2, with its one property byte.
    let mut block_header = vec![2, 0, 0x21, 1, dictionary, 0, 0, 0];
    block_header.extend_from_slice(&crc32(&block_header).to_le_bytes());
    out.write_all(&block_header)?;
    let (mut compressed, mut uncompressed) = (0u64, 0u64);
    let mut piece = vec![0u8; 1 << 16];
    loop {
        let mut filled = 0;
        while filled < piece.len() {
            match data.read(&mut piece[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        // 1: an uncompressed chunk that resets the dictionary, as the
        // first must; 2: one that does not.
        out.write_all(&[if uncompressed == 0 { 1 } else { 2 }])?;
        out.write_all(&((filled - 1) as u16).to_be_bytes())?;
        out.write_all(&piece[..filled])?;
        compressed += 3 + filled as u64;
        uncompressed += filled as u64;
    }
    out.write_all(&[0])?;
    compressed += 1;
    out.write_all(&vec![
        0;
        (compressed.next_multiple_of(4) - compressed) as usize
    ])?;
    let mut index = vec![0];
    varint(1, &mut index);
    varint(block_header.len() as u64 + compressed, &mut index);
    varint(uncompressed, &mut index);
    index.resize(index.len().next_multiple_of(4), 0);
    index.extend_from_slice(&crc32(&index).to_le_bytes());
    out.write_all(&index)?;
    let mut footer = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
    footer.extend_from_slice(&[0, 0]);
    out.write_all(&crc32(&footer).to_le_bytes())?;
    out.write_all(&footer)?;
    out.write_all(b"YZ")
}

/// `nar` as an xz stream asking for a dictionary of `dictionary_size`.
pub fn xz_with_dictionary(nar: &[u8], dictionary_size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_xz_with_dictionary(nar, dictionary_byte(dictionary_size), &mut out)
        .expect("writing to memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hostile_streams_decode_to_the_nar_they_wrap() {
        let nar: Vec<u8> = {
            let mut nar = Vec::new();
            zeros_nar(1000).read_to_end(&mut nar).expect("read");
            nar
        };
        let decoded = zstd::stream::decode_all(&zstd_bomb(1000)[..]).expect("zstd");
        assert_eq!(decoded, nar);
        // The system's xz is the oracle for the hand-made stream.
        let xz = xz_with_dictionary(&nar, 8 << 20);
        let mut child = std::process::Command::new("xz")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("xz");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&xz)
            .expect("write");
        let output = child.wait_with_output().expect("xz runs");
        assert!(output.status.success());
        assert_eq!(output.stdout, nar);
        assert_eq!(dictionary_byte(1536 << 20), 37);
        assert_eq!(dictionary_byte(64 << 20), 28);
    }
}
