//! Blobs in an S3-compatible bucket: AWS, MinIO, Garage, Ceph, R2.
//!
//! A pack of unknown length is streamed up as one multipart upload, parts
//! buffered one at a time, and aborted on any failure so that nothing
//! half-written ever becomes visible; a pack that fits in the first part
//! is one `PutObject`. Reads are ranged GETs. The SDK retries throttling,
//! 5xx and connection errors with exponential backoff and jitter.
//!
//! `multipart` holds the upload of a pack in parts; `error` says which
//! S3 failures are a missing blob, an outage, or a refusal.

mod error;
mod multipart;

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
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;

use self::error::{failure, status_of, unavailable};
use self::multipart::{FIRST_PART_SIZE, fill};
use super::{BlobInfo, ByteStream, StorageBackend, StorageError, StorageKey};
use crate::config::{S3Checksums, S3StorageConfig};
use crate::stall;

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
        let prefix = match config.key_prefix() {
            "" => String::new(),
            prefix => format!("{prefix}/"),
        };
        Self {
            client: client(config).await,
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

    /// The object key of a blob.
    fn object_key(&self, key: &StorageKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }
}

/// An S3 client as `config` describes it (region, credentials, endpoint,
/// path style, checksums, retries, timeouts). Makes no request. Shared by
/// [`S3Storage`] and `atticadm import-attic`, which reads Attic's bucket.
pub(crate) async fn client(config: &S3StorageConfig) -> Client {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(config.region.clone()));
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
    Client::from_conf(builder.build())
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

/// The SDK's timeouts: `connect` per connection attempt, `read` from the
/// start of sending a request to the head of its answer.
fn timeouts(connect: Duration, read: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(connect)
        .read_timeout(read)
        .build()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;

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
