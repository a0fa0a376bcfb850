//! How many bytes a cache stores (its paths' NARs as stored, its build
//! logs, the NARs `nix copy` staged for it): what its quota counts and
//! `used_bytes` reports. Triggers append a signed row to `cache_usage` in
//! every transaction that changes it (the `migration` crate's
//! `create_cache_usage` lists them), so reading it is a sum over a few rows
//! of an index, never over the cache. Reading never writes: the writers
//! fold the rows they made, uploads every so often
//! ([`crate::uploads`]) and the collector after each run.

use sea_orm::sea_query::{Alias, Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
    Statement,
};

use super::entity::cache_usage;
use super::ids::CacheId;
use super::{Database, DatabaseError};

/// Rows a cache may gather before a fold: few enough that a read stays a
/// short index range, many enough that folds are rare.
const FOLD_AFTER: u64 = 512;

impl Database {
    /// Stored bytes of a cache: its paths' NARs, its build logs and the NARs
    /// staged for it, as of the last committed change.
    pub async fn cache_usage(&self, cache_id: CacheId) -> Result<i64, DatabaseError> {
        let bytes: Option<Option<i64>> = cache_usage::Entity::find()
            .select_only()
            .expr(
                Expr::col(cache_usage::Column::Bytes)
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
            )
            .filter(cache_usage::Column::CacheId.eq(cache_id))
            .into_tuple()
            .one(&self.conn)
            .await?;
        Ok(bytes.flatten().unwrap_or(0))
    }

    /// Folds a cache's usage rows into one if there are more than a few
    /// hundred; whether it did.
    pub async fn fold_usage_if_many(&self, cache_id: CacheId) -> Result<bool, DatabaseError> {
        if self.usage_rows(cache_id).await? <= FOLD_AFTER {
            return Ok(false);
        }
        self.fold_usage(cache_id).await?;
        Ok(true)
    }

    /// How many usage rows a cache has.
    async fn usage_rows(&self, cache_id: CacheId) -> Result<u64, DatabaseError> {
        let rows = cache_usage::Entity::find()
            .filter(cache_usage::Column::CacheId.eq(cache_id))
            .count(&self.conn)
            .await?;
        Ok(rows)
    }

    /// Replaces a cache's usage rows by one holding their sum, unless the
    /// cache is gone. Rows that commit meanwhile are left for the next
    /// fold, never lost: on PostgreSQL the rows summed are exactly those
    /// one statement deleted; on SQLite the transaction holds the write
    /// lock throughout.
    async fn fold_usage(&self, cache_id: CacheId) -> Result<(), DatabaseError> {
        let id = cache_id.get();
        match self.backend() {
            DbBackend::Postgres => {
                self.conn
                    .execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "WITH folded AS (DELETE FROM cache_usage WHERE cache_id = $1 RETURNING bytes) \
                         INSERT INTO cache_usage (cache_id, bytes) \
                         SELECT $1, total FROM (SELECT COALESCE(SUM(bytes), 0) AS total FROM folded) AS sum \
                         WHERE EXISTS (SELECT 1 FROM cache WHERE cache.id = $1)",
                        [id.into()],
                    ))
                    .await?;
            }
            backend => {
                let txn = self.begin_write().await?;
                let sum = txn
                    .execute_raw(Statement::from_sql_and_values(
                        backend,
                        "INSERT INTO cache_usage (cache_id, bytes) \
                         SELECT $1, total FROM \
                           (SELECT COALESCE(SUM(bytes), 0) AS total FROM cache_usage WHERE cache_id = $1) \
                         WHERE EXISTS (SELECT 1 FROM cache WHERE cache.id = $1)",
                        [id.into()],
                    ))
                    .await?;
                // No row inserted (the cache is gone): the connection's last
                // insert id is another statement's.
                if sum.rows_affected() != 1 {
                    return Ok(());
                }
                let kept = i64::try_from(sum.last_insert_id()).map_err(|_| {
                    DatabaseError::Db(sea_orm::DbErr::Custom(
                        "a cache_usage row id above i64".to_owned(),
                    ))
                })?;
                cache_usage::Entity::delete_many()
                    .filter(cache_usage::Column::CacheId.eq(id))
                    .filter(cache_usage::Column::Id.lt(kept))
                    .exec(&txn)
                    .await?;
                txn.commit().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::super::Database;
    use super::super::ids::CacheId;
    use super::FOLD_AFTER;

    impl Database {
        /// A cache's stored bytes summed over the cache itself: what the
        /// usage rows must always add up to.
        async fn recount_usage(&self, cache_id: CacheId) -> i64 {
            #[derive(sea_orm::FromQueryResult)]
            struct Total {
                bytes: i64,
            }
            let sql = "SELECT CAST( \
                   COALESCE((SELECT SUM(nar.file_size) FROM object JOIN nar ON nar.id = object.nar_id \
                             WHERE object.cache_id = $1), 0) \
                 + COALESCE((SELECT SUM(nar.file_size) FROM staged_nar JOIN nar ON nar.id = staged_nar.nar_id \
                             WHERE staged_nar.cache_id = $1), 0) \
                 + COALESCE((SELECT SUM(stored_size) FROM build_log WHERE cache_id = $1), 0) \
                 AS BIGINT) AS bytes";
            use sea_orm::FromQueryResult;
            Total::find_by_statement(Statement::from_sql_and_values(
                self.backend(),
                sql,
                [cache_id.get().into()],
            ))
            .one(&self.conn)
            .await
            .expect("recount")
            .expect("one row")
            .bytes
        }

        async fn exec(&self, sql: &str) {
            self.conn
                .execute_unprepared(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    async fn assert_counted(db: &Database, caches: &[CacheId]) {
        for &cache in caches {
            assert_eq!(
                db.cache_usage(cache).await.expect("usage"),
                db.recount_usage(cache).await,
                "cache {} usage against a recount",
                cache.get()
            );
        }
    }

    /// Every way a cache's bytes change, checked against a recount after
    /// each: paths and staged NARs added, moved and removed, logs written
    /// and rewritten, a NAR recompressed, a NAR deleted under its holders,
    /// a cache deleted.
    #[tokio::test]
    async fn the_usage_rows_add_up_to_what_the_cache_holds_after_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::for_tests(&dir).await;
        let a = db.seed_cache("usage-a").await.id;
        let b = db.seed_cache("usage-b").await.id;
        let both = [a, b];
        assert_counted(&db, &both).await;
        assert_eq!(db.cache_usage(a).await.expect("usage"), 0);

        let shared = db.seed_nar("1", 10).await;
        let other = db.seed_nar("2", 10).await;
        let p1 = ("a".repeat(32), format!("/nix/store/{}-one", "a".repeat(32)));
        let p2 = ("b".repeat(32), format!("/nix/store/{}-two", "b".repeat(32)));
        db.seed_path(a, shared, (&p1.0, &p1.1), &[], 10).await;
        db.seed_path(a, other, (&p2.0, &p2.1), &[], 10).await;
        // The same NAR, held by a second cache and twice in it.
        db.seed_path(b, shared, (&p1.0, &p1.1), &[], 10).await;
        db.seed_path(b, shared, (&p2.0, &p2.1), &[], 10).await;
        assert_eq!(db.cache_usage(a).await.expect("usage"), 200);
        assert_eq!(db.cache_usage(b).await.expect("usage"), 200);
        assert_counted(&db, &both).await;

        let (ia, ib) = (a.get(), b.get());
        let (n1, n2) = (shared.get(), other.get());
        db.exec(&format!(
            "INSERT INTO staged_nar (cache_id, file, nar_id, created_at) VALUES ({ia}, 'x.nar', {n2}, 1)"
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO build_log (cache_id, drv, size, data, stored_size, created_at) \
             VALUES ({ib}, 'x.drv', 9, '', 7, 1)"
        ))
        .await;
        assert_counted(&db, &both).await;

        // Compaction makes a NAR smaller as stored.
        db.exec(&format!("UPDATE nar SET file_size = 60 WHERE id = {n1}"))
            .await;
        assert_eq!(db.cache_usage(b).await.expect("usage"), 127);
        // A path moved to another NAR and cache; a log rewritten.
        db.exec(&format!(
            "UPDATE object SET nar_id = {n2}, cache_id = {ia}, store_path_hash = '{}' \
             WHERE cache_id = {ib} AND store_path_hash = '{}'",
            "c".repeat(32),
            p2.0
        ))
        .await;
        db.exec("UPDATE build_log SET stored_size = 70").await;
        assert_counted(&db, &both).await;
        // A path pushed again with another NAR: the upsert `attach_object`
        // makes, whose update fires the update triggers.
        db.exec(&format!(
            "INSERT INTO object (cache_id, nar_id, store_path_hash, store_path, \"references\", \
             sigs, created_at) VALUES ({ia}, {n1}, '{}', '{}', '[]', '[]', 20) \
             ON CONFLICT (cache_id, store_path_hash) DO UPDATE SET nar_id = excluded.nar_id",
            p2.0, p2.1
        ))
        .await;
        assert_counted(&db, &both).await;

        // A NAR deleted under its holders takes them with it.
        db.exec(&format!("DELETE FROM nar WHERE id = {n2}")).await;
        assert_counted(&db, &both).await;
        db.exec(&format!("DELETE FROM object WHERE cache_id = {ia}"))
            .await;
        assert_eq!(db.cache_usage(a).await.expect("usage"), 0);
        assert_counted(&db, &both).await;

        // A cache deleted leaves no rows behind, and its cascade none.
        db.exec(&format!("DELETE FROM cache WHERE id = {ib}")).await;
        assert_eq!(db.usage_rows(b).await.expect("rows"), 0);
        assert_counted(&db, &[a]).await;
        // Nor does a fold of it, which leaves other caches' rows alone.
        db.fold_usage(b).await.expect("fold");
        assert_eq!(db.usage_rows(b).await.expect("rows"), 0);
        assert_counted(&db, &[a]).await;
    }

    /// Compaction resizing a NAR while a path on it leaves, in either
    /// order, with each change's transaction open while the other starts:
    /// the path is counted off at the size it was counted on with.
    #[tokio::test]
    async fn a_nar_resized_while_a_path_on_it_leaves_is_counted_once() {
        use sea_orm::TransactionTrait;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::for_tests(&dir).await;
        let cache = db.seed_cache("race").await.id;
        for (seed, path_first) in [("3", false), ("4", true)] {
            let nar = db.seed_nar(seed, 10).await;
            let hash = seed.repeat(32);
            let path = format!("/nix/store/{hash}-p");
            db.seed_path(cache, nar, (&hash, &path), &[], 10).await;
            let resize = format!("UPDATE nar SET file_size = 60 WHERE id = {}", nar.get());
            let leave = format!("DELETE FROM object WHERE nar_id = {}", nar.get());
            let (first, second) = match path_first {
                true => (leave, resize),
                false => (resize, leave),
            };
            let txn = db.conn.begin().await.expect("begin");
            txn.execute_unprepared(&first).await.expect("first change");
            let other = db.clone();
            let waiting = tokio::spawn(async move { other.conn.execute_unprepared(&second).await });
            // Whether the second change waits for the first or not, the
            // sum must come out right; this only makes waiting likely.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            txn.commit().await.expect("commit");
            waiting.await.expect("join").expect("second change");
            assert_counted(&db, &[cache]).await;
            assert_eq!(db.cache_usage(cache).await.expect("usage"), 0);
        }
    }

    #[tokio::test]
    async fn many_rows_fold_into_one_without_changing_the_sum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::for_tests(&dir).await;
        let cache = db.seed_cache("fold").await.id;
        let nar = db.seed_nar("1", 10).await;
        let paths: Vec<(String, String)> = (0..FOLD_AFTER + 10)
            .map(|i| {
                let hash = format!("{i:0>32}");
                let path = format!("/nix/store/{hash}-p");
                (hash, path)
            })
            .collect();
        db.seed_paths(cache, nar, &paths).await;
        assert!(db.usage_rows(cache).await.expect("rows") > FOLD_AFTER);
        let expected = 100 * (FOLD_AFTER as i64 + 10);
        assert_eq!(db.cache_usage(cache).await.expect("usage"), expected);
        assert!(db.fold_usage_if_many(cache).await.expect("fold"));
        assert_eq!(
            db.usage_rows(cache).await.expect("rows"),
            1,
            "folded into one row"
        );
        assert!(!db.fold_usage_if_many(cache).await.expect("no fold"));
        assert_eq!(db.cache_usage(cache).await.expect("usage"), expected);
        // Changes after the fold are counted on top of it.
        db.exec(&format!(
            "DELETE FROM object WHERE cache_id = {} AND store_path_hash = '{}'",
            cache.get(),
            paths[0].0
        ))
        .await;
        assert_eq!(db.cache_usage(cache).await.expect("usage"), expected - 100);
        assert_eq!(db.recount_usage(cache).await, expected - 100);
    }
}
