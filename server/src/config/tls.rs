//! `[tls]`: the certificate and key atticd serves HTTPS with, for
//! deployments without a proxy in front.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[tls]`: the certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}
