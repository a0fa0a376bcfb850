//! What a run did, counted for `atticadm gc`, the server's log and its
//! metrics.

use super::*;

/// What a run reclaimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Objects expired by retention.
    pub objects_expired: u64,
    /// Objects evicted by quotas.
    pub objects_evicted: u64,
    /// Objects of destroyed caches.
    pub objects_of_destroyed_caches: u64,
    /// Objects past retention kept because a pin protects them or paths
    /// kept reference them.
    pub objects_kept_for_closures: u64,
    /// Stored bytes of the NARs of the objects removed.
    pub removed_nar_bytes: i64,
    /// Of those, bytes of NARs other paths still hold (the same path in
    /// another cache, most often): removing these objects frees none of it.
    pub held_elsewhere_bytes: i64,
    /// Destroyed caches forgotten.
    pub caches_forgotten: u64,
    /// Build logs removed: past retention, evicted by quotas (before any
    /// path), or of destroyed caches. Their blobs go with the orphan sweep.
    pub logs_removed: u64,
    /// `nix copy` uploads never claimed.
    pub staged_expired: u64,
    /// Audit events older than `audit-retention-period`, deleted.
    pub audit_events_trimmed: u64,
    /// NARs deleted.
    pub nars: u64,
    /// Chunks deleted.
    pub chunks: u64,
    /// Packs left without chunks, marked for deletion.
    pub packs_marked: u64,
    /// Packs compacted.
    pub packs_compacted: u64,
    /// Packs deleted from storage.
    pub packs_deleted: u64,
    /// Blobs and temporary files no row knew of, swept.
    pub orphans_swept: u64,
    /// Bytes freed in storage (deleted packs and orphans, less what
    /// compaction wrote).
    pub bytes_freed: i64,
    /// Packs marked for deletion whose blobs wait for the grace period.
    pub packs_awaiting_deletion: u64,
    /// Their stored bytes.
    pub bytes_awaiting_deletion: i64,
    /// When the first of them may go (epoch seconds): a run from then on
    /// deletes it.
    pub deletable_from: Option<i64>,
}

impl GcReport {
    /// Each count with its name, for logs and metrics.
    pub fn counts(&self) -> [(&'static str, u64); 13] {
        [
            ("objects_expired", self.objects_expired),
            ("objects_evicted", self.objects_evicted),
            (
                "objects_of_destroyed_caches",
                self.objects_of_destroyed_caches,
            ),
            ("caches_forgotten", self.caches_forgotten),
            ("logs_removed", self.logs_removed),
            ("staged_expired", self.staged_expired),
            ("audit_events_trimmed", self.audit_events_trimmed),
            ("nars", self.nars),
            ("chunks", self.chunks),
            ("packs_marked", self.packs_marked),
            ("packs_compacted", self.packs_compacted),
            ("packs_deleted", self.packs_deleted),
            ("orphans_swept", self.orphans_swept),
        ]
    }

    fn removed(&self) -> u64 {
        self.objects_expired + self.objects_evicted + self.objects_of_destroyed_caches
    }

    /// Why the objects removed freed fewer bytes than their NARs weigh, in
    /// words, or `None` when there is nothing to explain.
    pub fn why_not_freed(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if self.held_elsewhere_bytes > 0 {
            reasons.push(format!(
                "{} bytes of the removed paths' NARs are still held by other paths \
                 (the same paths in other caches)",
                self.held_elsewhere_bytes
            ));
        }
        if self.bytes_awaiting_deletion > 0 {
            reasons.push(format!(
                "{} bytes in {} packs wait for the grace period{}",
                self.bytes_awaiting_deletion,
                self.packs_awaiting_deletion,
                self.deletable_from
                    .map(|t| format!(" (deletable from {})", format_time(t)))
                    .unwrap_or_default()
            ));
        }
        if self.removed() > 0 && self.removed_nar_bytes > self.held_elsewhere_bytes {
            reasons.push(
                "chunks other NARs share stay, and dead chunks inside packs still \
                 partly live stay until compaction rewrites the pack"
                    .to_owned(),
            );
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// Epoch seconds as an RFC 3339 UTC time.
pub fn format_time(epoch: i64) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(epoch).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects expired ({} more kept: pinned, or paths kept reference them), \
             {} evicted by quotas, {} of destroyed caches ({} bytes of NARs, {} of them \
             held elsewhere); {} logs removed; {} NARs, {} chunks; {} packs marked, \
             {} compacted, {} deleted; {} orphans swept; {} bytes freed",
            self.objects_expired,
            self.objects_kept_for_closures,
            self.objects_evicted,
            self.objects_of_destroyed_caches,
            self.removed_nar_bytes,
            self.held_elsewhere_bytes,
            self.logs_removed,
            self.nars,
            self.chunks,
            self.packs_marked,
            self.packs_compacted,
            self.packs_deleted,
            self.orphans_swept,
            self.bytes_freed
        )?;
        if let Some(why) = self.why_not_freed() {
            write!(f, "; {why}")?;
        }
        Ok(())
    }
}
