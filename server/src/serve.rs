//! Serving HTTP/1.1 connections so that slow, idle or numerous clients
//! cannot hold the server: a header timeout (which also closes kept-alive
//! connections idle for that long), a cap on connections served at once and
//! on those from one client address, a few connections past the cap that
//! answer only probes, idle connections closed sooner when the cap is near,
//! `TCP_NODELAY` on each, and a shutdown that waits for requests in flight
//! only up to a deadline. Request bodies get their own progress timeout
//! ([`body_reader`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::TryStreamExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::error::ServerError;
use crate::stall;
use crate::state::AppState;

/// Loads `[tls]`'s certificate chain and key into an acceptor.
pub fn tls_acceptor(config: &crate::config::TlsConfig) -> Result<TlsAcceptor, TlsSetupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certificates = CertificateDer::pem_file_iter(&config.certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::Read {
            path: config.certificate.clone(),
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsSetupError::Read {
            path: config.certificate.clone(),
            reason: "it holds no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsSetupError::Read {
        path: config.key.clone(),
        reason: e.to_string(),
    })?;
    let mut server = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| {
        builder
            .with_no_client_auth()
            .with_single_cert(certificates, key)
    })
    .map_err(TlsSetupError::Config)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Why the TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file is missing or holds nothing usable.
    #[error("cannot use {path}: {reason}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not fit the certificate, or is of an unsupported kind.
    #[error("the TLS certificate and key do not work together")]
    Config(#[source] tokio_rustls::rustls::Error),
}

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

/// The open connections' counts, shared by the accept loop and the
/// connections themselves.
struct ConnectionGate {
    /// `http.max-connections`.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// `http.probe-connections`, past the cap.
    probe_slots: Arc<Semaphore>,
    /// Open connections per client address (not trusted proxies').
    per_address: Arc<AddressCounts>,
    /// Requests in flight per forwarded client address, through trusted
    /// proxies.
    forwarded: Arc<AddressCounts>,
    limits: HttpConfig,
}

impl ConnectionGate {
    fn new(limits: &HttpConfig) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            max_connections: limits.max_connections,
            probe_slots: Arc::new(Semaphore::new(limits.probe_connections)),
            per_address: Arc::new(AddressCounts::new(limits.max_connections_per_address)),
            forwarded: Arc::new(AddressCounts::new(limits.max_connections_per_address)),
            limits: limits.clone(),
        }
    }

    /// Whether three quarters of `http.max-connections` are open, when
    /// idle connections give way to new ones.
    fn under_pressure(&self) -> bool {
        let open = self.max_connections - self.slots.available_permits();
        open * 4 >= self.max_connections * 3
    }
}

/// How many of something (connections, requests) each client address
/// holds, bounded. IPv6 addresses count by their /64, which one host
/// commonly holds whole.
struct AddressCounts {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// One more for `address`, or `None` if it holds the limit already.
    fn claim(self: &Arc<Self>, address: IpAddr) -> Option<AddressClaim> {
        let key = address_key(address);
        let mut counts = self.counts.lock().expect("address counts lock");
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressClaim {
            counts: self.clone(),
            key,
        })
    }
}

/// What an address's count is keyed by.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// One counted connection or request of an address, given back on drop.
struct AddressClaim {
    counts: Arc<AddressCounts>,
    key: IpAddr,
}

impl Drop for AddressClaim {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().expect("address counts lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The client address a request through a trusted proxy came from: the
/// last address in `X-Forwarded-For` that is not itself a trusted proxy
/// (earlier entries are the client's to write, so they are not believed).
/// The proxy's own address when the header is absent or unreadable.
fn forwarded_client(headers: &HeaderMap, proxy: IpAddr, limits: &HttpConfig) -> IpAddr {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(address) if limits.is_trusted_proxy(address) => continue,
            Ok(address) => return address.to_canonical(),
            Err(_) => return proxy,
        }
    }
    proxy
}

/// When a connection last began or finished a request, and how many it
/// has in flight, so that an idle one can be told from a busy one.
struct Activity {
    since: Instant,
    /// Milliseconds from `since` to the last start or end of a request.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
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
struct Connection {
    builder: hyper::server::conn::http1::Builder,
    service: ConnectionService,
    activity: Arc<Activity>,
    /// Set for connections that give way when the cap is near.
    gate: Option<Arc<ConnectionGate>>,
    stop: CancellationToken,
    /// Given back when the connection closes.
    held: (OwnedSemaphorePermit, Option<AddressClaim>, mpsc::Sender<()>),
}

impl Connection {
    /// Serves requests until the client leaves, the connection times out,
    /// the server shuts down, or it sits idle while the cap is near.
    async fn serve<I>(self, io: I)
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
struct ConnectionService {
    app: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    probes_only: bool,
    /// The gate and the proxy's address, on a trusted proxy's connection.
    forwarded: Option<(Arc<ConnectionGate>, IpAddr)>,
}

impl hyper::service::Service<axum::http::Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: axum::http::Request<Incoming>) -> Self::Future {
        let busy = Busy::new(self.activity.clone());
        if self.probes_only && !matches!(request.uri().path(), "/_health" | "/metrics") {
            return Box::pin(std::future::ready(Ok(
                ServerError::Overloaded.into_response()
            )));
        }
        let claim = match &self.forwarded {
            None => None,
            Some((gate, proxy)) => {
                let client = forwarded_client(request.headers(), *proxy, &gate.limits);
                match gate.forwarded.claim(client) {
                    Some(claim) => Some(claim),
                    None => {
                        tracing::debug!(%client, "request refused: http.max-connections-per-address requests in flight");
                        return Box::pin(std::future::ready(Ok(
                            ServerError::TooManyRequests.into_response()
                        )));
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits_trusting(proxies: &[&str]) -> HttpConfig {
        HttpConfig {
            trusted_proxies: proxies
                .iter()
                .map(|p| (*p).to_owned().try_into().expect("a range"))
                .collect(),
            ..HttpConfig::default()
        }
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().expect("a header value"));
        }
        headers
    }

    #[test]
    fn the_client_is_the_last_forwarded_address_that_is_not_a_trusted_proxy() {
        let limits = limits_trusting(&["10.0.0.0/8"]);
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let client = |values: &[&str]| forwarded_client(&forwarded(values), proxy, &limits);
        assert_eq!(
            client(&["203.0.113.9"]),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        // Entries before the client's are the client's to write.
        assert_eq!(
            client(&["198.51.100.1, 203.0.113.9, 10.0.0.2"]),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client(&["198.51.100.1", "203.0.113.9"]),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        // Nothing readable, or only proxies: the proxy itself.
        assert_eq!(client(&[]), proxy);
        assert_eq!(client(&["10.0.0.3"]), proxy);
        assert_eq!(client(&["203.0.113.9, garbage"]), proxy);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let key = |a: &str| address_key(a.parse().expect("ip"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }

    #[test]
    fn an_address_holds_at_most_its_limit_until_it_gives_some_back() {
        let counts = Arc::new(AddressCounts::new(2));
        let address: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = counts.claim(address).expect("first");
        let _second = counts.claim(address).expect("second");
        assert!(counts.claim(address).is_none());
        assert!(counts.claim("192.0.2.2".parse().expect("ip")).is_some());
        drop(first);
        assert!(counts.claim(address).is_some());
    }
}
