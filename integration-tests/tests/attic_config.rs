//! Attic's `server.toml` accepted as is, with Attic's meaning: its own
//! template runs `atticd` (and `--mode check-config`), Nix substitutes what
//! was pushed, and each key whose meaning changed here does what Attic's
//! does: `nar-size-threshold = 0`, `require-proof-of-possession = false`,
//! `soft-delete-caches`, `max-nar-info-size`, `[compression] type` xz and
//! brotli, `--mode garbage-collector-once`, and the environment variables
//! `ATTIC_SERVER_CONFIG_BASE64` and `ATTIC_SERVER_DATABASE_URL`.

use std::path::Path;
use std::time::Duration;

use attic::api::v1::upload_path::NAR_INFO_PREAMBLE_SIZE_HEADER;
use base64::Engine;
use integration_tests::backend::{Backend, Services, fresh_postgres_database};
use integration_tests::client::{TestClient, text};
use integration_tests::gc::{NO_GRACE, store_path, substitutes};
use integration_tests::server::{TestHome, TestServer};
use integration_tests::upload::{
    Api, fake_store_path, nar_info_for, nar_of_file, noise, path_hash,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use server::pack::StoredCompression;

/// A fresh HS256 secret, base64, as `%hs256_secret%`.
fn hs256_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(integration_tests::nix::nonce())
}

/// Attic's template with its placeholders filled for this run's backend:
/// a SQLite file and a local directory in `home`, or a fresh PostgreSQL
/// database and (in Attic's S3 spelling) a fresh bucket.
fn attic_template(home: &Path, services: Option<&Services>) -> String {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/attic-config/server.toml");
    let template = std::fs::read_to_string(fixture).expect("read the fixture");
    let database_url = match services {
        Some(services) => services.database_url.clone(),
        None => format!("sqlite://{}?mode=rwc", home.join("attic.db").display()),
    };
    let text = template
        .replace("%database_url%", &database_url)
        .replace("%storage_path%", &home.join("blobs").display().to_string())
        .replace("%hs256_secret%", &hs256_secret());
    match services {
        None => text,
        Some(services) => {
            let local = format!(
                "[storage]\ntype = \"local\"\npath = \"{}\"\n",
                home.join("blobs").display()
            );
            assert!(text.contains(&local), "the template's [storage]");
            text.replace(&local, &services.s3.storage_toml(""))
        }
    }
}

/// The run's services, when it is not on the embedded default.
fn services() -> Option<Services> {
    (Backend::from_env() == Backend::PostgresS3).then(Services::start)
}

/// Attic's template, as shipped, is read and every key it sets is listed;
/// `atticd -f` serves on it, and Nix substitutes what was pushed.
#[tokio::test]
async fn attics_config_template_runs_atticd_and_nix_substitutes_from_it() {
    let services = services();
    let home = TestHome::new();
    let config_path = home.path().join("config/attic/server.toml");
    std::fs::create_dir_all(config_path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&config_path, attic_template(home.path(), services.as_ref()))
        .expect("write the config");
    let config = config_path.to_str().expect("UTF-8 path");

    let check = home.run("atticd", &["-f", config, "--mode", "check-config"]);
    let report = text(&check);
    assert!(check.status.success(), "{report}");
    for line in [
        "configuration is valid",
        "read `listen`",
        "read `allowed-hosts`",
        "read `max-nar-info-size`: an upload-path metadata preamble may be at most 1048576 bytes",
        "read `soft-delete-caches`",
        "read `require-proof-of-possession`: attaching a stored NAR needs its whole body",
        "read `database.heartbeat`: no heartbeat",
        "read `chunking.nar-size-threshold`: new NARs smaller than 65536 bytes are stored as one chunk",
        "read `chunking.max-size`",
        "read `compression.level`: new chunks are stored as zstd at level 8",
        "read `garbage-collection.interval`",
        "default `garbage-collection.default-retention-period`: 0, paths are kept for ever",
    ] {
        assert!(report.contains(line), "no {line:?} in:\n{report}");
    }
    // The old flag says the same.
    let check = home.run("atticd", &["-f", config, "--check-config"]);
    assert!(check.status.success(), "{}", text(&check));

    let server = TestServer::start_on_written_config(home, &["-f", config]);
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let api = Api::new(&server.url);
    api.create_cache(&token, "attic", true).await;
    let path = store_path(&[("big", &noise(300 << 10, 61)), ("small", b"small")]);
    api.push_path(&token, "attic", &path).await;
    let key = api.public_key(&token, "attic").await;
    substitutes(&server, "attic", &key, &path);
    drop(server);
    drop(services);
}

/// The chunks of the NAR whose hash is `nar_hash`: (content size, encoding).
async fn chunks_of(
    server: &TestServer,
    nar_hash: &attic::hash::Sha256Hash,
) -> Vec<(u64, StoredCompression)> {
    let store = server.store().await;
    let nar = store
        .find_nar(nar_hash)
        .await
        .expect("read")
        .expect("the NAR is stored");
    let chunks = store
        .nar_chunks(nar.id)
        .await
        .expect("read chunks")
        .iter()
        .map(|c| (c.chunk_size, c.compression))
        .collect();
    store.close().await;
    chunks
}

/// `nar-size-threshold = 0`: chunking off, so a NAR is stored as fixed
/// pieces of `max-size` (never one giant chunk), cut the same way each
/// time, and read back whole. With Attic's `1`, even a small NAR is
/// chunked; below the default threshold it is one chunk.
#[tokio::test]
async fn threshold_zero_stores_nars_as_fixed_pieces_of_max_size() {
    let server = TestServer::start_with_config(
        "[chunking]\nnar-size-threshold = 0\nmin-size = 4096\navg-size = 16384\nmax-size = 65536\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "a", false).await;
    api.create_cache(token, "b", false).await;
    let nar = nar_of_file(noise(200_000, 62));
    let path = fake_store_path("fixed");
    let info = nar_info_for("a", &path, &nar);
    api.upload_ok(token, &info, nar.clone()).await;
    let chunks = chunks_of(&server, &info.nar_hash).await;
    let sizes: Vec<u64> = chunks.iter().map(|c| c.0).collect();
    let total = nar.len() as u64;
    assert_eq!(
        sizes,
        [65536, 65536, 65536, total - 3 * 65536],
        "fixed pieces of max-size"
    );
    // The same NAR in another cache is cut the same way: nothing new.
    let before = server.row_counts().await.chunks;
    api.upload_ok(token, &nar_info_for("b", &path, &nar), nar.clone())
        .await;
    assert_eq!(server.row_counts().await.chunks, before);
    let served = api
        .get_bytes(token, &format!("/a/nar/{}.nar", path_hash(&path)))
        .await;
    assert_eq!(served.as_ref(), &nar[..]);
}

#[tokio::test]
async fn threshold_one_chunks_every_nar() {
    let server = TestServer::start_with_config(
        "[chunking]\nnar-size-threshold = 1\nmin-size = 1024\navg-size = 2048\nmax-size = 8192\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "a", false).await;
    let nar = nar_of_file(noise(40_000, 63));
    let info = nar_info_for("a", &fake_store_path("small"), &nar);
    api.upload_ok(token, &info, nar).await;
    let chunks = chunks_of(&server, &info.nar_hash).await;
    assert!(chunks.len() > 4, "{chunks:?}");
    assert!(chunks.iter().all(|c| c.0 <= 8192), "{chunks:?}");
}

/// `require-proof-of-possession = false`: a NAR the store holds is
/// attached to another cache on its hash alone, with no body, and served
/// from there; a declared size that is not the NAR's is still refused.
#[tokio::test]
async fn without_proof_of_possession_a_stored_nar_is_attached_by_hash_alone() {
    let server = TestServer::start_with_config("require-proof-of-possession = false\n");
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "main", false).await;
    api.create_cache(token, "other", false).await;
    let nar = nar_of_file(noise(150_000, 64));
    let path = fake_store_path("known");
    api.upload_ok(token, &nar_info_for("main", &path, &nar), nar.clone())
        .await;

    let mut wrong = nar_info_for("other", &path, &nar);
    wrong.nar_size += 1;
    let response = api.upload(Some(token), &wrong, Vec::new()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let blobs = server.blob_count();
    let reply = api
        .upload_ok(token, &nar_info_for("other", &path, &nar), Vec::new())
        .await;
    assert_eq!(reply["kind"], "Uploaded", "{reply}");
    assert_eq!(server.blob_count(), blobs, "nothing stored");
    let served = api
        .get_bytes(token, &format!("/other/nar/{}.nar", path_hash(&path)))
        .await;
    assert_eq!(served.as_ref(), &nar[..]);
}

/// `soft-delete-caches = true`: a destroyed cache's paths go at once, and
/// its name cannot be taken again (409 `CacheNameReserved`); other names
/// can.
#[tokio::test]
async fn soft_deleted_caches_keep_their_names_reserved() {
    let server = TestServer::start_with_config("soft-delete-caches = true\n");
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "gone", true).await;
    let nar = nar_of_file(noise(10_000, 65));
    let path = fake_store_path("gone");
    api.upload_ok(token, &nar_info_for("gone", &path, &nar), nar)
        .await;
    api.destroy_cache(token, "gone").await;
    assert_eq!(
        api.status(Some(token), &format!("/gone/{}.narinfo", path_hash(&path)))
            .await,
        StatusCode::NOT_FOUND
    );
    let response = api.try_create_cache(token, "gone", true).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"], "CacheNameReserved", "{body}");
    // Still reserved after the collector reclaims the cache's rows.
    server.gc();
    let response = api.try_create_cache(token, "gone", true).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    api.create_cache(token, "fresh", true).await;
}

/// Without the key, a destroyed cache's name is free again at once.
#[tokio::test]
async fn without_soft_delete_a_destroyed_name_is_free_again() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "again", true).await;
    api.destroy_cache(token, "again").await;
    api.create_cache(token, "again", true).await;
}

/// `max-nar-info-size` bounds the upload-path preamble: one byte over is
/// 413 before anything is read, and nothing is stored.
#[tokio::test]
async fn a_preamble_over_max_nar_info_size_is_refused() {
    let server = TestServer::start_with_config("max-nar-info-size = 2048\n");
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "main", false).await;
    let nar = nar_of_file(noise(5_000, 66));
    let send = |padding: usize| {
        let mut info = nar_info_for("main", &fake_store_path("pre"), &nar);
        // Padding in a field the server reads, to set the preamble's size.
        info.sigs = vec!["x".repeat(padding)];
        let preamble = serde_json::to_vec(&info).expect("JSON");
        let mut body = preamble.clone();
        body.extend_from_slice(&nar);
        api.request(Method::PUT, "/_api/v1/upload-path", Some(token))
            .header(NAR_INFO_PREAMBLE_SIZE_HEADER, preamble.len().to_string())
            .body(body)
            .send()
    };
    let response = send(3000).await.expect("request");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let message = response.text().await.expect("body");
    assert!(message.contains("max-nar-info-size"), "{message}");
    assert_eq!(server.row_counts().await.nars, 0);
    let response = send(100).await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
}

/// xz and brotli chunks (Attic's other compression types) are stored as
/// such and substitute through real Nix.
#[tokio::test]
async fn xz_and_brotli_chunks_round_trip_through_nix_substitution() {
    for (kind, expected) in [
        ("xz", StoredCompression::Xz),
        ("brotli", StoredCompression::Brotli),
    ] {
        let server = TestServer::start_with_config(&format!(
            "[compression]\ntype = \"{kind}\"\nlevel = 3\n"
        ));
        let api = Api::new(&server.url);
        let token = &server.root_token;
        api.create_cache(token, "c", true).await;
        let path = store_path(&[("big", &noise(400 << 10, 67)), ("kind", kind.as_bytes())]);
        api.push_path(token, "c", &path).await;
        let store = server.store().await;
        let nars = store.all_nars().await.expect("nars");
        assert_eq!(nars.len(), 1);
        let chunks = store.nar_chunks(nars[0].id).await.expect("chunks");
        store.close().await;
        assert!(chunks.len() > 1, "{kind}: chunked");
        assert!(
            chunks.iter().all(|c| c.compression == expected),
            "{kind}: {:?}",
            chunks.iter().map(|c| c.compression).collect::<Vec<_>>()
        );
        let key = api.public_key(token, "c").await;
        substitutes(&server, "c", &key, &path);
    }
}

/// `atticd --mode garbage-collector-once` runs one collection and exits.
#[tokio::test]
async fn garbage_collector_once_collects_once_and_exits() {
    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "short", true).await;
    api.configure(token, "short", json!({"retention_period": {"Period": 1}}))
        .await;
    let path = store_path(&[("old", &noise(20_000, 68))]);
    api.push_path(token, "short", &path).await;
    std::thread::sleep(Duration::from_millis(2100));
    let output = server
        .home()
        .run("atticd", &["--mode", "garbage-collector-once"]);
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("1 objects expired"), "{report}");
    assert_eq!(server.row_counts().await.paths, 0);
}

/// `ATTIC_SERVER_CONFIG_BASE64` is the config when no `-f` is given, and
/// `ATTIC_SERVER_DATABASE_URL` the database when `[database] url` is
/// absent: migrations land in the database it names.
#[tokio::test]
async fn the_config_and_database_url_come_from_attics_environment_variables() {
    let services = services();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = match &services {
        Some(_) => fresh_postgres_database(),
        None => format!("sqlite://{}?mode=rwc", dir.path().join("env.db").display()),
    };
    let storage = match &services {
        Some(services) => services.s3.storage_toml(""),
        None => format!(
            "[storage]\ntype = \"local\"\npath = \"{}\"\n",
            dir.path().join("blobs").display()
        ),
    };
    let config = format!(
        "soft-delete-caches = true\n{storage}[jwt.signing]\ntoken-hs256-secret-base64 = \"{}\"\n",
        hs256_secret()
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(&config);
    // No config file in this home: the variables are all there is.
    let home = TestHome::new()
        .with_env("ATTIC_SERVER_CONFIG_BASE64", &encoded)
        .with_env("ATTIC_SERVER_DATABASE_URL", &database_url);
    let migrated = home.run("atticd", &["--mode", "db-migrations"]);
    assert!(migrated.status.success(), "{}", text(&migrated));
    let check = home.run("atticd", &["--mode", "check-config"]);
    let report = text(&check);
    assert!(check.status.success(), "{report}");
    assert!(
        report.contains("$ATTIC_SERVER_CONFIG_BASE64: configuration is valid"),
        "{report}"
    );
    assert!(report.contains("read `soft-delete-caches`"), "{report}");
    assert!(report.contains("schema is up to date"), "{report}");
    if services.is_none() {
        assert!(dir.path().join("env.db").exists(), "migrated elsewhere");
    }
    assert!(
        !home.path().join("config/attic/server.toml").exists(),
        "no config file was written"
    );

    let bad = TestHome::new().with_env("ATTIC_SERVER_CONFIG_BASE64", "%%%");
    let output = bad.run("atticd", &["--mode", "check-config"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("ATTIC_SERVER_CONFIG_BASE64"),
        "{}",
        text(&output)
    );
}

/// With proof of possession off, the `attic` client, which always sends
/// the body, pushes a path another cache holds: the server answers
/// without reading it, and the push still succeeds.
#[tokio::test]
async fn the_client_pushes_a_known_nar_when_proof_of_possession_is_off() {
    let server = TestServer::start_with_config("require-proof-of-possession = false\n");
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &token]);
    client.attic_ok(&["cache", "create", "first"]);
    client.attic_ok(&["cache", "create", "second", "--public"]);
    let path = store_path(&[("big", &noise(2 << 20, 69))]);
    client.attic_ok(&["push", "first", &path]);
    client.attic_ok(&["push", "second", &path]);
    let api = Api::new(&server.url);
    let key = api.public_key(&token, "second").await;
    substitutes(&server, "second", &key, &path);
}

/// `substituter-endpoint` is where a cache's settings say its substituter
/// lives (what `attic use` writes); `api-endpoint` stays the API's.
#[tokio::test]
async fn substituter_endpoint_names_where_clients_substitute_from() {
    let server = TestServer::start_with_config(
        "api-endpoint = \"https://api.example.com/attic/\"\n\
         substituter-endpoint = \"https://nix.example.com\"\n",
    );
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "c", true).await;
    let config = api.cache_config(token, "c").await;
    assert_eq!(config["substituter_endpoint"], "https://nix.example.com/c");
    assert_eq!(config["api_endpoint"], "https://api.example.com/attic/");
}
