//! Attic's JWTs, minted exactly as Attic's `atticadm make-token` mints
//! them, against a server configured with Attic's `[jwt]` section: every
//! route class, wildcard precedence, every refusal, revocation by subject,
//! real Nix with a JWT in its netrc, and biscuit tokens beside them.

use attic::nar::NarNode;
use attic_token::Permission::{
    self, ConfigureCache, ConfigureCacheRetention, CreateCache, Delete, DestroyCache, Pull, Push,
};
use attic_token::jwt::mint::{AtticClaims, Signer};
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for, path_hash};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn hs256() -> Signer {
    Signer::Hs256(b"the secret of this attic server, 32+ bytes".to_vec())
}

fn hs256_section(signer: &Signer) -> String {
    format!(
        "[jwt.signing]\ntoken-hs256-secret-base64 = {:?}\n",
        signer.secret_base64()
    )
}

/// A token as `atticadm make-token --sub SUBJECT --validity 1h` with
/// these grants would make it.
fn make_token(signer: &Signer, subject: &str, grants: &[(Permission, &str)]) -> String {
    signer.sign(&AtticClaims::make_token(subject, 3600, grants).to_json())
}

/// A token whose `caches` map is exactly `caches` (JSON), in that order.
fn token_with_caches(signer: &Signer, caches: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    signer.sign(&format!(
        "{{\"exp\":{},\"nbf\":{now},\"sub\":\"ordered\",\"https://jwt.attic.rs/v1\":{{\"caches\":{caches}}}}}",
        now + 3600
    ))
}

fn small_nar(text: &str) -> Vec<u8> {
    NarNode::Regular {
        executable: false,
        contents: text.as_bytes().to_vec(),
    }
    .to_nar()
}

/// `cache` created by the root token, holding one path; the path's hash.
async fn cache_with_a_path(server: &TestServer, api: &Api, cache: &str) -> String {
    api.create_cache(&server.root_token, cache, false).await;
    let nar = small_nar(cache);
    let path = fake_store_path(&format!("in-{cache}"));
    api.upload_ok(&server.root_token, &nar_info_for(cache, &path, &nar), nar)
        .await;
    path_hash(&path).to_owned()
}

/// The status of each route class on `cache` with `token`: reads, the
/// push pair, then the cache's settings, retention, creation and
/// destruction last (so the earlier ones see the cache).
async fn route_statuses(
    api: &Api,
    token: &str,
    cache: &str,
    hash: &str,
) -> Vec<(&'static str, StatusCode)> {
    let nar = small_nar(&format!("pushed to {cache}"));
    let path = fake_store_path(&format!("pushed-{cache}"));
    let info = nar_info_for(cache, &path, &nar);
    let config = format!("/_api/v1/cache-config/{cache}");
    let t = Some(token);
    let requests = vec![
        (
            "narinfo",
            api.request(Method::GET, &format!("/{cache}/{hash}.narinfo"), t),
        ),
        (
            "nar",
            api.request(Method::GET, &format!("/{cache}/nar/{hash}.nar"), t),
        ),
        ("GET cache-config", api.request(Method::GET, &config, t)),
        (
            "get-missing-paths",
            api.request(Method::POST, "/_api/v1/get-missing-paths", t)
                .json(&json!({"cache": cache, "store_path_hashes": [hash]})),
        ),
        (
            "upload-path",
            api.request(Method::PUT, "/_api/v1/upload-path", t)
                .header(
                    "X-Attic-Nar-Info",
                    serde_json::to_string(&info).expect("json"),
                )
                .body(nar),
        ),
        (
            "configure",
            api.request(Method::PATCH, &config, t)
                .json(&json!({"priority": 7})),
        ),
        (
            "retention",
            api.request(Method::PATCH, &config, t)
                .json(&json!({"retention_period": {"Period": 60}})),
        ),
        ("destroy", api.request(Method::DELETE, &config, t)),
    ];
    let mut statuses = Vec::new();
    for (name, request) in requests {
        statuses.push((name, request.send().await.expect("request").status()));
    }
    statuses
}

fn expect(statuses: &[(&str, StatusCode)], allowed: &[&str], who: &str) {
    for (route, status) in statuses {
        let expected = if allowed.contains(route) {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(*status, expected, "{who}: {route}");
    }
}

async fn create_status(api: &Api, token: &str, cache: &str) -> StatusCode {
    api.try_create_cache(token, cache, false).await.status()
}

/// Each of Attic's seven permissions, on a wildcard pattern, opens its
/// routes and no other, and nothing outside the pattern.
#[tokio::test]
async fn each_attic_permission_opens_its_routes_on_matching_caches_only() {
    let signer = hs256();
    let server = TestServer::start_with_config(&hs256_section(&signer));
    let api = Api::new(&server.url);
    let cases: [(Permission, &[&str]); 6] = [
        (Pull, &["narinfo", "nar", "GET cache-config"]),
        // A pusher reads the cache's settings too, as Attic's client needs.
        (
            Push,
            &["GET cache-config", "get-missing-paths", "upload-path"],
        ),
        (ConfigureCache, &["configure"]),
        (ConfigureCacheRetention, &["retention"]),
        (DestroyCache, &["destroy"]),
        (Delete, &[]),
    ];
    for (i, (permission, allowed)) in cases.iter().enumerate() {
        let cache = format!("team-{i}");
        let hash = cache_with_a_path(&server, &api, &cache).await;
        api.create_cache(&server.root_token, &format!("other-{i}"), false)
            .await;
        let token = make_token(&signer, "alice", &[(*permission, "team-*")]);
        let statuses = route_statuses(&api, &token, &cache, &hash).await;
        expect(&statuses, allowed, &format!("{permission} on {cache}"));
        let statuses = route_statuses(&api, &token, &format!("other-{i}"), &hash).await;
        expect(&statuses, &[], &format!("{permission} on other-{i}"));
    }
    // Creating: only with `cc`, only names the pattern matches.
    let creator = make_token(&signer, "alice", &[(CreateCache, "team-*")]);
    assert_eq!(
        create_status(&api, &creator, "team-new").await,
        StatusCode::OK
    );
    assert_eq!(
        create_status(&api, &creator, "elsewhere").await,
        StatusCode::FORBIDDEN
    );
    let puller = make_token(&signer, "alice", &[(Pull, "*")]);
    assert_eq!(
        create_status(&api, &puller, "team-newer").await,
        StatusCode::FORBIDDEN
    );
    // The biscuit root token keeps working on the same server.
    assert_eq!(
        api.status(Some(&server.root_token), "/_api/v1/cache-config/team-new")
            .await,
        StatusCode::OK
    );
}

/// An exact name wins; otherwise the first matching pattern in the token
/// decides alone, as in Attic.
#[tokio::test]
async fn the_exact_name_then_the_first_matching_pattern_decides() {
    let signer = hs256();
    let server = TestServer::start_with_config(&hs256_section(&signer));
    let api = Api::new(&server.url);
    let hash_a = cache_with_a_path(&server, &api, "team-a").await;
    let hash_b = cache_with_a_path(&server, &api, "team-b").await;
    let token = token_with_caches(
        &signer,
        "{\"*\":{\"r\":1},\"team-*\":{\"r\":1,\"w\":1},\"team-a\":{\"w\":1}}",
    );
    let missing = |cache: &str, hash: &str| {
        api.request(Method::POST, "/_api/v1/get-missing-paths", Some(&token))
            .json(&json!({"cache": cache, "store_path_hashes": [hash]}))
            .send()
    };
    let narinfo = |cache: &str, hash: &str| {
        let path = format!("/{cache}/{hash}.narinfo");
        let (api, token) = (api.clone(), token.clone());
        async move { api.status(Some(&token), &path).await }
    };
    // team-a: its exact entry (push only), though two patterns match too.
    assert_eq!(
        missing("team-a", &hash_a).await.expect("send").status(),
        StatusCode::OK
    );
    assert_eq!(narinfo("team-a", &hash_a).await, StatusCode::FORBIDDEN);
    // team-b: `*` comes first and grants pull alone; `team-*` never applies.
    assert_eq!(narinfo("team-b", &hash_b).await, StatusCode::OK);
    assert_eq!(
        missing("team-b", &hash_b).await.expect("send").status(),
        StatusCode::FORBIDDEN
    );
}

/// Expired, not yet valid, wrong issuer or audience, another secret,
/// unsigned, tampered: each 401, while a well-bound token works.
#[tokio::test]
async fn jwts_attic_would_refuse_get_401() {
    let signer = hs256();
    let config = format!(
        "[jwt]\ntoken-bound-issuer = \"https://attic.example\"\n\
         token-bound-audiences = [\"cache\", \"ci\"]\n{}",
        hs256_section(&signer)
    );
    let server = TestServer::start_with_config(&config);
    let api = Api::new(&server.url);
    let hash = cache_with_a_path(&server, &api, "private").await;
    let path = format!("/private/{hash}.narinfo");
    let bound = |mut claims: AtticClaims| {
        claims.issuer = Some("https://attic.example".into());
        claims.audiences = Some(vec!["ci".into()]);
        claims
    };
    let good = bound(AtticClaims::make_token("alice", 3600, &[(Pull, "*")]));
    assert_eq!(
        api.status(Some(&signer.sign(&good.to_json())), &path).await,
        StatusCode::OK
    );

    let mut expired = good.clone();
    expired.expires_at = expired.not_before - 1;
    let mut early = good.clone();
    early.not_before += 600;
    let mut wrong_issuer = good.clone();
    wrong_issuer.issuer = Some("https://elsewhere".into());
    let mut no_issuer = good.clone();
    no_issuer.issuer = None;
    let mut wrong_audience = good.clone();
    wrong_audience.audiences = Some(vec!["other".into()]);
    let other_secret = Signer::Hs256(b"another server's secret".to_vec());
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode("{\"alg\":\"none\",\"typ\":\"JWT\"}"),
            b64.encode(good.to_json())
        )
    };
    let tampered = {
        let token = signer.sign(&good.to_json());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut widened = good.clone();
        widened.caches = vec![("*".into(), Permission::ALL.to_vec())];
        use base64::Engine;
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(widened.to_json());
        parts.join(".")
    };
    let refused = [
        ("expired", signer.sign(&expired.to_json())),
        ("not yet valid", signer.sign(&early.to_json())),
        ("wrong issuer", signer.sign(&wrong_issuer.to_json())),
        ("no issuer", signer.sign(&no_issuer.to_json())),
        ("wrong audience", signer.sign(&wrong_audience.to_json())),
        ("another secret", other_secret.sign(&good.to_json())),
        ("alg none", unsigned),
        ("tampered", tampered),
        (
            "RS256 on an HS256 server",
            Signer::generate_rs256().sign(&good.to_json()),
        ),
        ("oversize", format!("{}.{}.x", "a".repeat(9000), "b")),
    ];
    for (what, token) in refused {
        assert_eq!(
            api.status(Some(&token), &path).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
}

/// `atticadm revoke-token --subject` refuses that subject's JWTs and
/// biscuit tokens alike, and nobody else's; `[jwt.blacklist]` too.
#[tokio::test]
async fn revoking_a_subject_refuses_its_jwts_and_biscuit_tokens() {
    let signer = hs256();
    let config = format!(
        "[jwt.blacklist]\nsubjects = [\"mallory\"]\n{}",
        hs256_section(&signer)
    );
    let server = TestServer::start_with_config(&config);
    let api = Api::new(&server.url);
    let hash = cache_with_a_path(&server, &api, "c").await;
    let path = format!("/c/{hash}.narinfo");
    let jwt = |subject: &str| make_token(&signer, subject, &[(Pull, "c")]);
    let biscuit = |subject: &str| {
        let output = server.atticadm(&[
            "make-token",
            "--sub",
            subject,
            "--validity",
            "1h",
            "--pull",
            "c",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let (alice_jwt, alice_biscuit) = (jwt("alice"), biscuit("alice"));
    let (bob_jwt, bob_biscuit) = (jwt("bob"), biscuit("bob"));
    for token in [&alice_jwt, &alice_biscuit, &bob_jwt, &bob_biscuit] {
        assert_eq!(api.status(Some(token), &path).await, StatusCode::OK);
    }
    let output = server.atticadm(&["revoke-token", "--subject", "alice"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for token in [&alice_jwt, &alice_biscuit, &jwt("alice")] {
        assert_eq!(
            api.status(Some(token), &path).await,
            StatusCode::UNAUTHORIZED
        );
    }
    for token in [&bob_jwt, &bob_biscuit] {
        assert_eq!(api.status(Some(token), &path).await, StatusCode::OK);
    }
    // The configured blacklist, for both kinds.
    for token in [jwt("mallory"), biscuit("mallory")] {
        assert_eq!(
            api.status(Some(&token), &path).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // A JWT cannot be revoked as a token: the error says what to do.
    let output = server.atticadm(&["revoke-token", &bob_jwt]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--subject"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Rewrites the server's config as `original` without `token-root-key`
/// and with `section` appended; then restarts it.
fn reconfigure_without_root_key(server: &mut TestServer, original: &str, section: &str) {
    server.kill();
    let path = server.config_path();
    let text = original;
    let mut kept: String = text
        .lines()
        .filter(|l| !l.starts_with("token-root-key"))
        .map(|l| format!("{l}\n"))
        .collect();
    kept.push_str(section);
    std::fs::write(&path, kept).expect("write config");
    server.restart();
}

/// RS256 from Attic's private key: JWTs verify, and without
/// `token-root-key` biscuit tokens use a key derived from it. From the
/// public key alone: JWTs verify, biscuit tokens cannot be made, and
/// `--check-config` and `make-token` say so.
#[tokio::test]
async fn rs256_from_the_private_key_or_the_public_key_alone() {
    let signer = Signer::generate_rs256();
    let mut server = TestServer::start();
    let api = Api::new(&server.url);
    let hash = cache_with_a_path(&server, &api, "c").await;
    let path = format!("/c/{hash}.narinfo");
    let jwt = make_token(&signer, "ci", &[(Pull, "c"), (Push, "c")]);
    let original = std::fs::read_to_string(server.config_path()).expect("read config");

    reconfigure_without_root_key(
        &mut server,
        &original,
        &format!(
            "[jwt.signing]\ntoken-rs256-secret-base64 = {:?}\n",
            signer.secret_base64()
        ),
    );
    // A new client: the old one's pooled connections died with the server.
    let api = Api::new(&server.url);
    assert_eq!(api.status(Some(&jwt), &path).await, StatusCode::OK);
    // The old root token was signed with the removed key.
    assert_eq!(
        api.status(Some(&server.root_token), &path).await,
        StatusCode::UNAUTHORIZED
    );
    let derived = server.make_token(&["--pull", "c"]);
    assert_eq!(api.status(Some(&derived), &path).await, StatusCode::OK);

    let public = signer.public_key_base64().expect("RSA");
    reconfigure_without_root_key(
        &mut server,
        &original,
        &format!("[jwt.signing]\ntoken-rs256-pubkey-base64 = {public:?}\n"),
    );
    let api = Api::new(&server.url);
    assert_eq!(api.status(Some(&jwt), &path).await, StatusCode::OK);
    assert_eq!(
        api.status(Some(&derived), &path).await,
        StatusCode::UNAUTHORIZED
    );
    let output = server.atticadm(&[
        "make-token",
        "--sub",
        "x",
        "--validity",
        "1h",
        "--pull",
        "c",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("token-root-key"), "{stderr}");
    let check = server.home().run("atticd", &["--check-config"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout.contains("biscuit tokens cannot be made"), "{stdout}");
    assert!(stdout.contains("JWTs (RS256)"), "{stdout}");
}

/// Real Nix substitutes from a private cache with an Attic JWT as the
/// netrc password; the same JWT pushed the path.
#[tokio::test]
async fn nix_substitutes_with_a_jwt_in_its_netrc() {
    let signer = hs256();
    let server = TestServer::start_with_config(&hs256_section(&signer));
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "team-nix", false)
        .await;
    let jwt = make_token(&signer, "ci", &[(Pull, "team-*"), (Push, "team-*")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 3000);
    for path in &closure.paths {
        api.push_path(&jwt, "team-nix", path).await;
    }
    let key = api.public_key(&jwt, "team-nix").await;
    nix::delete(&closure.paths);
    let host = server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host");
    let substituter = format!("{}/team-nix", server.url);
    // Without credentials, the private cache is closed to Nix.
    let out = nix::substitute(closure.top(), &substituter, &key);
    assert!(!out.status.success(), "substituted without a token");
    let netrc = nix::write_netrc(dir.path(), host, &jwt);
    let out = nix::substitute_with_netrc(closure.top(), &substituter, &key, Some(&netrc));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(closure.paths.iter().all(|p| nix::is_valid(p)));
}
