//! Throughput of the hot loops on the upload path, in bytes per second:
//! chunking with blake3 ids, NAR validation with SHA-256, and NAR encoding.
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

criterion_group!(benches, chunking, nar);
criterion_main!(benches);
