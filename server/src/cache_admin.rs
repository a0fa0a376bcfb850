//! What a cache's admins do to its contents besides pushing: deleting
//! paths and pinning them. One method per action, each the single place
//! that action happens (the database change, then what the read cache
//! holds of it), so each is also where it is recorded.

use attic::pin::PinName;
use attic::store_path::StorePathHash;

use crate::database::{Cache, PinRecord};
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// Deletes and pins in caches, on behalf of one request.
pub struct CacheAdmin<'a> {
    state: &'a AppState,
}

impl<'a> CacheAdmin<'a> {
    /// The service over a server's state.
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Removes a path from `cache` at once: its narinfo and NAR answer 404
    /// from now on (this process drops what it holds of them; other
    /// replicas within the staleness bound). `NoSuchObject` if the cache
    /// does not hold it.
    pub async fn delete_path(&self, cache: &Cache, hash: &StorePathHash) -> ServerResult<()> {
        let deleted = self.state.database.delete_path(cache.id, hash).await?;
        self.state.read_cache.forget_path(cache.id, hash);
        if deleted {
            Ok(())
        } else {
            Err(ServerError::NoSuchObject)
        }
    }

    /// Points the pin `name` of `cache` at the path `hash`, keeping its
    /// `keep` latest targets. `NoSuchObject` if the cache does not hold it.
    pub async fn pin_path(
        &self,
        cache: &Cache,
        name: &PinName,
        hash: &StorePathHash,
        keep: u32,
    ) -> ServerResult<PinRecord> {
        self.state
            .database
            .pin_path(cache.id, name, hash, keep)
            .await?
            .ok_or(ServerError::NoSuchObject)
    }

    /// Removes the pin `name` of `cache`. `NoSuchPin` if it has none.
    pub async fn remove_pin(&self, cache: &Cache, name: &PinName) -> ServerResult<()> {
        if self.state.database.remove_pin(cache.id, name).await? {
            Ok(())
        } else {
            Err(ServerError::NoSuchPin(name.to_string()))
        }
    }
}
