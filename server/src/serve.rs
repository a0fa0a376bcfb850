//! Serving HTTP/1.1 connections so that slow or idle clients cannot hold
//! the server: a header timeout (which also closes kept-alive connections
//! idle for that long), a cap on connections served at once, `TCP_NODELAY`
//! on each, and a shutdown that waits for requests in flight only up to a
//! deadline. Request bodies get their own progress timeout ([`body_reader`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use futures::TryStreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncRead;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::io::StreamReader;

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
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = state.config.http;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.connections_refused.inc();
            tracing::debug!("connection refused: http.max-connections are open");
            drop(tcp);
            continue;
        };
        // Nagle's algorithm would hold the last piece of every multi-write
        // response until the client's delayed ACK (about 40 ms on Linux),
        // on every kept-alive connection: Nix fetching many NARs felt all of it.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let service = TowerToHyperService::new(app.clone());
        match &tls {
            None => {
                let connection =
                    graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                // The handshake gets the header timeout, as a request's
                // headers do; only then is the connection served.
                let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp));
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let connection =
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(
                "requests still running after http.shutdown-timeout ({}); closing them",
                humantime::format_duration(limits.shutdown_timeout)
            );
        }
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
