//! What a cache's admins do to its contents besides pushing: deleting
//! paths and pinning them. One method per action, each the single place
//! that action happens (the database change, then what the read cache
//! holds of it, then the audit log's record of who did it).

use attic::pin::PinName;
use attic::store_path::StorePathHash;

use crate::database::{Actor, AuditAction, AuditEvent, Cache, PinRecord};
use crate::error::{ServerError, ServerResult};
use crate::state::AppState;

/// Deletes and pins in caches, on behalf of one request.
pub struct CacheAdmin<'a> {
    state: &'a AppState,
    actor: Actor,
}

impl<'a> CacheAdmin<'a> {
    /// The service over a server's state, acting for `actor` (whom the
    /// audit log names).
    pub fn new(state: &'a AppState, actor: Actor) -> Self {
        Self { state, actor }
    }

    async fn record(&self, event: AuditEvent) -> ServerResult<()> {
        self.state.database.record_audit(event).await?;
        Ok(())
    }

    fn event(&self, action: AuditAction, cache: &Cache) -> AuditEvent {
        AuditEvent::new(action, self.actor.clone()).on_cache(cache)
    }

    /// Removes a path from `cache` at once: its narinfo and NAR answer 404
    /// from now on (this process drops what it holds of them; other
    /// replicas within the staleness bound). `NoSuchObject` if the cache
    /// does not hold it.
    pub async fn delete_path(&self, cache: &Cache, hash: &StorePathHash) -> ServerResult<()> {
        let deleted = self.state.database.delete_path(cache.id, hash).await?;
        self.state.read_cache.forget_path(cache.id, hash);
        if !deleted {
            return Err(ServerError::NoSuchObject);
        }
        // The hash is all the request named; the path is gone.
        self.record(
            self.event(AuditAction::DeletePath, cache)
                .with_detail(format!("store path hash {hash}")),
        )
        .await
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
        let pinned = self
            .state
            .database
            .pin_path(cache.id, name, hash, keep)
            .await?
            .ok_or(ServerError::NoSuchObject)?;
        let mut event = self
            .event(AuditAction::Pin, cache)
            .with_detail(format!("pin {name}, keeping {keep}"));
        if let Some(target) = pinned.targets.first() {
            event = event.on_path(target.store_path.clone());
        }
        self.record(event).await?;
        Ok(pinned)
    }

    /// Removes the pin `name` of `cache`. `NoSuchPin` if it has none.
    pub async fn remove_pin(&self, cache: &Cache, name: &PinName) -> ServerResult<()> {
        if !self.state.database.remove_pin(cache.id, name).await? {
            return Err(ServerError::NoSuchPin(name.to_string()));
        }
        self.record(
            self.event(AuditAction::Unpin, cache)
                .with_detail(format!("pin {name}")),
        )
        .await
    }
}
