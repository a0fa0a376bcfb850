//! The durable queue of `attic watch-store`: store paths waiting to be
//! pushed, in SQLite, so that neither a crash of the client nor an outage of
//! the server loses one. A path leaves the queue only after it was pushed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::sqlx::{self, SqlitePool};

/// `$XDG_STATE_HOME/attic/watch-store-queue.db`, or under `~/.local/state`.
pub fn default_queue_path() -> Result<PathBuf> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .context("neither XDG_STATE_HOME nor HOME is set")?,
        )
        .join(".local/state"),
    };
    Ok(state.join("attic/watch-store-queue.db"))
}

/// Paths waiting to be pushed, per cache.
#[derive(Debug, Clone)]
pub struct Queue {
    pool: SqlitePool,
}

impl Queue {
    /// Opens (creating) the queue database.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An enqueued path must survive a power loss right after the hook returns.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the queue {}", path.display()))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS queue (\
                cache TEXT NOT NULL, \
                path TEXT NOT NULL, \
                enqueued_at INTEGER NOT NULL, \
                PRIMARY KEY (cache, path))",
        )
        .execute(&pool)
        .await
        .context("creating the queue table")?;
        Ok(Self { pool })
    }

    /// Adds paths for a cache; a path already waiting is not added twice.
    pub async fn enqueue(&self, cache: &str, paths: &[String]) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut txn = self.pool.begin().await?;
        for path in paths {
            sqlx::query("INSERT OR IGNORE INTO queue (cache, path, enqueued_at) VALUES (?, ?, ?)")
                .bind(cache)
                .bind(path)
                .bind(now)
                .execute(&mut *txn)
                .await?;
        }
        txn.commit().await.context("saving queued paths")?;
        Ok(())
    }

    /// Up to `limit` waiting paths of a cache, oldest first.
    pub async fn pending(&self, cache: &str, limit: u32) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT path FROM queue WHERE cache = ? ORDER BY enqueued_at, path LIMIT ?",
        )
        .bind(cache)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes pushed paths.
    pub async fn remove(&self, cache: &str, paths: &[String]) -> Result<()> {
        let mut txn = self.pool.begin().await?;
        for path in paths {
            sqlx::query("DELETE FROM queue WHERE cache = ? AND path = ?")
                .bind(cache)
                .bind(path)
                .execute(&mut *txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paths_survive_reopening_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.db");
        let queue = Queue::open(&path).await.expect("open");
        let paths = vec!["/nix/store/a".to_owned(), "/nix/store/b".to_owned()];
        queue.enqueue("c", &paths).await.expect("enqueue");
        queue
            .enqueue("c", &paths[..1])
            .await
            .expect("enqueue twice");
        drop(queue);
        let queue = Queue::open(&path).await.expect("reopen");
        assert_eq!(queue.pending("c", 10).await.expect("pending"), paths);
        assert!(
            queue
                .pending("other", 10)
                .await
                .expect("pending")
                .is_empty()
        );
        queue.remove("c", &paths[..1]).await.expect("remove");
        assert_eq!(queue.pending("c", 10).await.expect("pending"), paths[1..]);
    }
}
