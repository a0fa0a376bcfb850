//! CI without long-lived secrets: a local OpenID Connect issuer, run by
//! the test over HTTP (discovery, JWKS, RS256 and ES256 keys, and GitHub
//! Actions' token service), against a real `atticd` with `[[oidc.issuers]]`.
//! ID tokens are exchanged at `POST /_api/v1/oidc/exchange` for tokens
//! that can do exactly what the first matching rule grants; bad ID tokens
//! are refused; key rotation at the issuer is picked up, and a flood of
//! unknown kids does not make the server hammer the issuer; `attic login
//! --oidc` on a fake GitHub Actions runner pushes with real Nix paths.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use attic::nar::NarNode;
use attic_token::oidc::mint::IdTokenSigner;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::get;
use integration_tests::client::TestClient;
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for, path_hash};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://cache.test";
const GITHUB_REQUEST_TOKEN: &str = "the runner's request token";

/// What the issuer serves, changed by the test as it goes.
struct IssuerState {
    url: String,
    signers: Mutex<Vec<Arc<IdTokenSigner>>>,
    jwks_requests: AtomicUsize,
    /// GitHub's token service: the key it signs with and the claims.
    github: Mutex<Option<(Arc<IdTokenSigner>, Value)>>,
}

/// A local OIDC issuer on a thread of its own (so it serves while the
/// test blocks on `attic` subprocesses).
struct Issuer {
    state: Arc<IssuerState>,
}

impl Issuer {
    fn start(signers: Vec<Arc<IdTokenSigner>>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(IssuerState {
            url,
            signers: Mutex::new(signers),
            jwks_requests: AtomicUsize::new(0),
            github: Mutex::new(None),
        });
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/github-token", get(github_token))
            .with_state(state.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        Self { state }
    }

    fn url(&self) -> &str {
        &self.state.url
    }

    fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    fn publish(&self, signers: Vec<Arc<IdTokenSigner>>) {
        *self.state.signers.lock().expect("lock") = signers;
    }

    /// GitHub-shaped claims from this issuer, valid for five minutes.
    fn github_claims(&self, repository: &str, git_ref: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url(), "aud": AUDIENCE,
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "repository": repository, "ref": git_ref, "environment": "ci",
            "repository_owner": repository.split('/').next(),
            "iat": now, "nbf": now, "exp": now + 300,
        })
    }
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Json<Value> {
    Json(json!({"issuer": state.url, "jwks_uri": format!("{}/jwks", state.url)}))
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Json<Value> {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let keys: Vec<Value> = state
        .signers
        .lock()
        .expect("lock")
        .iter()
        .map(|s| s.jwk())
        .collect();
    Json(json!({ "keys": keys }))
}

/// GitHub Actions' token service: `?audience=` and the runner's bearer
/// token in, `{"value": <ID token>}` out.
async fn github_token(
    State(state): State<Arc<IssuerState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AxumStatus> {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(&format!("bearer {GITHUB_REQUEST_TOKEN}")));
    if !authorized || query.get("api-version").map(String::as_str) != Some("2.0") {
        return Err(AxumStatus::UNAUTHORIZED);
    }
    let github = state.github.lock().expect("lock").clone();
    let (signer, mut claims) = github.ok_or(AxumStatus::NOT_FOUND)?;
    claims["aud"] = json!(query.get("audience").ok_or(AxumStatus::BAD_REQUEST)?);
    Ok(Json(json!({ "value": signer.sign(&claims) })))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The `[[oidc.issuers]]` of these tests: main of acme/app may push to
/// acme-*; any other acme repository or ref may pull from it only.
fn config(issuer: &Issuer) -> String {
    format!(
        "[[oidc.issuers]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n\
         [[oidc.issuers.rules]]\nrepository = \"acme/app\"\nref = \"refs/heads/main\"\n\
         pull = [\"acme-*\"]\npush = [\"acme-*\"]\nvalidity = \"30m\"\n\
         [[oidc.issuers.rules]]\nrepository = \"acme/*\"\npull = [\"acme-*\"]\n",
        issuer.url()
    )
}

/// The status and JSON body of an exchange of `id_token`.
async fn exchange(api: &Api, id_token: &str) -> (StatusCode, Value) {
    let response = api
        .request(Method::POST, "/_api/v1/oidc/exchange", None)
        .json(&json!({ "token": id_token }))
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

/// The minted token of an exchange that must succeed.
async fn exchange_ok(api: &Api, id_token: &str) -> Value {
    let (status, body) = exchange(api, id_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn small_nar(text: &str) -> Vec<u8> {
    NarNode::Regular {
        executable: false,
        contents: text.as_bytes().to_vec(),
    }
    .to_nar()
}

/// The status of pushing a new small path to `cache` with `token`.
async fn push_status(api: &Api, token: &str, cache: &str, name: &str) -> StatusCode {
    let nar = small_nar(name);
    let path = fake_store_path(name);
    api.upload(Some(token), &nar_info_for(cache, &path, &nar), nar)
        .await
        .status()
}

#[tokio::test]
async fn a_matching_id_token_is_exchanged_for_a_token_granting_what_its_rule_grants() {
    let rsa = Arc::new(IdTokenSigner::generate_rs256("rsa-1"));
    let ec = Arc::new(IdTokenSigner::generate_es256("ec-1"));
    let issuer = Issuer::start(vec![rsa.clone(), ec.clone()]);
    let server = TestServer::start_with_config(&config(&issuer));
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "acme-app", false)
        .await;
    api.create_cache(&server.root_token, "other", false).await;
    let seeded = small_nar("seeded");
    let seeded_path = fake_store_path("seeded");
    api.upload_ok(
        &server.root_token,
        &nar_info_for("acme-app", &seeded_path, &seeded),
        seeded,
    )
    .await;
    let narinfo = format!("/acme-app/{}.narinfo", path_hash(&seeded_path));

    // main of acme/app, RS256: the first rule, push and pull on acme-*.
    let main = exchange_ok(
        &api,
        &rsa.sign(&issuer.github_claims("acme/app", "refs/heads/main")),
    )
    .await;
    let host = issuer.url().trim_start_matches("http://");
    assert_eq!(
        main["subject"],
        format!("oidc:{host}:repo:acme/app:ref:refs/heads/main")
    );
    let expires_at = main["expires_at"].as_u64().expect("expires_at");
    assert!(
        (now() + 1500..=now() + 1800).contains(&expires_at),
        "30 minutes: {expires_at}"
    );
    let token = main["token"].as_str().expect("token");
    assert_eq!(
        push_status(&api, token, "acme-app", "from-main").await,
        StatusCode::OK
    );
    assert_eq!(api.status(Some(token), &narinfo).await, StatusCode::OK);
    assert_eq!(
        push_status(&api, token, "other", "into-other").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.try_create_cache(token, "acme-new", false)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );

    // Another ref of the same repository, ES256: the second rule, pull only.
    let feature = exchange_ok(
        &api,
        &ec.sign(&issuer.github_claims("acme/app", "refs/heads/feature")),
    )
    .await;
    let token = feature["token"].as_str().expect("token");
    assert_eq!(api.status(Some(token), &narinfo).await, StatusCode::OK);
    assert_eq!(
        push_status(&api, token, "acme-app", "from-feature").await,
        StatusCode::FORBIDDEN
    );

    // The ID token may come as a bearer token too.
    let response = api
        .request(
            Method::POST,
            "/_api/v1/oidc/exchange",
            Some(&rsa.sign(&issuer.github_claims("acme/lib", "refs/heads/main"))),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);

    // A verified token that no rule matches: 403.
    let (status, body) = exchange(
        &api,
        &rsa.sign(&issuer.github_claims("evil/app", "refs/heads/main")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "NoMatchingRule");

    // Revoking the workload's subject revokes what was minted for it, and
    // stops further exchanges.
    let main_token = main["token"].as_str().expect("token");
    let subject = main["subject"].as_str().expect("subject");
    let output = server.atticadm(&["revoke-token", "--subject", subject]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        api.status(Some(main_token), &narinfo).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = exchange(
        &api,
        &rsa.sign(&issuer.github_claims("acme/app", "refs/heads/main")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_id_tokens_are_refused_with_401_and_no_reason_given_to_the_client() {
    let rsa = Arc::new(IdTokenSigner::generate_rs256("rsa-1"));
    let ec = Arc::new(IdTokenSigner::generate_es256("ec-1"));
    let issuer = Issuer::start(vec![rsa.clone(), ec.clone()]);
    let server = TestServer::start_with_config(&config(&issuer));
    let api = Api::new(&server.url);
    let good = || issuer.github_claims("acme/app", "refs/heads/main");
    let with = |field: &str, value: Value| {
        let mut claims = good();
        claims[field] = value;
        claims
    };
    let impostor = IdTokenSigner::generate_rs256("rsa-1");
    let ec_under_rsa_kid = IdTokenSigner::generate_es256("rsa-1");
    let unsigned = {
        let header = json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).to_string();
        let token = rsa.sign_with_header(&header, &good().to_string());
        format!("{}.", token.rsplit_once('.').expect("parts").0)
    };
    let cases = [
        ("expired", rsa.sign(&with("exp", json!(now() - 3600)))),
        (
            "wrong audience",
            rsa.sign(&with("aud", json!("https://elsewhere.test"))),
        ),
        (
            "unknown issuer",
            rsa.sign(&with(
                "iss",
                json!("https://token.actions.githubusercontent.com"),
            )),
        ),
        ("alg none", unsigned),
        ("bad signature", impostor.sign(&good())),
        ("alg not the key's", ec_under_rsa_kid.sign(&good())),
        (
            "crit header",
            rsa.sign_with_header(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["b64"], "b64": false}).to_string(),
                &good().to_string(),
            ),
        ),
        ("oversized", "a.".repeat(9_000)),
        ("not a JWT", "garbage".to_owned()),
    ];
    for (what, token) in cases {
        let (status, body) = exchange(&api, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"], "InvalidIdToken", "{what}: {body}");
        let message = body["message"].as_str().expect("message");
        assert_eq!(
            message, "the ID token was refused; the server's log says why",
            "{what}"
        );
    }
    // The body is the credential, so it is bounded before it is read.
    let response = api
        .request(Method::POST, "/_api/v1/oidc/exchange", None)
        .json(&json!({ "token": "a".repeat(40_000) }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The good token still works: nothing above poisoned the key cache.
    exchange_ok(&api, &rsa.sign(&good())).await;
}

#[tokio::test]
async fn key_rotation_at_the_issuer_is_picked_up_and_unknown_kids_do_not_flood_it() {
    let old = Arc::new(IdTokenSigner::generate_rs256("2026-old"));
    let issuer = Issuer::start(vec![old.clone()]);
    let server = TestServer::start_with_config(&config(&issuer));
    let api = Api::new(&server.url);
    let claims = issuer.github_claims("acme/app", "refs/heads/main");
    exchange_ok(&api, &old.sign(&claims)).await;
    exchange_ok(&api, &old.sign(&claims)).await;
    assert_eq!(issuer.jwks_requests(), 1, "keys are held between exchanges");

    // The issuer rotates: a token from the new key is taken at once.
    let new = Arc::new(IdTokenSigner::generate_es256("2026-new"));
    issuer.publish(vec![new.clone()]);
    exchange_ok(&api, &new.sign(&claims)).await;
    assert_eq!(issuer.jwks_requests(), 2);
    // The retired key no longer verifies anything.
    let (status, _) = exchange(&api, &old.sign(&claims)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Tokens naming made-up kids cost the issuer at most one more fetch.
    for i in 0..20 {
        let stranger = IdTokenSigner::generate_es256(&format!("made-up-{i}"));
        let (status, _) = exchange(&api, &stranger.sign(&claims)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        issuer.jwks_requests() <= 3,
        "{} JWKS fetches",
        issuer.jwks_requests()
    );
    exchange_ok(&api, &new.sign(&claims)).await;
}

#[tokio::test]
async fn attic_login_oidc_on_github_actions_pushes_what_the_rule_allows() {
    let rsa = Arc::new(IdTokenSigner::generate_rs256("rsa-1"));
    let issuer = Issuer::start(vec![rsa.clone()]);
    *issuer.state.github.lock().expect("lock") = Some((
        rsa.clone(),
        issuer.github_claims("acme/app", "refs/heads/main"),
    ));
    let server = TestServer::start_with_config(&config(&issuer));
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "acme-app", false)
        .await;
    api.create_cache(&server.root_token, "other", false).await;

    let client = TestClient::new();
    let login = |audience: &str| {
        client
            .command("attic")
            .args([
                "login",
                "ci",
                &server.url,
                "--oidc",
                "--oidc-audience",
                audience,
            ])
            .env(
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                format!("{}/github-token?api-version=2.0", issuer.url()),
            )
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GITHUB_REQUEST_TOKEN)
            .env_remove("ATTIC_OIDC_TOKEN")
            .output()
            .expect("run attic")
    };
    // The audience asked of GitHub must be the server's.
    let refused = login("https://elsewhere.test");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("refused the ID token"), "{said}");

    let output = login(AUDIENCE);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("repo:acme/app:ref:refs/heads/main"), "{said}");

    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 64 * 1024);
    let out = client.attic_ok(&["push", "acme-app", closure.top()]);
    assert!(out.contains("pushed 3 paths"), "{out}");
    let refused = client.attic(&["push", "other", closure.top()]);
    assert!(
        !refused.status.success(),
        "pushing to other must be refused"
    );

    // A token from a file (GitLab CI's way) works the same.
    let file = dir.path().join("id-token");
    std::fs::write(
        &file,
        rsa.sign(&issuer.github_claims("acme/app", "refs/heads/main")),
    )
    .expect("write");
    let other_client = TestClient::new();
    other_client.attic_ok(&[
        "login",
        "ci",
        &server.url,
        "--oidc",
        "--oidc-token-file",
        &file.display().to_string(),
    ]);
    let out = other_client.attic_ok(&["push", "acme-app", closure.top()]);
    assert!(out.contains("nothing to push"), "{out}");
}
