//! Blobs in an S3-compatible bucket: AWS, MinIO, Garage, Ceph, R2.
//!
//! A pack of unknown length is streamed up as one multipart upload, parts
//! buffered one at a time, and aborted on any failure so that nothing
//! half-written ever becomes visible; a pack that fits in the first part
//! is one `PutObject`. Reads are ranged GETs. The SDK retries throttling,
//! 5xx and connection errors with exponential backoff and jitter.

use std::error::Error as StdError;
use std::io;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{BlobInfo, ByteStream, StorageBackend, StorageError, StorageKey};
use crate::config::{S3Checksums, S3StorageConfig};
use crate::stall;

/// Bytes buffered before the first part is sent, and so the largest blob
/// stored with a single `PutObject`. S3 wants parts of at least 5 MiB.
const FIRST_PART_SIZE: usize = 8 << 20;

/// How large part `number` (from 1) is at least: 8 MiB, doubling every
/// 1,000 parts up to 512 MiB, so that S3's limit of 10,000 parts is met up
/// to about 2.4 TiB while memory stays at 8 MiB for blobs under 7.8 GiB.
fn part_size(number: i32) -> usize {
    FIRST_PART_SIZE << ((number - 1) / 1000).clamp(0, 6)
}

/// S3 allows this many parts in one upload.
const MAX_PARTS: i32 = 10_000;

/// Blobs in one bucket, under an optional key prefix.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
    /// Keys per `ListObjectsV2` page; S3's default (1,000) when unset.
    list_page_size: Option<i32>,
    /// How long connecting may take.
    connect_timeout: Duration,
    /// How long a request may wait for its answer, and a download for its
    /// next bytes.
    read_timeout: Duration,
}

impl S3Storage {
    /// A client for the configured bucket. Makes no request: a wrong
    /// bucket or credentials show on first use.
    pub async fn open(config: &S3StorageConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let Some(credentials) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                credentials.access_key_id.clone(),
                credentials.secret_access_key.clone(),
                None,
                None,
                "atticd-config",
            ));
        }
        let shared = loader.load().await;
        let (request_checksums, response_checksums) = match config.checksum_mode() {
            S3Checksums::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
            S3Checksums::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
        };
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style())
            .request_checksum_calculation(request_checksums)
            .response_checksum_validation(response_checksums)
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
            .timeout_config(timeouts(config.connect_timeout, config.read_timeout));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = match config.key_prefix() {
            "" => String::new(),
            prefix => format!("{prefix}/"),
        };
        Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix,
            list_page_size: None,
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
        }
    }

    /// Asks for at most `keys` keys per listing page, for servers that
    /// allow fewer than S3's 1,000 (and for tests of paging).
    pub fn with_list_page_size(mut self, keys: i32) -> Self {
        self.list_page_size = Some(keys);
        self
    }

    /// The timeouts of uploading a part of `size` bytes. The SDK's read
    /// timeout runs from the start of sending, so it grows with the part:
    /// whatever the part size, sending it may go as slowly as the first
    /// part (8 MiB) may in `read-timeout`.
    fn part_timeouts(&self, size: usize) -> TimeoutConfig {
        let scale = u32::try_from(size.div_ceil(FIRST_PART_SIZE))
            .unwrap_or(u32::MAX)
            .max(1);
        timeouts(
            self.connect_timeout,
            self.read_timeout.saturating_mul(scale),
        )
    }

    /// The object key of a blob.
    fn object_key(&self, key: &StorageKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// Streams the parts of an open multipart upload, the first already
    /// buffered, and completes it; returns the bytes written.
    async fn upload_parts(
        &self,
        key: &StorageKey,
        object: &str,
        upload_id: &str,
        first: Bytes,
        data: &mut ByteStream,
    ) -> Result<u64, StorageError> {
        let mut parts = Vec::new();
        let mut size = 0u64;
        let mut part = first;
        let mut number = 1;
        loop {
            size += part.len() as u64;
            // Send this part while buffering the next from the upload.
            let upload = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(part.len() as i64)
                .body(S3Body::from(part))
                .customize()
                .config_override(
                    aws_sdk_s3::config::Builder::default()
                        .timeout_config(self.part_timeouts(part_size(number))),
                )
                .send();
            let upload = async { upload.await.map_err(|e| failure("UploadPart", key, e)) };
            let next = async {
                fill(data, part_size(number + 1))
                    .await
                    .map_err(|source| StorageError::Io {
                        key: key.clone(),
                        source,
                    })
            };
            let (uploaded, (next, ended)) = tokio::try_join!(upload, next)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag)
                    .set_checksum_crc32(uploaded.checksum_crc32)
                    .set_checksum_crc32_c(uploaded.checksum_crc32_c)
                    .set_checksum_crc64_nvme(uploaded.checksum_crc64_nvme)
                    .set_checksum_sha1(uploaded.checksum_sha1)
                    .set_checksum_sha256(uploaded.checksum_sha256)
                    .build(),
            );
            if next.is_empty() && ended {
                break;
            }
            number += 1;
            if number > MAX_PARTS {
                return Err(StorageError::Io {
                    key: key.clone(),
                    source: io::Error::other("the blob is too large for one S3 multipart upload"),
                });
            }
            part = next;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| failure("CompleteMultipartUpload", key, e))?;
        Ok(size)
    }

    /// Aborts a multipart upload, so that its parts stop costing storage
    /// and nothing of it can ever appear. When S3 cannot be reached, keeps
    /// trying in the background for an hour; a bucket lifecycle rule
    /// (`AbortIncompleteMultipartUpload`) catches what outlives that or a
    /// crash.
    async fn abort(&self, key: &StorageKey, object: String, upload_id: String) {
        let attempt = |storage: Self, object: String, upload_id: String| async move {
            storage
                .client
                .abort_multipart_upload()
                .bucket(&storage.bucket)
                .key(object)
                .upload_id(upload_id)
                .send()
                .await
        };
        let Err(error) = attempt(self.clone(), object.clone(), upload_id.clone()).await else {
            return;
        };
        tracing::warn!(
            %key, error = %aws_sdk_s3::error::DisplayErrorContext(&error),
            "cannot abort a failed multipart upload yet; retrying in the background"
        );
        let storage = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_secs(1);
            while started.elapsed() < Duration::from_secs(3600) {
                tokio::time::sleep(jitter(delay)).await;
                match attempt(storage.clone(), object.clone(), upload_id.clone()).await {
                    Ok(_) => {
                        tracing::info!(%key, "aborted the failed multipart upload");
                        return;
                    }
                    Err(e) if unavailable(&e) => delay = (delay * 2).min(Duration::from_secs(10)),
                    // Refused (gone already, say): retrying will not help.
                    Err(e) => {
                        tracing::warn!(
                            %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                            "S3 refused to abort a failed multipart upload"
                        );
                        return;
                    }
                }
            }
            tracing::error!(
                %key, %upload_id,
                "gave up aborting a failed multipart upload; a lifecycle rule must remove it"
            );
        });
    }
}

#[async_trait]
impl StorageBackend for S3Storage {
    async fn put(&self, key: &StorageKey, mut data: ByteStream) -> Result<u64, StorageError> {
        let object = self.object_key(key);
        let (first, ended) =
            fill(&mut data, FIRST_PART_SIZE)
                .await
                .map_err(|source| StorageError::Io {
                    key: key.clone(),
                    source,
                })?;
        if ended {
            let size = first.len() as u64;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .content_length(first.len() as i64)
                .body(S3Body::from(first))
                .send()
                .await
                .map_err(|e| failure("PutObject", key, e))?;
            return Ok(size);
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| failure("CreateMultipartUpload", key, e))?;
        let upload_id = created.upload_id.ok_or_else(|| StorageError::Io {
            key: key.clone(),
            source: io::Error::other("CreateMultipartUpload returned no upload id"),
        })?;
        let written = self
            .upload_parts(key, &object, &upload_id, first, &mut data)
            .await;
        if written.is_err() {
            self.abort(key, object, upload_id).await;
        }
        written
    }

    async fn get(&self, key: &StorageKey, range: Range<u64>) -> Result<ByteStream, StorageError> {
        // An empty range still says whether the blob exists.
        let header = if range.start >= range.end {
            Some("bytes=0-0".to_owned())
        } else if range.start == 0 && range.end == u64::MAX {
            None
        } else if range.end == u64::MAX {
            Some(format!("bytes={}-", range.start))
        } else {
            Some(format!("bytes={}-{}", range.start, range.end - 1))
        };
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .set_range(header)
            .send()
            .await;
        let body = match response {
            Ok(output) if range.start < range.end => output.body,
            Ok(_) => return Ok(Box::pin(futures::stream::empty())),
            // A range starting past the end: the blob has no bytes there.
            Err(e) if status_of(&e) == Some(416) => {
                return Ok(Box::pin(futures::stream::empty()));
            }
            Err(e) => return Err(failure("GetObject", key, e)),
        };
        let pieces = futures::stream::unfold(body, |mut body| async {
            let piece = body.next().await?;
            Some((piece.map_err(io::Error::other), body))
        });
        // The SDK's read timeout ends with the response's head; a body
        // that stalls after it would hold the NAR response for ever.
        Ok(Box::pin(stall::with_progress_timeout(
            Box::pin(pieces),
            self.read_timeout,
        )))
    }

    async fn delete(&self, key: &StorageKey) -> Result<(), StorageError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match failure("DeleteObject", key, e) {
                StorageError::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .set_max_keys(self.list_page_size)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| match unavailable(&e) {
                true => StorageError::Unavailable {
                    operation: format!("ListObjectsV2 {prefix}"),
                    source: Box::new(e),
                },
                false => StorageError::Listing {
                    source: io::Error::other(e),
                },
            })?;
            for object in page.contents.unwrap_or_default() {
                // Keys that are not ours (another tool's, under our prefix)
                // are not blobs this server could have written.
                let Some(key) = object
                    .key
                    .as_deref()
                    .and_then(|k| k.strip_prefix(&self.prefix))
                    .and_then(|k| StorageKey::new(k).ok())
                else {
                    continue;
                };
                found.push(BlobInfo {
                    key,
                    size: object.size.unwrap_or(0).max(0) as u64,
                    modified: object
                        .last_modified
                        .and_then(|t| SystemTime::try_from(t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(found)
    }

    async fn presign(
        &self,
        key: &StorageKey,
        expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        let config = PresigningConfig::expires_in(expiry).map_err(|e| StorageError::Io {
            key: key.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .presigned(config)
            .await
            .map_err(|e| failure("presign GetObject", key, e))?;
        Ok(Some(request.uri().to_owned()))
    }
}

/// Reads from `data` until at least `limit` bytes are buffered or it ends;
/// returns them and whether it ended.
async fn fill(data: &mut ByteStream, limit: usize) -> io::Result<(Bytes, bool)> {
    let mut buffer = BytesMut::new();
    while buffer.len() < limit {
        match data.next().await {
            Some(piece) => buffer.extend_from_slice(&piece?),
            None => return Ok((buffer.freeze(), true)),
        }
    }
    Ok((buffer.freeze(), false))
}

/// The HTTP status of a response S3 sent, if it sent one.
fn status_of<E, R>(error: &SdkError<E, R>) -> Option<u16>
where
    R: HasStatus,
{
    error.raw_response().map(HasStatus::status_code)
}

/// The raw responses the SDK hands back with an error.
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Whether an error is S3 being unreachable, overloaded or failing (after
/// the SDK's retries), rather than a request it refuses.
fn unavailable<E, R: HasStatus>(error: &SdkError<E, R>) -> bool {
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
fn failure<E>(
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

/// The SDK's timeouts: `connect` per connection attempt, `read` from the
/// start of sending a request to the head of its answer.
fn timeouts(connect: Duration, read: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(connect)
        .read_timeout(read)
        .build()
}

/// `delay` scaled by a random factor in [0.5, 1), so that servers that
/// failed together do not retry together.
fn jitter(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    getrandom::fill(&mut byte).expect("the OS random source works");
    delay.mul_f64(0.5 + f64::from(byte[0]) / 512.0)
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

    #[test]
    fn parts_grow_so_that_ten_thousand_hold_terabytes() {
        assert_eq!(part_size(1), 8 << 20);
        assert_eq!(part_size(1000), 8 << 20);
        assert_eq!(part_size(1001), 16 << 20);
        assert_eq!(part_size(MAX_PARTS), 512 << 20);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(n) as u64).sum();
        assert!(total > 2 << 40, "{total}");
    }

    #[tokio::test]
    async fn a_larger_part_gets_a_proportionally_longer_read_timeout() {
        let config: S3StorageConfig = toml::from_str(
            "region = \"r\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:1\"\n\
             read-timeout = \"10s\"\n",
        )
        .expect("config");
        let storage = S3Storage::open(&config).await;
        let read = |size| storage.part_timeouts(size).read_timeout();
        assert_eq!(read(part_size(1)), Some(Duration::from_secs(10)));
        assert_eq!(read(1), Some(Duration::from_secs(10)));
        assert_eq!(read(part_size(1001)), Some(Duration::from_secs(20)));
        assert_eq!(read(part_size(MAX_PARTS)), Some(Duration::from_secs(640)));
        assert_eq!(
            storage.part_timeouts(part_size(1)).connect_timeout(),
            Some(config.connect_timeout)
        );
    }

    /// A storage on a fake S3 server at 127.0.0.1 that answers each
    /// request's head with `reply` (nothing when empty) and then holds the
    /// connection open, sending nothing more.
    async fn storage_on_a_server_that_stalls(reply: &'static [u8]) -> S3Storage {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    if !reply.is_empty() && socket.write_all(reply).await.is_err() {
                        return;
                    }
                    std::future::pending::<()>().await;
                });
            }
        });
        let config: S3StorageConfig = toml::from_str(&format!(
            "region = \"us-east-1\"\nbucket = \"b\"\nendpoint = \"http://{address}\"\n\
             max-attempts = 2\nconnect-timeout = \"1s\"\nread-timeout = \"300ms\"\n\
             [credentials]\naccess-key-id = \"a\"\nsecret-access-key = \"s\"\n"
        ))
        .expect("config");
        S3Storage::open(&config).await
    }

    /// Fails the test rather than hang it, should a timeout not work.
    async fn guarded<F: std::future::Future>(what: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), what)
            .await
            .expect("the read timeout ended the request")
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_unavailable_after_the_read_timeout() {
        let storage = storage_on_a_server_that_stalls(b"").await;
        let key = StorageKey::new("packs/00/a").expect("key");
        let error = guarded(storage.get(&key, 0..10))
            .await
            .err()
            .expect("no answer is an error");
        assert!(
            matches!(error, StorageError::Unavailable { .. }),
            "{error:?}"
        );
        let error = guarded(storage.put(
            &key,
            Box::pin(futures::stream::iter([Ok(Bytes::from_static(b"pack"))])),
        ))
        .await
        .expect_err("no answer is an error");
        assert!(
            matches!(error, StorageError::Unavailable { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_download_that_stalls_mid_body_fails_with_timed_out() {
        let storage = storage_on_a_server_that_stalls(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\
              Content-Range: bytes 0-99/100\r\n\r\n0123456789",
        )
        .await;
        let key = StorageKey::new("packs/00/a").expect("key");
        let mut body = guarded(storage.get(&key, 0..100))
            .await
            .expect("the head arrived");
        let first = guarded(body.next()).await.expect("a piece").expect("bytes");
        assert_eq!(&first[..], b"0123456789");
        let error = guarded(body.next())
            .await
            .expect("an error")
            .expect_err("the body stalled");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(body.next().await.is_none());
    }
}
