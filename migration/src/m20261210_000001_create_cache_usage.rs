//! What each cache stores, kept as it changes instead of summed over the
//! cache on every read: `cache_usage` holds signed byte counts, one row per
//! change, whose sum for a cache is its stored bytes (its paths' NARs as
//! stored, its build logs, the NARs `nix copy` staged for it). Triggers
//! write the rows in the transaction that makes the change, so no write
//! path can forget one; rows are appended rather than one counter updated,
//! so concurrent uploads into one cache never queue on a row lock. Readers
//! fold a cache's rows into one now and then.
//!
//! Where a row comes from:
//! - a path (`object`) or staged NAR added, removed, or moved to another
//!   NAR or cache: plus or minus its NAR's `file_size`;
//! - a build log added, removed or rewritten: plus or minus `stored_size`;
//! - a NAR whose `file_size` changes (compaction recompresses its chunks):
//!   the difference, once for each path and staged NAR on it;
//! - a NAR deleted while paths or staged NARs still name it (the foreign
//!   keys then delete those too): its size, off each of them, before the
//!   NAR goes, since the rows that cascade can no longer read its size.
//!
//! A change to a cache whose row is gone (a cascade from deleting it) adds
//! no row, and deleting a cache deletes its rows. An update that changes
//! none of the columns counted (a path pushed again onto the same NAR)
//! adds none either.
//!
//! On PostgreSQL a path's row reads its NAR's size under a share lock on
//! the NAR: compaction resizing that NAR concurrently then either commits
//! first (the size read is the new one) or waits for the path's change to
//! commit (its count of the NAR's holders sees it), so the two never count
//! the same path at two sizes. SQLite has one writer at a time.
//!
//! Everything here runs in one transaction with the triggers created
//! before the backfill: on PostgreSQL creating a trigger waits for the
//! table's writers and holds new ones off until the commit, so no change
//! falls between the backfill and the triggers.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum CacheUsage {
    Table,
    Id,
    CacheId,
    Bytes,
}

/// The tables whose rows hold a NAR for a cache.
const NAR_HOLDERS: [&str; 2] = ["object", "staged_nar"];

/// Every cache's stored bytes as of now, for the first row of each.
const BACKFILL: &str = "INSERT INTO cache_usage (cache_id, bytes) \
     SELECT cache.id, \
       COALESCE((SELECT SUM(nar.file_size) FROM object JOIN nar ON nar.id = object.nar_id \
                 WHERE object.cache_id = cache.id), 0) \
     + COALESCE((SELECT SUM(nar.file_size) FROM staged_nar JOIN nar ON nar.id = staged_nar.nar_id \
                 WHERE staged_nar.cache_id = cache.id), 0) \
     + COALESCE((SELECT SUM(build_log.stored_size) FROM build_log \
                 WHERE build_log.cache_id = cache.id), 0) \
     FROM cache";

/// Locks the NAR `{row}` (`NEW` or `OLD`) of a holder names against a
/// concurrent resize (PostgreSQL; see the module's documentation).
fn share_nar(row: &str) -> String {
    format!("PERFORM 1 FROM nar WHERE nar.id = {row}.nar_id FOR SHARE")
}

/// `INSERT` of one row for `{row}` (`NEW` or `OLD`) of a NAR holder, signed
/// by `sign`, if the NAR and the cache are still there.
fn holder_row(row: &str, sign: &str) -> String {
    format!(
        "INSERT INTO cache_usage (cache_id, bytes) \
         SELECT {row}.cache_id, {sign}nar.file_size FROM nar \
         WHERE nar.id = {row}.nar_id AND EXISTS (SELECT 1 FROM cache WHERE cache.id = {row}.cache_id)"
    )
}

/// `INSERT` of one row for `{row}` of a build log, signed by `sign`.
fn log_row(row: &str, sign: &str) -> String {
    format!(
        "INSERT INTO cache_usage (cache_id, bytes) \
         SELECT {row}.cache_id, {sign}{row}.stored_size \
         WHERE EXISTS (SELECT 1 FROM cache WHERE cache.id = {row}.cache_id)"
    )
}

/// `INSERT` of one row per cache holding NAR `{row}`, of `{per_holder}`
/// bytes for each path or staged NAR of that cache on it.
fn nar_rows(row: &str, per_holder: &str) -> String {
    format!(
        "INSERT INTO cache_usage (cache_id, bytes) \
         SELECT cache_id, COUNT(*) * ({per_holder}) FROM ( \
           SELECT cache_id FROM object WHERE nar_id = {row}.id \
           UNION ALL SELECT cache_id FROM staged_nar WHERE nar_id = {row}.id \
         ) AS holders GROUP BY cache_id"
    )
}

fn sqlite_triggers() -> Vec<String> {
    let mut sql = Vec::new();
    for table in NAR_HOLDERS {
        sql.push(format!(
            "CREATE TRIGGER cache_usage_{table}_insert AFTER INSERT ON {table} BEGIN {}; END",
            holder_row("NEW", "")
        ));
        sql.push(format!(
            "CREATE TRIGGER cache_usage_{table}_delete AFTER DELETE ON {table} BEGIN {}; END",
            holder_row("OLD", "-")
        ));
        sql.push(format!(
            "CREATE TRIGGER cache_usage_{table}_update AFTER UPDATE OF cache_id, nar_id ON {table} \
             WHEN OLD.cache_id IS NOT NEW.cache_id OR OLD.nar_id IS NOT NEW.nar_id \
             BEGIN {}; {}; END",
            holder_row("OLD", "-"),
            holder_row("NEW", "")
        ));
    }
    sql.push(format!(
        "CREATE TRIGGER cache_usage_build_log_insert AFTER INSERT ON build_log BEGIN {}; END",
        log_row("NEW", "")
    ));
    sql.push(format!(
        "CREATE TRIGGER cache_usage_build_log_delete AFTER DELETE ON build_log BEGIN {}; END",
        log_row("OLD", "-")
    ));
    sql.push(format!(
        "CREATE TRIGGER cache_usage_build_log_update AFTER UPDATE OF cache_id, stored_size \
         ON build_log WHEN OLD.cache_id IS NOT NEW.cache_id OR OLD.stored_size IS NOT NEW.stored_size \
         BEGIN {}; {}; END",
        log_row("OLD", "-"),
        log_row("NEW", "")
    ));
    sql.push(format!(
        "CREATE TRIGGER cache_usage_nar_resize AFTER UPDATE OF file_size ON nar \
         WHEN NEW.file_size <> OLD.file_size BEGIN {}; END",
        nar_rows("NEW", "NEW.file_size - OLD.file_size")
    ));
    sql.push(format!(
        "CREATE TRIGGER cache_usage_nar_delete BEFORE DELETE ON nar BEGIN {}; END",
        nar_rows("OLD", "-OLD.file_size")
    ));
    sql.push(
        "CREATE TRIGGER cache_usage_cache_delete AFTER DELETE ON cache \
         BEGIN DELETE FROM cache_usage WHERE cache_id = OLD.id; END"
            .to_owned(),
    );
    sql
}

/// A PL/pgSQL trigger function named `name` running `body`.
fn pg_function(name: &str, body: &str) -> String {
    format!(
        "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NULL; END $$"
    )
}

fn postgres_triggers() -> Vec<String> {
    let mut sql = vec![
        pg_function(
            "cache_usage_of_holder",
            &format!(
                "IF TG_OP <> 'INSERT' THEN {}; {}; END IF; \
                 IF TG_OP <> 'DELETE' THEN {}; {}; END IF;",
                share_nar("OLD"),
                holder_row("OLD", "-"),
                share_nar("NEW"),
                holder_row("NEW", "")
            ),
        ),
        pg_function(
            "cache_usage_of_log",
            &format!(
                "IF TG_OP <> 'INSERT' THEN {}; END IF; IF TG_OP <> 'DELETE' THEN {}; END IF;",
                log_row("OLD", "-"),
                log_row("NEW", "")
            ),
        ),
        pg_function(
            "cache_usage_of_nar_resize",
            &format!("{};", nar_rows("NEW", "NEW.file_size - OLD.file_size")),
        ),
        // A BEFORE trigger's NULL would cancel the delete: it returns OLD.
        format!(
            "CREATE FUNCTION cache_usage_of_nar_delete() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN {}; RETURN OLD; END $$",
            nar_rows("OLD", "-OLD.file_size")
        ),
        pg_function(
            "cache_usage_of_cache_delete",
            "DELETE FROM cache_usage WHERE cache_id = OLD.id;",
        ),
    ];
    // A WHEN clause may not name OLD on an INSERT trigger: updates have
    // triggers of their own, which skip a row whose counted columns stay.
    for table in NAR_HOLDERS {
        sql.push(format!(
            "CREATE TRIGGER cache_usage_{table} AFTER INSERT OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION cache_usage_of_holder()"
        ));
        sql.push(format!(
            "CREATE TRIGGER cache_usage_{table}_update AFTER UPDATE OF cache_id, nar_id ON {table} \
             FOR EACH ROW WHEN (OLD.cache_id IS DISTINCT FROM NEW.cache_id \
             OR OLD.nar_id IS DISTINCT FROM NEW.nar_id) EXECUTE FUNCTION cache_usage_of_holder()"
        ));
    }
    sql.extend([
        "CREATE TRIGGER cache_usage_build_log AFTER INSERT OR DELETE ON build_log \
         FOR EACH ROW EXECUTE FUNCTION cache_usage_of_log()"
            .to_owned(),
        "CREATE TRIGGER cache_usage_build_log_update AFTER UPDATE OF cache_id, stored_size \
         ON build_log FOR EACH ROW WHEN (OLD.cache_id IS DISTINCT FROM NEW.cache_id \
         OR OLD.stored_size IS DISTINCT FROM NEW.stored_size) EXECUTE FUNCTION cache_usage_of_log()"
            .to_owned(),
        "CREATE TRIGGER cache_usage_nar_resize AFTER UPDATE OF file_size ON nar FOR EACH ROW \
         WHEN (NEW.file_size <> OLD.file_size) EXECUTE FUNCTION cache_usage_of_nar_resize()"
            .to_owned(),
        "CREATE TRIGGER cache_usage_nar_delete BEFORE DELETE ON nar FOR EACH ROW \
         EXECUTE FUNCTION cache_usage_of_nar_delete()"
            .to_owned(),
        "CREATE TRIGGER cache_usage_cache_delete AFTER DELETE ON cache FOR EACH ROW \
         EXECUTE FUNCTION cache_usage_of_cache_delete()"
            .to_owned(),
    ]);
    sql
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CacheUsage::Table)
                    .col(
                        ColumnDef::new(CacheUsage::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(CacheUsage::CacheId).big_integer().not_null())
                    .col(ColumnDef::new(CacheUsage::Bytes).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        // Covers the sum: reading a cache's usage never touches the table.
        manager
            .create_index(
                Index::create()
                    .name("idx_cache_usage_cache")
                    .table(CacheUsage::Table)
                    .col(CacheUsage::CacheId)
                    .col(CacheUsage::Bytes)
                    .to_owned(),
            )
            .await?;
        let conn = manager.get_connection();
        let triggers = match conn.get_database_backend() {
            DbBackend::Postgres => postgres_triggers(),
            _ => sqlite_triggers(),
        };
        for statement in triggers {
            conn.execute_unprepared(&statement).await?;
        }
        conn.execute_unprepared(BACKFILL).await?;
        Ok(())
    }

    /// On SQLite too: a migration cut short leaves nothing behind.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        let postgres = conn.get_database_backend() == DbBackend::Postgres;
        let mut drops: Vec<String> = Vec::new();
        if postgres {
            for (table, trigger) in [
                ("object", "cache_usage_object"),
                ("object", "cache_usage_object_update"),
                ("staged_nar", "cache_usage_staged_nar"),
                ("staged_nar", "cache_usage_staged_nar_update"),
                ("build_log", "cache_usage_build_log"),
                ("build_log", "cache_usage_build_log_update"),
                ("nar", "cache_usage_nar_resize"),
                ("nar", "cache_usage_nar_delete"),
                ("cache", "cache_usage_cache_delete"),
            ] {
                drops.push(format!("DROP TRIGGER IF EXISTS {trigger} ON {table}"));
            }
            for function in [
                "cache_usage_of_holder",
                "cache_usage_of_log",
                "cache_usage_of_nar_resize",
                "cache_usage_of_nar_delete",
                "cache_usage_of_cache_delete",
            ] {
                drops.push(format!("DROP FUNCTION IF EXISTS {function}()"));
            }
        } else {
            for table in ["object", "staged_nar", "build_log"] {
                for event in ["insert", "delete", "update"] {
                    drops.push(format!(
                        "DROP TRIGGER IF EXISTS cache_usage_{table}_{event}"
                    ));
                }
            }
            for trigger in ["nar_resize", "nar_delete", "cache_delete"] {
                drops.push(format!("DROP TRIGGER IF EXISTS cache_usage_{trigger}"));
            }
        }
        for statement in drops {
            conn.execute_unprepared(&statement).await?;
        }
        manager
            .drop_table(Table::drop().table(CacheUsage::Table).to_owned())
            .await
    }
}
