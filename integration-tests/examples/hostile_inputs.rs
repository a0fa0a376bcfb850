//! Writes the hostile NARs of `integration_tests::bombs` to files, named
//! as Nix's upload protocol names them, for measuring what a server pays
//! for them (`scripts/bench` or by hand):
//!
//! ```text
//! cargo run --release -p integration-tests --example hostile_inputs -- DIR [GIB]
//! curl -T DIR/<hash>.nar.xz -H "Authorization: Bearer $TOKEN" http://HOST/CACHE/nar/<hash>.nar.xz
//! ```
//!
//! `GIB` (default 2) is what each NAR decodes to: the xz stream holds it
//! in LZMA2's uncompressed chunks behind a header asking for a 1.5 GiB
//! dictionary (so the file is that large, and an unbounded decoder's RSS
//! grows by up to 1.5 GiB as it decodes); the zstd and bzip2 bombs are a
//! NAR of that many zeros, about 32 KB per GiB each. Generating 1 GiB
//! takes about a minute in a debug build.

use std::io::Write;
use std::path::Path;

use attic::hash::Sha256Hash;
use integration_tests::bombs;

/// Writes `body` under its Nix upload name and prints the name.
fn save(dir: &Path, extension: &str, body: &[u8]) {
    let name = format!("{}.nar{extension}", Sha256Hash::digest(body).to_nix32());
    std::fs::write(dir.join(&name), body).expect("write");
    println!("{name}\t{} bytes", body.len());
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: hostile_inputs DIR [GIB]");
    let gib: u64 = args
        .next()
        .map_or(2, |g| g.parse().expect("GIB is a number"));
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create DIR");
    let size = gib << 30;

    // Streamed to a file, then renamed to its hash.
    let partial = dir.join("xz.partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).expect("create"));
    bombs::write_xz_with_dictionary(
        bombs::zeros_nar(size),
        bombs::dictionary_byte(1536 << 20),
        &mut file,
    )
    .expect("write the xz stream");
    file.flush().expect("flush");
    drop(file);
    let hash = {
        use std::io::Read;
        let mut hasher = attic::hash::Sha256Hasher::new();
        let mut reader = std::fs::File::open(&partial).expect("open");
        let mut buffer = vec![0; 1 << 20];
        loop {
            let n = reader.read(&mut buffer).expect("read");
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        hasher.finish().0
    };
    let name = format!("{}.nar.xz", hash.to_nix32());
    std::fs::rename(&partial, dir.join(&name)).expect("rename");
    println!("{name}\t(1.5 GiB dictionary, {gib} GiB NAR)");

    save(dir, ".zst", &bombs::zstd_bomb(size));
    save(dir, ".bz2", &bombs::bzip2_bomb(size).await);
}
