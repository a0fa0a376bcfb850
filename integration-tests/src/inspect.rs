//! What a server stored, read through the server's own typed database API
//! (`server::database`, with its read-only `inspect` view), so tests assert
//! on records and counts, never on tables or column encodings, and the same
//! assertion holds on every backend.

use std::ops::Deref;

use server::config::DatabaseConfig;
use server::database::inspect::{Orphans, RowCounts};
use server::database::{Cache, Database};

use crate::server::TestServer;

/// A connection pool of its own to a server's database, so a test can
/// look while servers run. Close it with [`StoreView::close`]; it derefs
/// to the server's [`Database`] for everything else.
pub struct StoreView {
    database: Database,
}

impl StoreView {
    /// Opens the database at `database_url`, which must exist.
    pub async fn open(database_url: &str) -> Self {
        let database = Database::connect(database_url, &DatabaseConfig::default(), false)
            .await
            .unwrap_or_else(|e| panic!("open the database at {database_url}: {e}"));
        Self { database }
    }

    /// The live cache named `name`, which must exist.
    pub async fn cache(&self, name: &str) -> Cache {
        let name = name.parse().expect("a cache name");
        self.database
            .find_cache(&name)
            .await
            .expect("read caches")
            .unwrap_or_else(|| panic!("no live cache {name}"))
    }

    /// Closes its connections, so none outlives the look.
    pub async fn close(self) {
        self.database
            .connection()
            .close_by_ref()
            .await
            .expect("close the database");
    }
}

impl Deref for StoreView {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.database
    }
}

impl TestServer {
    /// The server's database, to read records from.
    pub async fn store(&self) -> StoreView {
        StoreView::open(&self.database_url()).await
    }

    /// How many rows each table of the server's database holds.
    pub async fn row_counts(&self) -> RowCounts {
        let store = self.store().await;
        let counts = store.row_counts().await.expect("count rows");
        store.close().await;
        counts
    }

    /// Rows of the server's database that nothing needs any more.
    pub async fn orphans(&self) -> Orphans {
        let store = self.store().await;
        let orphans = store.orphans().await.expect("count orphans");
        store.close().await;
        orphans
    }
}
