//! Wire types of the `/_api/` HTTP API, shared by server and client.
//!
//! They serialise exactly as Attic's do, so an unmodified Attic client works
//! against our server; fields we add are optional and skipped when absent.

pub mod v1;

use serde::{Deserialize, Serialize};

/// The body of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The HTTP status code, repeated.
    pub code: u16,
    /// A stable, machine-readable name, such as `NoSuchCache`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
}
