//! `PUT /_api/v1/upload-path`: the NAR is the body, its metadata travels in a
//! header or, when too large for one, in a JSON preamble before the NAR.

use serde::{Deserialize, Serialize};

use crate::cache::CacheName;
use crate::hash::Sha256Hash;
use crate::store_path::StorePathHash;

/// Header whose value is the JSON of [`UploadPathNarInfo`].
pub const NAR_INFO_HEADER: &str = "X-Attic-Nar-Info";

/// Header giving the byte length of a JSON [`UploadPathNarInfo`] that
/// precedes the NAR in the body, instead of [`NAR_INFO_HEADER`].
pub const NAR_INFO_PREAMBLE_SIZE_HEADER: &str = "X-Attic-Nar-Info-Preamble-Size";

/// Metadata of the path being uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPathNarInfo {
    /// The cache to add the path to.
    pub cache: CacheName,
    /// The hash part of `store_path`.
    pub store_path_hash: StorePathHash,
    /// The full store path.
    pub store_path: String,
    /// Full store paths this path refers to.
    pub references: Vec<String>,
    /// The platform it was built for.
    pub system: Option<String>,
    /// The full store path of its derivation.
    pub deriver: Option<String>,
    /// Signatures the client holds for it.
    pub sigs: Vec<String>,
    /// Its content address, if content-addressed.
    pub ca: Option<String>,
    /// SHA-256 of the NAR; the server checks it against the body.
    pub nar_hash: Sha256Hash,
    /// Length of the NAR; the server checks it against the body.
    pub nar_size: u64,
}

/// Whether the server had to store the NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadPathResultKind {
    /// The NAR was stored (some of its chunks may have been known).
    Uploaded,
    /// The NAR was already stored; the cache now holds it too.
    Deduplicated,
}

/// The reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadPathResult {
    /// What the server did.
    pub kind: UploadPathResultKind,
    /// Bytes of the stored (compressed) NAR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// Compressed bytes this upload added to storage: new chunks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_stored: Option<u64>,
    /// The fraction of the NAR's bytes that were already stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frac_deduplicated: Option<f64>,
}
