//! The one way in: every upload route (`upload-path`, `nix copy`'s NAR and
//! narinfo, and later import and pull-through) ends here once its bytes are
//! verified. Each step after that happens in this one place: the commit,
//! attaching the path to its cache with its audit record (a `push`, built
//! by [`new_object`], or an `import`; written in the transaction that
//! attaches the path, one row per path), dropping what the read cache
//! holds of the path, counting the upload, and now and then folding the
//! cache's usage rows.

use std::collections::BTreeMap;
use std::sync::Mutex;

use attic::api::v1::upload_path::UploadPathNarInfo;
use attic::store_path::{StoreDir, StorePath, StorePathError};
use tokio::io::AsyncRead;

use crate::database::{
    Actor, AuditAction, AuditEvent, Cache, CacheId, Claim, NarRecord, NewNar, NewObject, PathInfo,
    StagedNar, StoredListing,
};
use crate::error::{ServerError, ServerResult};
use crate::ingest::{self, Expect, StoredNar};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Uploads into one cache between two looks at its usage rows. Each
/// upload adds a row, and a look folds them once there are many, so a
/// cache only ever pushed to (`nix copy` never reads a cache's settings)
/// keeps a few hundred rows rather than one per path.
const UPLOADS_PER_USAGE_LOOK: u32 = 64;

/// Uploads this process attached to each cache since its last look.
static SINCE_USAGE_LOOK: Mutex<BTreeMap<CacheId, u32>> = Mutex::new(BTreeMap::new());

/// Uploads into the store and its caches, on behalf of one request.
pub struct Uploads<'a> {
    state: &'a AppState,
}

impl<'a> Uploads<'a> {
    /// The service over a server's state.
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Reads `body` to its end, checked as `expect` says, as proof that
    /// the uploader holds `existing`, a NAR the store has; its `.ls`
    /// listing, made on the way only when `existing` has none, for
    /// [`Self::attach_existing`].
    pub async fn prove_possession<R: AsyncRead + Unpin>(
        &self,
        existing: &NarRecord,
        body: R,
        expect: Expect,
    ) -> ServerResult<Option<Vec<u8>>> {
        let make_listing = !self.state.database.has_listing(existing.id).await?;
        ingest::verify_only(body, expect, make_listing).await
    }

    /// Refuses a push to `cache` when its pins alone take more than its
    /// quota: the collector may not evict pinned paths, so the cache could
    /// only grow past its quota. Checked before any of the body is read.
    pub async fn check_pins_fit(&self, cache: &Cache) -> ServerResult<()> {
        let Some(quota) = cache.quota else {
            return Ok(());
        };
        let pinned = self.state.database.pinned_usage(cache.id).await?;
        let pinned = u64::try_from(pinned).unwrap_or(0);
        if pinned > quota {
            return Err(ServerError::PinsExceedQuota { pinned, quota });
        }
        Ok(())
    }

    /// Commits a NAR this upload stored as the path `object` of its cache.
    pub async fn commit_path(
        &self,
        stored: StoredNar,
        object: NewObject,
    ) -> ServerResult<NarRecord> {
        let (cache_id, hash) = (object.cache_id, object.info.store_path_hash.clone());
        let nar = self
            .commit(stored, Claim::Object(Box::new(object)), "uploaded")
            .await?;
        self.state.read_cache.forget_path(cache_id, &hash);
        self.look_at_usage_now_and_then(cache_id);
        Ok(nar)
    }

    /// Commits a NAR `nix copy` sent, staged in a cache under the file
    /// name it was sent as until a narinfo claims it.
    pub async fn stage(
        &self,
        stored: StoredNar,
        cache_id: CacheId,
        file: String,
    ) -> ServerResult<NarRecord> {
        let nar = self
            .commit(stored, Claim::Staged { cache_id, file }, "staged")
            .await?;
        self.look_at_usage_now_and_then(cache_id);
        Ok(nar)
    }

    /// Makes a NAR the store holds already the path `object`, once the
    /// uploader proved it holds the content by sending it. `listing`, the
    /// NAR's as that proof walked it, is kept if the NAR has none yet
    /// (stored before listings existed).
    pub async fn attach_existing(
        &self,
        nar: &NarRecord,
        object: NewObject,
        listing: Option<Vec<u8>>,
    ) -> ServerResult<()> {
        let (cache_id, hash) = (object.cache_id, object.info.store_path_hash.clone());
        self.state
            .database
            .attach_existing_nar(nar.id, object)
            .await?;
        if let Some(listing) = listing {
            // An upsert that keeps the listing already there.
            self.record_listing(nar, listing).await;
        }
        self.state.read_cache.forget_path(cache_id, &hash);
        self.look_at_usage_now_and_then(cache_id);
        Metrics::count(&self.state.metrics.uploads, "deduplicated");
        self.state.metrics.upload_nar_bytes.inc_by(nar.nar_size);
        Ok(())
    }

    /// Makes a staged NAR the path `object` of its cache.
    pub async fn claim_staged(&self, staged: &StagedNar, object: NewObject) -> ServerResult<()> {
        let (cache_id, hash) = (object.cache_id, object.info.store_path_hash.clone());
        self.state.database.claim_staged(staged, object).await?;
        self.state.read_cache.forget_path(cache_id, &hash);
        self.look_at_usage_now_and_then(cache_id);
        Ok(())
    }

    async fn commit(
        &self,
        stored: StoredNar,
        claim: Claim,
        outcome: &'static str,
    ) -> ServerResult<NarRecord> {
        let stored_bytes = stored.bytes_stored();
        let nar_size = stored.nar_size;
        let listing = stored.listing;
        let debug_info = stored.debug_info;
        let nar = self
            .state
            .database
            .commit_upload(
                NewNar {
                    nar_hash: stored.nar_hash,
                    nar_size,
                    pack: stored.pack,
                    chunks: stored.chunks,
                },
                claim,
            )
            .await?;
        if let Some(listing) = listing {
            self.record_listing(&nar, listing).await;
        }
        if !debug_info.is_empty()
            && let Err(e) = self
                .state
                .database
                .put_debug_info(nar.id, &debug_info)
                .await
        {
            tracing::warn!(error = %e, nar = nar.id.get(), "cannot record a NAR's debug info files");
        }
        let metrics = &self.state.metrics;
        Metrics::count(&metrics.uploads, outcome);
        metrics.upload_nar_bytes.inc_by(nar_size);
        metrics.stored_bytes.inc_by(stored_bytes);
        Ok(nar)
    }

    /// Every [`UPLOADS_PER_USAGE_LOOK`]th upload into a cache, folds its
    /// usage rows if there are many; off the request, since the upload is
    /// done.
    fn look_at_usage_now_and_then(&self, cache_id: CacheId) {
        let due = {
            let mut counts = SINCE_USAGE_LOOK.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(cache_id).or_default();
            *count += 1;
            let due = *count >= UPLOADS_PER_USAGE_LOOK;
            if due {
                *count = 0;
            }
            due
        };
        if !due {
            return;
        }
        let database = self.state.database.clone();
        tokio::spawn(async move {
            if let Err(e) = database.fold_usage_if_many(cache_id).await {
                tracing::warn!(error = %e, cache = cache_id.get(), "cannot fold a cache's usage rows");
            }
        });
    }

    /// Keeps a NAR's `.ls` listing, compressed, unless it has one. Best
    /// effort, after the commit: a NAR without one is served all the same,
    /// and its listing is made from it when first asked for
    /// ([`crate::late_listing`]).
    pub async fn record_listing(&self, nar: &NarRecord, listing: Vec<u8>) {
        let size = listing.len() as u64;
        let level = self.state.config.compression.zstd_level();
        let compressed =
            tokio::task::spawn_blocking(move || zstd::bulk::compress(&listing, level)).await;
        let zstd = match compressed {
            Ok(Ok(zstd)) => zstd,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot compress a NAR listing");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot compress a NAR listing");
                return;
            }
        };
        let stored = StoredListing { size, zstd };
        if let Err(e) = self.state.database.put_listing(nar.id, stored).await {
            tracing::warn!(error = %e, nar = nar.id.get(), "cannot record a NAR listing");
        }
    }
}

/// Checks a path's metadata as an uploader sent it and makes it the path
/// to attach to `cache`. Every string that ends up in a narinfo line is
/// checked for line breaks, so a client can never inject fields into what
/// other clients read. Attaching it records a `push` by `created_by` in
/// the audit log, in the transaction that attaches it.
pub fn new_object(
    info: &UploadPathNarInfo,
    cache: &Cache,
    created_by: Option<String>,
) -> ServerResult<NewObject> {
    let bad = |message: String| ServerError::bad_request("InvalidNarInfo", message);
    let store_dir = &cache.store_dir;
    let store_path = store_dir
        .parse_path(&info.store_path)
        .map_err(|e| bad(format!("store_path: {e}")))?;
    if store_path.hash() != &info.store_path_hash {
        return Err(bad("store_path_hash does not match store_path".into()));
    }
    let references = info
        .references
        .iter()
        .map(|reference| full_path(store_dir, reference))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("references: {e}")))?;
    let deriver = info
        .deriver
        .as_deref()
        .map(|deriver| full_path(store_dir, deriver))
        .transpose()
        .map_err(|e| bad(format!("deriver: {e}")))?;
    let single_line = |field: &str, value: &str| {
        if value.is_empty() || value.chars().any(char::is_control) {
            Err(bad(format!(
                "{field} must be non-empty and hold no control characters"
            )))
        } else {
            Ok(())
        }
    };
    for sig in &info.sigs {
        single_line("sigs", sig)?;
    }
    if let Some(system) = &info.system {
        single_line("system", system)?;
    }
    if let Some(ca) = &info.ca {
        single_line("ca", ca)?;
    }
    Ok(NewObject {
        cache_id: cache.id,
        info: PathInfo {
            store_path_hash: info.store_path_hash.clone(),
            store_path: info.store_path.clone(),
            references,
            system: info.system.clone(),
            deriver,
            sigs: info.sigs.clone(),
            ca: info.ca.clone(),
        },
        audit: Some(
            AuditEvent::new(AuditAction::Push, Actor::Token(created_by.clone()))
                .on_cache(cache)
                .on_path(info.store_path.clone()),
        ),
        created_by,
        timestamps: None,
    })
}

/// A store path as the full path our records hold, from either form an
/// uploader may send: the full path, or the base name `<hash>-<name>`
/// (Attic's client writes references that way in its upload preamble).
fn full_path(store_dir: &StoreDir, path: &str) -> Result<String, StorePathError> {
    if path.starts_with('/') {
        store_dir.parse_path(path)?;
        Ok(path.to_owned())
    } else {
        Ok(store_dir.display(&StorePath::from_base_name(path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12";

    #[test]
    fn reference_as_base_name_becomes_full_path() {
        let store_dir = StoreDir::default();
        let full = full_path(&store_dir, BASE).expect("a base name");
        assert_eq!(full, format!("/nix/store/{BASE}"));
    }

    #[test]
    fn reference_as_full_path_is_kept() {
        let store_dir = StoreDir::default();
        let path = format!("/nix/store/{BASE}");
        assert_eq!(full_path(&store_dir, &path).expect("a full path"), path);
    }

    #[test]
    fn rejects_reference_outside_the_store_or_malformed() {
        let store_dir = StoreDir::default();
        assert!(full_path(&store_dir, &format!("/gnu/store/{BASE}")).is_err());
        assert!(full_path(&store_dir, "not-a-store-path").is_err());
        assert!(full_path(&store_dir, &format!("{BASE}/bin")).is_err());
    }
}
