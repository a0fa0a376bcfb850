//! Talking to the server's HTTP API as a client would.

use attic::api::v1::upload_path::{NAR_INFO_HEADER, UploadPathNarInfo};
use attic::hash::Sha256Hash;
use attic::nix_base32;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::nix;

/// An HTTP client bound to one server.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    /// Base URL, no trailing slash.
    pub url: String,
}

impl Api {
    /// A client for `url`.
    pub fn new(url: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: url.to_owned(),
        }
    }

    /// A request with an optional bearer token.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.url));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// The status of a GET.
    pub async fn status(&self, token: Option<&str>, path: &str) -> StatusCode {
        self.request(Method::GET, path, token)
            .send()
            .await
            .expect("request")
            .status()
    }

    /// The status and text of a GET without a token (`/metrics`,
    /// `/_health`, a public cache's files).
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .request(Method::GET, path, None)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.text().await.expect("text"))
    }

    /// The body of a GET, whatever its status.
    pub async fn get_bytes(&self, token: &str, path: &str) -> bytes::Bytes {
        self.request(Method::GET, path, Some(token))
            .send()
            .await
            .expect("request")
            .bytes()
            .await
            .expect("body")
    }

    /// POSTs `cache-config/{name}` with a generated key; panics unless it succeeds.
    pub async fn create_cache(&self, token: &str, name: &str, is_public: bool) {
        let response = self.try_create_cache(token, name, is_public).await;
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "create {name}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// DELETEs `cache-config/{name}`; panics unless it succeeds.
    pub async fn destroy_cache(&self, token: &str, name: &str) {
        let response = self
            .request(
                Method::DELETE,
                &format!("/_api/v1/cache-config/{name}"),
                Some(token),
            )
            .send()
            .await
            .expect("request");
        let status = response.status();
        assert!(
            status.is_success(),
            "destroy {name}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// POSTs `cache-config/{name}` and returns the reply.
    pub async fn try_create_cache(&self, token: &str, name: &str, is_public: bool) -> Response {
        self.request(
            Method::POST,
            &format!("/_api/v1/cache-config/{name}"),
            Some(token),
        )
        .json(&json!({
            "keypair": "Generate",
            "is_public": is_public,
            "store_dir": "/nix/store",
            "priority": 41,
            "upstream_cache_key_names": ["cache.nixos.org-1"],
        }))
        .send()
        .await
        .expect("request")
    }

    /// A cache's settings, from GET cache-config.
    pub async fn cache_config(&self, token: &str, name: &str) -> Value {
        self.request(
            Method::GET,
            &format!("/_api/v1/cache-config/{name}"),
            Some(token),
        )
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON")
    }

    /// A cache's public key, from GET cache-config.
    pub async fn public_key(&self, token: &str, name: &str) -> String {
        self.cache_config(token, name).await["public_key"]
            .as_str()
            .expect("public_key")
            .to_owned()
    }

    /// A cache's stored bytes (paths, logs, staged NARs), as its settings
    /// report them.
    pub async fn used_bytes(&self, token: &str, name: &str) -> u64 {
        self.cache_config(token, name).await["used_bytes"]
            .as_u64()
            .expect("used_bytes")
    }

    /// PUTs a NAR to upload-path.
    pub async fn upload(
        &self,
        token: Option<&str>,
        info: &UploadPathNarInfo,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.request(Method::PUT, "/_api/v1/upload-path", token)
            .header(
                NAR_INFO_HEADER,
                serde_json::to_string(info).expect("serialise"),
            )
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// PUTs a NAR and returns the JSON reply, panicking unless it succeeds.
    pub async fn upload_ok(
        &self,
        token: &str,
        info: &UploadPathNarInfo,
        body: impl Into<reqwest::Body>,
    ) -> Value {
        let response = self.upload(Some(token), info, body).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(
            status,
            StatusCode::OK,
            "upload of {}: {text}",
            info.store_path
        );
        serde_json::from_str(&text).expect("JSON reply")
    }

    /// PATCHes a cache's settings, panicking unless it succeeds.
    pub async fn configure(&self, token: &str, name: &str, patch: Value) {
        let response = self
            .request(
                Method::PATCH,
                &format!("/_api/v1/cache-config/{name}"),
                Some(token),
            )
            .json(&patch)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "configure {name}: {text}");
    }

    /// Uploads a path of the local store, as `nix-store --dump` gives it.
    pub async fn push_path(&self, token: &str, cache: &str, path: &str) -> Value {
        self.upload_ok(
            token,
            &nar_info_from_nix(cache, path),
            nix::dump(std::path::Path::new(path)),
        )
        .await
    }

    /// POSTs get-missing-paths.
    pub async fn missing(&self, token: &str, cache: &str, hashes: &[&str]) -> Vec<String> {
        let response = self
            .request(Method::POST, "/_api/v1/get-missing-paths", Some(token))
            .json(&json!({ "cache": cache, "store_path_hashes": hashes }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("JSON");
        body["missing_paths"]
            .as_array()
            .expect("missing_paths")
            .iter()
            .map(|h| h.as_str().expect("hash").to_owned())
            .collect()
    }
}

/// Deterministic incompressible bytes: chunk boundaries fall as on real
/// binaries, and zstd cannot shrink them.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// Upload metadata for a path in the local Nix store, as `nix path-info` tells it.
pub fn nar_info_from_nix(cache: &str, path: &str) -> UploadPathNarInfo {
    let info = nix::path_info(path);
    UploadPathNarInfo {
        cache: cache.parse().expect("cache name"),
        store_path_hash: path_hash(path).parse().expect("hash"),
        store_path: path.to_owned(),
        references: info.references,
        system: None,
        deriver: info.deriver,
        sigs: Vec::new(),
        ca: None,
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
    }
}

/// The NAR of a directory holding one regular file, `data`, with
/// `contents`: the smallest NAR whose size a test chooses.
pub fn nar_of_file(contents: Vec<u8>) -> Vec<u8> {
    let mut entries = std::collections::BTreeMap::new();
    entries.insert(
        b"data".to_vec(),
        attic::nar::NarNode::Regular {
            executable: false,
            contents,
        },
    );
    attic::nar::NarNode::Directory(entries).to_nar()
}

/// The hash part of a full store path.
pub fn path_hash(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// A made-up store path, unique to this call.
pub fn fake_store_path(name: &str) -> String {
    let digest = Sha256Hash::digest(nix::nonce().as_bytes());
    format!(
        "/nix/store/{}-{name}",
        nix_base32::encode(&digest.as_bytes()[..20])
    )
}

/// Upload metadata for an in-memory NAR at a made-up path.
pub fn nar_info_for(cache: &str, store_path: &str, nar: &[u8]) -> UploadPathNarInfo {
    UploadPathNarInfo {
        cache: cache.parse().expect("cache name"),
        store_path_hash: path_hash(store_path).parse().expect("hash"),
        store_path: store_path.to_owned(),
        references: Vec::new(),
        system: Some("x86_64-linux".into()),
        deriver: None,
        sigs: Vec::new(),
        ca: None,
        nar_hash: Sha256Hash::digest(nar),
        nar_size: nar.len() as u64,
    }
}

/// Starts an `upload-path` of `nar` on a raw connection to the server at
/// `url` and sends the first half of the body only, as a client that dies
/// midway would; the caller decides when the connection goes.
pub fn send_half_an_upload(
    url: &str,
    token: &str,
    info: &UploadPathNarInfo,
    nar: &[u8],
) -> std::net::TcpStream {
    use std::io::Write;
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         X-Attic-Nar-Info: {}\r\nContent-Length: {}\r\n\r\n",
        serde_json::to_string(info).expect("json"),
        nar.len()
    )
    .expect("headers");
    stream
        .write_all(&nar[..nar.len() / 2])
        .expect("half the body");
    stream
}
