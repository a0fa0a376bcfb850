//! Generates a large store directly in the database and storage, for the
//! garbage collection benchmark (`scripts/bench-gc`): `objects` paths in one
//! cache, each with its own NAR of `chunks` chunks in its own pack; the
//! first `expired` of them last read a year ago, the rest today. Pushing
//! that many paths one by one would take hours; the rows and blobs are
//! what uploads would have left.
//!
//! Usage: gc_store DIR OBJECTS CHUNKS_PER_NAR EXPIRED [CHAIN]
//! With CHAIN above 1, paths form chains of CHAIN paths, each referencing
//! the one before it (pushed before it, as Nix pushes dependencies first):
//! only the last of each chain is a root, which collection must reach from
//! the top down.
//! Writes DIR/server.toml (no grace period, so one run reclaims all it
//! can) and DIR/data (database and storage).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sea_orm::{ConnectionTrait, TransactionTrait};
use server::config::ServerConfig;
use server::setup::{self, OpenDatabase};

/// Rows per INSERT statement (under SQLite's 32,766 parameters).
const ROWS: usize = 400;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, objects, chunks, expired, chain) = match args.as_slice() {
        [_, dir, objects, chunks, expired] => (dir, objects, chunks, expired, "1"),
        [_, dir, objects, chunks, expired, chain] => (dir, objects, chunks, expired, &chain[..]),
        _ => anyhow::bail!("usage: gc_store DIR OBJECTS CHUNKS_PER_NAR EXPIRED [CHAIN]"),
    };
    let chain: i64 = chain.parse().context("CHAIN")?;
    let dir = PathBuf::from(dir);
    let objects: i64 = objects.parse().context("OBJECTS")?;
    let chunks: i64 = chunks.parse().context("CHUNKS_PER_NAR")?;
    let expired: i64 = expired.parse().context("EXPIRED")?;
    std::fs::create_dir_all(&dir)?;
    let mut config = ServerConfig::generate();
    // Reclaim everything in the one run measured.
    config.garbage_collection.grace_period = std::time::Duration::ZERO;
    config.write_new(&dir.join("server.toml"))?;
    let data = dir.join("data");
    let database = setup::open_database(&config, &data, OpenDatabase::CreateAndMigrate).await?;
    let storage = config
        .local_storage_path(&data)
        .context("the generated config stores on local disk")?;
    let conn = database.connection();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let year_ago = now - 365 * 86_400;
    conn.execute_unprepared(&format!(
        "INSERT INTO cache (id, name, keypair, is_public, store_dir, priority, \
         upstream_cache_key_names, retention_period, created_at) VALUES \
         (1, 'bench', 'bench-1:{}', 1, '/nix/store', 41, '[]', NULL, {year_ago})",
        "A".repeat(86) + "=="
    ))
    .await?;

    let chunk_stored = 1000i64;
    let pack_size = chunk_stored * chunks;
    let mut done = 0;
    while done < objects {
        let batch = (objects - done).min(2000);
        let txn = conn.begin().await?;
        let ids: Vec<i64> = (done + 1..=done + batch).collect();
        let when = |id: i64| if id <= expired { year_ago } else { now };
        for group in ids.chunks(ROWS) {
            let packs: Vec<String> = group
                .iter()
                .map(|id| {
                    format!(
                        "({id}, '{}', {pack_size}, 'valid', {})",
                        pack_key(*id),
                        when(*id)
                    )
                })
                .collect();
            txn.execute_unprepared(&format!(
                "INSERT INTO pack (id, key, size, state, created_at) VALUES {}",
                packs.join(",")
            ))
            .await?;
            let nars: Vec<String> = group
                .iter()
                .map(|id| {
                    format!(
                        "({id}, 'sha256:{:064x}', {}, 'zstd', {pack_size}, 'valid', {chunks}, {}, {id})",
                        id,
                        chunks * 4000,
                        when(*id)
                    )
                })
                .collect();
            txn.execute_unprepared(&format!(
                "INSERT INTO nar (id, nar_hash, nar_size, compression, file_size, state, \
                 num_chunks, created_at, pack_id) VALUES {}",
                nars.join(",")
            ))
            .await?;
            let path = |id: i64| {
                let hash = format!("{:032}", id).replace('0', "a");
                (format!("/nix/store/{hash}-p{id}"), hash)
            };
            let objects: Vec<String> = group
                .iter()
                .map(|&id| {
                    let (store_path, hash) = path(id);
                    let references = if chain > 1 && (id - 1) % chain != 0 {
                        format!("[\"{}\",\"{store_path}\"]", path(id - 1).0)
                    } else {
                        "[]".to_owned()
                    };
                    format!(
                        "(1, {id}, '{hash}', '{store_path}', '{references}', '[]', {t}, {t})",
                        t = when(id)
                    )
                })
                .collect();
            txn.execute_unprepared(&format!(
                "INSERT INTO object (cache_id, nar_id, store_path_hash, store_path, \
                 \"references\", sigs, created_at, last_accessed_at) VALUES {}",
                objects.join(",")
            ))
            .await?;
        }
        // Chunks and their references, ROWS at a time.
        let mut chunk_rows = Vec::new();
        let mut ref_rows = Vec::new();
        for nar in &ids {
            for seq in 0..chunks {
                let chunk = (nar - 1) * chunks + seq + 1;
                chunk_rows.push(format!(
                    "({chunk}, 'bench-{chunk:016x}', 4000, {chunk_stored}, 'zstd', {nar}, {}, \
                     'valid', {t}, {t})",
                    seq * chunk_stored,
                    t = when(*nar)
                ));
                ref_rows.push(format!("({nar}, {seq}, {chunk})"));
            }
        }
        for rows in chunk_rows.chunks(ROWS) {
            txn.execute_unprepared(&format!(
                "INSERT INTO chunk (id, chunk_hash, chunk_size, stored_size, compression, \
                 pack_id, \"offset\", state, created_at, last_referenced_at) VALUES {}",
                rows.join(",")
            ))
            .await?;
        }
        for rows in ref_rows.chunks(ROWS) {
            txn.execute_unprepared(&format!(
                "INSERT INTO chunk_ref (nar_id, seq, chunk_id) VALUES {}",
                rows.join(",")
            ))
            .await?;
        }
        txn.commit().await?;
        for id in &ids {
            let path = storage.join(pack_key(*id));
            std::fs::create_dir_all(path.parent().expect("a parent"))?;
            std::fs::write(&path, vec![0u8; pack_size as usize])?;
        }
        done += batch;
        eprint!("\r{done}/{objects} objects");
    }
    eprintln!();
    println!("{}", dir.display());
    Ok(())
}

/// The key of pack `id`, spread over the 256 prefixes as real keys are.
fn pack_key(id: i64) -> String {
    let hex = format!(
        "{:032x}",
        (id as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    );
    format!("packs/{}/{hex}", &hex[..2])
}
