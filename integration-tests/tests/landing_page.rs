//! The pages a person opening the server or a cache in a browser sees,
//! rendered by a real headless Chromium: how to use a public cache, the
//! list of public caches, and nothing at all about a private one.

use integration_tests::browser::Browser;
use integration_tests::gc::store_path;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, noise};
use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// GETs `path` as a browser would, with an optional bearer token.
async fn get_html(api: &Api, token: Option<&str>, path: &str) -> (StatusCode, String) {
    let response = api
        .request(Method::GET, path, token)
        .header(ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn a_browser_sees_how_to_use_a_public_cache_and_nothing_of_a_private_one() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let root = &server.root_token;
    api.create_cache(root, "team-pub", true).await;
    api.create_cache(root, "team-secret", false).await;
    api.push_path(root, "team-pub", &store_path(&[("f", &noise(200_000, 1))]))
        .await;
    api.push_path(
        root,
        "team-secret",
        &store_path(&[("f", &noise(300_000, 2))]),
    )
    .await;
    let old_key = api.public_key(root, "team-pub").await;
    api.configure(
        root,
        "team-pub",
        json!({"rotate_keypair": {"overlap_seconds": 3600}}),
    )
    .await;
    let new_key = api.public_key(root, "team-pub").await;
    let secret_key = api.public_key(root, "team-secret").await;

    let browser = Browser::start().await;

    browser.open(&format!("{}/team-pub", server.url)).await;
    let page = browser.visible_text().await;
    assert!(browser.title().await.contains("team-pub"));
    assert!(page.contains("attic use team-pub"), "{page}");
    assert!(
        page.contains(&format!("extra-substituters = {}/team-pub", server.url)),
        "{page}"
    );
    assert!(
        page.contains(&format!("extra-trusted-public-keys = {new_key} {old_key}")),
        "both keys are trusted during the rotation's overlap: {page}"
    );
    assert!(page.contains("KiB"), "the cache's size: {page}");
    assert!(!browser.source().await.contains("<script"));

    browser.open(&format!("{}/", server.url)).await;
    let index = browser.visible_text().await;
    assert!(index.contains("team-pub"), "{index}");
    assert!(!index.contains("team-secret"), "{index}");

    browser.open(&format!("{}/team-secret", server.url)).await;
    let private = browser.source().await;
    browser.open(&format!("{}/no-such-cache", server.url)).await;
    let missing = browser.source().await;
    assert_eq!(private, missing, "a private cache looks missing");
    assert!(!private.contains("team-secret"), "{private}");
    assert!(!private.contains(&secret_key), "{private}");
    assert!(!private.contains("KiB"), "{private}");
    browser.close().await;

    // Over HTTP the same: one 404, byte for byte, for both.
    let (status, private) = get_html(&api, None, "/team-secret").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        (status, private),
        get_html(&api, None, "/no-such-cache").await
    );
    let other_tenant = server.make_token(&["--pull", "team-pub"]);
    let (status, private) = get_html(&api, Some(&other_tenant), "/team-secret").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(private, get_html(&api, None, "/no-such-cache").await.1);
    let (_, index) = get_html(&api, Some(&other_tenant), "/").await;
    assert!(!index.contains("team-secret"), "{index}");

    // A token that may pull it shows the private cache.
    let puller = server.make_token(&["--pull", "team-secret"]);
    let (status, page) = get_html(&api, Some(&puller), "/team-secret").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&secret_key), "{page}");
    assert!(page.contains("attic use team-secret"), "{page}");
}

#[tokio::test]
async fn callers_that_are_not_browsers_get_no_page() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "team-pub", true).await;
    for path in ["/", "/team-pub"] {
        let response = api
            .request(Method::GET, path, None)
            .header(ACCEPT, "*/*")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"], "NoSuchRoute", "{path}");
    }
}

/// Behind a CDN, the page gives the substituter URL clients must use, the
/// one `attic use` writes, not the address the browser reached.
#[tokio::test]
async fn the_page_gives_the_configured_substituter_endpoint() {
    let server =
        TestServer::start_with_config("substituter-endpoint = \"https://nix.example.com\"\n");
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "team-pub", true).await;
    let (status, page) = get_html(&api, None, "/team-pub").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("extra-substituters = https://nix.example.com/team-pub\n"),
        "{page}"
    );
    assert!(!page.contains(&server.url), "{page}");
}
