//! The typed view of the store, over stores seeded in known shapes.

use attic::hash::Sha256Hash;
use attic::store_path::StorePathHash;

use super::*;
use crate::database::{Claim, NewChunk, NewNar, NewObject, PathInfo, UploadedChunk};
use crate::pack::write::WrittenPack;
use crate::pack::{PackKey, StoredCompression};

fn path_info(n: u8) -> PathInfo {
    let hash = format!("{n:0>32}");
    PathInfo {
        store_path_hash: hash.parse::<StorePathHash>().expect("a hash"),
        store_path: format!("/nix/store/{hash}-p"),
        references: Vec::new(),
        system: None,
        deriver: None,
        sigs: Vec::new(),
        ca: None,
    }
}

/// A NAR of `chunks` (their contents), all new, in a pack of their own.
fn upload(chunks: &[&[u8]]) -> NewNar {
    let mut offset = 0;
    let mut nar = Vec::new();
    let chunks = chunks
        .iter()
        .map(|content| {
            nar.extend_from_slice(content);
            let chunk = NewChunk {
                hash: ChunkId::of(content),
                chunk_size: content.len() as u64,
                compression: StoredCompression::None,
                offset,
                stored_size: content.len() as u64,
                checksum: StoredChecksum::of(content),
            };
            offset += content.len() as u64;
            UploadedChunk::New(chunk)
        })
        .collect();
    NewNar {
        nar_hash: Sha256Hash::digest(&nar),
        nar_size: nar.len() as u64,
        pack: Some(WrittenPack {
            key: PackKey::generate(),
            size: offset,
        }),
        chunks,
    }
}

#[tokio::test]
async fn counts_rows_and_finds_no_orphans_in_a_store_of_held_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Database::for_tests(&dir).await;
    assert_eq!(
        database.row_counts().await.expect("counts"),
        RowCounts::default()
    );
    let cache = database.seed_cache("c").await.id;
    let object = Claim::Object(Box::new(NewObject {
        cache_id: cache,
        info: path_info(1),
        created_by: None,
        audit: None,
        timestamps: None,
    }));
    database
        .commit_upload(upload(&[b"one", b"two", b"one"]), object)
        .await
        .expect("commit");
    let staged = Claim::Staged {
        cache_id: cache,
        file: "x.nar".into(),
    };
    database
        .commit_upload(upload(&[b"three"]), staged)
        .await
        .expect("stage");
    database
        .put_log(cache, "x.drv", 10, 5, "logs/00/x")
        .await
        .expect("a log");

    let counts = database.row_counts().await.expect("counts");
    assert_eq!(
        counts,
        RowCounts {
            caches: 1,
            paths: 1,
            nars: 2,
            staged_nars: 1,
            chunks: 3,
            packs: 2,
            build_logs: 1,
        }
    );
    assert_eq!(
        database.orphans().await.expect("orphans"),
        Orphans::default()
    );
}

#[tokio::test]
async fn counts_as_orphans_what_nothing_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Database::for_tests(&dir).await;
    let cache = database.seed_cache("c").await.id;
    database.seed_nar("unheld", 0).await;
    let staged = Claim::Staged {
        cache_id: cache,
        file: "x.nar".into(),
    };
    database
        .commit_upload(upload(&[b"held"]), staged)
        .await
        .expect("stage");
    assert_eq!(
        database.orphans().await.expect("orphans"),
        Orphans {
            nars: 1,
            chunks: 0,
            packs: 0,
        }
    );
    database.expire_staged(i64::MAX).await.expect("expire");
    assert_eq!(
        database.orphans().await.expect("orphans"),
        Orphans {
            nars: 2,
            chunks: 0,
            packs: 0,
        }
    );
    let mut after = 0;
    while let (Some(last), _) = database.delete_unheld_nars(after, 10).await.expect("nars") {
        after = last;
    }
    assert_eq!(
        database.orphans().await.expect("orphans"),
        Orphans {
            nars: 0,
            chunks: 1,
            packs: 0,
        }
    );
    let mut after = 0;
    while let (Some(last), _) = database
        .delete_unreferenced_chunks(after, 10)
        .await
        .expect("chunks")
    {
        after = last;
    }
    assert_eq!(
        database.orphans().await.expect("orphans"),
        Orphans {
            nars: 0,
            chunks: 0,
            packs: 1,
        }
    );
}

#[tokio::test]
async fn lists_chunks_with_their_uses_and_nars_and_packs_as_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Database::for_tests(&dir).await;
    let cache = database.seed_cache("c").await.id;
    let object = Claim::Object(Box::new(NewObject {
        cache_id: cache,
        info: path_info(1),
        created_by: None,
        audit: None,
        timestamps: None,
    }));
    let new = upload(&[b"one", b"two", b"one"]);
    let nar_hash = new.nar_hash;
    let nar = database.commit_upload(new, object).await.expect("commit");

    let chunks = database.all_chunks().await.expect("chunks");
    let uses: Vec<(ChunkId, u64)> = chunks.iter().map(|c| (c.hash, c.uses)).collect();
    assert_eq!(
        uses,
        vec![(ChunkId::of(b"one"), 2), (ChunkId::of(b"two"), 1)]
    );
    assert!(chunks.iter().all(|c| c.state == BlobState::Valid
        && c.checksum.is_some()
        && c.pack_id == chunks[0].pack_id));
    let packs = database.all_packs().await.expect("packs");
    assert_eq!(packs.len(), 1);
    assert_eq!(
        (packs[0].id, packs[0].state),
        (chunks[0].pack_id, BlobState::Valid)
    );
    assert_eq!(database.all_nars().await.expect("nars"), vec![nar.clone()]);
    assert_eq!(nar.nar_hash, nar_hash);
}

#[tokio::test]
async fn lists_a_caches_paths_and_logs_but_no_other_caches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Database::for_tests(&dir).await;
    let cache = database.seed_cache("c").await.id;
    let other = database.seed_cache("other").await.id;
    let nar = database.seed_nar("n", 0).await;
    database
        .seed_path(
            cache,
            nar,
            ("2".repeat(32).as_str(), "/nix/store/b"),
            &[],
            0,
        )
        .await;
    database
        .seed_path(
            cache,
            nar,
            ("1".repeat(32).as_str(), "/nix/store/a"),
            &[],
            0,
        )
        .await;
    database
        .seed_path(
            other,
            nar,
            ("3".repeat(32).as_str(), "/nix/store/c"),
            &[],
            0,
        )
        .await;
    database
        .put_log(cache, "b.drv", 10, 5, "logs/00/b")
        .await
        .expect("a log");
    database
        .put_log(other, "c.drv", 10, 5, "logs/00/c")
        .await
        .expect("a log");

    let paths: Vec<String> = database
        .cache_paths(cache)
        .await
        .expect("paths")
        .into_iter()
        .map(|p| p.info.store_path)
        .collect();
    assert_eq!(paths, ["/nix/store/a", "/nix/store/b"]);
    assert_eq!(
        database.cache_logs(cache).await.expect("logs"),
        vec![StoredLog {
            drv: "b.drv".into(),
            log: LogRecord {
                size: 10,
                location: super::super::LogLocation::Blob("logs/00/b".into()),
            },
            inline_bytes: 0,
        }]
    );
}

#[tokio::test]
async fn names_the_tables_of_a_migrated_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Database::for_tests(&dir).await;
    let tables = database.table_names().await.expect("tables");
    for table in [
        "cache",
        "object",
        "nar",
        "chunk",
        "chunk_ref",
        "pack",
        "build_log",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
}
