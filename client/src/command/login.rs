//! `attic login NAME URL [TOKEN] [--set-default] [--no-verify]`, or with
//! `--oidc` instead of a token: a CI job's ID token (see [`super::oidc`])
//! exchanged at the server for a short-lived token, which is saved as a
//! token given on the command line would be.
//!
//! The URL and token are checked against the server (`GET /_api/v1/whoami`)
//! before anything is saved, and a failure says what is wrong in the
//! user's terms: a cache's URL given for the server's, https against a
//! plain-http server, something that is not atticd, a server that cannot be
//! reached, or the server's own reason for refusing the token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use attic::api::v1::whoami::WhoamiResponse;
use clap::Args;
use reqwest::StatusCode;

use crate::api::{ApiClient, ApiError};
use crate::config::{ClientConfig, ServerEntry, config_path};

/// Arguments of `attic login`.
#[derive(Debug, Args)]
pub struct Login {
    /// A name for the server, used as `NAME:cache`.
    name: String,
    /// The server's URL, e.g. `https://cache.example.com/`.
    url: String,
    /// A token from `atticadm make-token` (omit for public caches).
    token: Option<String>,
    /// Get the token by exchanging this CI job's OpenID Connect ID token
    /// at the server (GitHub Actions, or a token from --oidc-token-file or
    /// $ATTIC_OIDC_TOKEN).
    #[arg(long, conflicts_with = "token")]
    oidc: bool,
    /// The audience to ask GitHub Actions for (the server's `audience`
    /// setting for the issuer); defaults to URL as given.
    #[arg(long, requires = "oidc", value_name = "AUD")]
    oidc_audience: Option<String>,
    /// Read the ID token from this file.
    #[arg(long, requires = "oidc", value_name = "PATH")]
    oidc_token_file: Option<PathBuf>,
    /// Make this the server bare cache names refer to.
    #[arg(long)]
    set_default: bool,
    /// Save without asking the server: for a server that is not up yet,
    /// or a config prepared offline.
    #[arg(long)]
    no_verify: bool,
}

pub async fn run(args: Login) -> Result<ExitCode> {
    let mut config = ClientConfig::load()?;
    let token = if args.oidc {
        Some(exchange(&args).await?)
    } else {
        args.token.clone()
    };
    config.login(&args.name, &args.url, token, args.set_default)?;
    let server = config.servers[&args.name].clone();
    crate::token_expiry::warn_once(&args.name, &server.endpoint, server.token.as_deref());
    if args.no_verify {
        eprintln!("not checking {} (--no-verify)", server.endpoint);
    } else {
        let who = verify(&server).await?;
        match (&server.token, who.subject) {
            (Some(_), Some(subject)) => {
                eprintln!("the server accepts the token (subject {subject})")
            }
            (Some(_), None) => eprintln!("the server accepts the token"),
            (None, _) => eprintln!("no token: only public caches will be readable"),
        }
    }
    config.save()?;
    if let Err(e) = super::use_cache::refresh_netrc_entry(&config, &args.name) {
        eprintln!("warning: the netrc entry for this server keeps its old token: {e:#}");
    }
    let default = config.default_server.as_deref() == Some(args.name.as_str());
    eprintln!(
        "saved server {} in {}{}",
        args.name,
        config_path()?.display(),
        if default { " (the default server)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Exchanges the job's ID token at the server for a token of its own.
async fn exchange(args: &Login) -> Result<String> {
    let audience = args.oidc_audience.as_deref().unwrap_or(&args.url);
    let id_token = super::oidc::id_token(args.oidc_token_file.as_deref(), audience).await?;
    let server = ServerEntry {
        endpoint: format!("{}/", args.url.trim_end_matches('/')),
        ..ServerEntry::default()
    };
    let endpoint = &server.endpoint;
    match ApiClient::new(&server).exchange_id_token(&id_token).await {
        Ok(reply) => {
            let expires = humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(reply.expires_at),
            );
            eprintln!(
                "exchanged the ID token for a token of subject {} valid until {expires}",
                reply.subject
            );
            Ok(reply.token)
        }
        Err(ApiError::Refused {
            status, message, ..
        }) if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => bail!(
            "the server at {endpoint} refused the ID token ({status}): {message}; its log \
             says why (audience asked for: {audience:?})"
        ),
        Err(ApiError::Unreachable { source, .. }) => Err(unreachable(&server, source).await),
        Err(e) => bail!("cannot exchange the ID token: {e}"),
    }
}

/// Asks the server whether it takes the token, turning each way this can
/// fail into a message that says what to change.
async fn verify(server: &ServerEntry) -> Result<WhoamiResponse> {
    let api = ApiClient::new(server);
    let endpoint = &server.endpoint;
    let who = match api.whoami().await {
        Ok(who) => who,
        Err(ApiError::Refused {
            status: StatusCode::UNAUTHORIZED,
            message,
            ..
        }) => bail!("the server at {endpoint} rejected the token: {message}"),
        Err(ApiError::Refused {
            status: status @ (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED),
            ..
        }) => {
            let what = format!("GET /_api/v1/whoami answered {status}");
            return Err(not_atticd(&api, endpoint, &what).await);
        }
        Err(ApiError::BadReply { detail, .. }) => {
            let what = format!("GET /_api/v1/whoami answered something else ({detail})");
            return Err(not_atticd(&api, endpoint, &what).await);
        }
        Err(e @ ApiError::Refused { .. }) => bail!("cannot check the token: {e}"),
        Err(ApiError::Unreachable { source, .. }) => return Err(unreachable(server, source).await),
    };
    if server.token.is_some() && !who.authenticated {
        bail!("the server at {endpoint} did not take the token as a token");
    }
    Ok(who)
}

/// The error for an endpoint that does not answer as atticd: a cache's URL
/// (its `nix-cache-info` answers, or atticd answers one level up, as for a
/// private cache the token may not read) is named as such, with the
/// server's URL.
async fn not_atticd(api: &ApiClient, endpoint: &str, what: &str) -> anyhow::Error {
    if let Some(parent) = parent_url(endpoint)
        && (api.is_binary_cache().await || atticd_answers(&parent).await)
    {
        return anyhow!(
            "{endpoint} is a cache's URL; the server URL is {parent} \
             (then name the cache as NAME:CACHE in other commands)"
        );
    }
    anyhow!(
        "{endpoint} does not look like an atticd server: {what}. Check the URL \
         (or use --no-verify to save it anyway, e.g. for a server older than this client)"
    )
}

/// Whether atticd's `whoami` answers at `endpoint` (asked without a token).
async fn atticd_answers(endpoint: &str) -> bool {
    let server = ServerEntry {
        endpoint: endpoint.to_owned(),
        ..ServerEntry::default()
    };
    ApiClient::new(&server).whoami().await.is_ok()
}

/// Why the server could not be reached, naming a TLS failure as such and
/// checking whether the server speaks plain HTTP instead.
async fn unreachable(server: &ServerEntry, source: reqwest::Error) -> anyhow::Error {
    let endpoint = &server.endpoint;
    let chain = attic::error::format_chain(&source);
    let Some(rest) = endpoint.strip_prefix("https://") else {
        return anyhow!("cannot reach {endpoint}: {chain}");
    };
    let http = ServerEntry {
        endpoint: format!("http://{rest}"),
        ..server.clone()
    };
    if plain_http_answers(&http).await {
        return anyhow!(
            "TLS handshake with {endpoint} failed: the server speaks plain HTTP there, not HTTPS; \
             use {} ({chain})",
            http.endpoint
        );
    }
    if looks_like_tls(&chain) {
        return anyhow!("TLS handshake with {endpoint} failed: {chain}");
    }
    anyhow!("cannot reach {endpoint}: {chain}")
}

/// Whether anything answers HTTP (not HTTPS) at this endpoint.
async fn plain_http_answers(server: &ServerEntry) -> bool {
    match ApiClient::new(server).whoami().await {
        Ok(_) => true,
        Err(ApiError::Refused { .. } | ApiError::BadReply { .. }) => true,
        Err(ApiError::Unreachable { .. }) => false,
    }
}

fn looks_like_tls(chain: &str) -> bool {
    let chain = chain.to_ascii_lowercase();
    ["tls", "ssl", "certificate", "handshake", "corrupt message"]
        .iter()
        .any(|word| chain.contains(word))
}

/// The URL one path segment up (`http://h/team-a/` → `http://h/`), or
/// `None` for a URL with no path.
fn parent_url(endpoint: &str) -> Option<String> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let (authority, path) = rest.split_once('/')?;
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return None;
    }
    let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
    if parent.is_empty() {
        Some(format!("{scheme}://{authority}/"))
    } else {
        Some(format!("{scheme}://{authority}/{parent}/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_url_has_the_server_url_as_parent() {
        assert_eq!(
            parent_url("http://host:8080/team-a/").as_deref(),
            Some("http://host:8080/")
        );
        assert_eq!(
            parent_url("https://h/attic/team-a/").as_deref(),
            Some("https://h/attic/")
        );
        assert_eq!(parent_url("http://host:8080/"), None);
    }

    #[test]
    fn tls_failures_are_recognised_from_their_messages() {
        assert!(looks_like_tls(
            "error sending request: client error (Connect): received corrupt message of type InvalidContentType"
        ));
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(!looks_like_tls(
            "error sending request: tcp connect error: Connection refused (os error 111)"
        ));
    }
}
