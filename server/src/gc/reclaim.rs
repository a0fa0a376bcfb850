//! Reclaiming what no path holds: NARs, chunks, packs (marked, compacted,
//! deleted after the grace period) and orphan blobs.

use super::*;

impl Collector<'_> {
    pub(super) async fn nars(&mut self) -> Result<(), GcError> {
        let mut after = 0;
        while let (Some(last), gone) = self.database.delete_unheld_nars(after, PAGE).await? {
            self.report.nars += gone;
            after = last;
            self.renew().await?;
        }
        Ok(())
    }

    pub(super) async fn chunks(&mut self) -> Result<(), GcError> {
        let mut after = 0;
        while let (Some(last), gone) = self
            .database
            .delete_unreferenced_chunks(after, PAGE)
            .await?
        {
            self.report.chunks += gone;
            after = last;
            self.renew().await?;
        }
        Ok(())
    }

    pub(super) async fn mark_packs(&mut self) -> Result<(), GcError> {
        let mut after = 0;
        // A committed pack has its chunk rows from the start, so any pack
        // without one is dead: no grace needed here.
        while let (Some(last), marked) = self
            .database
            .mark_dead_packs(after, PAGE, now() + 1)
            .await?
        {
            self.report.packs_marked += marked;
            after = last;
            self.renew().await?;
        }
        Ok(())
    }

    pub(super) async fn compact(&mut self, grace_cutoff: i64) -> Result<(), GcError> {
        let recompress_after = self.config.recompress_after;
        let rule = CompactionRule {
            grace_cutoff,
            live_fraction: self.config.compact_below,
            cold_cutoff: (!recompress_after.is_zero()).then(|| now() - secs(recompress_after)),
            level: self.config.compaction_level,
        };
        if rule.live_fraction <= 0.0 && rule.cold_cutoff.is_none() {
            return Ok(());
        }
        let mut after = 0;
        loop {
            let (last, candidates) = self
                .database
                .compaction_candidates(after, PAGE, &rule)
                .await?;
            let Some(last) = last else { break };
            after = last;
            for candidate in candidates {
                self.compact_pack(candidate.pack.id).await?;
                self.renew().await?;
            }
        }
        Ok(())
    }

    /// Copies a pack's live chunks into a new pack, recompressed at the
    /// compaction level, and repoints them (a sparse pack shrinks to its
    /// live chunks; a cold one shrinks by the higher level). A chunk that fails its check
    /// is marked damaged and left where it is.
    async fn compact_pack(&mut self, pack_id: PackId) -> Result<(), GcError> {
        let chunks = self.database.pack_chunks(pack_id).await?;
        let mut writer = PackWriter::new(self.storage.clone());
        let mut moved = Vec::new();
        let level = self.config.compaction_level;
        for run in runs(chunks) {
            let mut checked = read_run(self.storage.clone(), run);
            while let Some(result) = checked.next().await {
                let chunk = match result {
                    Ok(chunk) => chunk,
                    Err(ReadError::Damaged(damage)) => {
                        crate::nar_stream::mark(self.database, &damage).await;
                        continue;
                    }
                    // Try again next run; the pack stays as it is.
                    Err(ReadError::Storage(e)) => return Err(e.into()),
                };
                let frame = recompress(&chunk.chunk, chunk.stored, level).await?;
                let stored_size = frame.len() as u64;
                let checksum = StoredChecksum::of(&frame).to_string();
                let offset = writer.append(frame).await?;
                moved.push(MovedChunk {
                    id: chunk.chunk.id,
                    offset,
                    stored_size,
                    checksum,
                });
            }
        }
        let Some(written) = writer.finish().await? else {
            return Ok(());
        };
        crash_point("compact-written");
        self.database
            .repoint_compacted(pack_id, &written, level, &moved)
            .await?;
        self.report.packs_compacted += 1;
        self.report.bytes_freed -= written.size as i64;
        Ok(())
    }

    pub(super) async fn delete_packs(&mut self) -> Result<(), GcError> {
        // Packs marked at least a grace period ago, this run's included
        // when there is no grace.
        let cutoff = now() - secs(self.config.grace_period) + 1;
        loop {
            let page = self.database.packs_to_delete(cutoff, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for pack in page {
                self.storage.delete(pack.key.storage_key()).await?;
                crash_point("pack-blob-deleted");
                self.database.delete_pack_row(pack.id).await?;
                self.report.packs_deleted += 1;
                self.report.bytes_freed += i64::try_from(pack.size).unwrap_or(i64::MAX);
            }
            self.renew().await?;
        }
        Ok(())
    }

    /// Deletes blobs no pack row names, and temporary files, older than
    /// `grace`. Lists one key prefix at a time (packs are spread over 256),
    /// so memory stays a small part of the store.
    pub(super) async fn sweep(&mut self, grace: Duration) -> Result<(), GcError> {
        let cutoff = SystemTime::now() - grace;
        let shards = |top: &'static str, kind: BlobKind| {
            (0..=255u8).map(move |b| (format!("{top}/{b:02x}/"), kind))
        };
        let prefixes = shards("packs", BlobKind::Pack)
            // Blobs of the layout before packs, one chunk each.
            .chain(shards("chunks", BlobKind::Pack))
            .chain(shards("logs", BlobKind::Log));
        for (prefix, kind) in prefixes {
            let listed = self.storage.list(&prefix).await?;
            for batch in listed.chunks(PAGE as usize) {
                let keys: Vec<String> = batch
                    .iter()
                    .filter(|b| b.modified < cutoff)
                    .map(|b| b.key.as_str().to_owned())
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let known = match kind {
                    BlobKind::Pack => self.database.known_pack_keys(&keys).await?,
                    BlobKind::Log => self.database.log_keys_in_use(&keys).await?,
                };
                let known: std::collections::HashSet<String> = known.into_iter().collect();
                for blob in batch {
                    if blob.modified < cutoff && !known.contains(blob.key.as_str()) {
                        self.storage.delete(&blob.key).await?;
                        self.report.orphans_swept += 1;
                        self.report.bytes_freed += blob.size as i64;
                    }
                }
            }
            self.renew().await?;
        }
        let (files, bytes) = self.storage.sweep_temporary(cutoff).await?;
        self.report.orphans_swept += files;
        self.report.bytes_freed += bytes as i64;
        Ok(())
    }
}

/// A chunk's stored bytes, compressed at `level`, or as they were if that
/// is no smaller or they are not zstd (a chunk keeps its encoding through
/// compaction: xz and brotli were the operator's choice, and an
/// uncompressed chunk's NARs are served as stored).
async fn recompress(
    chunk: &crate::pack::read::StoredChunk,
    stored: Bytes,
    level: i32,
) -> Result<Bytes, GcError> {
    let compression = chunk.compression;
    let size = chunk.chunk_size as usize;
    tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
        let raw = match compression {
            StoredCompression::Zstd => compression.decode(&stored, size)?,
            StoredCompression::None | StoredCompression::Xz | StoredCompression::Brotli => {
                return Ok(stored);
            }
        };
        let frame = zstd::bulk::compress(&raw, level)?;
        Ok(if frame.len() < stored.len() {
            Bytes::from(frame)
        } else {
            stored
        })
    })
    .await
    .map_err(|e| GcError::Recompress(std::io::Error::other(e)))?
    .map_err(GcError::Recompress)
}
