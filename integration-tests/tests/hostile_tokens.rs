//! Tokens are untrusted input: anyone who ever held one can append a block
//! of any Datalog to it. Whatever they append, deciding the token costs the
//! server what deciding a normal one does, because nothing in a token is
//! evaluated (`token/src/claims.rs`). The CPU cost is measured by
//! `scripts/bench --hostile`, not timed here.

use integration_tests::hostile::closure_heavy_token;
use integration_tests::server::TestServer;
use integration_tests::upload::Api;
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn whoami(api: &Api, token: &str) -> (StatusCode, Value) {
    let response = api
        .request(Method::GET, "/_api/v1/whoami", Some(token))
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

fn attenuate(server: &TestServer, token: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["attenuate-token", token];
    all.extend_from_slice(args);
    server.atticadm(&all)
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_token_built_to_cost_seconds_is_refused_unevaluated() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = server.make_token(&["--pull", "*"]);
    let hostile = closure_heavy_token(&token);

    // Eight in flight: evaluated, they held both cores for a minute.
    let replies = futures::future::join_all((0..8).map(|_| whoami(&api, &hostile))).await;
    for (status, body) in replies {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "InvalidToken", "{body}");
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains("attenuate-token"), "{body}");
    }
    let (status, _) = api.get_text("/_health").await;
    assert_eq!(status, StatusCode::OK);

    // The parent it was appended to is untouched.
    let (status, body) = whoami(&api, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Revoked or expired, the same block is refused the same way: its
    // shape is judged before anything else about it.
    let expiring = stdout(&attenuate(&server, &token, &["--validity", "1ms"]));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, body) = whoami(&api, &closure_heavy_token(&expiring)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let revoked = stdout(&attenuate(&server, &token, &["--cache", "b"]));
    stdout(&server.atticadm(&["revoke-token", &revoked]));
    let (status, body) = whoami(&api, &closure_heavy_token(&revoked)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn attenuate_token_stops_at_the_block_limit_the_server_enforces() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let mut token = server.make_token(&["--pull", "*"]);
    // The authority block and seven attenuations: eight blocks, accepted.
    for _ in 0..7 {
        token = stdout(&attenuate(&server, &token, &["--cache", "a*"]));
    }
    let (status, body) = whoami(&api, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A ninth is refused by the tool, saying why, instead of printing a
    // token the server would refuse.
    let output = attenuate(&server, &token, &["--cache", "a*"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at most 8 blocks"), "{stderr}");
}
