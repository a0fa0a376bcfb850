//! Input that must be refused with a clear error and change nothing:
//! strings that would reach a line format, misspelt settings, bodies
//! over the limits.

use integration_tests::server::TestServer;
use integration_tests::upload::Api;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn reply(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test]
async fn a_store_dir_with_a_line_break_is_refused() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    let injected = "/nix/store\nPriority: 0";
    let (status, body) = reply(
        api.request(Method::POST, "/_api/v1/cache-config/c", Some(token))
            .json(&json!({
                "keypair": "Generate", "is_public": true, "store_dir": injected,
                "priority": 41, "upstream_cache_key_names": [],
            }))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "InvalidStoreDir");

    api.create_cache(token, "c", true).await;
    let (status, body) = reply(
        api.request(Method::PATCH, "/_api/v1/cache-config/c", Some(token))
            .json(&json!({ "store_dir": injected }))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let info = api
        .request(Method::GET, "/c/nix-cache-info", None)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text");
    assert!(info.contains("StoreDir: /nix/store\n"), "{info}");
    assert!(!info.contains("Priority: 0"), "{info}");
}

#[tokio::test]
async fn a_patch_with_an_unknown_field_is_refused_and_changes_nothing() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", false).await;
    let (status, body) = reply(
        api.request(Method::PATCH, "/_api/v1/cache-config/c", Some(token))
            .json(&json!({ "is_publik": true, "priority": 7 }))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "UnknownField");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("is_publik"),
        "{body}"
    );
    let (_, config) = reply(
        api.request(Method::GET, "/_api/v1/cache-config/c", Some(token))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(config["is_public"], false);
    assert_eq!(config["priority"], 41, "nothing changed: {config}");
}

/// 100,000 hashes, the documented limit, are answered; one more, or a
/// body over the size limit, is 413.
#[tokio::test]
async fn get_missing_paths_answers_up_to_its_limit_and_413_past_it() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", false).await;
    // Digits are nix-base32 characters: each number is a valid hash.
    let hashes = |n: usize| -> Vec<String> { (0..n).map(|i| format!("{i:0>32}")).collect() };
    let ask = |hashes: Vec<String>| {
        let api = api.clone();
        let token = token.clone();
        async move {
            api.request(Method::POST, "/_api/v1/get-missing-paths", Some(&token))
                .json(&json!({ "cache": "c", "store_path_hashes": hashes }))
                .send()
                .await
                .expect("request")
        }
    };
    let (status, body) = reply(ask(hashes(100_000)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["missing_paths"].as_array().expect("list").len(),
        100_000
    );
    let (status, body) = reply(ask(hashes(100_001)).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "TooLarge");
    let (status, body) = reply(ask(hashes(300_000)).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "TooLarge");
}

/// The head of the next HTTP response on a raw connection (up to its
/// blank line), failing on a reset or a close before it.
async fn response_head(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = reader
            .read(&mut buffer)
            .await
            .expect("the answer, not a reset connection");
        assert!(n > 0, "closed without an answer");
        response.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// A body refused before it was all read (here: far past the JSON limit)
/// is still read to its end before the answer, so a client that is still
/// sending gets the 413, not a reset connection or a broken pipe.
#[tokio::test]
async fn a_client_still_sending_a_refused_body_gets_the_413() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start();
    let address = server.url.trim_start_matches("http://").to_owned();
    // Far more than the socket buffers hold, so the server must read it.
    let body = vec![b' '; 40 << 20];
    let head = format!(
        "POST /_api/v1/get-missing-paths HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        server.root_token,
        body.len()
    );
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // The writer comes back rather than being dropped: dropping it would
    // half-close the connection, which the server takes for a goodbye.
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&body).await?;
        writer.flush().await.map(|()| writer)
    });
    let response = response_head(&mut reader).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    sending
        .await
        .expect("the sending task")
        .expect("the whole body was taken, with no broken pipe");
}

/// A client that waits for `100 Continue` before sending its body is
/// refused at once, never asked to send a body only to have it dropped.
#[tokio::test]
async fn a_refused_request_that_expects_100_continue_is_not_asked_for_its_body() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start();
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let head = format!(
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer garbage\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        40 << 20
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    let response = response_head(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
}

#[tokio::test]
async fn an_oversized_token_is_refused_with_401() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    // A real token with a long tail of junk appended: too large to parse.
    let fat = format!("{}{}", server.root_token, "A".repeat(16 * 1024));
    let (status, body) = reply(
        api.request(Method::GET, "/_api/v1/cache-config/c", Some(&fat))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "InvalidToken");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("larger"),
        "{body}"
    );
}

/// Generated keys are named from the configuration, never from a request
/// header, and each rotation gets a new name, so Nix can trust the old
/// and the new key side by side while clients move over.
#[tokio::test]
async fn key_names_ignore_the_host_header_and_count_rotations() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    let response = api
        .request(Method::POST, "/_api/v1/cache-config/c", Some(token))
        .header("Host", "evil.example")
        .json(&json!({
            "keypair": "Generate", "is_public": false, "store_dir": "/nix/store",
            "priority": 41, "upstream_cache_key_names": [],
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let key_name = |key: String| key.split(':').next().expect("name").to_owned();
    assert_eq!(key_name(api.public_key(token, "c").await), "c-1");
    for expected in ["c-2", "c-3"] {
        let response = api
            .request(Method::PATCH, "/_api/v1/cache-config/c", Some(token))
            .header("Host", "evil.example")
            .json(&json!({ "keypair": "Generate" }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(key_name(api.public_key(token, "c").await), expected);
    }
}

/// An upload without a valid token is refused before its metadata
/// preamble is read: the answer is 401, not a complaint that the declared
/// megabyte of preamble never came.
#[tokio::test]
async fn an_upload_is_authenticated_before_its_preamble_is_read() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    for token in [None, Some("garbage")] {
        let (status, body) = reply(
            api.request(Method::PUT, "/_api/v1/upload-path", token)
                .header("X-Attic-Nar-Info-Preamble-Size", "1048576")
                .body(vec![b'{'; 100])
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
    }
}

/// `whoami` tells a client whether the server takes its token, so that
/// `attic login` can refuse a bad one before saving it.
#[tokio::test]
async fn whoami_accepts_valid_tokens_and_names_what_is_wrong_with_others() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let ask = |token: Option<String>| {
        let request = api.request(Method::GET, "/_api/v1/whoami", token.as_deref());
        async move { reply(request.send().await.expect("request")).await }
    };
    let (status, body) = ask(None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"authenticated": false, "subject": null}));

    let ci = server.make_token(&["--pull", "team-*"]);
    let (status, body) = ask(Some(ci)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"authenticated": true, "subject": "test"}));

    let (status, body) = ask(Some("garbage".into())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "InvalidToken");

    let short = server.atticadm(&[
        "make-token",
        "--sub",
        "s",
        "--validity",
        "1s",
        "--pull",
        "*",
    ]);
    assert!(short.status.success());
    let short = String::from_utf8(short.stdout).expect("utf-8");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (status, body) = ask(Some(short.trim().to_owned())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("expired"),
        "{body}"
    );
}

/// `allowed-hosts` refuses other Host headers, but not the health check,
/// which load balancers send by address; it checks the database.
#[tokio::test]
async fn allowed_hosts_refuse_other_hosts_but_never_the_health_check() {
    let server = TestServer::start_with_config("allowed-hosts = [\"cache.example.com\"]\n");
    let client = reqwest::Client::new();
    let get = |path: &str, host: &str| {
        client
            .get(format!("{}{path}", server.url))
            .header("Host", host)
            .send()
    };
    let refused = get("/c/nix-cache-info", "evil.example.com")
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(
        refused
            .text()
            .await
            .expect("body")
            .contains("HostNotAllowed")
    );
    let health = get("/_health", "10.0.0.7:8080").await.expect("request");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.expect("body"), "OK");
    let allowed = get("/_health", "cache.example.com").await.expect("request");
    assert_eq!(allowed.status(), StatusCode::OK);
}
