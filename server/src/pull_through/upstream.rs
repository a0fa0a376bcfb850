//! Asking one upstream binary cache for a path: its narinfo, checked
//! against the key configured for that upstream, and then its NAR as a
//! stream of decompressed bytes. Any binary cache Nix can read works: a
//! directory `nix copy --to file://` wrote served by a web server, another
//! `atticd`, cache.nixos.org.

use std::io;
use std::time::Duration;

use attic::narinfo::{NarInfo, NarInfoError};
use attic::store_path::{StoreDir, StorePathHash};
use futures::TryStreamExt;
use thiserror::Error;
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

use super::config::Upstream;
use crate::compressed::Compression;
use crate::stall;

/// Largest narinfo read from an upstream: real ones are a few hundred
/// bytes, a few kilobytes with many references.
const MAX_NARINFO_SIZE: usize = 256 * 1024;

/// Why an upstream did not give a path. [`UpstreamError::NotFound`] is an
/// ordinary miss; every other one is logged.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// The upstream does not have it (404, 403 or 410).
    #[error("the upstream does not have it")]
    NotFound,
    /// The request failed or timed out.
    #[error("request to {url} failed")]
    Request {
        /// What was asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// No answer within the timeout.
    #[error("{url} did not answer within {}", humantime::format_duration(*timeout))]
    TimedOut {
        /// What was asked.
        url: String,
        /// How long it had.
        timeout: Duration,
    },
    /// An answer other than 200 or a miss.
    #[error("{url} answered {status}")]
    Status {
        /// What was asked.
        url: String,
        /// The answer.
        status: reqwest::StatusCode,
    },
    /// A narinfo over [`MAX_NARINFO_SIZE`].
    #[error("{url} is larger than any narinfo ({MAX_NARINFO_SIZE} bytes)")]
    NarinfoTooLarge {
        /// What was asked.
        url: String,
    },
    /// Not a narinfo.
    #[error("{url} is not a valid narinfo")]
    BadNarinfo {
        /// What was asked.
        url: String,
        /// Why.
        #[source]
        source: NarInfoError,
    },
    /// A narinfo of another path or store than asked.
    #[error("{url} describes {found}, not a path of {store_dir} with hash {hash}")]
    WrongPath {
        /// What was asked.
        url: String,
        /// The path it describes.
        found: String,
        /// The store asked about.
        store_dir: String,
        /// The hash asked about.
        hash: String,
    },
    /// No signature by the upstream's configured key verifies.
    #[error("{url} carries no valid signature by {key}")]
    NotSigned {
        /// What was asked.
        url: String,
        /// The key's name.
        key: String,
    },
    /// A `URL:` outside the upstream (absolute, or climbing out of it).
    #[error("the narinfo's URL {0:?} is not a file of the upstream")]
    BadNarUrl(String),
    /// A `Compression:` this server cannot decode.
    #[error("the NAR is compressed as {0:?}, which this server cannot decode")]
    UnknownCompression(String),
}

/// The client every upstream is asked through.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
    timeout: Duration,
}

/// A path's narinfo as an upstream signed it, with only the signatures
/// that verified under its key kept.
#[derive(Debug, Clone)]
pub struct VerifiedNarinfo {
    /// The narinfo.
    pub narinfo: NarInfo,
}

impl UpstreamClient {
    /// A client that gives up on an upstream after `timeout` without
    /// progress (connecting, answering, or between pieces of a NAR).
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("atticd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, timeout })
    }

    /// How long an upstream may take to make progress.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The narinfo of `hash` at `upstream`, if it has one signed by its key
    /// for a path of `store_dir`.
    pub async fn narinfo(
        &self,
        upstream: &Upstream,
        hash: &StorePathHash,
        store_dir: &StoreDir,
    ) -> Result<VerifiedNarinfo, UpstreamError> {
        let url = format!("{}/{}.narinfo", upstream.url(), hash.as_str());
        let request_error = |source| UpstreamError::Request {
            url: url.clone(),
            source,
        };
        let mut response = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(request_error)?;
        check_status(&url, response.status())?;
        let mut body = Vec::new();
        while let Some(piece) = response.chunk().await.map_err(request_error)? {
            if body.len() + piece.len() > MAX_NARINFO_SIZE {
                return Err(UpstreamError::NarinfoTooLarge { url });
            }
            body.extend_from_slice(&piece);
        }
        let text = String::from_utf8_lossy(&body);
        let mut narinfo: NarInfo = text.parse().map_err(|source| UpstreamError::BadNarinfo {
            url: url.clone(),
            source,
        })?;
        if narinfo.store_path.hash() != hash || narinfo.store_dir != *store_dir {
            return Err(UpstreamError::WrongPath {
                found: narinfo.full_store_path(),
                store_dir: store_dir.as_str().to_owned(),
                hash: hash.as_str().to_owned(),
                url,
            });
        }
        let key = upstream.public_key();
        let fingerprint = narinfo.fingerprint();
        narinfo
            .sigs
            .retain(|sig| key.verify(fingerprint.as_bytes(), sig).is_ok());
        if narinfo.sigs.is_empty() {
            return Err(UpstreamError::NotSigned {
                url,
                key: key.name().to_owned(),
            });
        }
        Ok(VerifiedNarinfo { narinfo })
    }

    /// The NAR a verified narinfo names, as its compressed bytes arrive,
    /// and how they are compressed. A stall of the timeout ends the read
    /// with `TimedOut`.
    pub async fn nar(
        &self,
        upstream: &Upstream,
        narinfo: &NarInfo,
    ) -> Result<(impl AsyncRead + Send + Unpin + 'static, Compression), UpstreamError> {
        let compression = compression(narinfo.compression.as_deref())?;
        let file = &narinfo.url;
        if file.is_empty()
            || file.starts_with('/')
            || file.contains("://")
            || file.split('/').any(|part| part == ".." || part == ".")
            || file.chars().any(|c| c.is_control() || c == '?' || c == '#')
        {
            return Err(UpstreamError::BadNarUrl(file.clone()));
        }
        let url = format!("{}/{file}", upstream.url());
        let response = tokio::time::timeout(self.timeout, self.http.get(&url).send())
            .await
            .map_err(|_| UpstreamError::TimedOut {
                url: url.clone(),
                timeout: self.timeout,
            })?
            .map_err(|source| UpstreamError::Request {
                url: url.clone(),
                source,
            })?;
        check_status(&url, response.status())?;
        let bytes = response.bytes_stream().map_err(io::Error::other);
        let body = StreamReader::new(stall::with_progress_timeout(bytes, self.timeout));
        Ok((body, compression))
    }
}

fn check_status(url: &str, status: reqwest::StatusCode) -> Result<(), UpstreamError> {
    use reqwest::StatusCode;
    match status {
        StatusCode::OK => Ok(()),
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => {
            Err(UpstreamError::NotFound)
        }
        status => Err(UpstreamError::Status {
            url: url.to_owned(),
            status,
        }),
    }
}

/// A narinfo's `Compression:` as a decoder; absent is bzip2, as Nix reads it.
fn compression(name: Option<&str>) -> Result<Compression, UpstreamError> {
    match name.unwrap_or("bzip2") {
        "none" | "" => Ok(Compression::None),
        "zstd" => Ok(Compression::Zstd),
        "xz" => Ok(Compression::Xz),
        "bzip2" => Ok(Compression::Bzip2),
        other => Err(UpstreamError::UnknownCompression(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names_map_as_nix_writes_them() {
        assert_eq!(compression(None).ok(), Some(Compression::Bzip2));
        assert_eq!(compression(Some("none")).ok(), Some(Compression::None));
        assert_eq!(compression(Some("zstd")).ok(), Some(Compression::Zstd));
        assert_eq!(compression(Some("xz")).ok(), Some(Compression::Xz));
        assert!(matches!(
            compression(Some("br")),
            Err(UpstreamError::UnknownCompression(_))
        ));
    }
}
