//! sea-orm entities, one per table; the schema itself is in the `migration` crate.

pub mod cache;
pub mod chunk;
pub mod chunkref;
pub mod nar;
pub mod object;
pub mod revoked_token;

/// The `state` of a NAR or chunk whose blobs are complete and may be served.
pub const STATE_VALID: &str = "valid";
