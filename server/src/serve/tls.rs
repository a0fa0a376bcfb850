//! The optional TLS listener: `[tls]`'s PEM certificate chain and key
//! loaded into a rustls acceptor that speaks HTTP/1.1 only.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

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
