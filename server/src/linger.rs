//! Reading what is left of a request's body before answering it. A request
//! refused before its body was read (too large, bad token, no such route)
//! would otherwise be answered and its connection closed with bytes still
//! arriving: the kernel then resets the connection, and a client still
//! sending sees "connection reset" or "broken pipe" instead of the answer.
//! So up to [`LINGER_LIMIT`] unread bytes are read and dropped first, for
//! at most [`LINGER_TIME`] (and `http.body-timeout` a piece); past either
//! the connection is closed, so a client cannot hold it by trickling.
//! A body that stalled or failed (the upload's own timeout, a reset) is
//! not waited for again.
//!
//! Such a refusal also says `Connection: close` (a success whose body's
//! end, a chunked terminator, was read here does not). The client may be
//! sending still, or (having asked `Expect: 100-continue`) waiting to be
//! told to: either way what comes next on the connection is unsure, and a
//! client that retries on it (Nix 2.8 after a 503) can end up waiting for
//! an answer to a body it never sends again. On a new connection it
//! starts clean.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::oneshot;

use crate::expect_continue::waits_to_send;
use crate::state::AppState;

/// Unread body bytes read and dropped at most before answering.
pub const LINGER_LIMIT: u64 = 64 * 1024 * 1024;

/// Longest time spent reading and dropping them.
pub const LINGER_TIME: Duration = Duration::from_secs(10);

/// A request whose body the handler may leave unread: once it has
/// answered, [`Linger::finish`] reads and drops the rest (see the module's
/// documentation). Made by [`Linger::watch`] in the middleware around
/// every request (`api::around_every_request`).
pub struct Linger {
    /// The body, if the handler dropped it unfinished.
    returned: oneshot::Receiver<(Body, bool)>,
    /// The client asked `Expect: 100-continue`.
    waits_to_send: bool,
}

impl Linger {
    /// Watches `request`'s body, unless it has none (every GET: nothing to
    /// read, and nothing to wrap, on the narinfo hot path).
    pub fn watch(request: Request) -> (Request, Option<Self>) {
        if request.body().is_end_stream() {
            return (request, None);
        }
        let (parts, body) = request.into_parts();
        // A client that asked `Expect: 100-continue` sends nothing until
        // told to, and hyper tells it as soon as the body is read: reading
        // a body nobody began to read would only ask for bytes to drop.
        let waits_to_send = waits_to_send(&parts.headers);
        let (back, returned) = oneshot::channel();
        let body = Body::new(Returning {
            inner: Some(body),
            read: false,
            failed: false,
            back: Some(back),
        });
        let linger = Self {
            returned,
            waits_to_send,
        };
        (Request::from_parts(parts, body), Some(linger))
    }

    /// Reads and drops what the handler left of the body, then says
    /// `Connection: close` on `response` unless it is a success whose body
    /// was read to its end.
    pub async fn finish(mut self, state: &AppState, mut response: Response) -> Response {
        // Only a body the handler dropped unfinished comes back; one it
        // still holds (streaming it elsewhere) is its own business.
        let Ok((rest, read)) = self.returned.try_recv() else {
            return response;
        };
        let mut drained = false;
        if (read || !self.waits_to_send) && response.status() != StatusCode::REQUEST_TIMEOUT {
            let timeout = state.config.http.body_timeout;
            drained = tokio::time::timeout(LINGER_TIME, discard(rest, LINGER_LIMIT, timeout))
                .await
                .unwrap_or(false);
        }
        // A success whose body was read to its end here leaves the
        // connection clean: an upload whose handler stopped at the NAR's
        // last byte, before the chunked body's terminator, keeps its
        // connection (closing it cost every path `attic push` sends a new
        // connection). A refusal closes.
        if !(drained && response.status().is_success()) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Reads and drops up to `limit` bytes of `body`, each piece within
/// `timeout`; stops early at its end, an error, a stall or the limit.
/// Whether it reached the body's end.
async fn discard(body: Body, limit: u64, timeout: Duration) -> bool {
    if body.size_hint().lower() > limit {
        return false;
    }
    let mut pieces = body.into_data_stream();
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(timeout, pieces.next()).await {
            Ok(Some(Ok(piece))) => {
                seen += piece.len() as u64;
                if seen > limit {
                    return false;
                }
            }
            Ok(None) => return true,
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// A request body that, dropped before its end, goes back to the
/// middleware through `back`, with whether any of it was read.
struct Returning {
    inner: Option<Body>,
    read: bool,
    /// Reading it failed: nothing more will come.
    failed: bool,
    back: Option<oneshot::Sender<(Body, bool)>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.read = true;
        let polled = match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take())
            && !self.failed
            && !inner.is_end_stream()
        {
            // The middleware may be gone (the request was abandoned).
            let _ = back.send((inner, self.read));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn an_unfinished_body_comes_back_and_a_finished_one_does_not() {
        let (back, mut returned) = oneshot::channel();
        let body = Returning {
            inner: Some(Body::from("unread")),
            read: false,
            failed: false,
            back: Some(back),
        };
        drop(body);
        let (rest, read) = returned.try_recv().expect("the unread body came back");
        assert!(!read);
        let read = axum::body::to_bytes(rest, 100).await.expect("read");
        assert_eq!(&read[..], b"unread");

        let (back, mut returned) = oneshot::channel();
        let body = Body::new(Returning {
            inner: Some(Body::from("read")),
            read: false,
            failed: false,
            back: Some(back),
        });
        assert_eq!(
            &axum::body::to_bytes(body, 100).await.expect("read")[..],
            b"read"
        );
        assert!(returned.try_recv().is_err(), "a read body came back");
    }

    #[tokio::test]
    async fn a_partly_read_body_comes_back_marked_read() {
        // Marked read, its rest is drained even for a client that asked
        // `Expect: 100-continue`: it was told to send and is sending.
        let (back, mut returned) = oneshot::channel();
        let pieces = futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"read")),
            Ok(Bytes::from_static(b"rest")),
        ]);
        let mut body = Body::new(Returning {
            inner: Some(Body::from_stream(pieces)),
            read: false,
            failed: false,
            back: Some(back),
        })
        .into_data_stream();
        assert_eq!(
            &body.next().await.expect("a piece").expect("read")[..],
            b"read"
        );
        drop(body);
        let (rest, read) = returned.try_recv().expect("the unfinished body came back");
        assert!(read, "a body the handler began to read came back as unread");
        let rest = axum::body::to_bytes(rest, 100).await.expect("read");
        assert_eq!(&rest[..], b"rest");
    }

    #[tokio::test]
    async fn a_body_that_failed_does_not_come_back() {
        let (back, mut returned) = oneshot::channel();
        let failing = futures::stream::iter([
            Ok(Bytes::from_static(b"some")),
            Err(std::io::Error::other("reset")),
            Ok(Bytes::from_static(b"never")),
        ]);
        let mut body = Body::new(Returning {
            inner: Some(Body::from_stream(failing)),
            read: false,
            failed: false,
            back: Some(back),
        })
        .into_data_stream();
        assert!(body.next().await.expect("a piece").is_ok());
        assert!(body.next().await.expect("the error").is_err());
        drop(body);
        assert!(returned.try_recv().is_err(), "a failed body came back");
    }

    #[tokio::test]
    async fn discarding_stops_at_the_limit_and_at_a_stall() {
        let endless = futures::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(Bytes::from_static(&[0; 1024]))
        });
        // Past the limit it gives up on an endless body, not at its end.
        assert!(
            !discard(
                Body::from_stream(endless),
                10 * 1024,
                Duration::from_secs(60),
            )
            .await
        );
        let stalled = futures::stream::pending::<Result<Bytes, std::io::Error>>();
        assert!(!discard(Body::from_stream(stalled), 1024, Duration::from_millis(20)).await);
        // A body that says it is larger than the limit is not read at all.
        let declared = Declared::default();
        let polled = declared.polled.clone();
        assert!(!discard(Body::new(declared), 1024, Duration::from_secs(60)).await);
        assert!(
            !polled.load(Ordering::SeqCst),
            "read a body declared too large"
        );
        // A body that ends within the limit is read to its end.
        let short = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"rest"))]);
        assert!(discard(Body::from_stream(short), 1024, Duration::from_secs(60)).await);
    }

    /// A body that declares 2 KiB and records whether it was polled.
    #[derive(Default)]
    struct Declared {
        polled: Arc<AtomicBool>,
    }

    impl HttpBody for Declared {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.polled.store(true, Ordering::SeqCst);
            Poll::Ready(None)
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(2048)
        }
    }
}
