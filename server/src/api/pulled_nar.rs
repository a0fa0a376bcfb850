//! `GET /{cache}/nar/{hash}.nar` of a path being pulled through: its
//! bytes as they arrive from the upstream ([`crate::pull_through::tee`]).
//!
//! A client is sent every byte from the tee, the start replayed if it
//! joins late; the response ends cleanly only once the NAR verified
//! against the signed hash and size (its last piece is held back until
//! then), and abnormally otherwise, so a client never takes a truncated or
//! tampered NAR for a whole one. A client that falls too far behind
//! continues from the stored copy where it was; one that comes once the
//! tee no longer holds the start waits for the stored copy.

use std::io;
use std::sync::Arc;

use attic::hash::Sha256Hash;
use attic::store_path::StorePathHash;
use axum::body::Body;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Semaphore, watch};

use super::binary_cache::{find_object, nar_chunks};
use crate::database::Cache;
use crate::error::{ServerError, ServerResult};
use crate::nar_range;
use crate::nar_stream::{NarEncoding, NarReadError, stream_nar};
use crate::pull_through::in_flight::{self, Stage};
use crate::pull_through::tee::{Piece, TeeClient};
use crate::pull_through::{self, Pulled};
use crate::state::AppState;

/// Clients receiving NARs from the tee at once, server-wide: each may hold
/// up to [`crate::pull_through::tee::TEE_CAPACITY`] pieces of its path in memory by falling behind,
/// so this bounds that memory (32 × 4 MiB). Others wait for the stored
/// copy.
const TEE_CLIENTS_MAX: usize = 32;

static TEE_CLIENTS: Semaphore = Semaphore::const_new(TEE_CLIENTS_MAX);

/// The response for the NAR of `hash`, not stored in `cache`, asked for
/// by a caller allowed to pull (`subject`): `Some` streamed from the
/// upstream as a pull of it brings it, `None` once a pull stored it (serve
/// it as any stored NAR); a miss if no upstream gives it. With no pull
/// running here, one is started: the narinfo may have come from another
/// replica, or from a pull that failed since. A request for a `range` (a
/// client resuming) waits for the stored copy, whose ranges are exact.
pub(super) async fn serve_while_pulling(
    state: &Arc<AppState>,
    cache: &Cache,
    hash: &StorePathHash,
    subject: Option<String>,
    range: bool,
) -> ServerResult<Option<Response>> {
    let stages = match pull_through::in_flight(state, cache.id, hash) {
        Some(stages) => stages,
        // Stored since we looked?
        None if find_object(state, cache, hash).await.is_ok() => return Ok(None),
        None => match pull_through::pull(state, cache, hash, subject).await {
            Pulled::Missed => return Err(ServerError::NoSuchObject),
            Pulled::Stored => return Ok(None),
            Pulled::Streaming(_) => {
                pull_through::in_flight(state, cache.id, hash).ok_or(ServerError::NoSuchObject)?
            }
        },
    };
    let stored = match in_flight::answered(stages.clone()).await {
        Stage::Streaming(_) if range => in_flight::stored(stages).await,
        Stage::Streaming(streaming) => {
            let permit = TEE_CLIENTS.try_acquire();
            match permit
                .ok()
                .and_then(|permit| Some((permit, streaming.tee.join()?)))
            {
                Some((permit, receiver)) => {
                    let resume = Box::new(Resume {
                        state: Arc::clone(state),
                        cache: cache.clone(),
                        hash: hash.clone(),
                        nar_hash: streaming.narinfo.nar_hash,
                        stages,
                    });
                    let served = state.metrics.served_bytes.clone();
                    let body = follow(receiver, resume).map(move |piece| {
                        let _held = &permit;
                        if let Ok(bytes) = &piece {
                            served.inc_by(bytes.len() as u64);
                        }
                        piece
                    });
                    return Ok(Some(response(body, streaming.narinfo.nar_size)));
                }
                // The start is no longer held, or too many clients.
                None => in_flight::stored(stages).await,
            }
        }
        Stage::Done(stored) => stored,
        Stage::Asking => false,
    };
    if stored {
        Ok(None)
    } else {
        Err(ServerError::NoSuchObject)
    }
}

/// The tee's response: the NAR as the upstream's narinfo announced it,
/// `nar_size` bytes, or a body that ends abnormally.
fn response(
    body: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    nar_size: u64,
) -> Response {
    (
        [
            (CONTENT_TYPE, "application/x-nix-nar".to_owned()),
            (CONTENT_LENGTH, nar_size.to_string()),
            // Not stored yet: nothing may keep a response that may yet
            // end abnormally.
            (CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Where a client of the tee is.
enum Follow {
    /// Receiving from the tee, `sent` bytes so far; the last piece
    /// received is `held` back until the next arrives or the NAR is
    /// stored, so the body's declared length is never reached by a NAR
    /// that then fails to verify.
    Tee {
        receiver: TeeClient,
        sent: u64,
        held: Option<Bytes>,
        resume: Box<Resume>,
    },
    /// Fell behind: reading the rest from the stored copy.
    Stored(BoxStream<'static, Result<Bytes, NarReadError>>),
    /// Ended abnormally, or sent all.
    Ended,
}

/// What a client that fell behind needs to continue from the stored copy.
struct Resume {
    state: Arc<AppState>,
    cache: Cache,
    hash: StorePathHash,
    /// The NAR the client was promised: the stored copy must be it.
    nar_hash: Sha256Hash,
    stages: watch::Receiver<Stage>,
}

impl Resume {
    /// The stored NAR from byte `offset` on, once the pull stored it.
    async fn stored_from(
        self,
        offset: u64,
    ) -> ServerResult<BoxStream<'static, Result<Bytes, NarReadError>>> {
        if !in_flight::stored(self.stages).await {
            return Err(ServerError::NoSuchObject);
        }
        let (_, nar) = find_object(&self.state, &self.cache, &self.hash).await?;
        // Another upload may have replaced the path with another NAR: its
        // bytes would not continue these.
        if nar.nar_hash != self.nar_hash {
            return Err(ServerError::NoSuchObject);
        }
        let chunks = nar_chunks(&self.state, nar.id).await?;
        let range =
            HeaderValue::from_str(&format!("bytes={offset}-")).expect("digits make a valid header");
        let served = nar_range::select_range(chunks, NarEncoding::Plain, Some(&range))?;
        let stream = stream_nar(self.state, served.chunks, NarEncoding::Plain);
        Ok(nar_range::trim(stream, served.skip, served.length).boxed())
    }
}

/// The body of a client of the tee.
fn follow(
    receiver: TeeClient,
    resume: Box<Resume>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let start = Follow::Tee {
        receiver,
        sent: 0,
        held: None,
        resume,
    };
    futures::stream::unfold(start, |follow| async move {
        match follow {
            Follow::Tee {
                mut receiver,
                sent,
                mut held,
                resume,
            } => loop {
                match receiver.recv().await {
                    Ok(Piece::Bytes(bytes)) => {
                        let Some(send) = held.replace(bytes) else {
                            continue;
                        };
                        let next = Follow::Tee {
                            receiver,
                            sent: sent + send.len() as u64,
                            held,
                            resume,
                        };
                        return Some((Ok(send), next));
                    }
                    // Verified: the last piece may go.
                    Ok(Piece::Verified | Piece::Stored) => {
                        return held.map(|last| (Ok(last), Follow::Ended));
                    }
                    Ok(Piece::Refused) | Err(RecvError::Closed) => {
                        return Some((Err(refused()), Follow::Ended));
                    }
                    // The piece held back is read again with the rest.
                    Err(RecvError::Lagged(_)) => {
                        return match resume.stored_from(sent).await {
                            Ok(stored) => next_stored(stored).await,
                            Err(_) => Some((Err(refused()), Follow::Ended)),
                        };
                    }
                }
            },
            Follow::Stored(stored) => next_stored(stored).await,
            Follow::Ended => None,
        }
    })
}

async fn next_stored(
    mut stored: BoxStream<'static, Result<Bytes, NarReadError>>,
) -> Option<(io::Result<Bytes>, Follow)> {
    match stored.next().await? {
        Ok(bytes) => Some((Ok(bytes), Follow::Stored(stored))),
        Err(e) => Some((Err(e.into()), Follow::Ended)),
    }
}

fn refused() -> io::Error {
    io::Error::other("the upstream NAR did not verify or could not be stored")
}
