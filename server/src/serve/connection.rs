//! One accepted connection: served until the client leaves, it times out,
//! the server shuts down, or it sits idle while the cap is near; its
//! requests counted in flight until their response bodies end.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::limits::{AddressClaim, ConnectionGate, forwarded_client};
use crate::error::ServerError;
use crate::request_log::ClientAddress;

/// When a connection last began or finished a request, and how many it
/// has in flight, so that an idle one can be told from a busy one.
pub(super) struct Activity {
    since: Instant,
    /// Milliseconds from `since` to the last start or end of a request.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            since: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long the connection has had no request in flight; zero while
    /// it has one.
    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// A request in flight on a connection, until its response body ends.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection, with what it holds while open.
pub(super) struct Connection {
    pub(super) builder: hyper::server::conn::http1::Builder,
    pub(super) service: ConnectionService,
    pub(super) activity: Arc<Activity>,
    /// Set for connections that give way when the cap is near.
    pub(super) gate: Option<Arc<ConnectionGate>>,
    pub(super) stop: CancellationToken,
    /// Given back when the connection closes.
    pub(super) held: (OwnedSemaphorePermit, Option<AddressClaim>, mpsc::Sender<()>),
}

impl Connection {
    /// Serves requests until the client leaves, the connection times out,
    /// the server shuts down, or it sits idle while the cap is near.
    pub(super) async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = self
            .builder
            .serve_connection(TokioIo::new(io), self.service);
        tokio::pin!(connection);
        let idle_limit = self
            .gate
            .as_ref()
            .map(|gate| gate.limits.idle_timeout_under_pressure);
        let mut closing = false;
        loop {
            let check = idle_limit.unwrap_or(Duration::MAX) / 2;
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = self.stop.cancelled(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep(check), if !closing && idle_limit.is_some() => {
                    let (Some(gate), Some(limit)) = (&self.gate, idle_limit) else { continue };
                    if gate.under_pressure() && self.activity.idle_for() >= limit {
                        tracing::debug!("closing an idle connection: http.max-connections are nearly all open");
                        // Closes at once when idle, else after the
                        // response in flight.
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
        drop(self.held);
    }
}

/// The app as one connection serves it: counting its requests in flight,
/// answering only probes on a connection past the cap, and limiting
/// requests per forwarded address on a trusted proxy's connection.
#[derive(Clone)]
pub(super) struct ConnectionService {
    pub(super) app: TowerToHyperService<Router>,
    pub(super) activity: Arc<Activity>,
    pub(super) probes_only: bool,
    /// The gate and the proxy's address, on a trusted proxy's connection.
    pub(super) forwarded: Option<(Arc<ConnectionGate>, IpAddr)>,
    /// The address the connection came from.
    pub(super) peer: IpAddr,
}

impl hyper::service::Service<axum::http::Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: axum::http::Request<Incoming>) -> Self::Future {
        let busy = Busy::new(self.activity.clone());
        if self.probes_only && !matches!(request.uri().path(), "/_health" | "/metrics") {
            return Box::pin(std::future::ready(Ok(
                ServerError::Overloaded.into_response()
            )));
        }
        let client = match &self.forwarded {
            None => self.peer,
            Some((gate, proxy)) => forwarded_client(request.headers(), *proxy, &gate.limits),
        };
        // The one address the request log (and anything else) names.
        request.extensions_mut().insert(ClientAddress(client));
        let claim = match &self.forwarded {
            None => None,
            Some((gate, _)) => match gate.forwarded.claim(client) {
                Some(claim) => Some(claim),
                None => {
                    tracing::debug!(%client, "request refused: http.max-connections-per-address requests in flight");
                    return Box::pin(std::future::ready(Ok(
                        ServerError::TooManyRequests.into_response()
                    )));
                }
            },
        };
        let response = hyper::service::Service::call(&self.app, request);
        Box::pin(async move {
            let response = response.await?;
            // Held until the body is sent, not only until it starts.
            Ok(response.map(|body| {
                Body::new(HeldBody {
                    body,
                    _held: (busy, claim),
                })
            }))
        })
    }
}

/// A response body that holds something (a count) until it is dropped.
struct HeldBody<T> {
    body: Body,
    _held: T,
}

impl<T: Send + Unpin + 'static> hyper::body::Body for HeldBody<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
