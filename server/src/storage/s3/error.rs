//! How an S3 SDK error becomes a [`StorageError`]: a missing key is
//! `NotFound`, S3 unreachable, overloaded or failing is `Unavailable`, and
//! anything else (a refusal) is `Io`, the SDK's error kept as the source.

use std::error::Error as StdError;
use std::io;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::storage::{StorageError, StorageKey};

/// The HTTP status of a response S3 sent, if it sent one.
pub(super) fn status_of<E, R>(error: &SdkError<E, R>) -> Option<u16>
where
    R: HasStatus,
{
    error.raw_response().map(HasStatus::status_code)
}

/// The raw responses the SDK hands back with an error.
pub(super) trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Whether an error is S3 being unreachable, overloaded or failing (after
/// the SDK's retries), rather than a request it refuses.
pub(super) fn unavailable<E, R: HasStatus>(error: &SdkError<E, R>) -> bool {
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => {
            status_of(error).is_some_and(|status| status == 429 || status >= 500)
        }
        _ => false,
    }
}

/// An S3 error as a [`StorageError`], its source kept. A missing key is
/// `NotFound`; a missing bucket is not, lest every blob look lost.
pub(super) fn failure<E>(
    operation: &str,
    key: &StorageKey,
    error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let missing_key = match &error {
        SdkError::ServiceError(service) => {
            service.err().code() == Some("NoSuchKey")
                || (service.err().code().is_none() && status_of(&error) == Some(404))
        }
        _ => false,
    };
    if missing_key {
        StorageError::NotFound(key.clone())
    } else if unavailable(&error) {
        StorageError::Unavailable {
            operation: format!("{operation} {key}"),
            source: Box::new(error),
        }
    } else {
        StorageError::Io {
            key: key.clone(),
            source: io::Error::other(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    fn s3_says(status: u16, code: Option<&str>) -> StorageError {
        let mut metadata = ErrorMetadata::builder();
        if let Some(code) = code {
            metadata = metadata.code(code);
        }
        let response =
            HttpResponse::new(status.try_into().expect("a status code"), SdkBody::empty());
        let error = SdkError::service_error(GetObjectError::generic(metadata.build()), response);
        failure(
            "GetObject",
            &StorageKey::new("packs/00/a").expect("key"),
            error,
        )
    }

    #[test]
    fn only_a_missing_key_is_not_found() {
        assert!(matches!(
            s3_says(404, Some("NoSuchKey")),
            StorageError::NotFound(_)
        ));
        // A HEAD's 404 has no body to name the code.
        assert!(matches!(s3_says(404, None), StorageError::NotFound(_)));
        // Were a missing bucket NotFound, every pack would be marked damaged.
        assert!(matches!(
            s3_says(404, Some("NoSuchBucket")),
            StorageError::Io { .. }
        ));
        assert!(matches!(
            s3_says(403, Some("AccessDenied")),
            StorageError::Io { .. }
        ));
    }

    #[test]
    fn throttling_and_server_errors_are_unavailable() {
        for (status, code) in [
            (503, "SlowDown"),
            (500, "InternalError"),
            (429, "TooManyRequests"),
        ] {
            let error = s3_says(status, Some(code));
            assert!(
                matches!(error, StorageError::Unavailable { .. }),
                "{status}: {error:?}"
            );
            let source = std::error::Error::source(&error).expect("keeps its source");
            assert!(
                format!("{}", aws_sdk_s3::error::DisplayErrorContext(source)).contains(code),
                "{source:?}"
            );
        }
    }
}
