//! `POST /_api/v1/get-missing-paths`: which of these paths does a cache lack?

use serde::{Deserialize, Serialize};

use crate::cache::CacheName;
use crate::store_path::StorePathHash;

/// The request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetMissingPathsRequest {
    /// The cache to look in.
    pub cache: CacheName,
    /// The paths the client holds, by hash.
    pub store_path_hashes: Vec<StorePathHash>,
}

/// The reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetMissingPathsResponse {
    /// The subset of the requested hashes that the cache lacks.
    pub missing_paths: Vec<StorePathHash>,
}
