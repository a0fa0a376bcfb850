//! The server's one error type, mapped to HTTP in exactly one place.
//!
//! Every reply body is `{"code", "error", "message"}`. Server-side failures
//! (database, storage) answer a generic 500 and are logged with their cause;
//! nothing internal (paths, SQL, OS errors) reaches a client.

use attic::api::ErrorResponse;
use attic::nar::NarError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use thiserror::Error;

use crate::database::DatabaseError;
use crate::storage::StorageError;

/// Everything a request can fail with.
#[derive(Debug, Error)]
pub enum ServerError {
    /// No credentials where they are needed.
    #[error("this requires a token: send `Authorization: Bearer <token>`")]
    Unauthenticated,
    /// Credentials that do not verify, have expired or were revoked.
    #[error("the token is invalid: {0}")]
    InvalidToken(&'static str),
    /// An OIDC ID token that does not verify, of an issuer not configured,
    /// or whose subject is revoked. The client is told no more than that;
    /// the log has the reason.
    #[error("the ID token was refused; the server's log says why")]
    IdTokenRefused(#[source] Box<crate::oidc::OidcRefusal>),
    /// A verified ID token that no rule of its issuer grants anything to.
    #[error("no rule of this server grants anything to this ID token")]
    NoMatchingOidcRule {
        /// The subject it would have had, for the log.
        subject: String,
    },
    /// The ID token's issuer's keys could not be fetched.
    #[error("the ID token's issuer could not be reached for its keys; try again shortly")]
    OidcIssuerUnavailable(#[source] crate::oidc::keys::KeyFetchError),
    /// Signing a minted token failed.
    #[error("minting a token failed")]
    TokenMinting(#[source] attic_token::TokenError),
    /// A valid token that lacks the permission.
    #[error("the token does not grant {permission} on this cache")]
    Forbidden {
        /// The permission that was missing.
        permission: attic_token::Permission,
    },
    /// No live cache of that name.
    #[error("no cache named {0:?}")]
    NoSuchCache(String),
    /// The cache exists but lacks the path or file.
    #[error("not found in this cache")]
    NoSuchObject,
    /// An unknown route.
    #[error("no such route")]
    NoSuchRoute,
    /// The cache, which the caller may see, has no pin of that name.
    #[error("this cache has no pin named {0:?}")]
    NoSuchPin(String),
    /// A push to a cache whose pinned closures alone take more than its
    /// quota: evicting pinned paths is not allowed, so nothing more fits.
    #[error(
        "this cache's pins alone take {pinned} bytes, more than its quota of {quota} bytes, so          it takes no more pushes: remove a pin (attic pin remove) or raise the quota"
    )]
    PinsExceedQuota {
        /// Stored bytes of the pinned closures.
        pinned: u64,
        /// The cache's quota.
        quota: u64,
    },
    /// Creating a cache whose name is taken.
    #[error("a cache named {0:?} already exists")]
    CacheExists(String),
    /// Creating a cache whose name a destroyed cache keeps reserved
    /// (`soft-delete-caches`).
    #[error(
        "the name {0:?} belonged to a destroyed cache and stays reserved on this server; choose another"
    )]
    CacheNameReserved(String),
    /// Input that is not what the route takes.
    #[error("{message}")]
    BadRequest {
        /// Stable name of the problem.
        error: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The uploaded NAR is malformed.
    #[error("the NAR is malformed: {0}")]
    MalformedNar(#[source] NarError),
    /// The uploaded NAR does not match its declared hash or size.
    #[error("the NAR does not match its metadata: {0}")]
    NarMismatch(String),
    /// A body over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// A body in an encoding the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The client stopped sending before the body ended.
    #[error("the upload was interrupted")]
    UploadInterrupted(#[source] std::io::Error),
    /// The client sent nothing for `http.body-timeout`.
    #[error("the upload stalled: {0}")]
    UploadStalled(#[source] std::io::Error),
    /// The path's stored data was found damaged: it is no longer served
    /// and the next push of it repairs it.
    #[error("this path's stored data is damaged; push it again to repair it")]
    NarDamaged,
    /// A `Range` that starts past the end of a body of `length` bytes.
    #[error("the range starts past the end of the {length} bytes there are")]
    RangeNotSatisfiable {
        /// The body's length, for `Content-Range: bytes */length`.
        length: u64,
    },
    /// Storage could not be read or written just now (not damage, not full).
    #[error("storage is unavailable; try again later")]
    StorageUnavailable(#[source] Option<StorageError>),
    /// The database does not answer (health check).
    #[error("the database does not answer")]
    Unhealthy,
    /// A request on a connection past `http.max-connections`, which
    /// answers only `/_health` and `/metrics`.
    #[error("the server is serving as many connections as it can; try again shortly")]
    Overloaded,
    /// A client behind a trusted proxy has
    /// `http.max-connections-per-address` requests in flight already.
    #[error("too many requests in flight from your address; try again when some have finished")]
    TooManyRequests,
    /// A key rotation kept losing to other key changes on the same cache.
    #[error("the cache's key kept changing while rotating it; look at the cache and try again")]
    KeyChangedMeanwhile,
    /// A chunk an upload reuses stopped being stored while it ran.
    #[error("a chunk this upload reuses was just found damaged or reclaimed; retry the upload")]
    RetryUpload,
    /// The disk (or the database's) is full: nothing was stored.
    #[error(
        "the server's storage is full, so nothing was stored; ask its administrator to free space"
    )]
    StorageFull(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An upload that waits for `100 Continue` was not asked for its body
    /// in time (see [`crate::expect_continue`]): nothing was sent or changed.
    #[error(
        "the server could not take this upload within {}: its database is slow or unreachable; \
         nothing was changed, try again shortly",
        humantime::format_duration(*.0)
    )]
    NotReadyForBody(std::time::Duration),
    /// The database is out of connections, unreachable, or gave up a
    /// transaction to a conflicting one: nothing was changed, and the
    /// same request will likely succeed shortly.
    #[error("the server's database is busy or unreachable; nothing was changed, try again shortly")]
    DatabaseUnavailable(#[source] DatabaseError),
    /// The database failed, or holds a row this server cannot read.
    #[error("database error")]
    Database(#[source] DatabaseError),
    /// Blob storage failed.
    #[error("storage error")]
    Storage(#[source] StorageError),
    /// Cutting a NAR into chunks failed for a reason other than its body.
    #[error("chunking failed")]
    Chunking(#[source] attic::chunking::ChunkingError),
    /// zstd failed to compress a chunk or to decompress a stored log.
    #[error("compression failed")]
    Compression(#[source] std::io::Error),
    /// Work handed to a blocking thread panicked or was cancelled.
    #[error("a background task failed")]
    TaskFailed(#[source] tokio::task::JoinError),
    /// The operating system gave no randomness for a new signing key.
    #[error("generating a signing key failed")]
    KeyGeneration(#[source] attic::signing::SigningError),
    /// A build log row names a blob by a key storage cannot hold.
    #[error("a build log row names an invalid storage key")]
    BadLogKey(#[source] crate::storage::BadStorageKey),
    /// The metrics could not be written out.
    #[error("encoding the metrics failed")]
    MetricsEncoding(#[source] std::fmt::Error),
}

impl ServerError {
    /// Shorthand for a 400 with a stable name.
    pub fn bad_request(error: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            error,
            message: message.into(),
        }
    }

    fn status_and_name(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "InvalidToken"),
            Self::Forbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            Self::IdTokenRefused(_) => (StatusCode::UNAUTHORIZED, "InvalidIdToken"),
            Self::NoMatchingOidcRule { .. } => (StatusCode::FORBIDDEN, "NoMatchingRule"),
            Self::OidcIssuerUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "OidcIssuerUnavailable")
            }
            Self::NoSuchCache(_) => (StatusCode::NOT_FOUND, "NoSuchCache"),
            Self::NoSuchObject => (StatusCode::NOT_FOUND, "NoSuchObject"),
            Self::NoSuchRoute => (StatusCode::NOT_FOUND, "NoSuchRoute"),
            Self::NoSuchPin(_) => (StatusCode::NOT_FOUND, "NoSuchPin"),
            Self::PinsExceedQuota { .. } => (StatusCode::INSUFFICIENT_STORAGE, "PinsExceedQuota"),
            Self::CacheExists(_) => (StatusCode::CONFLICT, "CacheAlreadyExists"),
            Self::CacheNameReserved(_) => (StatusCode::CONFLICT, "CacheNameReserved"),
            Self::BadRequest { error, .. } => (StatusCode::BAD_REQUEST, error),
            Self::MalformedNar(_) => (StatusCode::BAD_REQUEST, "MalformedNar"),
            Self::NarMismatch(_) => (StatusCode::BAD_REQUEST, "NarMismatch"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "TooLarge"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            Self::UploadInterrupted(_) => (StatusCode::BAD_REQUEST, "UploadInterrupted"),
            Self::UploadStalled(_) => (StatusCode::REQUEST_TIMEOUT, "UploadStalled"),
            Self::NarDamaged => (StatusCode::NOT_FOUND, "NarDamaged"),
            Self::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RangeNotSatisfiable")
            }
            Self::StorageUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "StorageUnavailable"),
            Self::RetryUpload => (StatusCode::SERVICE_UNAVAILABLE, "RetryUpload"),
            Self::KeyChangedMeanwhile => (StatusCode::CONFLICT, "KeyChangedMeanwhile"),
            Self::Unhealthy => (StatusCode::SERVICE_UNAVAILABLE, "Unhealthy"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "Overloaded"),
            Self::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            Self::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "DatabaseUnavailable")
            }
            Self::NotReadyForBody(_) => (StatusCode::SERVICE_UNAVAILABLE, "NotReadyForBody"),
            Self::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage"),
            Self::Database(_)
            | Self::Storage(_)
            | Self::Chunking(_)
            | Self::Compression(_)
            | Self::TaskFailed(_)
            | Self::KeyGeneration(_)
            | Self::TokenMinting(_)
            | Self::BadLogKey(_)
            | Self::MetricsEncoding(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
            }
        }
    }
}

impl From<StorageError> for ServerError {
    fn from(e: StorageError) -> Self {
        let full = match &e {
            StorageError::Io { source, .. } | StorageError::Listing { source } => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            StorageError::NotFound(_) | StorageError::Unavailable { .. } => false,
        };
        if matches!(e, StorageError::Unavailable { .. }) {
            return Self::StorageUnavailable(Some(e));
        }
        if full {
            Self::StorageFull(Box::new(e))
        } else {
            Self::Storage(e)
        }
    }
}

impl From<DatabaseError> for ServerError {
    fn from(e: DatabaseError) -> Self {
        match e {
            DatabaseError::ChunkGone => Self::RetryUpload,
            _ if e.is_full() => Self::StorageFull(Box::new(e)),
            _ if e.is_unavailable() => Self::DatabaseUnavailable(e),
            // A cache name taken is answered where a cache is created.
            DatabaseError::CacheExists
            | DatabaseError::CacheNameReserved
            | DatabaseError::CorruptRow { .. }
            | DatabaseError::Db(_) => Self::Database(e),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, error) = self.status_and_name();
        // These 5xx say what to do and leak nothing.
        let says_why = matches!(
            self,
            Self::StorageFull(_)
                | Self::PinsExceedQuota { .. }
                | Self::StorageUnavailable(_)
                | Self::DatabaseUnavailable(_)
                | Self::NotReadyForBody(_)
                | Self::OidcIssuerUnavailable(_)
        );
        let message = if status.is_server_error() && !says_why {
            "the server failed to handle the request; the error is in its log".to_owned()
        } else {
            self.to_string()
        };
        let body = ErrorResponse {
            code: status.as_u16(),
            error: error.to_owned(),
            message,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if let Self::RangeNotSatisfiable { length } = &self {
            response.headers_mut().insert(
                axum::http::header::CONTENT_RANGE,
                axum::http::HeaderValue::from_str(&format!("bytes */{length}"))
                    .expect("digits make a valid header"),
            );
        }
        // The full error, with its sources, for the logging middleware only.
        response
            .extensions_mut()
            .insert(ErrorDetail(format!("{:#}", anyhow::Error::from(self))));
        response
    }
}

/// `Retry-After` on every 503 and 429: the same request will likely
/// succeed this many seconds later (a database or storage coming back,
/// connections freeing up), and a client that honours it spreads its
/// retries instead of hammering a server that is recovering.
pub const RETRY_AFTER_SECONDS: &str = "5";

/// The full text of an error behind a response, read by
/// [`crate::request_log::log_requests`].
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

/// Results of handlers.
pub type ServerResult<T> = Result<T, ServerError>;

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnAcquireErr, DbErr};

    #[test]
    fn a_pool_timeout_is_a_503_that_says_to_retry() {
        let error = ServerError::from(DatabaseError::from(DbErr::ConnectionAcquire(
            ConnAcquireErr::Timeout,
        )));
        assert!(matches!(error, ServerError::DatabaseUnavailable(_)));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_503_and_429_says_when_to_retry() {
        let unavailable = ServerError::from(DatabaseError::from(DbErr::ConnectionAcquire(
            ConnAcquireErr::Timeout,
        )));
        for error in [
            unavailable,
            ServerError::RetryUpload,
            ServerError::Unhealthy,
        ] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response.headers()[axum::http::header::RETRY_AFTER],
                RETRY_AFTER_SECONDS
            );
        }
        let refused = ServerError::Unauthenticated.into_response();
        assert!(
            !refused
                .headers()
                .contains_key(axum::http::header::RETRY_AFTER)
        );
    }

    #[test]
    fn a_query_error_stays_a_500() {
        let error = ServerError::from(DatabaseError::from(DbErr::Custom("bad row".into())));
        assert_eq!(
            error.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
