//! `GET /_api/v1/whoami`: does the server accept these credentials?

use serde::{Deserialize, Serialize};

/// The reply: 200 for no token or a valid one; a bad token is 401.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoamiResponse {
    /// Whether a valid token came with the request.
    pub authenticated: bool,
    /// The token's subject, if it has one.
    pub subject: Option<String>,
}
