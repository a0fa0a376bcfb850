//! Scrubbing: reading every stored chunk back and checking it against its
//! checksum, as `atticadm verify` does, so damage is found before a
//! client meets it. What is found damaged is marked exactly as a read
//! would mark it: its paths stop being served and the next push heals them.

use std::sync::Arc;

use crate::database::{CacheId, Database, DatabaseError, PackRecord};
use crate::nar_stream::mark;
use crate::pack::read::{Damage, Fault, ReadError, read_run, runs};
use crate::storage::StorageBackend;
use futures::StreamExt;

/// What to scrub.
#[derive(Debug, Clone, Copy)]
pub enum ScrubScope {
    /// Every pack.
    All,
    /// The packs holding one cache's NARs.
    Cache(CacheId),
}

/// What a scrub checked and found.
#[derive(Debug, Clone, Default)]
pub struct ScrubReport {
    /// Packs read.
    pub packs: u64,
    /// Chunks that passed their check.
    pub chunks_ok: u64,
    /// Stored bytes checked.
    pub bytes: u64,
    /// Damage found by this scrub, described for people.
    pub damage: Vec<String>,
    /// Packs storage could not read (not damage: try again).
    pub unreadable: Vec<String>,
    /// Chunks marked damaged after the scrub, found by it or before.
    pub damaged_chunks: u64,
}

impl ScrubReport {
    /// Whether the store is whole: nothing damaged, everything readable.
    pub fn is_clean(&self) -> bool {
        self.damaged_chunks == 0 && self.damage.is_empty() && self.unreadable.is_empty()
    }
}

/// Packs read per database query when scrubbing everything.
const PAGE: u64 = 100;

/// The stored bytes `scope` covers, for a progress bar.
pub async fn scrub_size(database: &Database, scope: ScrubScope) -> Result<u64, DatabaseError> {
    Ok(match scope {
        ScrubScope::All => database.pack_totals().await?.bytes.unwrap_or(0) as u64,
        ScrubScope::Cache(cache_id) => database
            .cache_packs(cache_id)
            .await?
            .iter()
            .map(|p| p.size)
            .sum(),
    })
}

/// Scrubs `scope`, calling `progress` with the stored bytes of each pack done.
pub async fn scrub(
    database: &Database,
    storage: Arc<dyn StorageBackend>,
    scope: ScrubScope,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ScrubReport, DatabaseError> {
    let mut report = ScrubReport::default();
    match scope {
        ScrubScope::All => {
            let mut after = None;
            loop {
                let page = database.packs_after(after, PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                for pack in page {
                    scrub_pack(database, &storage, &pack, &mut report).await?;
                    progress(pack.size);
                }
            }
        }
        ScrubScope::Cache(cache_id) => {
            for pack in database.cache_packs(cache_id).await? {
                scrub_pack(database, &storage, &pack, &mut report).await?;
                progress(pack.size);
            }
        }
    }
    report.damaged_chunks = database.count_damaged_chunks().await?;
    Ok(report)
}

async fn scrub_pack(
    database: &Database,
    storage: &Arc<dyn StorageBackend>,
    pack: &PackRecord,
    report: &mut ScrubReport,
) -> Result<(), DatabaseError> {
    report.packs += 1;
    let chunks = database.pack_chunks(pack.id).await?;
    for run in runs(chunks) {
        let mut checked = read_run(storage.clone(), run);
        while let Some(result) = checked.next().await {
            match result {
                Ok(chunk) => {
                    report.chunks_ok += 1;
                    report.bytes += chunk.chunk.stored_size;
                    if let Some(checksum) = chunk.learned_checksum {
                        database.record_checksum(chunk.chunk.id, checksum).await?;
                    }
                }
                Err(ReadError::Damaged(damage)) => {
                    mark(database, &damage).await;
                    report.damage.push(describe(&damage));
                }
                Err(ReadError::Storage(e)) => {
                    // `{:#}` prints the error with its sources, as the server's log does.
                    report.unreadable.push(format!(
                        "pack {}: {:#}",
                        pack.key,
                        anyhow::Error::new(e)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Damage, described for people.
pub fn describe(damage: &Damage) -> String {
    let chunk = &damage.chunk;
    let what = match damage.fault {
        Fault::Corrupt => "its stored bytes fail their checksum".to_owned(),
        Fault::Truncated { pack_len } => {
            format!("the pack ends at byte {pack_len}, before this chunk and any after it")
        }
        Fault::Missing => "the pack is missing, with every chunk in it".to_owned(),
    };
    format!(
        "chunk {} at offset {} of pack {}: {what}",
        chunk.hash, chunk.offset, chunk.pack_key
    )
}
