//! The `/_api/v1/` client.
//!
//! Errors say what happened in terms a user can act on: the server's own
//! message for refusals, the address for connection failures. They also say
//! whether trying again could help ([`ApiError::is_transient`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use attic::api::ErrorResponse;
use attic::api::v1::cache_config::{CacheConfig, CreateCacheRequest};
use attic::api::v1::cache_log::{CacheLogPage, CacheLogQuery};
use attic::api::v1::caches::ListCachesResponse;
use attic::api::v1::get_missing_paths::{GetMissingPathsRequest, GetMissingPathsResponse};
use attic::api::v1::oidc_exchange::{OidcExchangeRequest, OidcExchangeResponse};
use attic::api::v1::pins::{ListPinsResponse, PinInfo, PinPathRequest};
use attic::api::v1::upload_path::{
    NAR_INFO_HEADER, NAR_INFO_PREAMBLE_SIZE_HEADER, UploadPathNarInfo, UploadPathResult,
};
use attic::api::v1::whoami::WhoamiResponse;
use attic::cache::CacheName;
use attic::pin::PinName;
use attic::store_path::StorePathHash;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{Body, Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::config::ServerEntry;
use crate::upload_encoding::{CompressionChoice, Metered};

/// How long a quick check (`whoami`, `nix-cache-info`) may take in all.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Metadata longer than this goes in a preamble rather than a header.
const MAX_HEADER_NAR_INFO: usize = 4096;

/// zstd level of compressed uploads: fast, so compressing never holds the
/// upload back; the server recompresses chunks as it stores them anyway.
const UPLOAD_ZSTD_LEVEL: i32 = 1;

/// Why an API call failed.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The server answered with an error.
    #[error("{endpoint} refused: {status} {error}: {message}")]
    Refused {
        /// The server.
        endpoint: String,
        /// HTTP status.
        status: StatusCode,
        /// The server's stable error name.
        error: String,
        /// The server's explanation.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach {endpoint}: {source}")]
    Unreachable {
        /// The server.
        endpoint: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered something that is not what the API promises.
    #[error("{endpoint} sent an unexpected reply: {detail}")]
    BadReply {
        /// The server.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
}

impl ApiError {
    /// Whether the same request could succeed later: connection trouble,
    /// server errors, rate limiting. Refusals (4xx) will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } => true,
            ApiError::Refused { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::BadReply { .. } => false,
        }
    }

    /// The server's stable name for its refusal (`NoSuchObject`, ...).
    pub fn error_name(&self) -> Option<&str> {
        match self {
            ApiError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client for a configured server.
    pub fn new(server: &ServerEntry) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("attic/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with static settings");
        Self {
            http,
            endpoint: server.endpoint.clone(),
            token: server.token.clone(),
        }
    }

    /// The server's base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}_api/v1/{path}", self.endpoint));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ApiError> {
        let body = self.send_for_body(request).await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::BadReply {
            endpoint: self.endpoint.clone(),
            detail: e.to_string(),
        })
    }

    /// Sends a request whose success has no body to read (204).
    async fn send_expecting_no_content(&self, request: RequestBuilder) -> Result<(), ApiError> {
        self.send_for_body(request).await.map(drop)
    }

    /// The body of a successful reply; a refusal as the server told it.
    async fn send_for_body(&self, request: RequestBuilder) -> Result<Bytes, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| self.unreachable(source))?;
        if status.is_success() {
            return Ok(body);
        }
        let (error, message) = match serde_json::from_slice::<ErrorResponse>(&body) {
            Ok(e) => (e.error, e.message),
            Err(_) => (
                status.canonical_reason().unwrap_or("Error").to_owned(),
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        Err(ApiError::Refused {
            endpoint: self.endpoint.clone(),
            status,
            error,
            message,
        })
    }

    fn unreachable(&self, source: reqwest::Error) -> ApiError {
        ApiError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// `GET whoami`: whether the server takes our token (a bad one is a
    /// 401 with the server's reason).
    pub async fn whoami(&self) -> Result<WhoamiResponse, ApiError> {
        self.send(self.request(Method::GET, "whoami").timeout(CHECK_TIMEOUT))
            .await
    }

    /// `POST oidc/exchange`: an ID token for a token of the server's,
    /// sent without any token of ours.
    pub async fn exchange_id_token(
        &self,
        id_token: &str,
    ) -> Result<OidcExchangeResponse, ApiError> {
        let request = self
            .http
            .post(format!("{}_api/v1/oidc/exchange", self.endpoint))
            .json(&OidcExchangeRequest {
                token: id_token.to_owned(),
            })
            .timeout(CHECK_TIMEOUT);
        self.send(request).await
    }

    /// Whether the endpoint is itself a binary cache: its `nix-cache-info`
    /// answers as Nix expects. Any failure counts as no.
    pub async fn is_binary_cache(&self) -> bool {
        let mut request = self
            .http
            .get(format!("{}nix-cache-info", self.endpoint))
            .timeout(CHECK_TIMEOUT);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let Ok(response) = request.send().await else {
            return false;
        };
        if !response.status().is_success() {
            return false;
        }
        response
            .text()
            .await
            .is_ok_and(|text| text.lines().any(|l| l.starts_with("StoreDir:")))
    }

    /// `GET cache-config/{cache}`.
    pub async fn get_cache_config(&self, cache: &CacheName) -> Result<CacheConfig, ApiError> {
        self.send(self.request(Method::GET, &format!("cache-config/{cache}")))
            .await
    }

    /// `POST cache-config/{cache}`.
    pub async fn create_cache(
        &self,
        cache: &CacheName,
        request: &CreateCacheRequest,
    ) -> Result<(), ApiError> {
        self.send::<serde_json::Value>(
            self.request(Method::POST, &format!("cache-config/{cache}"))
                .json(request),
        )
        .await
        .map(drop)
    }

    /// `PATCH cache-config/{cache}`.
    pub async fn configure_cache(
        &self,
        cache: &CacheName,
        patch: &CacheConfig,
    ) -> Result<(), ApiError> {
        self.send::<serde_json::Value>(
            self.request(Method::PATCH, &format!("cache-config/{cache}"))
                .json(patch),
        )
        .await
        .map(drop)
    }

    /// `DELETE cache-config/{cache}`.
    pub async fn destroy_cache(&self, cache: &CacheName) -> Result<(), ApiError> {
        self.send::<serde_json::Value>(
            self.request(Method::DELETE, &format!("cache-config/{cache}")),
        )
        .await
        .map(drop)
    }

    /// `GET caches`: the caches our token may see.
    pub async fn list_caches(&self) -> Result<ListCachesResponse, ApiError> {
        self.send(self.request(Method::GET, "caches")).await
    }

    /// `DELETE /{cache}/{hash}.narinfo`: removes a path from a cache; a
    /// refusal named `NoSuchObject` means the cache does not hold it.
    pub async fn delete_path(
        &self,
        cache: &CacheName,
        hash: &StorePathHash,
    ) -> Result<(), ApiError> {
        let mut request = self
            .http
            .delete(format!("{}{cache}/{hash}.narinfo", self.endpoint));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.send_expecting_no_content(request).await
    }

    /// `GET pins/{cache}`.
    pub async fn list_pins(&self, cache: &CacheName) -> Result<ListPinsResponse, ApiError> {
        self.send(self.request(Method::GET, &format!("pins/{cache}")))
            .await
    }

    /// `PUT pins/{cache}/{name}`.
    pub async fn pin_path(
        &self,
        cache: &CacheName,
        name: &PinName,
        request: &PinPathRequest,
    ) -> Result<PinInfo, ApiError> {
        self.send(
            self.request(Method::PUT, &format!("pins/{cache}/{name}"))
                .json(request),
        )
        .await
    }

    /// `DELETE pins/{cache}/{name}`.
    pub async fn remove_pin(&self, cache: &CacheName, name: &PinName) -> Result<(), ApiError> {
        self.send_expecting_no_content(
            self.request(Method::DELETE, &format!("pins/{cache}/{name}")),
        )
        .await
    }

    /// `GET cache-log/{cache}`: one page of the cache's audit log.
    pub async fn cache_log(
        &self,
        cache: &CacheName,
        query: &CacheLogQuery,
    ) -> Result<CacheLogPage, ApiError> {
        // Numbers only, so no encoding is needed.
        let params: Vec<String> = [
            ("since", query.since),
            ("after", query.after),
            ("limit", query.limit.and_then(|l| i64::try_from(l).ok())),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
        .collect();
        let mut path = format!("cache-log/{cache}");
        if !params.is_empty() {
            path = format!("{path}?{}", params.join("&"));
        }
        self.send(self.request(Method::GET, &path)).await
    }

    /// `POST get-missing-paths`.
    pub async fn get_missing_paths(
        &self,
        cache: &CacheName,
        hashes: Vec<StorePathHash>,
    ) -> Result<Vec<StorePathHash>, ApiError> {
        let request = GetMissingPathsRequest {
            cache: cache.clone(),
            store_path_hashes: hashes,
        };
        let response: GetMissingPathsResponse = self
            .send(
                self.request(Method::POST, "get-missing-paths")
                    .json(&request),
            )
            .await?;
        Ok(response.missing_paths)
    }

    /// `PUT upload-path`, the NAR streamed from `nar`. Metadata too large
    /// for a header travels as a preamble before the NAR.
    pub async fn upload_path<S>(
        &self,
        info: &UploadPathNarInfo,
        nar: S,
        compression: &Arc<CompressionChoice>,
        sent: Arc<AtomicU64>,
    ) -> Result<UploadPathResult, ApiError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let json = serde_json::to_string(info).expect("upload metadata serialises");
        let mut request = self
            .request(Method::PUT, "upload-path")
            .header("Content-Type", "application/x-nix-nar");
        let body: futures::stream::BoxStream<'static, std::io::Result<Bytes>> =
            if json.len() <= MAX_HEADER_NAR_INFO {
                request = request.header(NAR_INFO_HEADER, json);
                Box::pin(nar)
            } else {
                request = request.header(NAR_INFO_PREAMBLE_SIZE_HEADER, json.len().to_string());
                let preamble = futures::stream::once(futures::future::ready(Ok(Bytes::from(json))));
                Box::pin(preamble.chain(nar))
            };
        // The whole body is compressed, preamble included.
        let body: futures::stream::BoxStream<'static, std::io::Result<Bytes>> =
            if compression.compress() {
                request = request.header("Content-Encoding", "zstd");
                let encoder = async_compression::tokio::bufread::ZstdEncoder::with_quality(
                    tokio_util::io::StreamReader::new(body),
                    async_compression::Level::Precise(UPLOAD_ZSTD_LEVEL),
                );
                let compressed = tokio_util::io::ReaderStream::new(encoder);
                if compression.probing() {
                    Box::pin(Metered::new(compressed, compression.clone(), info.nar_size))
                } else {
                    Box::pin(compressed)
                }
            } else {
                body
            };
        let body = body.map(move |piece| {
            if let Ok(piece) = &piece {
                sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
            piece
        });
        let request = request.body(Body::wrap_stream(body));
        self.send(request).await
    }
}
