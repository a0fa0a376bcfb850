//! Refusing an upload before its client starts sending it.
//!
//! A client that asks `Expect: 100-continue` (curl does for bodies over a
//! megabyte, so Nix does for NARs) waits to be told to send, but only for
//! a while: curl starts sending after a second anyway. Nix 2.8 cannot
//! send a body twice: a retry after a refusal resumes from where the last
//! attempt's sending stopped, so a NAR refused after curl began sending it
//! is retried short and the upload waits out `http.body-timeout`. An
//! upload refused while its client still waits is retried whole.
//!
//! So the binary cache's upload routes must ask for the body (hyper then
//! says `100 Continue`) within [`CONTINUE_WINDOW`]. A handler still busy
//! before its body by then (the database slow or out of connections for
//! its token or cache lookup) is dropped and the upload refused with a
//! 503 and `Retry-After`. Those handlers change nothing before they read
//! their body, so dropping one there loses nothing.

use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::http::header::EXPECT;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use crate::error::ServerError;

/// How long an upload that waits for `100 Continue` may wait for it: half
/// of curl's one second, leaving the other half for the refusal's way back.
pub const CONTINUE_WINDOW: Duration = Duration::from_millis(500);

/// Middleware for routes whose handlers change nothing before reading
/// their body: refuses a `100-continue` upload whose body the handler has
/// not asked for within [`CONTINUE_WINDOW`] (see the module's documentation).
pub async fn refuse_before_the_body(request: Request, next: Next) -> Response {
    refuse_unless_read_within(CONTINUE_WINDOW, request, next).await
}

/// Whether the client asked `Expect: 100-continue`: it sends no body until
/// told to, which hyper does when the body is first read.
pub fn waits_to_send(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

async fn refuse_unless_read_within(window: Duration, request: Request, next: Next) -> Response {
    if !waits_to_send(request.headers()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let (asked, mut asked_for) = oneshot::channel::<()>();
    let body = Body::new(TellsWhenRead {
        inner: body,
        asked: Some(asked),
    });
    let mut response = pin!(next.run(Request::from_parts(parts, body)));
    tokio::select! {
        biased;
        answered = &mut response => return answered,
        _ = &mut asked_for => {}
        () = tokio::time::sleep(window) => {
            return ServerError::NotReadyForBody(window).into_response();
        }
    }
    response.await
}

/// A request body that says when it is first read.
struct TellsWhenRead {
    inner: Body,
    asked: Option<oneshot::Sender<()>>,
}

impl axum::body::HttpBody for TellsWhenRead {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Some(asked) = self.asked.take() {
            let _ = asked.send(());
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::put;
    use tower::ServiceExt;

    use super::*;

    const WINDOW: Duration = Duration::from_millis(20);
    /// Far past the window, however slow the machine.
    const LONG: Duration = Duration::from_millis(500);

    fn refusing(router: Router) -> Router {
        router.layer(axum::middleware::from_fn(|request, next| {
            refuse_unless_read_within(WINDOW, request, next)
        }))
    }

    fn app(changed: Arc<AtomicBool>, busy_for: Duration) -> Router {
        refusing(Router::new().route(
            "/upload",
            put(move |body: Body| async move {
                tokio::time::sleep(busy_for).await;
                let read = axum::body::to_bytes(body, 1 << 20).await.expect("body");
                changed.store(true, Ordering::SeqCst);
                read.len().to_string()
            }),
        ))
    }

    fn upload(expect: bool) -> Request {
        let mut request = Request::put("/upload");
        if expect {
            request = request.header(EXPECT, "100-continue");
        }
        request.body(Body::from("nar bytes")).expect("request")
    }

    #[tokio::test]
    async fn a_handler_slow_before_the_body_is_refused_and_changes_nothing() {
        let changed = Arc::new(AtomicBool::new(false));
        let response = app(changed.clone(), LONG)
            .oneshot(upload(true))
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert!(!changed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_handler_that_reads_its_body_in_time_finishes_however_long_it_takes() {
        let changed = Arc::new(AtomicBool::new(false));
        let app = refusing(Router::new().route(
            "/upload",
            put({
                let changed = changed.clone();
                move |body: Body| async move {
                    let read = axum::body::to_bytes(body, 1 << 20).await.expect("body");
                    tokio::time::sleep(LONG).await;
                    changed.store(true, Ordering::SeqCst);
                    read.len().to_string()
                }
            }),
        ));
        let response = app.oneshot(upload(true)).await.expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(changed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_client_that_does_not_wait_to_send_is_never_refused_for_time() {
        let changed = Arc::new(AtomicBool::new(false));
        let response = app(changed.clone(), LONG)
            .oneshot(upload(false))
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(changed.load(Ordering::SeqCst));
    }
}
