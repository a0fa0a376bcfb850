//! Writing one upload's new chunks as one pack, while the upload streams.
//!
//! The blob is opened on the first new chunk (an upload that brings
//! nothing new writes nothing) and fed through a bounded channel, so memory
//! stays at a few frames however large the NAR. It becomes durable, and
//! only then visible to the database, in [`PackWriter::finish`]. An
//! upload that fails or is dropped midway makes the put fail, so no
//! blob appears.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::PackKey;
use crate::storage::{ByteStream, StorageBackend, StorageError};

/// Frames in flight between the upload and the storage write.
const QUEUE: usize = 16;

/// A pack that is durable in storage.
#[derive(Debug, Clone)]
pub struct WrittenPack {
    /// Its key.
    pub key: PackKey,
    /// Its size in bytes.
    pub size: u64,
}

/// A pack being written.
pub struct PackWriter {
    storage: Arc<dyn StorageBackend>,
    open: Option<OpenPack>,
    len: u64,
}

struct OpenPack {
    key: PackKey,
    sender: mpsc::Sender<Bytes>,
    complete: Arc<AtomicBool>,
    put: JoinHandle<Result<u64, StorageError>>,
}

impl PackWriter {
    /// A writer that will create a pack in `storage` if given a frame.
    pub fn new(storage: Arc<dyn StorageBackend>) -> Self {
        Self {
            storage,
            open: None,
            len: 0,
        }
    }

    /// Appends a stored frame; returns its offset in the pack.
    pub async fn append(&mut self, frame: Bytes) -> Result<u64, StorageError> {
        let offset = self.len;
        let frame_len = frame.len() as u64;
        let open = match &mut self.open {
            Some(open) => open,
            None => self.open.insert(start(self.storage.clone())),
        };
        if open.sender.send(frame).await.is_err() {
            // The put ended early, which only a failure does: report it.
            let open = self.open.take().expect("opened above");
            return Err(match open.put.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => unexpected(&open.key, "the pack write ended early"),
                Err(e) => unexpected(&open.key, &e.to_string()),
            });
        }
        self.len += frame_len;
        Ok(offset)
    }

    /// Ends the pack and waits until it is durable; `None` if no frame
    /// was appended, so nothing was written.
    pub async fn finish(mut self) -> Result<Option<WrittenPack>, StorageError> {
        let Some(open) = self.open.take() else {
            return Ok(None);
        };
        open.complete.store(true, Ordering::Release);
        drop(open.sender);
        let size = match open.put.await {
            Ok(result) => result?,
            Err(e) => return Err(unexpected(&open.key, &e.to_string())),
        };
        if size != self.len {
            return Err(unexpected(
                &open.key,
                &format!("wrote {size} bytes of a {}-byte pack", self.len),
            ));
        }
        Ok(Some(WrittenPack {
            key: open.key,
            size,
        }))
    }
}

fn unexpected(key: &PackKey, what: &str) -> StorageError {
    StorageError::Io {
        key: key.storage_key().clone(),
        source: io::Error::other(what.to_owned()),
    }
}

/// Starts the put of a new pack, fed by the returned sender. Unless
/// `complete` is set before the sender is dropped, the stream ends in an
/// error, so the put of an abandoned upload fails and leaves nothing.
fn start(storage: Arc<dyn StorageBackend>) -> OpenPack {
    let key = PackKey::generate();
    let (sender, receiver) = mpsc::channel::<Bytes>(QUEUE);
    let complete = Arc::new(AtomicBool::new(false));
    let frames = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (Ok(frame), receiver))
    });
    let ending = {
        let complete = complete.clone();
        futures::stream::once(async move {
            if complete.load(Ordering::Acquire) {
                None
            } else {
                Some(Err(io::Error::other("the upload was abandoned")))
            }
        })
        .filter_map(std::future::ready)
    };
    let data: ByteStream = Box::pin(frames.chain(ending));
    let put = {
        let key = key.storage_key().clone();
        tokio::spawn(async move { storage.put(&key, data).await })
    };
    OpenPack {
        key,
        sender,
        complete,
        put,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStorage, read_all};

    #[tokio::test]
    async fn frames_land_in_one_blob_at_their_offsets() {
        let storage = Arc::new(MemoryStorage::new());
        let mut writer = PackWriter::new(storage.clone());
        assert_eq!(
            writer
                .append(Bytes::from_static(b"abc"))
                .await
                .expect("append"),
            0
        );
        assert_eq!(
            writer
                .append(Bytes::from_static(b"de"))
                .await
                .expect("append"),
            3
        );
        let pack = writer.finish().await.expect("finish").expect("a pack");
        assert_eq!(pack.size, 5);
        assert_eq!(
            read_all(&*storage, pack.key.storage_key())
                .await
                .expect("read"),
            "abcde"
        );
    }

    #[tokio::test]
    async fn nothing_appended_writes_nothing() {
        let storage = Arc::new(MemoryStorage::new());
        let writer = PackWriter::new(storage.clone());
        assert!(writer.finish().await.expect("finish").is_none());
        assert!(storage.list("").await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_pack_leaves_no_blob() {
        let storage = Arc::new(MemoryStorage::new());
        let mut writer = PackWriter::new(storage.clone());
        writer
            .append(Bytes::from_static(b"abc"))
            .await
            .expect("append");
        let OpenPack { put, .. } = writer.open.take().expect("open");
        drop(writer);
        assert!(put.await.expect("join").is_err());
        assert!(storage.list("").await.expect("list").is_empty());
    }
}
