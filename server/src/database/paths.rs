//! Paths as caches hold them: what a push attaches, what a pull finds,
//! which of a client's paths a cache lacks, and when each was last read.

use std::collections::HashSet;

use attic::store_path::StorePathHash;
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, JoinType, QueryFilter, QuerySelect,
    RelationTrait, TransactionTrait,
};

use super::attach::{NewObject, attach_object};
use super::entity::{BlobState, nar, object};
use super::ids::{CacheId, NarId, ObjectId};
use super::records::{NarRecord, StoredPath};
use super::{BATCH, Database, DatabaseError};

impl Database {
    /// Which of `hashes` the cache does not hold whole: paths whose NAR is
    /// damaged count as missing, so the next push stores them again.
    /// Duplicates are asked about once and answered once per occurrence.
    ///
    /// A push asks about its whole closure at once (up to 100,000 hashes),
    /// so each statement carries [`hashes_per_statement`] of them as one
    /// bound value, a list the database unpacks itself
    /// ([`hash_list_condition`]), and is answered from the
    /// `(cache_id, store_path_hash)` index: a few statements whatever the
    /// number of hashes, none bound by a parameter limit.
    pub async fn find_missing_paths(
        &self,
        cache_id: CacheId,
        hashes: &[StorePathHash],
    ) -> Result<Vec<StorePathHash>, DatabaseError> {
        let mut asked: Vec<&str> = hashes.iter().map(StorePathHash::as_str).collect();
        asked.sort_unstable();
        asked.dedup();
        let backend = self.conn.get_database_backend();
        // One read transaction, in which PostgreSQL starts no parallel
        // workers: each statement is a few thousand index probes, and
        // starting workers took 17 of its 39 ms at a million paths.
        let txn = self.conn.begin().await?;
        if backend == DbBackend::Postgres {
            txn.execute_unprepared("SET LOCAL max_parallel_workers_per_gather = 0")
                .await?;
        }
        let mut present = HashSet::new();
        for batch in asked.chunks(hashes_per_statement(backend)) {
            let found: Vec<String> = object::Entity::find()
                .select_only()
                .column(object::Column::StorePathHash)
                .join(JoinType::InnerJoin, object::Relation::Nar.def())
                .filter(object::Column::CacheId.eq(cache_id))
                .filter(hash_list_condition(backend, batch))
                .filter(nar::Column::State.eq(BlobState::Valid))
                .into_tuple()
                .all(&txn)
                .await?;
            present.extend(found);
        }
        txn.commit().await?;
        Ok(hashes
            .iter()
            .filter(|h| !present.contains(h.as_str()))
            .cloned()
            .collect())
    }

    /// A path in a cache, with its NAR, if the NAR may be served.
    pub async fn find_object(
        &self,
        cache_id: CacheId,
        store_path_hash: &StorePathHash,
    ) -> Result<Option<(StoredPath, NarRecord)>, DatabaseError> {
        self.find_servable(
            cache_id,
            object::Column::StorePathHash.eq(store_path_hash.as_str()),
        )
        .await
    }

    /// The path of a cache whose NAR `nix copy` uploaded under `file`
    /// (`<file hash>.nar.xz`), with its NAR, if the NAR may be served.
    pub async fn find_by_nix_upload_file(
        &self,
        cache_id: CacheId,
        file: &str,
    ) -> Result<Option<(StoredPath, NarRecord)>, DatabaseError> {
        self.find_servable(cache_id, object::Column::NixUploadFile.eq(file))
            .await
    }

    /// A path of a cache matching `which`, with its NAR, if the NAR may be
    /// served: one round trip, as this is on every narinfo and NAR request.
    async fn find_servable(
        &self,
        cache_id: CacheId,
        which: SimpleExpr,
    ) -> Result<Option<(StoredPath, NarRecord)>, DatabaseError> {
        let found = object::Entity::find()
            .find_also_related(nar::Entity)
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(which)
            .filter(nar::Column::State.eq(BlobState::Valid))
            .one(&self.conn)
            .await?;
        match found {
            Some((object, Some(nar))) => Ok(Some((object.try_into()?, nar.try_into()?))),
            _ => Ok(None),
        }
    }

    /// Adds an existing NAR to a cache after the uploader proved it holds it.
    /// `ChunkGone` if the NAR was reclaimed (or found damaged) while the
    /// upload proving possession of it ran.
    pub async fn attach_existing_nar(
        &self,
        nar_id: NarId,
        new: NewObject,
    ) -> Result<(), DatabaseError> {
        let txn = self.begin_write().await?;
        attach_object(&txn, nar_id, new).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Marks paths as read at `when`.
    pub async fn touch_objects(&self, ids: &[ObjectId], when: i64) -> Result<(), DatabaseError> {
        for batch in ids.chunks(BATCH) {
            object::Entity::update_many()
                .col_expr(object::Column::LastAccessedAt, when.into())
                .filter(object::Column::Id.is_in(batch.iter().copied()))
                .exec(&self.conn)
                .await?;
        }
        Ok(())
    }
}

/// Store path hashes one `find_missing_paths` statement asks about: a
/// client's whole request in a few statements, each with a bounded result,
/// each answered by probing the index. SQLite probes it for each hash of
/// the list, however long. PostgreSQL weighs probes against reading the
/// whole cache: with a million paths it read all of them for a list of
/// 25,000 (220 ms a statement, growing with the cache, measured with
/// `scripts/bench-scale`), and it probes for lists of a few thousand.
fn hashes_per_statement(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Postgres => 2_000,
        _ => 25_000,
    }
}

/// `object.store_path_hash` is one of `hashes`, given as one bound value:
/// a comma-separated text split by PostgreSQL (`= ANY`, an index
/// condition), a JSON array read by SQLite's `json_each` (an `IN`
/// subquery, probed through the index). Store path hashes hold neither
/// commas nor quotes. Each backend's custom SQL takes its own placeholder
/// style (`$1`, `?`): sea-query drops a value given in the other.
fn hash_list_condition(backend: DbBackend, hashes: &[&str]) -> SimpleExpr {
    match backend {
        DbBackend::Postgres => Expr::cust_with_values(
            "\"object\".\"store_path_hash\" = ANY(string_to_array($1, ','))",
            [hashes.join(",")],
        ),
        _ => Expr::cust_with_values(
            "\"object\".\"store_path_hash\" IN (SELECT value FROM json_each(?))",
            [serde_json::to_string(hashes).expect("a list of strings is JSON")],
        ),
    }
}

impl Database {
    /// Removes a path from a cache at once, as its admin asked; whether the
    /// cache held it. Its NAR stays for any other cache holding it, and is
    /// otherwise the garbage collector's to reclaim (as after an eviction).
    /// Paths of the cache that reference it keep their rows: their
    /// closures are broken, which is what deleting it means.
    pub async fn delete_path(
        &self,
        cache_id: CacheId,
        store_path_hash: &StorePathHash,
    ) -> Result<bool, DatabaseError> {
        let result = object::Entity::delete_many()
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::StorePathHash.eq(store_path_hash.as_str()))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store path hash and path numbered `n`.
    fn numbered(n: usize) -> (String, String) {
        let hash = format!("{n:0>32}");
        let path = format!("/nix/store/{hash}-p{n}");
        (hash, path)
    }

    /// A whole request's worth of hashes, more than one statement takes:
    /// the answer lists exactly the unknown ones, in the order asked,
    /// once per time asked, and another cache's paths count as missing.
    #[tokio::test]
    async fn missing_paths_of_a_hundred_thousand_hashes_are_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("a").await;
        let other = database.seed_cache("b").await;
        let nar = database.seed_nar("1", 0).await;
        let held: Vec<_> = (0..3_000).map(numbered).collect();
        let elsewhere: Vec<_> = (3_000..3_500).map(numbered).collect();
        database.seed_paths(cache.id, nar, &held).await;
        database.seed_paths(other.id, nar, &elsewhere).await;

        // Held, another tenant's, unknown, then repeats of all three.
        let mut asked: Vec<usize> = (0..3_500).chain(10_000..60_000).collect();
        let repeats: Vec<usize> = asked.iter().copied().step_by(3).collect();
        asked.extend(repeats);
        asked.truncate(100_000);
        assert!(asked.len() > 2 * hashes_per_statement(DbBackend::Sqlite));
        let hashes: Vec<StorePathHash> = asked
            .iter()
            .map(|&n| numbered(n).0.parse().expect("a hash"))
            .collect();

        let missing = database
            .find_missing_paths(cache.id, &hashes)
            .await
            .expect("find missing paths");
        let expected: Vec<StorePathHash> = hashes
            .iter()
            .zip(&asked)
            .filter(|&(_, &n)| n >= 3_000)
            .map(|(hash, _)| hash.clone())
            .collect();
        assert_eq!(missing.len(), expected.len());
        assert!(
            missing == expected,
            "the missing hashes differ from those expected"
        );
    }
}
