//! Reading chunks back out of packs, checked.
//!
//! A NAR's chunks are grouped into runs: consecutive chunks stored
//! contiguously in one pack, fetched with one ranged read (a NAR uploaded
//! whole is one run: its pack). Every chunk's stored bytes are checked
//! against the checksum recorded when it was written before they are handed
//! out; a chunk from before packs, with no checksum yet, is checked against
//! its content hash instead, and the checksum it then earns is returned for
//! recording. A failed check, a short pack or a missing one is [`Damage`];
//! any other storage failure is an error that says nothing about the data.

use std::collections::VecDeque;
use std::sync::Arc;

use attic::chunking::ChunkId;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{PackId, PackKey, StoredChecksum, StoredChunkId, StoredCompression};
use crate::storage::{ByteStream, StorageBackend, StorageError, StorageKey};

/// Where a chunk's stored bytes are, and how to check them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Its row.
    pub id: StoredChunkId,
    /// blake3 of the uncompressed bytes.
    pub hash: ChunkId,
    /// Uncompressed size.
    pub chunk_size: u64,
    /// How the stored bytes are encoded.
    pub compression: StoredCompression,
    /// The pack's row.
    pub pack_id: PackId,
    /// The pack's key.
    pub pack_key: PackKey,
    /// Start of the stored bytes in the pack.
    pub offset: u64,
    /// Length of the stored bytes.
    pub stored_size: u64,
    /// Checksum of the stored bytes, when recorded.
    pub checksum: Option<StoredChecksum>,
}

impl StoredChunk {
    fn end(&self) -> u64 {
        self.offset + self.stored_size
    }
}

/// Chunks stored back to back in one pack: one ranged read.
#[derive(Debug, Clone)]
pub struct Run {
    chunks: VecDeque<StoredChunk>,
}

impl Run {
    /// The pack's key.
    pub fn pack_key(&self) -> &PackKey {
        &self.chunks[0].pack_key
    }

    /// The byte range of the pack the run covers.
    pub fn range(&self) -> std::ops::Range<u64> {
        let last = self.chunks.back().expect("a run is never empty");
        self.chunks[0].offset..last.end()
    }
}

/// Groups chunks, in the order they are to be read, into runs.
pub fn runs(chunks: impl IntoIterator<Item = StoredChunk>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for chunk in chunks {
        let continues = runs
            .last()
            .and_then(|run| run.chunks.back())
            .is_some_and(|last| last.pack_id == chunk.pack_id && last.end() == chunk.offset);
        match runs.last_mut() {
            Some(run) if continues => run.chunks.push_back(chunk),
            _ => runs.push(Run {
                chunks: VecDeque::from([chunk]),
            }),
        }
    }
    runs
}

/// What is wrong with stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The chunk's stored bytes do not match its checksum.
    Corrupt,
    /// The pack ends at `pack_len`, before the chunk does: it and every
    /// chunk of the pack past that point are lost.
    Truncated {
        /// Bytes the pack still has.
        pack_len: u64,
    },
    /// The pack is gone: every chunk in it is lost.
    Missing,
}

/// A chunk found damaged (and, for a short or missing pack, those after it).
#[derive(Debug, Clone)]
pub struct Damage {
    /// The first chunk found damaged.
    pub chunk: StoredChunk,
    /// What was wrong.
    pub fault: Fault,
}

/// Why reading a run stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The stored data is damaged; the read cannot go on past it.
    Damaged(Damage),
    /// Storage failed in a way that says nothing about the data (a
    /// network error, say): try again later.
    Storage(StorageError),
}

/// A chunk whose stored bytes passed their check.
#[derive(Debug)]
pub struct CheckedChunk {
    /// The chunk.
    pub chunk: StoredChunk,
    /// Its stored bytes, encoded as its `compression` says.
    pub stored: Bytes,
    /// A checksum to record, for a chunk that had none and was checked
    /// against its content hash instead.
    pub learned_checksum: Option<StoredChecksum>,
}

/// Chunks of a run stored back to back, every one of which passed its
/// check: sent as one piece, so a NAR read from one pack costs a few
/// frames per MiB rather than one per chunk.
#[derive(Debug)]
pub struct CheckedChunks {
    /// The chunks, in order.
    pub chunks: Vec<StoredChunk>,
    /// Their stored bytes, concatenated.
    pub stored: Bytes,
    /// Checksums to record, for chunks that had none and were checked
    /// against their content hash instead.
    pub learned_checksums: Vec<(StoredChunkId, StoredChecksum)>,
}

impl CheckedChunks {
    /// The stored bytes of each chunk, in order.
    pub fn pieces(&self) -> impl Iterator<Item = (&StoredChunk, Bytes)> + '_ {
        let mut at = 0;
        self.chunks.iter().map(move |chunk| {
            let size = chunk.stored_size as usize;
            let piece = self.stored.slice(at..at + size);
            at += size;
            (chunk, piece)
        })
    }
}

impl From<CheckedChunk> for CheckedChunks {
    fn from(checked: CheckedChunk) -> Self {
        Self {
            learned_checksums: (checked.learned_checksum)
                .map(|sum| (checked.chunk.id, sum))
                .into_iter()
                .collect(),
            chunks: vec![checked.chunk],
            stored: checked.stored,
        }
    }
}

/// Checks stored bytes; `Ok(Some(_))` when the checksum was learned.
fn check(chunk: &StoredChunk, stored: &[u8]) -> Result<Option<StoredChecksum>, ()> {
    if let Some(expected) = chunk.checksum {
        return if expected.matches(stored) {
            Ok(None)
        } else {
            Err(())
        };
    }
    let content = chunk
        .compression
        .decode(stored, chunk.chunk_size as usize)
        .map_err(|_| ())?;
    if content.len() as u64 == chunk.chunk_size && ChunkId::of(&content) == chunk.hash {
        Ok(Some(StoredChecksum::of(stored)))
    } else {
        Err(())
    }
}

struct RunReader {
    storage: Arc<dyn StorageBackend>,
    run: Run,
    /// The pack's key, taken before chunks are popped off the run.
    key: StorageKey,
    /// Why asking storage for the range failed, until reported.
    open_failed: Option<StorageError>,
    /// The run's range, taken before chunks are popped off it.
    range: std::ops::Range<u64>,
    body: Option<ByteStream>,
    /// The unread rest of the last piece storage returned.
    piece: Bytes,
    received: u64,
    /// Times the rest of the range was asked for again after its body
    /// failed midway.
    resumed: u32,
    stopped: bool,
}

/// Times a run's range is asked for again from where its body broke off
/// (a connection reset, or a prefetched S3 response whose idle connection
/// the server closed), before the read fails.
const RESUMES_MAX: u32 = 2;

impl RunReader {
    fn new(storage: Arc<dyn StorageBackend>, run: Run) -> Self {
        Self {
            storage,
            range: run.range(),
            key: run.pack_key().storage_key().clone(),
            open_failed: None,
            run,
            body: None,
            piece: Bytes::new(),
            received: 0,
            resumed: 0,
            stopped: false,
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<CheckedChunk, ReadError>> {
        if self.stopped {
            return None;
        }
        let chunk = self.run.chunks.pop_front()?;
        let result = self.read(chunk).await;
        if matches!(
            result,
            Err(ReadError::Storage(_))
                | Err(ReadError::Damaged(Damage {
                    fault: Fault::Missing | Fault::Truncated { .. },
                    ..
                }))
        ) {
            self.stopped = true;
        }
        Some(result)
    }

    /// Takes what storage answered when asked for the run's range.
    fn opened(&mut self, opened: Result<ByteStream, StorageError>) {
        match opened {
            Ok(body) => self.body = Some(body),
            Err(e) => self.open_failed = Some(e),
        }
    }

    /// The chunks at the front of the run that lie whole in the piece in
    /// hand and pass their checks, at most `max_content` bytes of content
    /// (but at least one chunk); when there are none, the next chunk read
    /// as [`Self::next_chunk`] does, which fetches, gathers and reports.
    async fn next_chunks(&mut self, max_content: u64) -> Option<Result<CheckedChunks, ReadError>> {
        if self.stopped {
            return None;
        }
        let (mut count, mut end, mut content) = (0, 0, 0);
        let mut learned_checksums = Vec::new();
        while let Some(chunk) = self.run.chunks.get(count) {
            let size = chunk.stored_size as usize;
            if end + size > self.piece.len()
                || (count > 0 && content + chunk.chunk_size > max_content)
            {
                break;
            }
            // A chunk that fails is left at the front, to be read alone
            // and reported once the chunks before it are sent.
            match check(chunk, &self.piece[end..end + size]) {
                Ok(learned) => learned_checksums.extend(learned.map(|sum| (chunk.id, sum))),
                Err(()) => break,
            }
            end += size;
            content += chunk.chunk_size;
            count += 1;
        }
        if count == 0 {
            return match self.next_chunk().await? {
                Ok(checked) => Some(Ok(checked.into())),
                Err(e) => Some(Err(e)),
            };
        }
        Some(Ok(CheckedChunks {
            chunks: self.run.chunks.drain(..count).collect(),
            stored: self.piece.split_to(end),
            learned_checksums,
        }))
    }

    async fn read(&mut self, chunk: StoredChunk) -> Result<CheckedChunk, ReadError> {
        let range = self.range.clone();
        if self.body.is_none() && self.open_failed.is_none() {
            let opened = self.storage.get(&self.key, range.clone()).await;
            self.opened(opened);
        }
        match self.open_failed.take() {
            Some(StorageError::NotFound(_)) => {
                return Err(ReadError::Damaged(Damage {
                    chunk,
                    fault: Fault::Missing,
                }));
            }
            Some(e) => return Err(ReadError::Storage(e)),
            None => {}
        }
        let body = self.body.as_mut().expect("opened above");
        let need = chunk.stored_size as usize;
        // Most chunks lie within one piece and are sliced out of it without
        // a copy; one that straddles pieces is gathered.
        let mut gathered: Option<BytesMut> = None;
        let stored = loop {
            let have = gathered.as_ref().map_or(0, BytesMut::len);
            let want = need - have;
            if self.piece.len() >= want {
                let tail = self.piece.split_to(want);
                break match gathered {
                    None => tail,
                    Some(mut gathered) => {
                        gathered.extend_from_slice(&tail);
                        gathered.freeze()
                    }
                };
            }
            let rest = std::mem::take(&mut self.piece);
            gathered
                .get_or_insert_with(|| BytesMut::with_capacity(need))
                .extend_from_slice(&rest);
            match body.next().await {
                Some(Ok(piece)) => {
                    self.received += piece.len() as u64;
                    self.piece = piece;
                }
                Some(Err(source)) if self.resumed < RESUMES_MAX => {
                    self.resumed += 1;
                    let from = range.start + self.received;
                    tracing::warn!(
                        key = %self.key, from, error = %source,
                        "a pack read broke off; asking for the rest again"
                    );
                    match self.storage.get(&self.key, from..range.end).await {
                        Ok(rest) => *body = rest,
                        Err(e) => return Err(ReadError::Storage(e)),
                    }
                }
                Some(Err(source)) => {
                    return Err(ReadError::Storage(StorageError::Io {
                        key: chunk.pack_key.storage_key().clone(),
                        source,
                    }));
                }
                None => {
                    let pack_len = range.start + self.received;
                    return Err(ReadError::Damaged(Damage {
                        chunk,
                        fault: Fault::Truncated { pack_len },
                    }));
                }
            }
        };
        match check(&chunk, &stored) {
            Ok(learned_checksum) => Ok(CheckedChunk {
                chunk,
                stored,
                learned_checksum,
            }),
            Err(()) => Err(ReadError::Damaged(Damage {
                chunk,
                fault: Fault::Corrupt,
            })),
        }
    }
}

/// A storage request for a run's range, made ahead of time; aborted if
/// the read is dropped before it gets there.
struct Prefetch {
    run: Run,
    opening: tokio::task::JoinHandle<Result<ByteStream, StorageError>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.opening.abort();
    }
}

impl Prefetch {
    fn start(storage: &Arc<dyn StorageBackend>, run: Run) -> Self {
        let storage = storage.clone();
        let key = run.pack_key().storage_key().clone();
        let range = run.range();
        let opening = tokio::spawn(async move { storage.get(&key, range).await });
        Self { run, opening }
    }

    /// The run's reader, with the answer in hand (or, should the request's
    /// task have failed, to ask again itself).
    async fn reader(mut self, storage: &Arc<dyn StorageBackend>) -> RunReader {
        let mut reader = RunReader::new(storage.clone(), self.run.clone());
        if let Ok(opened) = (&mut self.opening).await {
            reader.opened(opened);
        }
        reader
    }
}

/// The chunks of runs, checked, in order, as [`read_run`] reads them but
/// grouped: chunks that lie whole in one piece of what storage returned
/// come as one [`CheckedChunks`] of at most `max_content` bytes of content.
/// While a run is read, storage is already asked for the next one, so on
/// S3 a NAR of several runs does not wait a round trip between them.
pub fn read_runs_grouped(
    storage: Arc<dyn StorageBackend>,
    runs: Vec<Run>,
    max_content: u64,
) -> BoxStream<'static, Result<CheckedChunks, ReadError>> {
    struct Reading {
        storage: Arc<dyn StorageBackend>,
        current: Option<RunReader>,
        next: Option<Prefetch>,
        rest: std::vec::IntoIter<Run>,
    }
    let reading = Reading {
        storage,
        current: None,
        next: None,
        rest: runs.into_iter(),
    };
    Box::pin(futures::stream::unfold(
        reading,
        move |mut reading| async move {
            loop {
                let reader = match reading.current.as_mut() {
                    Some(reader) => reader,
                    None => {
                        let reader = match reading.next.take() {
                            Some(prefetch) => prefetch.reader(&reading.storage).await,
                            None => RunReader::new(reading.storage.clone(), reading.rest.next()?),
                        };
                        reading.next =
                            (reading.rest.next()).map(|run| Prefetch::start(&reading.storage, run));
                        reading.current.insert(reader)
                    }
                };
                match reader.next_chunks(max_content).await {
                    Some(item) => return Some((item, reading)),
                    None => reading.current = None,
                }
            }
        },
    ))
}

/// The chunks of a run, each checked, in order. A corrupt chunk is
/// reported and reading goes on with the next; a short or missing pack or a
/// storage failure ends the stream.
pub fn read_run(
    storage: Arc<dyn StorageBackend>,
    run: Run,
) -> BoxStream<'static, Result<CheckedChunk, ReadError>> {
    Box::pin(futures::stream::unfold(
        RunReader::new(storage, run),
        |mut reader| async move { reader.next_chunk().await.map(|item| (item, reader)) },
    ))
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::storage::{MemoryStorage, stream_of};

    struct Fixture {
        storage: Arc<MemoryStorage>,
        chunks: Vec<StoredChunk>,
    }

    /// Three zstd chunks in one pack, with checksums.
    async fn pack_of_three() -> Fixture {
        let storage = Arc::new(MemoryStorage::new());
        let key: PackKey = "packs/00/test".parse().expect("key");
        let mut pack = Vec::new();
        let mut chunks = Vec::new();
        for (i, content) in [&b"first chunk"[..], b"second chunk", b"third"]
            .iter()
            .enumerate()
        {
            let frame = zstd::bulk::compress(content, 3).expect("compress");
            chunks.push(StoredChunk {
                id: StoredChunkId::new(i as i64),
                hash: ChunkId::of(content),
                chunk_size: content.len() as u64,
                compression: StoredCompression::Zstd,
                pack_id: PackId::new(1),
                pack_key: key.clone(),
                offset: pack.len() as u64,
                stored_size: frame.len() as u64,
                checksum: Some(StoredChecksum::of(&frame)),
            });
            pack.extend_from_slice(&frame);
        }
        storage
            .put(key.storage_key(), stream_of(Bytes::from(pack)))
            .await
            .expect("put");
        Fixture { storage, chunks }
    }

    /// Flips the lowest bit of byte `at` of the stored pack `key`.
    async fn flip_bit(storage: &MemoryStorage, key: &PackKey, at: u64) {
        let key = key.storage_key();
        let mut pack = crate::storage::read_all(storage, key)
            .await
            .expect("read")
            .to_vec();
        pack[at as usize] ^= 1;
        storage
            .put(key, stream_of(Bytes::from(pack)))
            .await
            .expect("put");
    }

    async fn read_all_runs(
        storage: Arc<MemoryStorage>,
        chunks: Vec<StoredChunk>,
    ) -> Vec<Result<CheckedChunk, ReadError>> {
        read_all_runs_from(storage, chunks).await
    }

    async fn read_all_runs_from(
        storage: Arc<dyn StorageBackend>,
        chunks: Vec<StoredChunk>,
    ) -> Vec<Result<CheckedChunk, ReadError>> {
        let mut out = Vec::new();
        for run in runs(chunks) {
            out.extend(read_run(storage.clone(), run).collect::<Vec<_>>().await);
        }
        out
    }

    #[test]
    fn consecutive_chunks_of_one_pack_make_one_run() {
        let chunk = |pack_id: i64, offset, stored_size| StoredChunk {
            id: StoredChunkId::new(0),
            hash: ChunkId::of(b""),
            chunk_size: 1,
            compression: StoredCompression::Zstd,
            pack_id: PackId::new(pack_id),
            pack_key: format!("packs/{pack_id}").parse().expect("key"),
            offset,
            stored_size,
            checksum: None,
        };
        let grouped = runs([
            chunk(1, 0, 10),
            chunk(1, 10, 5),
            chunk(2, 0, 7),
            chunk(1, 15, 1),
            chunk(1, 0, 10),
        ]);
        let ranges: Vec<_> = grouped
            .iter()
            .map(|r| (r.pack_key().to_string(), r.range()))
            .collect();
        assert_eq!(
            ranges,
            [
                ("packs/1".to_owned(), 0..15),
                ("packs/2".to_owned(), 0..7),
                ("packs/1".to_owned(), 15..16),
                ("packs/1".to_owned(), 0..10),
            ]
        );
    }

    #[tokio::test]
    async fn intact_chunks_pass_their_checks() {
        let Fixture { storage, chunks } = pack_of_three().await;
        let read: Vec<CheckedChunk> = futures::stream::iter(runs(chunks.clone()))
            .flat_map(|run| read_run(storage.clone(), run))
            .try_collect()
            .await
            .map_err(|e| format!("{e:?}"))
            .expect("every chunk checks");
        assert_eq!(read.len(), 3);
        assert_eq!(
            zstd::bulk::decompress(&read[1].stored, 100).expect("frame"),
            b"second chunk"
        );
        assert!(read.iter().all(|c| c.learned_checksum.is_none()));
    }

    #[tokio::test]
    async fn a_flipped_byte_is_reported_and_the_next_chunk_still_read() {
        let Fixture { storage, chunks } = pack_of_three().await;
        flip_bit(&storage, &chunks[1].pack_key, chunks[1].offset + 4).await;
        let read = read_all_runs(storage, chunks.clone()).await;
        assert!(read[0].is_ok());
        assert!(matches!(
            &read[1],
            Err(ReadError::Damaged(Damage { chunk, fault: Fault::Corrupt })) if chunk.id == StoredChunkId::new(1)
        ));
        assert!(read[2].is_ok());
    }

    #[tokio::test]
    async fn chunks_stored_with_blake3_checksums_are_checked_by_blake3() {
        let Fixture {
            storage,
            mut chunks,
        } = pack_of_three().await;
        let pack = crate::storage::read_all(&*storage, chunks[0].pack_key.storage_key())
            .await
            .expect("read");
        for chunk in &mut chunks {
            let frame = &pack[chunk.offset as usize..][..chunk.stored_size as usize];
            let old = hex::encode(blake3::hash(frame).as_bytes());
            chunk.checksum = Some(old.parse().expect("a blake3 checksum"));
        }
        let read = read_all_runs(storage.clone(), chunks.clone()).await;
        assert!(read.iter().all(Result::is_ok), "{read:?}");
        flip_bit(&storage, &chunks[2].pack_key, chunks[2].offset + 1).await;
        let read = read_all_runs(storage, chunks).await;
        assert!(read[0].is_ok() && read[1].is_ok());
        assert!(matches!(
            &read[2],
            Err(ReadError::Damaged(Damage { chunk, fault: Fault::Corrupt })) if chunk.id == StoredChunkId::new(2)
        ));
    }

    #[tokio::test]
    async fn a_short_pack_is_truncated_damage_from_where_it_ends() {
        let Fixture { storage, chunks } = pack_of_three().await;
        let key = chunks[0].pack_key.storage_key().clone();
        let pack = crate::storage::read_all(&*storage, &key)
            .await
            .expect("read");
        let cut = chunks[1].offset + 2;
        storage
            .put(&key, stream_of(pack.slice(..cut as usize)))
            .await
            .expect("put");
        let read = read_all_runs(storage, chunks).await;
        assert_eq!(read.len(), 2, "reading stops at the end of the pack");
        assert!(matches!(
            &read[1],
            Err(ReadError::Damaged(Damage { chunk, fault: Fault::Truncated { pack_len } }))
                if chunk.id == StoredChunkId::new(1) && *pack_len == cut
        ));
    }

    async fn read_grouped(
        storage: Arc<MemoryStorage>,
        chunks: Vec<StoredChunk>,
        max_content: u64,
    ) -> Vec<Result<CheckedChunks, ReadError>> {
        read_runs_grouped(storage, runs(chunks), max_content)
            .collect()
            .await
    }

    #[tokio::test]
    async fn chunks_of_one_piece_are_checked_and_sent_together() {
        let Fixture { storage, chunks } = pack_of_three().await;
        let pack = crate::storage::read_all(&*storage, chunks[0].pack_key.storage_key())
            .await
            .expect("read");
        let read = read_grouped(storage, chunks.clone(), u64::MAX).await;
        let groups: Vec<_> = read
            .into_iter()
            .map(|group| group.map_err(|e| format!("{e:?}")).expect("checks"))
            .collect();
        // The first chunk opens the pack; the rest of the piece is one group.
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].chunks, chunks[1..]);
        let sent: Vec<u8> = groups.iter().flat_map(|g| g.stored.to_vec()).collect();
        assert_eq!(sent, pack);
    }

    #[tokio::test]
    async fn a_group_stops_before_a_damaged_chunk_which_is_then_reported() {
        let Fixture { storage, chunks } = pack_of_three().await;
        flip_bit(&storage, &chunks[2].pack_key, chunks[2].offset + 4).await;
        let read = read_grouped(storage, chunks.clone(), u64::MAX).await;
        assert_eq!(read.len(), 3, "{read:?}");
        assert!(matches!(&read[1], Ok(group) if group.chunks == chunks[1..2]));
        assert!(matches!(
            &read[2],
            Err(ReadError::Damaged(Damage { chunk, fault: Fault::Corrupt })) if chunk.id == StoredChunkId::new(2)
        ));
    }

    #[tokio::test]
    async fn a_group_holds_at_most_its_content_limit_but_always_a_chunk() {
        let Fixture { storage, chunks } = pack_of_three().await;
        let read = read_grouped(storage, chunks, 1).await;
        assert_eq!(read.len(), 3);
        assert!(
            read.iter()
                .all(|g| matches!(g, Ok(g) if g.chunks.len() == 1))
        );
    }

    #[tokio::test]
    async fn runs_of_several_packs_are_read_in_order_and_a_missing_one_is_damage() {
        let Fixture { storage, chunks } = pack_of_three().await;
        let key: PackKey = "packs/00/copy".parse().expect("key");
        let pack = crate::storage::read_all(&*storage, chunks[0].pack_key.storage_key())
            .await
            .expect("read");
        storage
            .put(key.storage_key(), stream_of(pack.clone()))
            .await
            .expect("put");
        let elsewhere = |chunk: &StoredChunk| StoredChunk {
            pack_id: PackId::new(2),
            pack_key: key.clone(),
            ..chunk.clone()
        };
        // Chunk 1 from the copy, the others from the original: three runs.
        let mixed = vec![chunks[0].clone(), elsewhere(&chunks[1]), chunks[2].clone()];
        let read = read_grouped(storage.clone(), mixed.clone(), u64::MAX).await;
        let sent: Vec<u8> = read
            .iter()
            .flat_map(|g| g.as_ref().expect("checks").stored.to_vec())
            .collect();
        assert_eq!(sent, pack);
        storage.delete(key.storage_key()).await.expect("delete");
        let read = read_grouped(storage, mixed, u64::MAX).await;
        assert!(read[0].is_ok());
        assert!(matches!(
            &read[1],
            Err(ReadError::Damaged(Damage { chunk, fault: Fault::Missing })) if chunk.id == StoredChunkId::new(1)
        ));
    }

    #[tokio::test]
    async fn a_missing_pack_is_missing_damage() {
        let Fixture { storage, chunks } = pack_of_three().await;
        storage
            .delete(chunks[0].pack_key.storage_key())
            .await
            .expect("delete");
        let read = read_all_runs(storage, chunks).await;
        assert_eq!(read.len(), 1);
        assert!(matches!(
            &read[0],
            Err(ReadError::Damaged(Damage {
                fault: Fault::Missing,
                ..
            }))
        ));
    }

    #[tokio::test]
    async fn a_chunk_without_checksum_is_checked_by_content_and_earns_one() {
        let Fixture {
            storage,
            mut chunks,
        } = pack_of_three().await;
        let expected = chunks[0].checksum.take();
        chunks[1].checksum = None;
        chunks[1].hash = ChunkId::of(b"not its content");
        let read = read_all_runs(storage, chunks).await;
        assert_eq!(read[0].as_ref().expect("checks").learned_checksum, expected);
        assert!(matches!(
            &read[1],
            Err(ReadError::Damaged(Damage {
                fault: Fault::Corrupt,
                ..
            }))
        ));
    }

    /// Storage whose answers break off with a connection reset after `cut`
    /// bytes, the first `breaks` times a range is read.
    #[derive(Debug)]
    struct BreakingStorage {
        inner: Arc<MemoryStorage>,
        cut: usize,
        breaks: std::sync::atomic::AtomicU32,
        ranges: std::sync::Mutex<Vec<std::ops::Range<u64>>>,
    }

    impl BreakingStorage {
        fn new(inner: Arc<MemoryStorage>, cut: usize, breaks: u32) -> Arc<Self> {
            Arc::new(Self {
                inner,
                cut,
                breaks: breaks.into(),
                ranges: Default::default(),
            })
        }
    }

    #[async_trait::async_trait]
    impl StorageBackend for BreakingStorage {
        async fn put(&self, key: &StorageKey, data: ByteStream) -> Result<u64, StorageError> {
            self.inner.put(key, data).await
        }

        async fn get(
            &self,
            key: &StorageKey,
            range: std::ops::Range<u64>,
        ) -> Result<ByteStream, StorageError> {
            self.ranges.lock().expect("lock").push(range.clone());
            let whole = crate::storage::read_all(&*self.inner, key).await?;
            let end = (range.end as usize).min(whole.len());
            let answer = whole.slice(range.start as usize..end);
            let breaks = &self.breaks;
            if breaks.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return Ok(stream_of(answer));
            }
            breaks.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            let head = answer.slice(..self.cut.min(answer.len()));
            let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            Ok(Box::pin(futures::stream::iter([Ok(head), Err(reset)])))
        }

        async fn delete(&self, key: &StorageKey) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }

        async fn list(&self, prefix: &str) -> Result<Vec<crate::storage::BlobInfo>, StorageError> {
            self.inner.list(prefix).await
        }
    }

    #[tokio::test]
    async fn a_read_that_breaks_off_continues_from_where_it_broke() {
        let Fixture { storage, chunks } = pack_of_three().await;
        // Within the second chunk, then within the third.
        let cut = (chunks[1].offset + 3) as usize;
        let breaking = BreakingStorage::new(storage, cut, 2);
        let read: Vec<CheckedChunks> = read_runs_grouped(breaking.clone(), runs(chunks.clone()), 1)
            .try_collect()
            .await
            .map_err(|e| format!("{e:?}"))
            .expect("every chunk is read");
        let contents: Vec<Vec<u8>> = read
            .iter()
            .flat_map(|group| group.pieces().map(|(_, stored)| stored))
            .map(|stored| zstd::bulk::decompress(&stored, 100).expect("frame"))
            .collect();
        assert_eq!(contents, [&b"first chunk"[..], b"second chunk", b"third"]);
        let end = chunks[2].offset + chunks[2].stored_size;
        let resumed = cut as u64;
        assert_eq!(
            *breaking.ranges.lock().expect("lock"),
            [0..end, resumed..end, resumed + cut as u64..end]
        );
    }

    #[tokio::test]
    async fn a_read_that_keeps_breaking_off_fails_as_storage_not_damage() {
        let Fixture { storage, chunks } = pack_of_three().await;
        let breaking = BreakingStorage::new(storage, 1, RESUMES_MAX + 1);
        let read = read_all_runs_from(breaking.clone(), chunks).await;
        assert!(
            matches!(&read[0], Err(ReadError::Storage(StorageError::Io { .. }))),
            "{read:?}"
        );
        assert_eq!(read.len(), 1, "nothing read after the failure");
        assert_eq!(
            breaking.ranges.lock().expect("lock").len(),
            1 + RESUMES_MAX as usize
        );
    }
}
