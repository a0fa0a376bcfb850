//! The upstream's NAR, read at the upstream's pace rather than the
//! ingest's.
//!
//! Storing a NAR (chunking, hashing, compressing) is slower than a fast
//! upstream sends it; the clients of the [`Tee`] need only the bytes and
//! a verdict on them. So one task reads the decoded body to its end: it
//! hashes every piece, sends it to the tee, and queues it for the ingest,
//! which reads the queue as [`ReadAhead`]. When the body ends, the tee is
//! told at once whether it was the signed NAR ([`Tee::verified`]), while
//! the ingest may still be storing it.
//!
//! The queue is bounded server-wide by [`READ_AHEAD_BYTES`]: past it the
//! reading waits for the ingests, so the clients get the NAR at the ingest's
//! pace and memory stays bounded.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use attic::hash::Sha256Hasher;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use super::tee::{PIECE_MAX, Tee};
use crate::ingest::Declared;

/// NAR bytes read from upstreams and not yet taken by their ingests, at
/// most, server-wide.
pub const READ_AHEAD_BYTES: usize = 128 << 20;

static READ_AHEAD: Semaphore = Semaphore::const_new(READ_AHEAD_BYTES);

/// What the ingest is sent: pieces, each holding its share of
/// [`READ_AHEAD_BYTES`], then `None` once the NAR verified, or an error.
type Queued = io::Result<Option<(Bytes, SemaphorePermit<'static>)>>;

/// What the ingest reads: the upstream's NAR as [`read_ahead`] queued it.
/// It ends cleanly only once the NAR matched the signed hash and size, so
/// the ingest need not hash it again ([`crate::ingest::Expect::Vouched`]).
/// Dropping it stops the reading.
pub struct ReadAhead {
    queue: mpsc::UnboundedReceiver<Queued>,
    piece: Bytes,
    verified: bool,
    reading: JoinHandle<()>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.reading.abort();
    }
}

/// Starts reading `body`, the decoded NAR an upstream sends for the
/// narinfo `declared` came from, into `tee` and the returned reader.
pub fn read_ahead<R>(body: R, declared: Declared, tee: Arc<Tee>) -> ReadAhead
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (sender, queue) = mpsc::unbounded_channel();
    let reading = tokio::spawn(read(body, declared, tee, sender));
    ReadAhead {
        queue,
        piece: Bytes::new(),
        verified: false,
        reading,
    }
}

async fn read<R: AsyncRead + Unpin>(
    mut body: R,
    declared: Declared,
    tee: Arc<Tee>,
    sender: mpsc::UnboundedSender<Queued>,
) {
    let mut hasher = Sha256Hasher::new();
    let mut buffer = BytesMut::new();
    loop {
        buffer.reserve(PIECE_MAX);
        let piece = match body.read_buf(&mut buffer).await {
            Ok(0) => break,
            Ok(_) => buffer.split().freeze(),
            Err(e) => {
                tee.refuse();
                let _ = sender.send(Err(e));
                return;
            }
        };
        hasher.update(&piece);
        if hasher.len() > declared.nar_size {
            break;
        }
        tee.send(piece.clone());
        let permits = u32::try_from(piece.len()).expect("a piece is at most PIECE_MAX");
        let permit = READ_AHEAD
            .acquire_many(permits)
            .await
            .expect("the semaphore is never closed");
        // The ingest gave up: so does the reading (the pull is refused).
        if sender.send(Ok(Some((piece, permit)))).is_err() {
            return;
        }
    }
    // The ingest checks again, and more (the NAR's grammar); the tee's
    // clients need only this.
    if hasher.finish() == (declared.nar_hash, declared.nar_size) {
        tee.verified();
        let _ = sender.send(Ok(None));
    } else {
        tee.refuse();
        let _ = sender.send(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the upstream's NAR is not the one its narinfo signs",
        )));
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.piece.is_empty() {
            if self.verified {
                return Poll::Ready(Ok(()));
            }
            match self.queue.poll_recv(cx) {
                Poll::Ready(Some(Ok(Some((piece, _permit))))) => self.piece = piece,
                Poll::Ready(Some(Ok(None))) => self.verified = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The reading stopped short of a verdict.
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream's NAR ended before it was verified",
                    )));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.piece.len().min(buf.remaining());
        buf.put_slice(&self.piece.split_to(n));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use attic::hash::Sha256Hash;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::pull_through::tee::{Piece, TeeClient};

    fn declared(nar: &[u8]) -> Declared {
        Declared {
            nar_hash: Sha256Hash::digest(nar),
            nar_size: nar.len() as u64,
        }
    }

    /// What a client of the tee receives, up to the verdict.
    async fn received(mut client: TeeClient) -> (Vec<u8>, Piece) {
        let mut bytes = Vec::new();
        loop {
            match client.recv().await.expect("within the tee's capacity") {
                Piece::Bytes(piece) => bytes.extend_from_slice(&piece),
                verdict => return (bytes, verdict),
            }
        }
    }

    #[tokio::test]
    async fn the_tee_has_the_whole_nar_and_its_verdict_before_the_ingest_reads_a_byte() {
        let nar: Vec<u8> = (0..40 * PIECE_MAX).map(|i| (i % 253) as u8).collect();
        let tee = Arc::new(Tee::default());
        let client = tee.join().expect("nothing sent yet");
        let mut ingest = read_ahead(
            std::io::Cursor::new(nar.clone()),
            declared(&nar),
            tee.clone(),
        );
        let (bytes, verdict) = received(client).await;
        assert!(bytes == nar, "other bytes than the NAR");
        assert!(matches!(verdict, Piece::Verified), "{verdict:?}");
        let mut stored = Vec::new();
        ingest
            .read_to_end(&mut stored)
            .await
            .expect("the ingest reads");
        assert!(stored == nar, "the ingest read other bytes");
    }

    #[tokio::test]
    async fn another_nar_is_refused_to_the_tee_and_an_error_to_the_ingest() {
        let nar = vec![7u8; 3 * PIECE_MAX];
        let mut other = nar.clone();
        other[PIECE_MAX] ^= 1;
        for body in [
            other,
            nar[..nar.len() - 1].to_vec(),
            [&nar[..], b"x"].concat(),
        ] {
            let tee = Arc::new(Tee::default());
            let client = tee.join().expect("nothing sent yet");
            let mut ingest = read_ahead(std::io::Cursor::new(body), declared(&nar), tee.clone());
            let (_, verdict) = received(client).await;
            assert!(matches!(verdict, Piece::Refused), "{verdict:?}");
            let mut stored = Vec::new();
            let read = ingest.read_to_end(&mut stored).await;
            assert_eq!(
                read.expect_err("not the NAR").kind(),
                io::ErrorKind::InvalidData
            );
        }
    }

    #[tokio::test]
    async fn a_reading_stopped_before_its_verdict_never_ends_cleanly() {
        let (sender, queue) = mpsc::unbounded_channel();
        let piece = Bytes::from_static(b"the whole NAR, but unverified");
        let permit = READ_AHEAD.acquire_many(1).await.expect("open");
        sender.send(Ok(Some((piece, permit)))).expect("queued");
        drop(sender);
        let mut ingest = ReadAhead {
            queue,
            piece: Bytes::new(),
            verified: false,
            reading: tokio::spawn(async {}),
        };
        let mut stored = Vec::new();
        let read = ingest.read_to_end(&mut stored).await;
        assert_eq!(
            read.expect_err("no verdict").kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn a_body_that_fails_is_refused_and_the_error_reaches_the_ingest() {
        let failing = tokio_util::io::StreamReader::new(futures::stream::iter([
            Ok(Bytes::from_static(b"the start")),
            Err(io::Error::from(io::ErrorKind::ConnectionReset)),
        ]));
        let tee = Arc::new(Tee::default());
        let client = tee.join().expect("nothing sent yet");
        let mut ingest = read_ahead(failing, declared(b"the start and more"), tee.clone());
        let (bytes, verdict) = received(client).await;
        assert_eq!(bytes, b"the start");
        assert!(matches!(verdict, Piece::Refused), "{verdict:?}");
        let mut stored = Vec::new();
        let read = ingest.read_to_end(&mut stored).await;
        assert_eq!(
            read.expect_err("broken").kind(),
            io::ErrorKind::ConnectionReset
        );
    }
}
