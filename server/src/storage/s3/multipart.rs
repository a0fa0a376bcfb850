//! A pack of unknown length streamed up as one S3 multipart upload: parts
//! that grow so that S3's 10,000 hold terabytes, a read timeout that grows
//! with each part, and the abort that keeps a failed upload from costing
//! storage or ever becoming visible.

use std::io;
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::error::{failure, unavailable};
use super::{S3Storage, timeouts};
use crate::storage::{ByteStream, StorageError, StorageKey};

/// Bytes buffered before the first part is sent, and so the largest blob
/// stored with a single `PutObject`. S3 wants parts of at least 5 MiB.
pub(super) const FIRST_PART_SIZE: usize = 8 << 20;

/// How large part `number` (from 1) is at least: 8 MiB, doubling every
/// 1,000 parts up to 512 MiB, so that S3's limit of 10,000 parts is met up
/// to about 2.4 TiB while memory stays at 8 MiB for blobs under 7.8 GiB.
fn part_size(number: i32) -> usize {
    FIRST_PART_SIZE << ((number - 1) / 1000).clamp(0, 6)
}

/// S3 allows this many parts in one upload.
const MAX_PARTS: i32 = 10_000;

impl S3Storage {
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
    /// Streams the parts of an open multipart upload, the first already
    /// buffered, and completes it; returns the bytes written.
    pub(super) async fn upload_parts(
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
    pub(super) async fn abort(&self, key: &StorageKey, object: String, upload_id: String) {
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

/// Reads from `data` until at least `limit` bytes are buffered or it ends;
/// returns them and whether it ended.
pub(super) async fn fill(data: &mut ByteStream, limit: usize) -> io::Result<(Bytes, bool)> {
    let mut buffer = BytesMut::new();
    while buffer.len() < limit {
        match data.next().await {
            Some(piece) => buffer.extend_from_slice(&piece?),
            None => return Ok((buffer.freeze(), true)),
        }
    }
    Ok((buffer.freeze(), false))
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
    use super::*;
    use crate::config::S3StorageConfig;

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
}
