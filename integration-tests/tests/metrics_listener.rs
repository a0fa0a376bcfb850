//! `/metrics` is for operators: served on the `metrics-listen` listener,
//! and on the public one only to holders of `metrics-token`, because even
//! a global counter (`attic_stored_bytes_total`) tells a pusher whether
//! another tenant already stored what it pushed.

use attic::nar::NarNode;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for};
use reqwest::{Method, StatusCode};

/// `attic_stored_bytes_total` as `api` reads it, if it can.
async fn stored_bytes(api: &Api, token: Option<&str>) -> (StatusCode, Option<u64>) {
    let response = api
        .request(Method::GET, "/metrics", token)
        .send()
        .await
        .expect("GET /metrics");
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = text.lines().find_map(|line| {
        line.strip_prefix("attic_stored_bytes_total ")?
            .trim()
            .parse()
            .ok()
    });
    (status, value)
}

#[tokio::test]
async fn a_tenant_cannot_read_the_stored_bytes_that_tell_what_another_stored() {
    let server = TestServer::start();
    let public = Api::new(&server.url);
    public.create_cache(&server.root_token, "a", false).await;
    public.create_cache(&server.root_token, "b", false).await;
    let tenant_b = server.make_token(&["--pull", "b", "--push", "b"]);
    let nar = NarNode::Regular {
        executable: false,
        contents: vec![3u8; 100 * 1024],
    }
    .to_nar();
    public
        .upload_ok(
            &server.root_token,
            &nar_info_for("a", &fake_store_path("secret"), &nar),
            nar,
        )
        .await;
    // Tenant b, with or without its token, finds no /metrics to read.
    for token in [None, Some(tenant_b.as_str())] {
        let (status, value) = stored_bytes(&public, token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{token:?}");
        assert_eq!(value, None);
    }
    // The operators' listener serves it, and nothing but the probes.
    let operators = Api::new(&server.metrics_url);
    let (status, value) = stored_bytes(&operators, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(value.is_some_and(|v| v > 0), "{value:?}");
    assert_eq!(operators.get_text("/_health").await.0, StatusCode::OK);
    assert_eq!(
        operators
            .status(Some(&server.root_token), "/a/nix-cache-info")
            .await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_public_listener_serves_metrics_only_with_the_metrics_token() {
    let token = "metrics-0123456789abcdef";
    let server = TestServer::start_with_config(&format!("metrics-token = \"{token}\"\n"));
    let public = Api::new(&server.url);
    assert_eq!(
        stored_bytes(&public, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        stored_bytes(&public, Some(&server.root_token)).await.0,
        StatusCode::UNAUTHORIZED,
        "a cache token is not the metrics token"
    );
    assert_eq!(
        stored_bytes(&public, Some("metrics-0123456789abcdeX"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, value) = stored_bytes(&public, Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value, Some(0));
}
