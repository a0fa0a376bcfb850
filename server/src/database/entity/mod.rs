//! sea-orm entities, one per table; the schema itself is in the `migration`
//! crate. Nothing outside `database` sees them: it hands out records.

pub mod audit_event;
pub mod build_log;
pub mod cache;
pub mod cache_usage;
pub mod chunk;
pub mod chunkref;
pub mod gc_lease;
pub mod issued_token;
pub mod nar;
pub mod nar_debug_info;
pub mod nar_listing;
pub mod object;
pub mod pack;
pub mod pin;
pub mod pin_target;
pub mod realisation;
pub mod reserved_cache_name;
pub mod revoked_subject;
pub mod revoked_token;
pub mod staged_nar;

use sea_orm::entity::prelude::*;

/// Whether a NAR, chunk or pack may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum BlobState {
    /// Whole and checked when written: served.
    #[sea_orm(string_value = "valid")]
    Valid,
    /// Its stored bytes failed a check, or (for a NAR) one of its chunks
    /// did: never served, and stored afresh by the next upload of it.
    #[sea_orm(string_value = "damaged")]
    Damaged,
    /// Being reclaimed by the garbage collector.
    #[sea_orm(string_value = "deleting")]
    Deleting,
}

/// How stored bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum StoredCompression {
    /// One zstd frame per chunk; for a NAR, every chunk is one.
    #[sea_orm(string_value = "zstd")]
    Zstd,
    /// The bytes themselves.
    #[sea_orm(string_value = "none")]
    None,
    /// One xz stream per chunk (chunks only).
    #[sea_orm(string_value = "xz")]
    Xz,
    /// One brotli stream per chunk (chunks only).
    #[sea_orm(string_value = "brotli")]
    Brotli,
}

impl From<BlobState> for crate::pack::BlobState {
    fn from(state: BlobState) -> Self {
        match state {
            BlobState::Valid => Self::Valid,
            BlobState::Damaged => Self::Damaged,
            BlobState::Deleting => Self::Deleting,
        }
    }
}

impl From<crate::pack::BlobState> for BlobState {
    fn from(state: crate::pack::BlobState) -> Self {
        match state {
            crate::pack::BlobState::Valid => Self::Valid,
            crate::pack::BlobState::Damaged => Self::Damaged,
            crate::pack::BlobState::Deleting => Self::Deleting,
        }
    }
}

impl From<StoredCompression> for crate::pack::StoredCompression {
    fn from(compression: StoredCompression) -> Self {
        match compression {
            StoredCompression::Zstd => Self::Zstd,
            StoredCompression::None => Self::None,
            StoredCompression::Xz => Self::Xz,
            StoredCompression::Brotli => Self::Brotli,
        }
    }
}

impl From<crate::pack::StoredCompression> for StoredCompression {
    fn from(compression: crate::pack::StoredCompression) -> Self {
        match compression {
            crate::pack::StoredCompression::Zstd => Self::Zstd,
            crate::pack::StoredCompression::None => Self::None,
            crate::pack::StoredCompression::Xz => Self::Xz,
            crate::pack::StoredCompression::Brotli => Self::Brotli,
        }
    }
}
