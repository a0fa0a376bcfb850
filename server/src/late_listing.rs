//! Listings for NARs stored without one: those uploaded before listings
//! existed, and uploads whose listing could not be kept. The first `.ls`
//! request for such a NAR reads it back from the store through the same
//! walk an upload makes (which checks its hash and size on the way), keeps
//! the listing, and answers with it. One NAR at a time server-wide: the
//! work is a read of the NAR, done once per NAR, and a request that came
//! while another made the same listing finds it made.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::io::StreamReader;

use crate::api::binary_cache::nar_chunks;
use crate::database::{NarRecord, StoredListing};
use crate::error::{ServerError, ServerResult};
use crate::ingest::{Declared, Expect, verify_only};
use crate::nar_stream::{NarEncoding, NarReadError, stream_nar};
use crate::state::AppState;
use crate::uploads::Uploads;

static MAKING: Semaphore = Semaphore::const_new(1);

/// `nar`'s listing: the stored one, or one made now from the stored NAR.
/// `None` when the NAR's listing is too large to keep.
pub async fn listing_of(
    state: &Arc<AppState>,
    nar: &NarRecord,
) -> ServerResult<Option<StoredListing>> {
    if let Some(listing) = state.database.find_listing(nar.id).await? {
        return Ok(Some(listing));
    }
    let _turn = MAKING.acquire().await.expect("never closed");
    if let Some(listing) = state.database.find_listing(nar.id).await? {
        return Ok(Some(listing));
    }
    let chunks = nar_chunks(state, nar.id).await?;
    let plain = stream_nar(state.clone(), chunks, NarEncoding::Plain)
        .map(|piece| piece.map_err(std::io::Error::from));
    let declared = Declared {
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size,
    };
    let listing = match verify_only(StreamReader::new(plain), Expect::Declared(declared), true)
        .await
    {
        Ok(listing) => listing,
        // Unreadable now (storage down): the client may try again.
        Err(ServerError::UploadInterrupted(e)) if unavailable(&e) => {
            return Err(ServerError::StorageUnavailable(None));
        }
        // Damaged chunks are marked by the read itself, and then the path
        // is missing until pushed again; a NAR that reads back whole but
        // does not hash as recorded is damaged too. Either way, no listing.
        Err(e) => {
            tracing::warn!(nar = nar.id.get(), error = %e, "cannot make a listing from a stored NAR");
            return Err(ServerError::NoSuchObject);
        }
    };
    let Some(listing) = listing else {
        return Ok(None);
    };
    Uploads::new(state).record_listing(nar, listing).await;
    Ok(state.database.find_listing(nar.id).await?)
}

/// Whether a read of the stored NAR failed because storage is unreadable
/// for now, rather than damaged.
fn unavailable(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NarReadError>())
        .is_some_and(|e| matches!(e, NarReadError::Unavailable))
}
