//! Serving HTTP/1.1 connections so that slow, idle or numerous clients
//! cannot hold the server: a header timeout (which also closes kept-alive
//! connections idle for that long), a cap on connections served at once and
//! on those from one client address, a few connections past the cap that
//! answer only probes, idle connections closed sooner when the cap is near,
//! `TCP_NODELAY` on each, and a shutdown that waits for requests in flight
//! only up to a deadline. Request bodies get their own progress timeout
//! ([`body_reader`]).
//!
//! `limits` counts connections and requests against the caps, `connection`
//! serves one accepted connection, `tls` sets up the optional TLS listener.

mod connection;
mod limits;
mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use futures::TryStreamExt;
use hyper_util::rt::TokioTimer;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncRead;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

use self::connection::{Activity, Connection, ConnectionService};
use self::limits::ConnectionGate;
use crate::stall;
use crate::state::AppState;

pub use self::tls::{TlsSetupError, tls_acceptor};

/// Serves `app` on `listener` (over TLS when `tls` is given) until
/// `shutdown` completes, then waits for requests in flight for at most
/// `http.shutdown-timeout`.
///
/// A connection is accepted when its address holds fewer than
/// `http.max-connections-per-address` (trusted proxies are exempt) and
/// either fewer than `http.max-connections` are open, or fewer than
/// `http.probe-connections` past that: those answer `/_health` and
/// `/metrics` only. Anything else is closed on arrival.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = state.config.http.clone();
    let gate = Arc::new(ConnectionGate::new(&limits));
    let stop = CancellationToken::new();
    // Every connection's task holds a sender: once all are dropped, every
    // connection has closed.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut probe_builder = builder.clone();
    probe_builder
        .header_read_timeout(
            limits
                .header_timeout
                .min(limits.idle_timeout_under_pressure),
        )
        .keep_alive(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = peer.ip().to_canonical();
        let from_proxy = limits.is_trusted_proxy(peer);
        let address_claim = if from_proxy {
            None
        } else {
            match gate.per_address.claim(peer) {
                Some(claim) => Some(claim),
                None => {
                    state.metrics.connections_refused_per_address.inc();
                    tracing::debug!(%peer, "connection refused: http.max-connections-per-address are open");
                    continue;
                }
            }
        };
        let (slot, probes_only) = match gate.slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => match gate.probe_slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, true),
                Err(_) => {
                    state.metrics.connections_refused.inc();
                    tracing::debug!("connection refused: http.max-connections are open");
                    continue;
                }
            },
        };
        // Nagle's algorithm would hold the last piece of every multi-write
        // response until the client's delayed ACK (about 40 ms on Linux),
        // on every kept-alive connection: Nix fetching many NARs felt all of it.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let activity = Arc::new(Activity::new());
        let service = ConnectionService {
            app: TowerToHyperService::new(app.clone()),
            activity: activity.clone(),
            probes_only,
            forwarded: from_proxy.then(|| (gate.clone(), peer)),
            peer,
        };
        let connection = Connection {
            builder: if probes_only {
                probe_builder.clone()
            } else {
                builder.clone()
            },
            service,
            activity,
            // Probe connections serve one request and have a short header
            // timeout already.
            gate: (!probes_only).then(|| gate.clone()),
            stop: stop.clone(),
            held: (slot, address_claim, alive.clone()),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(tcp));
            }
            Some(acceptor) => {
                // The handshake gets the header timeout, as a request's
                // headers do; only then is the connection served.
                let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp));
                tokio::spawn(async move {
                    match handshake.await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    stop.cancel();
    drop(alive);
    if tokio::time::timeout(limits.shutdown_timeout, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after http.shutdown-timeout ({}); closing them",
            humantime::format_duration(limits.shutdown_timeout)
        );
    }
}

/// A request body as a reader that fails with `TimedOut` when no byte
/// arrives for `timeout`, so a stalled upload ends instead of holding its
/// connection, its pack write and the server's shutdown.
pub fn body_reader(body: Body, timeout: Duration) -> impl AsyncRead + Send + Unpin {
    StreamReader::new(stall::with_progress_timeout(
        body.into_data_stream().map_err(io::Error::other),
        timeout,
    ))
}

/// Raises the soft limit on open files to the hard one: every connection
/// is a file, and a soft limit of 1024 (common) is below
/// `http.max-connections` plus the probe connections and the database's
/// and the storage's own files. Failing that, it stays as it was. Returns
/// the soft limit now in force (`u64::MAX` for none).
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current < limit.maximum.or(Some(u64::MAX)) {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open file limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
