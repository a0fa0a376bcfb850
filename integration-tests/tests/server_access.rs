//! Who may do what: tokens scoped to caches, bad tokens, attenuation,
//! public and private caches, and error bodies that reveal nothing.

use attic::nar::NarNode;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for, path_hash};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn small_nar(text: &str) -> Vec<u8> {
    NarNode::Regular {
        executable: false,
        contents: text.as_bytes().to_vec(),
    }
    .to_nar()
}

/// The id of the realisation `server_with_cache_b` stores, as Nix 2.8
/// names it, and the derivation of the build trace entry it stores.
fn realisation_id() -> String {
    format!("sha256:{}!out", "ab".repeat(32))
}
const TRACE_DRV: &str = "00000000000000000000000000000000-probe.drv";

/// A realisation body, as Nix 2.8 uploads it, of output `id` as `path`.
fn realisation_body(id: &str, path: &str) -> String {
    let base = path.rsplit('/').next().expect("a base name");
    format!(r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"{base}","signatures":[]}}"#)
}

/// Calls every route on `cache` with `token`, returning each status.
async fn every_route(
    api: &Api,
    token: Option<&str>,
    cache: &str,
    hash: &str,
) -> Vec<(String, StatusCode)> {
    let nar = small_nar("probe");
    let path = fake_store_path("probe");
    let info = nar_info_for(cache, &path, &nar);
    let config = format!("/_api/v1/cache-config/{cache}");
    let realisation = format!("/{cache}/realisations/{}.doi", realisation_id());
    let trace = format!("/{cache}/build-trace-v2/{TRACE_DRV}/out.doi");
    let requests = vec![
        ("GET cache-config", api.request(Method::GET, &config, token)),
        (
            "POST cache-config",
            api.request(Method::POST, &config, token).json(&json!({
                "keypair": "Generate", "is_public": false, "store_dir": "/nix/store",
                "priority": 41, "upstream_cache_key_names": []
            })),
        ),
        (
            "PATCH cache-config",
            api.request(Method::PATCH, &config, token)
                .json(&json!({"priority": 1})),
        ),
        (
            "PATCH retention",
            api.request(Method::PATCH, &config, token)
                .json(&json!({"retention_period": {"Period": 60}})),
        ),
        (
            "DELETE cache-config",
            api.request(Method::DELETE, &config, token),
        ),
        (
            "get-missing-paths",
            api.request(Method::POST, "/_api/v1/get-missing-paths", token)
                .json(&json!({"cache": cache, "store_path_hashes": [hash]})),
        ),
        (
            "upload-path",
            api.request(Method::PUT, "/_api/v1/upload-path", token)
                .header(
                    "X-Attic-Nar-Info",
                    serde_json::to_string(&info).expect("json"),
                )
                .body(nar),
        ),
        (
            "nix-cache-info",
            api.request(Method::GET, &format!("/{cache}/nix-cache-info"), token),
        ),
        (
            "narinfo",
            api.request(Method::GET, &format!("/{cache}/{hash}.narinfo"), token),
        ),
        (
            "HEAD narinfo",
            api.request(Method::HEAD, &format!("/{cache}/{hash}.narinfo"), token),
        ),
        (
            "nar",
            api.request(Method::GET, &format!("/{cache}/nar/{hash}.nar"), token),
        ),
        (
            "GET realisation",
            api.request(Method::GET, &realisation, token),
        ),
        (
            "PUT realisation",
            api.request(Method::PUT, &realisation, token)
                .body(realisation_body(&realisation_id(), &path)),
        ),
        ("GET build-trace", api.request(Method::GET, &trace, token)),
        (
            "PUT build-trace",
            api.request(Method::PUT, &trace, token)
                .body(r#"{"outPath":"00000000000000000000000000000000-probe","signatures":[]}"#),
        ),
        (
            "GET pins",
            api.request(Method::GET, &format!("/_api/v1/pins/{cache}"), token),
        ),
        (
            "PUT pin",
            api.request(Method::PUT, &format!("/_api/v1/pins/{cache}/probe"), token)
                .json(&json!({"store_path": path})),
        ),
        (
            "DELETE pin",
            api.request(
                Method::DELETE,
                &format!("/_api/v1/pins/{cache}/probe"),
                token,
            ),
        ),
        (
            "DELETE narinfo",
            api.request(Method::DELETE, &format!("/{cache}/{hash}.narinfo"), token),
        ),
    ];
    let mut statuses = Vec::new();
    for (name, request) in requests {
        let response = request.send().await.expect("request");
        statuses.push((name.to_owned(), response.status()));
    }
    statuses
}

/// A server with private cache `b` holding one path, and the path's hash.
async fn server_with_cache_b() -> (TestServer, Api, String) {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "b", false).await;
    let nar = small_nar("in b");
    let path = fake_store_path("in-b");
    api.upload_ok(&server.root_token, &nar_info_for("b", &path, &nar), nar)
        .await;
    let base = path.rsplit('/').next().expect("a base name");
    let puts = [
        (
            format!("/b/realisations/{}.doi", realisation_id()),
            realisation_body(&realisation_id(), &path),
        ),
        (
            format!("/b/build-trace-v2/{TRACE_DRV}/out.doi"),
            format!(r#"{{"outPath":"{base}","signatures":[]}}"#),
        ),
    ];
    for (url, body) in puts {
        let response = api
            .request(Method::PUT, &url, Some(&server.root_token))
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "PUT {url}");
    }
    let hash = path_hash(&path).to_owned();
    (server, api, hash)
}

#[tokio::test]
async fn a_token_for_cache_a_is_forbidden_on_cache_b_for_every_route() {
    let (server, api, hash) = server_with_cache_b().await;
    let all_on_a: Vec<&str> = [
        "--pull",
        "--push",
        "--delete",
        "--create-cache",
        "--configure-cache",
        "--configure-cache-retention",
        "--destroy-cache",
    ]
    .iter()
    .flat_map(|flag| [*flag, "a"])
    .collect();
    let token_a = server.make_token(&all_on_a);
    for (route, status) in every_route(&api, Some(&token_a), "b", &hash).await {
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{route} on b with a token for a"
        );
    }
    // And on a cache that does not exist, the same answer: no discovery.
    for (route, status) in every_route(&api, Some(&token_a), "nonexistent", &hash).await {
        assert_eq!(status, StatusCode::FORBIDDEN, "{route} on a missing cache");
    }
    // b is untouched.
    let narinfo = api
        .request(
            Method::GET,
            &format!("/b/{hash}.narinfo"),
            Some(&server.root_token),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(narinfo.status(), StatusCode::OK);
}

/// The routes that show many things at once, the cache list and a cache's
/// audit log, show a tenant nothing of another: a token for `a` lists `a`
/// alone, and `b`'s log answers it exactly as a missing cache's does.
#[tokio::test]
async fn the_cache_list_and_the_cache_log_show_nothing_of_another_tenant() {
    let (server, api, _) = server_with_cache_b().await;
    api.create_cache(&server.root_token, "a", false).await;
    let all_on_a: Vec<&str> = [
        "--pull",
        "--push",
        "--delete",
        "--configure-cache",
        "--configure-cache-retention",
    ]
    .iter()
    .flat_map(|flag| [*flag, "a"])
    .collect();
    let token_a = server.make_token(&all_on_a);
    let get = |path: String, token: Option<String>| {
        let api = api.clone();
        async move {
            let response = api
                .request(Method::GET, &path, token.as_deref())
                .send()
                .await
                .expect("request");
            let status = response.status();
            (status, response.text().await.expect("body"))
        }
    };

    let (status, body) = get("/_api/v1/caches".into(), Some(token_a.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("json");
    let names: Vec<&str> = listed["caches"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["a"], "{body}");

    let (b_status, b_body) = get("/_api/v1/cache-log/b".into(), Some(token_a.clone())).await;
    let (missing_status, missing_body) = get(
        "/_api/v1/cache-log/nonexistent".into(),
        Some(token_a.clone()),
    )
    .await;
    assert!(b_status.is_client_error(), "{b_status}: {b_body}");
    // The same reply but for the name the caller gave.
    let unnamed = |body: &str, name: &str| {
        let mut reply: Value = serde_json::from_str(body).expect("json");
        let message = reply["message"].as_str().expect("a message");
        reply["message"] = message.replace(&format!("\"{name}\""), "NAME").into();
        reply
    };
    assert_eq!(
        (b_status, unnamed(&b_body, "b")),
        (missing_status, unnamed(&missing_body, "nonexistent")),
        "b's log answers a token for a as a missing cache's does"
    );
    let (status, body) = get("/_api/v1/cache-log/a".into(), Some(token_a.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let log: Value = serde_json::from_str(&body).expect("json");
    assert!(
        log["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["cache"] == "a"),
        "{body}"
    );

    for path in ["/_api/v1/caches", "/_api/v1/cache-log/b"] {
        let (status, body) = get(path.into(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous {path}: {body}");
    }
}

#[tokio::test]
async fn private_caches_refuse_anonymous_reads_and_public_ones_allow_them() {
    let (server, api, hash) = server_with_cache_b().await;
    // Anonymous on private b, and on a cache that does not exist: both 401.
    for cache in ["b", "nonexistent"] {
        for (route, status) in every_route(&api, None, cache, &hash).await {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "anonymous {route} on {cache}"
            );
        }
    }
    // Made public, b serves reads to anyone but still refuses writes.
    let patch = api
        .request(
            Method::PATCH,
            "/_api/v1/cache-config/b",
            Some(&server.root_token),
        )
        .json(&json!({"is_public": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(patch.status(), StatusCode::OK);
    let statuses = every_route(&api, None, "b", &hash).await;
    for (route, status) in statuses {
        let read = [
            "GET cache-config",
            "nix-cache-info",
            "narinfo",
            "HEAD narinfo",
            "nar",
            "GET realisation",
            "GET build-trace",
            "GET pins",
        ]
        .contains(&route.as_str());
        let expected = if read {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, expected, "anonymous {route} on public b");
    }
}

#[tokio::test]
async fn expired_tampered_revoked_and_garbage_tokens_get_401() {
    let (server, api, hash) = server_with_cache_b().await;
    let good = server.make_token(&["--pull", "*"]);
    let path = format!("/b/{hash}.narinfo");
    let narinfo = |token: String| {
        let (api, path) = (api.clone(), path.clone());
        async move { api.status(Some(&token), &path).await }
    };
    assert_eq!(narinfo(good.clone()).await, StatusCode::OK);

    // Expired: an attenuation with no validity left.
    let output = server.atticadm(&["attenuate-token", &good, "--validity", "1ms"]);
    assert!(output.status.success());
    let expiring = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(narinfo(expiring).await, StatusCode::UNAUTHORIZED);

    // Tampered: one character changed in the middle.
    let mut bytes = good.clone().into_bytes();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        narinfo(String::from_utf8(bytes).expect("ascii")).await,
        StatusCode::UNAUTHORIZED
    );

    // Garbage.
    assert_eq!(narinfo("garbage".into()).await, StatusCode::UNAUTHORIZED);

    // Revoked, and its attenuated child with it.
    let output = server.atticadm(&["attenuate-token", &good, "--cache", "b"]);
    let child = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert_eq!(narinfo(child.clone()).await, StatusCode::OK);
    let output = server.atticadm(&["revoke-token", &good]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(narinfo(good).await, StatusCode::UNAUTHORIZED);
    assert_eq!(narinfo(child).await, StatusCode::UNAUTHORIZED);

    // A token from another server's key.
    let other = TestServer::start();
    assert_eq!(
        narinfo(other.root_token.clone()).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_attenuated_token_cannot_exceed_its_parent() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    for cache in ["a1", "a2", "z"] {
        api.create_cache(&server.root_token, cache, false).await;
    }
    let parent = server.make_token(&["--pull", "a*", "--push", "a*"]);
    let attenuate = |args: &[&str]| {
        let mut all = vec!["attenuate-token", parent.as_str()];
        all.extend_from_slice(args);
        let output = server.atticadm(&all);
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
    let status = |token: &str, cache: &str, push: bool| {
        let api = api.clone();
        let token = token.to_owned();
        let cache = cache.to_owned();
        async move {
            let nar = small_nar("x");
            let path = fake_store_path("x");
            if push {
                api.upload(Some(&token), &nar_info_for(&cache, &path, &nar), nar)
                    .await
                    .status()
            } else {
                api.request(
                    Method::GET,
                    &format!("/{cache}/nix-cache-info"),
                    Some(&token),
                )
                .send()
                .await
                .expect("request")
                .status()
            }
        }
    };

    let narrow = attenuate(&["--cache", "a1", "--permission", "pull"]);
    assert_eq!(status(&narrow, "a1", false).await, StatusCode::OK);
    assert_eq!(status(&narrow, "a1", true).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&narrow, "a2", false).await, StatusCode::FORBIDDEN);

    let greedy = attenuate(&[
        "--cache",
        "*",
        "--permission",
        "pull",
        "--permission",
        "destroy-cache",
    ]);
    assert_eq!(status(&greedy, "z", false).await, StatusCode::FORBIDDEN);
    let destroy = api
        .request(Method::DELETE, "/_api/v1/cache-config/a1", Some(&greedy))
        .send()
        .await
        .expect("request");
    assert_eq!(destroy.status(), StatusCode::FORBIDDEN);
    assert_eq!(status(&greedy, "a2", false).await, StatusCode::OK);
    assert_eq!(status(&parent, "a2", true).await, StatusCode::OK);
}

#[tokio::test]
async fn error_bodies_are_uniform_and_leak_nothing_internal() {
    let (server, api, hash) = server_with_cache_b().await;
    let token = server.root_token.clone();
    let mut bodies = Vec::new();
    let requests = vec![
        api.request(Method::GET, "/b/nope.narinfo", Some(&token)),
        api.request(
            Method::GET,
            &format!("/b/{}.narinfo", "0".repeat(32)),
            Some(&token),
        ),
        api.request(Method::GET, "/b/nar/../../etc/passwd", Some(&token)),
        api.request(Method::GET, "/_api/v1/cache-config/..", Some(&token)),
        api.request(Method::GET, "/_api/v1/cache-config/b", Some("garbage")),
        api.request(Method::POST, "/_api/v1/cache-config/b", Some(&token))
            .body("{not json"),
        api.request(Method::POST, "/_api/v1/cache-config/b", Some(&token))
            .json(&json!({
                "keypair": "Generate", "is_public": false, "store_dir": "/nix/store",
                "priority": 41, "upstream_cache_key_names": []
            })),
        api.request(Method::PUT, "/_api/v1/upload-path", Some(&token))
            .body("no metadata"),
        api.request(Method::PUT, "/_api/v1/upload-path", Some(&token))
            .header("X-Attic-Nar-Info", "{\"cache\": \"../etc\"}")
            .body("x"),
        api.request(Method::GET, "/no/such/route/here", None),
        api.request(Method::GET, &format!("/b/nar/{hash}.nar.xz"), Some(&token)),
    ];
    for request in requests {
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        bodies.push((status, text));
    }
    let data_dir = server.data_dir().display().to_string();
    for (status, text) in &bodies {
        assert!(status.is_client_error(), "{status}: {text}");
        let body: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(body["code"], status.as_u16(), "{text}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{text}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
        for secret in [
            data_dir.as_str(),
            "sqlite",
            "SELECT",
            "No such file",
            "os error",
            "/tmp/",
        ] {
            assert!(!text.contains(secret), "{text} leaks {secret}");
        }
    }
    let conflict = &bodies[6];
    assert_eq!(conflict.0, StatusCode::CONFLICT, "{}", conflict.1);
}

#[tokio::test]
async fn metrics_count_uploads_reads_and_responses_without_naming_caches() {
    let (server, api, hash) = server_with_cache_b().await;
    let token = server.root_token.clone();
    for path in [
        format!("/b/{hash}.narinfo"),
        format!("/b/{}.narinfo", "1".repeat(32)),
    ] {
        api.request(Method::GET, &path, Some(&token))
            .send()
            .await
            .expect("request");
    }
    let response = Api::new(&server.metrics_url)
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    for line in [
        "attic_uploads_total{outcome=\"uploaded\"} 1",
        "attic_narinfo_requests_total{outcome=\"hit\"} 1",
        "attic_narinfo_requests_total{outcome=\"miss\"} 1",
        "attic_http_responses_total{status=\"404\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        !text.contains(&hash) && !text.contains("cache=\"b\""),
        "{text}"
    );
}

/// narinfos are held in memory for speed; every write through the server
/// is seen at once: a new key signs the next narinfo, a cache made private
/// refuses the next anonymous read, a re-upload changes the next narinfo,
/// and a destroyed cache is gone.
#[tokio::test]
async fn writes_are_seen_at_once_by_the_next_narinfo() {
    let (server, api, hash) = server_with_cache_b().await;
    let admin = &server.root_token;
    let narinfo = |token: Option<&str>| {
        let api = api.clone();
        let hash = hash.clone();
        let token = token.map(str::to_owned);
        async move {
            let response = api
                .request(Method::GET, &format!("/b/{hash}.narinfo"), token.as_deref())
                .send()
                .await
                .expect("request");
            let status = response.status();
            (status, response.text().await.expect("body"))
        }
    };
    let signature = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("Sig: "))
            .expect("a signature")
            .to_owned()
    };
    let patch = |body: Value| {
        let api = api.clone();
        let admin = admin.clone();
        async move {
            let response = api
                .request(Method::PATCH, "/_api/v1/cache-config/b", Some(&admin))
                .json(&body)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::OK);
        }
    };

    let (status, first) = narinfo(Some(admin)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = narinfo(Some(admin)).await;
    assert_eq!(first, again);

    patch(json!({"keypair": "Generate"})).await;
    let (_, resigned) = narinfo(Some(admin)).await;
    assert_ne!(signature(&resigned), signature(&first));

    patch(json!({"is_public": true})).await;
    assert_eq!(narinfo(None).await.0, StatusCode::OK);
    patch(json!({"is_public": false})).await;
    assert_eq!(narinfo(None).await.0, StatusCode::UNAUTHORIZED);

    // The same path uploaded again with other content: the next narinfo
    // describes the new NAR.
    let store_path = resigned
        .lines()
        .find_map(|l| l.strip_prefix("StorePath: "))
        .expect("StorePath")
        .to_owned();
    let nar = small_nar("other content");
    api.upload_ok(admin, &nar_info_for("b", &store_path, &nar), nar.clone())
        .await;
    let (_, replaced) = narinfo(Some(admin)).await;
    assert!(
        replaced.contains(&format!("NarSize: {}", nar.len())),
        "{replaced}"
    );

    let destroy = api
        .request(Method::DELETE, "/_api/v1/cache-config/b", Some(admin))
        .send()
        .await
        .expect("request");
    assert_eq!(destroy.status(), StatusCode::OK);
    assert_eq!(narinfo(Some(admin)).await.0, StatusCode::NOT_FOUND);
}

/// Nix sends a host's netrc entry to every cache on it: on a public
/// cache's read routes a garbage, expired, revoked or empty token counts as
/// none, so one stale entry breaks nothing. A private cache still says 401,
/// and so does every route that needs a token.
#[tokio::test]
async fn on_a_public_cache_a_bad_token_reads_as_no_token() {
    let (server, api, hash) = server_with_cache_b().await;
    let admin = server.root_token.clone();
    api.create_cache(&admin, "open", true).await;
    let nar = small_nar("in open");
    let path = fake_store_path("in-open");
    api.upload_ok(&admin, &nar_info_for("open", &path, &nar), nar)
        .await;
    let open_hash = path_hash(&path).to_owned();

    let pull = server.make_token(&["--pull", "*"]);
    let output = server.atticadm(&["attenuate-token", &pull, "--validity", "1ms"]);
    let expired = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let revoked = server.make_token(&["--pull", "*"]);
    assert!(
        server
            .atticadm(&["revoke-token", &revoked])
            .status
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let send = |path: String, authorization: String| {
        let api = api.clone();
        async move {
            api.request(Method::GET, &path, None)
                .header("Authorization", authorization)
                .send()
                .await
                .expect("request")
                .status()
        }
    };
    let bad = [
        "Bearer garbage".to_owned(),
        format!("Bearer {expired}"),
        format!("Bearer {revoked}"),
        "Bearer ".to_owned(),
        "Basic OmdhcmJhZ2U=".to_owned(), // ":garbage", as from a netrc
    ];
    for authorization in &bad {
        for route in [
            "/open/nix-cache-info".to_owned(),
            format!("/open/{open_hash}.narinfo"),
            format!("/open/nar/{open_hash}.nar"),
            "/_api/v1/cache-config/open".to_owned(),
        ] {
            assert_eq!(
                send(route.clone(), authorization.clone()).await,
                StatusCode::OK,
                "{route} with {authorization:?}"
            );
        }
        assert_eq!(
            send(format!("/b/{hash}.narinfo"), authorization.clone()).await,
            StatusCode::UNAUTHORIZED,
            "a private cache with {authorization:?}"
        );
        let missing = api
            .request(Method::POST, "/_api/v1/get-missing-paths", None)
            .header("Authorization", authorization.clone())
            .json(&json!({"cache": "open", "store_path_hashes": [open_hash]}))
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(missing, StatusCode::UNAUTHORIZED, "{authorization:?}");
    }
}

/// Revoking a token attenuated for CI revokes it and what descends from
/// it, never the token it came from or its siblings.
#[tokio::test]
async fn revoking_an_attenuated_token_spares_its_parent_and_siblings() {
    let (server, api, hash) = server_with_cache_b().await;
    let attenuate = |token: &str| {
        let output = server.atticadm(&["attenuate-token", token, "--cache", "b"]);
        assert!(output.status.success());
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let ci = server.make_token(&["--pull", "*"]);
    let job = attenuate(&ci);
    let step = attenuate(&job);
    let sibling = attenuate(&ci);
    let narinfo = format!("/b/{hash}.narinfo");
    let status = |token: String| {
        let (api, narinfo) = (api.clone(), narinfo.clone());
        async move { api.status(Some(&token), &narinfo).await }
    };
    let output = server.atticadm(&["revoke-token", &job]);
    assert!(output.status.success());
    assert_eq!(status(job).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(step).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(ci).await, StatusCode::OK);
    assert_eq!(status(sibling).await, StatusCode::OK);
}
