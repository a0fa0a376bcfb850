//! Throughput of the hot loops on the upload and read paths: chunking with
//! blake3 ids, SHA-256, zstd per chunk, NAR validation and parsing, and
//! narinfo rendering and signing.
//!
//! Run with `cargo bench -p attic --bench throughput`.

use std::collections::BTreeMap;
use std::hint::black_box;

use attic::chunking::{Chunker, FastCdcChunker};
use attic::nar::{NarNode, validate_nar};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::TryStreamExt;

const SIZE: usize = 64 * 1024 * 1024;

/// Incompressible, deterministic bytes: chunk boundaries fall as on real binaries.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// A NAR of a few large files and many small ones, like a real package.
fn sample_nar() -> Vec<u8> {
    let data = noise(SIZE);
    let mut entries = BTreeMap::new();
    for (i, piece) in data.chunks(SIZE / 4).enumerate() {
        entries.insert(
            format!("big-{i}").into_bytes(),
            NarNode::Regular {
                executable: i % 2 == 0,
                contents: piece.to_vec(),
            },
        );
    }
    for (i, piece) in data[..4 * 1024 * 1024].chunks(4096).enumerate() {
        entries.insert(
            format!("small-{i:05}").into_bytes(),
            NarNode::Regular {
                executable: false,
                contents: piece.to_vec(),
            },
        );
    }
    NarNode::Directory(entries).to_nar()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

fn chunking(c: &mut Criterion) {
    let data = noise(SIZE);
    let chunker = FastCdcChunker::default();
    let rt = runtime();
    let mut group = c.benchmark_group("chunking");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("fastcdc+blake3 64MiB", |b| {
        b.iter(|| {
            let chunks: Vec<_> = rt
                .block_on(chunker.chunks(&data[..]).try_collect())
                .expect("in-memory chunking");
            black_box(chunks.len())
        })
    });
    // References for ratios measured in the same run: the crate's own
    // synchronous chunker without hashing, and blake3 alone.
    group.bench_function("fastcdc StreamCDC reference, no hashing", |b| {
        b.iter(|| {
            let chunker =
                fastcdc::v2020::StreamCDC::new(&data[..], 16 * 1024, 64 * 1024, 256 * 1024);
            black_box(chunker.map(|c| c.expect("in memory").length).sum::<usize>())
        })
    });
    group.bench_function("blake3 only", |b| b.iter(|| black_box(blake3::hash(&data))));
    group.finish();
}

fn nar(c: &mut Criterion) {
    let nar = sample_nar();
    let rt = runtime();
    let mut group = c.benchmark_group("nar");
    group.throughput(Throughput::Bytes(nar.len() as u64));
    group.sample_size(10);
    group.bench_function("validate+sha256", |b| {
        b.iter(|| black_box(rt.block_on(validate_nar(&nar[..])).expect("valid")))
    });
    group.bench_function("parse to tree", |b| {
        b.iter(|| black_box(NarNode::from_nar(&nar).expect("valid")))
    });
    group.finish();
}

/// Text-like bytes: compressible as real files are.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i: u64 = 0;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i}: /nix/store/{i:032}-package-{}\n", i % 97).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn hashing_and_compression(c: &mut Criterion) {
    let data = noise(SIZE);
    let mut group = c.benchmark_group("per byte");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("sha256 64MiB", |b| {
        b.iter(|| black_box(attic::hash::Sha256Hash::digest(&data)))
    });
    let compressible = text(SIZE);
    for (name, input) in [("noise", &data), ("text", &compressible)] {
        group.bench_function(format!("zstd level 3 per 64KiB chunk, {name}"), |b| {
            b.iter(|| {
                let stored: usize = input
                    .chunks(64 * 1024)
                    .map(|chunk| zstd::bulk::compress(chunk, 3).expect("compress").len())
                    .sum();
                black_box(stored)
            })
        });
    }
    group.finish();
}

fn narinfo(c: &mut Criterion) {
    use attic::narinfo::NarInfo;
    use attic::signing::SigningKey;
    let references: String = (0..20)
        .map(|i| format!(" {i:032}-dependency-{i}"))
        .collect();
    let text = format!(
        "StorePath: /nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12\n\
         URL: nar/0123456789abcdfghijklmnpqrsvwxyz.nar.zst\n\
         Compression: zstd\n\
         FileSize: 50264\n\
         NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n\
         NarSize: 226560\n\
         References:{references}\n\
         Deriver: 5rbjb2gzbdnfjqz3bdb4xw9y6i4l9n3q-hello-2.12.drv\n"
    );
    let key = SigningKey::generate("bench-1").expect("key");
    let mut group = c.benchmark_group("narinfo");
    group.bench_function("parse + sign + render, 20 references", |b| {
        b.iter(|| {
            let mut info: NarInfo = text.parse().expect("valid narinfo");
            info.sign(&key);
            black_box(info.to_string())
        })
    });
    group.finish();
}

criterion_group!(benches, chunking, nar, hashing_and_compression, narinfo);
criterion_main!(benches);
