//! The decoded bytes of an upstream NAR, handed to the clients that asked
//! for it while the server is still downloading and storing it.
//!
//! The upstream's body is read through [`super::read_ahead`], which copies
//! every piece into a bounded broadcast. Clients join before the first
//! byte goes out ([`Tee::join`]): a later one could not be sent the start,
//! and waits for the stored copy instead. Sending never waits for a
//! client, so a slow one cannot stall the download: one that falls more
//! than [`TEE_CAPACITY`] pieces behind is told it lagged, and continues
//! from the stored copy. The last word is the verdict:
//! [`Piece::Verified`] once the NAR matched the signed hash and size (the
//! ingest may still be storing it), [`Piece::Refused`] otherwise, so no
//! client sees a clean end of bytes that did not verify.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, broadcast};

/// Largest piece broadcast: a read larger than this goes out in several.
pub const PIECE_MAX: usize = 64 * 1024;

/// Pieces a client may fall behind before it is cut over to the stored
/// copy: with [`PIECE_MAX`], at most 4 MiB held per path in flight.
pub const TEE_CAPACITY: usize = 64;

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
    /// Whether the first byte went out; guards joining against sending.
    started: Mutex<bool>,
    joined: Notify,
}

impl Default for Tee {
    fn default() -> Self {
        Self {
            sender: broadcast::Sender::new(TEE_CAPACITY),
            started: Mutex::new(false),
            joined: Notify::new(),
        }
    }
}

impl Tee {
    /// A receiver of the whole NAR, from its first byte, if none has been
    /// sent yet.
    pub fn join(&self) -> Option<broadcast::Receiver<Piece>> {
        let started = self.lock();
        if *started {
            return None;
        }
        let receiver = self.sender.subscribe();
        self.joined.notify_one();
        Some(receiver)
    }

    /// Waits until a client joined, or `patience` passed: a download with
    /// nobody to serve yet is stored all the same.
    pub async fn wait_for_a_client(&self, patience: Duration) {
        let _ = tokio::time::timeout(patience, self.joined.notified()).await;
    }

    /// Sends the verdict: no client joins after it.
    pub fn finish(&self, stored: bool) {
        let mut started = self.lock();
        *started = true;
        let _ = self.sender.send(if stored {
            Piece::Stored
        } else {
            Piece::Refused
        });
    }

    /// The bytes sent were the NAR the narinfo signs.
    pub fn verified(&self) {
        self.verdict(Piece::Verified);
    }

    /// The bytes sent were not the NAR the narinfo signs, or not all of
    /// it.
    pub fn refuse(&self) {
        self.verdict(Piece::Refused);
    }

    fn verdict(&self, piece: Piece) {
        let mut started = self.lock();
        *started = true;
        let _ = self.sender.send(piece);
    }

    /// Sends the next bytes of the NAR, in pieces of at most [`PIECE_MAX`].
    pub fn send(&self, mut bytes: Bytes) {
        // Under the lock: a client joins either before this, and receives
        // it, or after, and is refused.
        let mut started = self.lock();
        *started = true;
        while !bytes.is_empty() {
            let piece = bytes.split_to(bytes.len().min(PIECE_MAX));
            // No receiver is no error: the ingest goes on alone.
            let _ = self.sender.send(Piece::Bytes(piece));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.started
            .lock()
            .expect("the tee's lock is never poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clients_that_join_before_the_first_byte_get_every_byte_then_the_verdict() {
        let tee = Tee::default();
        let mut first = tee.join().expect("nothing sent yet");
        let mut second = tee.join().expect("nothing sent yet");
        tee.wait_for_a_client(Duration::from_secs(3600)).await;
        let nar = vec![7u8; 3 * PIECE_MAX + 5];
        tee.send(Bytes::copy_from_slice(&nar[..5]));
        tee.send(Bytes::copy_from_slice(&nar[5..]));
        assert!(tee.join().is_none(), "too late for the first byte");
        tee.verified();
        for receiver in [&mut first, &mut second] {
            let mut got = Vec::new();
            loop {
                match receiver.recv().await.expect("in capacity") {
                    Piece::Bytes(bytes) => {
                        assert!(bytes.len() <= PIECE_MAX);
                        got.extend_from_slice(&bytes);
                    }
                    Piece::Verified => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, nar);
        }
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_told_so_and_never_stalls_the_download() {
        let tee = Tee::default();
        let mut slow = tee.join().expect("nothing sent yet");
        let nar = Bytes::from(vec![1u8; (TEE_CAPACITY + 2) * PIECE_MAX]);
        // Sent whole with the client never reading: no wait.
        tee.send(nar);
        tee.refuse();
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
