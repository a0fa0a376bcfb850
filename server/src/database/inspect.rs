//! A read-only view of the whole store, for tests and tools that check
//! what the server left behind: rows per table, rows nothing needs, and
//! every NAR, chunk, pack, path and log as a typed record. Each answer is
//! O(size of the store), so nothing on a request path or in the collector
//! calls these.

use std::collections::HashMap;

use attic::chunking::ChunkId;
use sea_orm::sea_query::{Expr, ExprTrait, IntoColumnRef, IntoTableRef, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

use super::entity::{build_log, cache, chunk, chunkref, nar, object, pack, staged_nar};
use super::ids::CacheId;
use super::logs::LogRecord;
use super::records::{NarRecord, PackRecord, StoredPath};
use super::{Database, DatabaseError};
use crate::pack::{BlobState, PackId, StoredChecksum, StoredChunkId};

/// How many rows each table holds, whatever their state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Caches, destroyed ones the collector has not yet forgotten included.
    pub caches: u64,
    /// Paths, in every cache.
    pub paths: u64,
    /// NARs in the global store.
    pub nars: u64,
    /// NARs `nix copy` uploaded that no narinfo has claimed yet.
    pub staged_nars: u64,
    /// Chunks.
    pub chunks: u64,
    /// Packs, those being deleted included.
    pub packs: u64,
    /// Build logs, in every cache.
    pub build_logs: u64,
}

/// Rows nothing needs any more: what a collection without a grace period
/// leaves none of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Orphans {
    /// NARs no path holds and no `nix copy` upload staged.
    pub nars: u64,
    /// Chunks no NAR references.
    pub chunks: u64,
    /// Packs no chunk is stored in.
    pub packs: u64,
}

/// A chunk as the store holds it, with how much it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Its row.
    pub id: StoredChunkId,
    /// blake3 of its uncompressed bytes.
    pub hash: ChunkId,
    /// The pack its stored bytes are in.
    pub pack_id: PackId,
    /// Length of its stored bytes.
    pub stored_size: u64,
    /// Checksum of its stored bytes; `None` for a chunk from before packs
    /// until a check earns it one.
    pub checksum: Option<StoredChecksum>,
    /// Whether it may be served.
    pub state: BlobState,
    /// NAR positions it fills, over every NAR: 0 for a chunk no NAR uses.
    pub uses: u64,
}

/// A build log as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    /// The derivation's file name, `<hash>-<name>.drv`.
    pub drv: String,
    /// Its size and where its bytes are, as a reader finds them.
    pub log: LogRecord,
    /// Bytes of the log its row holds itself: all of it for a log stored
    /// before logs moved to blobs, none for one stored since.
    pub inline_bytes: u64,
}

/// `SELECT 1 FROM table WHERE reference = target`, correlated with the
/// outer statement's `target`: under `EXISTS`, whether any row of `table`
/// points at the row looked at.
fn rows_pointing_at(
    table: impl IntoTableRef,
    reference: impl IntoColumnRef,
    target: impl IntoColumnRef,
) -> SelectStatement {
    Query::select()
        .expr(Expr::val(1))
        .from(table)
        .and_where(Expr::col(reference).equals(target))
        .to_owned()
}

fn corrupt_chunk(id: i64) -> impl Fn(String) -> DatabaseError {
    move |reason| DatabaseError::CorruptRow {
        table: "chunk",
        id,
        reason,
    }
}

impl Database {
    /// How many rows each table holds: what a test compares before and
    /// after an upload or a collection to see what it stored or removed.
    pub async fn row_counts(&self) -> Result<RowCounts, DatabaseError> {
        Ok(RowCounts {
            caches: cache::Entity::find().count(&self.conn).await?,
            paths: object::Entity::find().count(&self.conn).await?,
            nars: nar::Entity::find().count(&self.conn).await?,
            staged_nars: staged_nar::Entity::find().count(&self.conn).await?,
            chunks: chunk::Entity::find().count(&self.conn).await?,
            packs: pack::Entity::find().count(&self.conn).await?,
            build_logs: build_log::Entity::find().count(&self.conn).await?,
        })
    }

    /// Rows nothing needs any more: NARs no path or staged upload holds,
    /// chunks no NAR references, packs holding no chunk. After a collection
    /// without a grace period every count is 0; anything else is a leak.
    pub async fn orphans(&self) -> Result<Orphans, DatabaseError> {
        let held = rows_pointing_at(
            object::Entity,
            (object::Entity, object::Column::NarId),
            (nar::Entity, nar::Column::Id),
        );
        let staged = rows_pointing_at(
            staged_nar::Entity,
            (staged_nar::Entity, staged_nar::Column::NarId),
            (nar::Entity, nar::Column::Id),
        );
        let referenced = rows_pointing_at(
            chunkref::Entity,
            (chunkref::Entity, chunkref::Column::ChunkId),
            (chunk::Entity, chunk::Column::Id),
        );
        let used = rows_pointing_at(
            chunk::Entity,
            (chunk::Entity, chunk::Column::PackId),
            (pack::Entity, pack::Column::Id),
        );
        Ok(Orphans {
            nars: nar::Entity::find()
                .filter(Expr::exists(held).not())
                .filter(Expr::exists(staged).not())
                .count(&self.conn)
                .await?,
            chunks: chunk::Entity::find()
                .filter(Expr::exists(referenced).not())
                .count(&self.conn)
                .await?,
            packs: pack::Entity::find()
                .filter(Expr::exists(used).not())
                .count(&self.conn)
                .await?,
        })
    }

    /// Every NAR in the global store, in any state, by id: to check that
    /// each NAR is stored once however many uploads raced to store it.
    pub async fn all_nars(&self) -> Result<Vec<NarRecord>, DatabaseError> {
        nar::Entity::find()
            .order_by_asc(nar::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(NarRecord::try_from)
            .collect()
    }

    /// Every pack, in any state, by id: to compare the packs the database
    /// knows with the blobs storage holds.
    pub async fn all_packs(&self) -> Result<Vec<PackRecord>, DatabaseError> {
        pack::Entity::find()
            .order_by_asc(pack::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(PackRecord::try_from)
            .collect()
    }

    /// Every chunk, in any state, by id, with how many NAR positions use
    /// it: to check deduplication (one row per content), which packs hold
    /// chunks, and which chunks have earned a checksum.
    pub async fn all_chunks(&self) -> Result<Vec<ChunkRecord>, DatabaseError> {
        let uses: HashMap<i64, i64> = chunkref::Entity::find()
            .select_only()
            .column(chunkref::Column::ChunkId)
            .column_as(chunkref::Column::Id.count(), "uses")
            .group_by(chunkref::Column::ChunkId)
            .into_tuple::<(i64, i64)>()
            .all(&self.conn)
            .await?
            .into_iter()
            .collect();
        let rows = chunk::Entity::find()
            .order_by_asc(chunk::Column::Id)
            .all(&self.conn)
            .await?;
        rows.into_iter()
            .map(|row| {
                let bad = corrupt_chunk(row.id);
                Ok(ChunkRecord {
                    id: StoredChunkId::new(row.id),
                    hash: row
                        .chunk_hash
                        .parse()
                        .map_err(|e| bad(format!("chunk_hash: {e}")))?,
                    pack_id: PackId::new(row.pack_id.ok_or_else(|| bad("no pack_id".into()))?),
                    stored_size: u64::try_from(row.stored_size)
                        .map_err(|_| bad(format!("negative stored_size {}", row.stored_size)))?,
                    checksum: row
                        .stored_checksum
                        .as_deref()
                        .map(str::parse)
                        .transpose()
                        .map_err(|e| bad(format!("stored_checksum: {e}")))?,
                    state: row.state.into(),
                    uses: uses.get(&row.id).map_or(0, |&n| n.unsigned_abs()),
                })
            })
            .collect()
    }

    /// A cache's paths, whatever the state of their NARs, by store path,
    /// read without counting as a read: to see what a collection kept
    /// without changing which path is least recently used.
    pub async fn cache_paths(&self, cache_id: CacheId) -> Result<Vec<StoredPath>, DatabaseError> {
        object::Entity::find()
            .filter(object::Column::CacheId.eq(cache_id))
            .order_by_asc(object::Column::StorePath)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(StoredPath::try_from)
            .collect()
    }

    /// A cache's build logs, by derivation, with how many of their bytes
    /// their rows hold: to check that a log is stored as a blob and not in
    /// the database.
    pub async fn cache_logs(&self, cache_id: CacheId) -> Result<Vec<StoredLog>, DatabaseError> {
        Ok(build_log::Entity::find()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .order_by_asc(build_log::Column::Drv)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|row| StoredLog {
                drv: row.drv.clone(),
                inline_bytes: row.data.len() as u64,
                log: LogRecord::from(row),
            })
            .collect())
    }

    /// The names of the tables in the database (its current schema on
    /// PostgreSQL), sorted: to check that something meant to only read a
    /// database, such as checking the config, created none.
    pub async fn table_names(&self) -> Result<Vec<String>, DatabaseError> {
        let backend = self.conn.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY 1"
            }
            _ => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY 1"
            }
        };
        self.conn
            .query_all_raw(Statement::from_string(backend, sql))
            .await?
            .iter()
            .map(|row| Ok(row.try_get_by_index::<String>(0)?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
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
        let object = Claim::Object(NewObject {
            cache_id: cache,
            info: path_info(1),
            created_by: None,
        });
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
        let object = Claim::Object(NewObject {
            cache_id: cache,
            info: path_info(1),
            created_by: None,
        });
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
}
