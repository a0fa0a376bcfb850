//! The decoded bytes of an upstream NAR, handed to the clients that asked
//! for it while the server is still downloading and storing it.
//!
//! The upstream's body is read through [`super::read_ahead`], which copies
//! every piece into a bounded broadcast. The tee also keeps what it sent,
//! while that fits in [`REPLAY_MAX`], so a client that joins late
//! ([`Tee::join`]) is replayed the start before it follows the broadcast,
//! rather than waiting for the stored copy. A client that comes once the
//! replay was given up could not be sent the start, and waits for the
//! stored copy instead. Sending never
//! waits for a client, so a slow one cannot stall the download: one that
//! falls more than [`TEE_CAPACITY`] pieces behind is told it lagged, and
//! continues from the stored copy. The last word is the verdict:
//! [`Piece::Verified`] once the NAR matched the signed hash and size (the
//! ingest may still be storing it), [`Piece::Refused`] otherwise, so no
//! client sees a clean end of bytes that did not verify.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError};

/// Largest piece broadcast: a read larger than this goes out in several.
pub const PIECE_MAX: usize = 64 * 1024;

/// Pieces a client may fall behind before it is cut over to the stored
/// copy: with [`PIECE_MAX`], at most 4 MiB held per path in flight.
pub const TEE_CAPACITY: usize = 64;

/// Bytes of a NAR the tee keeps from its start for clients that join
/// after the download began (as many as [`TEE_CAPACITY`] full pieces, so
/// a path in flight holds at most twice that).
pub const REPLAY_MAX: usize = TEE_CAPACITY * PIECE_MAX;

/// What a client of the tee receives, in order.
#[derive(Debug, Clone)]
pub enum Piece {
    /// The next decoded bytes of the NAR.
    Bytes(Bytes),
    /// The NAR verified against the signed hash and size: the bytes sent
    /// were all of it.
    Verified,
    /// The NAR verified and is stored.
    Stored,
    /// The NAR did not verify or could not be stored: what was sent must
    /// be discarded.
    Refused,
}

/// One NAR's broadcast.
#[derive(Debug)]
pub struct Tee {
    sender: broadcast::Sender<Piece>,
    /// What was sent, for clients that join later; guards joining against
    /// sending.
    replay: Mutex<Replay>,
    joined: Notify,
}

/// Every piece sent so far, verdicts included, while their bytes fit in
/// [`REPLAY_MAX`].
#[derive(Debug)]
struct Replay {
    /// `None` once the bytes outgrew [`REPLAY_MAX`]: nobody joins after.
    pieces: Option<Vec<Piece>>,
    bytes: usize,
}

impl Replay {
    fn keep(&mut self, piece: &Piece) {
        if let Piece::Bytes(bytes) = piece {
            self.bytes += bytes.len();
            if self.bytes > REPLAY_MAX {
                self.pieces = None;
            }
        }
        if let Some(pieces) = &mut self.pieces {
            pieces.push(piece.clone());
        }
    }
}

impl Default for Tee {
    fn default() -> Self {
        Self {
            sender: broadcast::Sender::new(TEE_CAPACITY),
            replay: Mutex::new(Replay {
                pieces: Some(Vec::new()),
                bytes: 0,
            }),
            joined: Notify::new(),
        }
    }
}

/// A client of the tee: what it missed, replayed, then the broadcast.
#[derive(Debug)]
pub struct TeeClient {
    missed: VecDeque<Piece>,
    live: broadcast::Receiver<Piece>,
}

impl TeeClient {
    /// The next piece; [`RecvError::Lagged`] if the client fell more than
    /// [`TEE_CAPACITY`] pieces behind.
    pub async fn recv(&mut self) -> Result<Piece, RecvError> {
        match self.missed.pop_front() {
            Some(piece) => Ok(piece),
            None => self.live.recv().await,
        }
    }
}

impl Tee {
    /// A client of the whole NAR, from its first byte, unless what was
    /// sent already outgrew the replay.
    pub fn join(&self) -> Option<TeeClient> {
        let replay = self.lock();
        let missed = replay.pieces.as_ref()?.iter().cloned().collect();
        let live = self.sender.subscribe();
        self.joined.notify_one();
        Some(TeeClient { missed, live })
    }

    /// Waits until a client joined, or `patience` passed: a download with
    /// nobody to serve yet is stored all the same.
    pub async fn wait_for_a_client(&self, patience: Duration) {
        let _ = tokio::time::timeout(patience, self.joined.notified()).await;
    }

    /// Sends the verdict on the whole pull.
    pub fn finish(&self, stored: bool) {
        self.send_piece(if stored {
            Piece::Stored
        } else {
            Piece::Refused
        });
    }

    /// The bytes sent were the NAR the narinfo signs.
    pub fn verified(&self) {
        self.send_piece(Piece::Verified);
    }

    /// The bytes sent were not the NAR the narinfo signs, or not all of
    /// it.
    pub fn refuse(&self) {
        self.send_piece(Piece::Refused);
    }

    /// Sends the next bytes of the NAR, in pieces of at most [`PIECE_MAX`].
    pub fn send(&self, mut bytes: Bytes) {
        while !bytes.is_empty() {
            let piece = bytes.split_to(bytes.len().min(PIECE_MAX));
            self.send_piece(Piece::Bytes(piece));
        }
    }

    fn send_piece(&self, piece: Piece) {
        // Under the lock: a client joins either before this, and receives
        // it, or after, and has it replayed (or is refused).
        let mut replay = self.lock();
        replay.keep(&piece);
        // No receiver is no error: the ingest goes on alone.
        let _ = self.sender.send(piece);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Replay> {
        self.replay
            .lock()
            .expect("the tee's lock is never poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `client` receives up to the verdict, and the verdict.
    async fn received(client: &mut TeeClient) -> (Vec<u8>, Piece) {
        let mut got = Vec::new();
        loop {
            match client.recv().await.expect("in capacity") {
                Piece::Bytes(bytes) => {
                    assert!(bytes.len() <= PIECE_MAX);
                    got.extend_from_slice(&bytes);
                }
                verdict => return (got, verdict),
            }
        }
    }

    #[tokio::test]
    async fn clients_get_every_byte_then_the_verdict_however_late_they_join() {
        let tee = Tee::default();
        let mut first = tee.join().expect("nothing sent yet");
        tee.wait_for_a_client(Duration::from_secs(3600)).await;
        let nar = vec![7u8; 3 * PIECE_MAX + 5];
        tee.send(Bytes::copy_from_slice(&nar[..5]));
        let mut during = tee.join().expect("within the replay");
        tee.send(Bytes::copy_from_slice(&nar[5..]));
        tee.verified();
        let mut after = tee.join().expect("within the replay");
        for client in [&mut first, &mut during, &mut after] {
            let (got, verdict) = received(client).await;
            assert!(matches!(verdict, Piece::Verified), "{verdict:?}");
            assert_eq!(got, nar);
        }
    }

    #[tokio::test]
    async fn nobody_joins_once_the_bytes_sent_outgrow_the_replay() {
        let tee = Tee::default();
        tee.send(Bytes::from(vec![3u8; REPLAY_MAX]));
        assert!(tee.join().is_some(), "the replay holds REPLAY_MAX bytes");
        tee.send(Bytes::from_static(b"x"));
        assert!(tee.join().is_none(), "the start is no longer held");
        tee.verified();
        assert!(tee.join().is_none(), "nor after the verdict");
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_told_so_and_never_stalls_the_download() {
        let tee = Tee::default();
        let mut slow = tee.join().expect("nothing sent yet");
        let nar = Bytes::from(vec![1u8; (TEE_CAPACITY + 2) * PIECE_MAX]);
        // Sent whole with the client never reading: no wait.
        tee.send(nar);
        tee.refuse();
        assert!(matches!(slow.recv().await, Err(RecvError::Lagged(_))));
    }
}
