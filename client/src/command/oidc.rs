//! `attic login --oidc`: where a CI job's OpenID Connect ID token comes
//! from. In order: `--oidc-token-file`, then `$ATTIC_OIDC_TOKEN` (GitLab
//! CI's `id_tokens:` puts one in a variable of the job's choosing), then
//! GitHub Actions' token service (`$ACTIONS_ID_TOKEN_REQUEST_URL` with
//! `$ACTIONS_ID_TOKEN_REQUEST_TOKEN`, given `permissions: id-token: write`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The variable holding an ID token, for CI systems other than GitHub's.
pub const TOKEN_VARIABLE: &str = "ATTIC_OIDC_TOKEN";

/// GitHub Actions' token service URL.
pub const GITHUB_URL_VARIABLE: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";

/// The bearer token GitHub Actions' token service wants.
pub const GITHUB_TOKEN_VARIABLE: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// The ID token, from the first source that has one.
pub async fn id_token(file: Option<&Path>, audience: &str) -> Result<String> {
    let variable = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the ID token from {}", file.display()))?;
        return non_empty(text, &file.display().to_string());
    }
    if let Some(token) = variable(TOKEN_VARIABLE) {
        return non_empty(token, &format!("${TOKEN_VARIABLE}"));
    }
    if let (Some(url), Some(bearer)) = (
        variable(GITHUB_URL_VARIABLE),
        variable(GITHUB_TOKEN_VARIABLE),
    ) {
        return github_id_token(&url, &bearer, audience).await;
    }
    bail!(
        "--oidc found no ID token: pass --oidc-token-file PATH, set ${TOKEN_VARIABLE}, or run \
         on GitHub Actions with `permissions: id-token: write` (which sets \
         ${GITHUB_URL_VARIABLE} and ${GITHUB_TOKEN_VARIABLE})"
    )
}

fn non_empty(token: String, source: &str) -> Result<String> {
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("{source} holds no ID token");
    }
    Ok(token)
}

/// Asks GitHub Actions' token service for an ID token for `audience`.
async fn github_id_token(url: &str, bearer: &str, audience: &str) -> Result<String> {
    #[derive(Deserialize)]
    struct Reply {
        value: String,
    }
    let mut url =
        reqwest::Url::parse(url).with_context(|| format!("${GITHUB_URL_VARIABLE} is not a URL"))?;
    url.query_pairs_mut().append_pair("audience", audience);
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(bearer)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .context("asking GitHub Actions for an ID token")?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "GitHub Actions refused an ID token ({status}): does the workflow grant \
             `permissions: id-token: write`?"
        );
    }
    let reply: Reply = response
        .json()
        .await
        .context("GitHub Actions' ID token reply is not {\"value\": ...}")?;
    non_empty(reply.value, "GitHub Actions' reply")
}
