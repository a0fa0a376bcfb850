//! `GET /_api/v1/whoami`: whether the server accepts the caller's token,
//! for `attic login` to check a token before saving it. Tells the caller
//! nothing it does not already hold: a token's content is readable by its
//! holder, and no cache is named.

use attic::api::v1::whoami::WhoamiResponse;
use axum::Json;

use crate::access::Caller;
use crate::error::ServerResult;

/// 200 with the subject for a valid token (or none), 401 for a bad one.
pub async fn whoami(caller: Caller) -> ServerResult<Json<WhoamiResponse>> {
    if !caller.is_anonymous() {
        caller.require_token()?;
    }
    Ok(Json(WhoamiResponse {
        authenticated: !caller.is_anonymous(),
        subject: caller.subject(),
    }))
}
