//! Builds an Attic server's database and chunk store holding the store
//! paths given as arguments, in one public cache named `imported`, cut
//! into 64 KiB zstd chunks as Attic stores them; prints the path of its
//! `server.toml`. For `scripts/bench`'s import workload: the store is
//! made in `$TMPDIR` and kept after this exits.

use integration_tests::attic_store::{AtticStore, ChunkCompression, NarState};
use integration_tests::nix;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    assert!(!paths.is_empty(), "usage: attic-store STORE_PATH...");
    let store = AtticStore::create().await;
    let (secret, _) = nix::generate_key("imported-1");
    let cache = store
        .add_cache("imported", &secret, true, None, false)
        .await;
    for path in &paths {
        let size = nix::path_info(path).nar_size;
        let pieces: Vec<_> = (0..size.div_ceil(64 << 10).max(1))
            .map(|_| (64 << 10, ChunkCompression::Zstd))
            .collect();
        store.add_path(cache, path, &pieces, NarState::Valid).await;
    }
    let config = store.write_config();
    store.keep().await;
    println!("{}", config.display());
}
