//! `/_api/v1/pins/{cache}` (GET: list) and `/_api/v1/pins/{cache}/{name}`
//! (PUT: pin a path under a name, DELETE: remove the pin).

use serde::{Deserialize, Serialize};

use crate::pin::PinName;

/// How many targets a pin keeps when a request does not say.
pub const DEFAULT_KEEP: u32 = 1;

/// Most targets a pin may keep.
pub const MAX_KEEP: u32 = 1000;

/// The body of `PUT /_api/v1/pins/{cache}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinPathRequest {
    /// The full store path to pin (`/nix/store/<hash>-<name>`).
    pub store_path: String,
    /// How many of the pin's latest targets to keep protected, this one
    /// included; [`DEFAULT_KEEP`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
}

/// A pin, as `PUT` returns it and `GET` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinInfo {
    /// Its name.
    pub name: PinName,
    /// How many targets it keeps.
    pub keep: u32,
    /// Its targets, newest first: each protects its closure.
    pub targets: Vec<PinTarget>,
}

/// One store path a pin points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinTarget {
    /// The full store path.
    pub store_path: String,
    /// When it was pinned (Unix seconds).
    pub pinned_at: i64,
}

/// The reply of `GET /_api/v1/pins/{cache}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPinsResponse {
    /// The cache's pins, by name.
    pub pins: Vec<PinInfo>,
}
