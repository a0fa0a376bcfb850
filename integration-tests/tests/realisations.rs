//! Realisations of content-addressed derivations: `nix copy` of a CA
//! derivation's output uploads its realisation, and a fresh store builds
//! the derivation by substituting it from us, with real Nix 2.8; the
//! realisation routes' rules (a path the cache holds, signed by the cache,
//! gone with its path), in both generations of the protocol.

use std::path::Path;

use attic::realisation::{DrvOutputId, Realisation};
use attic::signing::PublicKey;
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for, nar_of_file};
use reqwest::{Method, StatusCode};

/// Nix settings for content-addressed derivations (added to the tests' own).
const CA_FEATURES: [&str; 3] = [
    "--option",
    "experimental-features",
    "nix-command ca-derivations",
];

fn host(server: &TestServer) -> &str {
    server
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host")
}

/// Writes a floating content-addressed derivation unique to this run,
/// `ca-top`, built from another, `ca-dependency`: Nix 2.8 records the
/// dependency's realisation in the top one's `dependentRealisations`.
fn write_ca_derivation(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("ca.nix");
    let nonce = nix::nonce();
    let ca =
        r#"__contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";"#;
    std::fs::write(
        &file,
        format!(
            r#"let dependency = derivation {{
  name = "ca-dependency"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo {nonce} > $out" ]; {ca}
}};
in derivation {{
  name = "ca-top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ${{dependency}} > $out" ]; {ca}
}}"#
        ),
    )
    .expect("write ca.nix");
    file
}

/// `nix-build` of `file` into `store` (the machine's when `None`),
/// substituting from `substituter` only, trusting `key`.
fn build(
    store: Option<&nix::FreshStore>,
    file: &Path,
    substituter: &str,
    key: &str,
    netrc: &Path,
) -> std::process::Output {
    let mut cmd = match store {
        Some(store) => store.command("nix-build"),
        None => nix::command("nix-build"),
    };
    nix::run_unchecked(
        cmd.arg(file)
            .arg("--no-out-link")
            .args(CA_FEATURES)
            .args(["--option", "substituters", substituter])
            .args(["--option", "trusted-public-keys", key])
            .args(["--option", "require-sigs", "true"])
            .args(["--option", "netrc-file"])
            .arg(netrc),
    )
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether one of the realisation's signatures verifies under `key`.
fn is_signed_by(realisation: &Realisation, key: &PublicKey) -> bool {
    let fingerprint = realisation.fingerprint();
    (realisation.signatures.iter()).any(|sig| key.verify(fingerprint.as_bytes(), sig).is_ok())
}

/// The realisation file of `drv_hash_id` in `cache`, and what it says.
async fn fetch_realisation(
    api: &Api,
    token: &str,
    cache: &str,
    id: &str,
) -> (StatusCode, Option<Realisation>) {
    let response = api
        .request(
            Method::GET,
            &format!("/{cache}/realisations/{id}.doi"),
            Some(token),
        )
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body = response.bytes().await.expect("body");
    let parsed = (status == StatusCode::OK).then(|| {
        let id = DrvOutputId::parse_drv_hash(id).expect("id");
        Realisation::parse_upload(id, &body).expect("a realisation Nix can read")
    });
    (status, parsed)
}

/// A CA derivation (and the CA derivation it is built from) built here,
/// `nix copy`'d to the cache: its realisation is there, with its
/// dependency's, signed by the cache's key, and a fresh store builds the
/// derivation by substituting both outputs from us instead of building.
/// Deleted from the cache, the path takes its realisation with it, and a
/// fresh store builds the derivation itself.
#[tokio::test]
async fn a_ca_derivation_copied_with_nix_substitutes_from_the_cache() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let admin = &server.root_token;
    api.create_cache(admin, "ca", false).await;
    let key = api.public_key(admin, "ca").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pusher = server.make_token(&["--pull", "ca", "--push", "ca", "--delete", "ca"]);
    let netrc = nix::write_netrc(dir.path(), host(&server), &pusher);
    let cache_url = format!("{}/ca", server.url);
    let file = write_ca_derivation(dir.path());

    // Build it here (nothing to substitute from yet), then copy it up.
    let built = build(None, &file, "", &key, &netrc);
    assert!(built.status.success(), "{}", stderr(&built));
    let out_path = String::from_utf8(built.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let copy = nix::run_unchecked(
        nix::command("nix")
            .args(["copy", "--to", &cache_url])
            .args(CA_FEATURES)
            .args(["--option", "netrc-file"])
            .arg(&netrc)
            .arg("-f")
            .arg(&file),
    );
    assert!(copy.status.success(), "{}", stderr(&copy));

    // Nix 2.8 wrote the realisation under its derivation hash; we serve it
    // pointing at the path and signed by the cache's key.
    let drv_hash_id = realisation_id_of(&file, &out_path);
    let (status, realisation) = fetch_realisation(&api, admin, "ca", &drv_hash_id).await;
    assert_eq!(status, StatusCode::OK);
    let realisation = realisation.expect("a realisation");
    assert_eq!(
        format!("/nix/store/{}", realisation.out_path.base_name()),
        out_path
    );
    assert_eq!(
        realisation.dependent_realisations.len(),
        1,
        "the dependency's realisation, as Nix sent it"
    );
    let public: PublicKey = key.parse().expect("the cache's public key");
    assert!(
        is_signed_by(&realisation, &public),
        "signed by the cache's key: {:?}",
        realisation.signatures
    );

    // A fresh store learns the output from our realisation and
    // substitutes it: nothing is built.
    let fresh = nix::FreshStore::new();
    let substituted = build(Some(&fresh), &file, &cache_url, &key, &netrc);
    let log = stderr(&substituted);
    assert!(substituted.status.success(), "{log}");
    assert_eq!(
        String::from_utf8_lossy(&substituted.stdout).trim(),
        out_path
    );
    assert!(
        log.contains(&format!("copying path '{out_path}' from '{cache_url}'")),
        "{log}"
    );
    assert!(log.contains("-ca-dependency' from"), "{log}");
    assert!(!log.contains("building '"), "built instead: {log}");

    // A content-addressed path needs no signature: Nix 2.8 takes it, and
    // the realisation (it checks no realisation signature), even trusting
    // another key. The cache's signature is for clients that check.
    let (_, other_key) = nix::generate_key("not-the-cache-1");
    let fresh = nix::FreshStore::new();
    let unsigned = build(Some(&fresh), &file, &cache_url, &other_key, &netrc);
    assert!(unsigned.status.success(), "{}", stderr(&unsigned));
    assert!(!stderr(&unsigned).contains("building '"));

    // The path leaves the cache, and its realisation with it: a fresh
    // store then substitutes the dependency alone and sets out to build
    // the top derivation (which fails there: a chroot store has no
    // /bin/sh).
    let hash = &out_path["/nix/store/".len()..][..32];
    let deleted = api
        .request(
            Method::DELETE,
            &format!("/ca/{hash}.narinfo"),
            Some(&pusher),
        )
        .send()
        .await
        .expect("request");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let (status, _) = fetch_realisation(&api, admin, "ca", &drv_hash_id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nix 2.8 says "resolved derivation" once it found no realisation of
    // the top derivation and sets out to build it. It then usually says
    // "building", but not always: under load (seen in CI) it printed
    // "error (ignored): closing file descriptor N: Bad file descriptor"
    // instead and ended before the build started, a fault of its own.
    let fresh = nix::FreshStore::new();
    let rebuilt = stderr(&build(Some(&fresh), &file, &cache_url, &key, &netrc));
    assert!(
        rebuilt.contains("building '") || rebuilt.contains("resolved derivation: '"),
        "{rebuilt}"
    );
    assert!(
        !rebuilt.contains(&format!("copying path '{out_path}'")),
        "{rebuilt}"
    );
    assert!(!fresh.is_valid(&out_path), "substituted: {rebuilt}");
}

/// The id Nix 2.8 gives the output that is `out_path`, read from what
/// `nix copy` writes to a local binary cache, so the test does not compute
/// hashes modulo itself.
fn realisation_id_of(file: &Path, out_path: &str) -> String {
    let local = tempfile::tempdir().expect("tempdir");
    nix::run(
        nix::command("nix")
            .arg("copy")
            .arg("--to")
            .arg(format!("file://{}", local.path().display()))
            .args(CA_FEATURES)
            .arg("-f")
            .arg(file),
    );
    let base = out_path.rsplit('/').next().expect("base name");
    for entry in std::fs::read_dir(local.path().join("realisations")).expect("realisations") {
        let entry = entry.expect("entry");
        let body = std::fs::read_to_string(entry.path()).expect("read");
        if body.contains(&format!(r#""outPath":"{base}""#)) {
            let name = entry.file_name().into_string().expect("utf-8");
            return name.strip_suffix(".doi").expect(".doi").to_owned();
        }
    }
    panic!("nix copy wrote no realisation of {out_path}");
}

/// Uploading a realisation takes a path the cache holds (else 400 and
/// nothing stored); one of the build trace (Nix ≥ 2.35) is served as the
/// value alone, signed over Nix's key-and-value fingerprint.
#[tokio::test]
async fn a_realisation_needs_its_path_in_the_cache() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let admin = &server.root_token;
    api.create_cache(admin, "rs", false).await;
    let key: PublicKey = api
        .public_key(admin, "rs")
        .await
        .parse()
        .expect("public key");
    let path = fake_store_path("realised");
    let base = path.rsplit('/').next().expect("base name").to_owned();
    let drv = "00000000000000000000000000000000-realised.drv";
    let url = format!("/rs/build-trace-v2/{drv}/out.doi");
    let body = format!(r#"{{"outPath":"{base}","signatures":[]}}"#);
    let put = |body: String| {
        let api = api.clone();
        let url = url.clone();
        async move {
            let response = api
                .request(Method::PUT, &url, Some(admin))
                .body(body)
                .send()
                .await
                .expect("request");
            (response.status(), response.text().await.expect("body"))
        }
    };

    let (status, text) = put(body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("RealisationPathMissing"), "{text}");
    assert_eq!(api.status(Some(admin), &url).await, StatusCode::NOT_FOUND);

    let nar = nar_of_file(b"realised".to_vec());
    api.upload_ok(admin, &nar_info_for("rs", &path, &nar), nar)
        .await;
    let (status, text) = put(body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    let (status, served) = api.get_text(&url).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a private cache: {served}"
    );
    let served = api
        .request(Method::GET, &url, Some(admin))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let id = DrvOutputId::parse_drv_path(drv, "out").expect("id");
    let realisation = Realisation::parse_upload(id, served.as_bytes()).expect("a value");
    assert_eq!(realisation.out_path.base_name(), base);
    assert!(served.contains(r#""keyName":"#), "{served}");
    assert!(is_signed_by(&realisation, &key), "{served}");

    // Malformed: not JSON, a path that is no store path, an id that is none.
    for (url, body) in [
        (url.clone(), "not json".to_owned()),
        (url.clone(), r#"{"outPath":"../../etc/passwd"}"#.to_owned()),
        (
            "/rs/realisations/sha256:nothex!out.doi".to_owned(),
            "{}".to_owned(),
        ),
        (
            format!("/rs/build-trace-v2/{base}/out.doi"),
            "{}".to_owned(),
        ),
    ] {
        let response = api
            .request(Method::PUT, &url, Some(admin))
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "PUT {url}");
    }
}

/// A quota eviction takes the path's realisation with it, in that cache
/// alone: another cache holding the same path keeps its own.
#[tokio::test]
async fn an_evicted_path_takes_its_realisation_along_in_its_cache_only() {
    use integration_tests::gc::{NO_GRACE, store_path};
    use integration_tests::upload::noise;

    let server = TestServer::start_with_config(NO_GRACE);
    let api = Api::new(&server.url);
    let token = &server.root_token;
    let path = store_path(&[("f", &noise(100_000, 151))]);
    let base = path.rsplit('/').next().expect("base name").to_owned();
    let id = format!("sha256:{}!out", "cd".repeat(32));
    let body = format!(
        r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"{base}","signatures":[]}}"#
    );
    for cache in ["small", "big"] {
        api.create_cache(token, cache, true).await;
        api.push_path(token, cache, &path).await;
        let response = api
            .request(
                Method::PUT,
                &format!("/{cache}/realisations/{id}.doi"),
                Some(token),
            )
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    api.configure(token, "small", serde_json::json!({"quota": {"Bytes": 1}}))
        .await;
    let report = server.gc();
    assert!(report.contains("1 evicted"), "{report}");

    let (small, _) = fetch_realisation(&api, token, "small", &id).await;
    assert_eq!(small, StatusCode::NOT_FOUND);
    let (big, realisation) = fetch_realisation(&api, token, "big", &id).await;
    assert_eq!(big, StatusCode::OK);
    assert_eq!(realisation.expect("kept").out_path.base_name(), base);
}

/// During a key rotation's overlap a realisation is signed by the old and
/// the new key, as narinfos are, so Nix trusting either accepts it.
#[tokio::test]
async fn during_a_rotation_a_realisation_is_signed_by_both_keys() {
    let server = TestServer::start();
    let api = Api::new(&server.url);
    let token = &server.root_token;
    api.create_cache(token, "rot", false).await;
    let path = fake_store_path("rotated");
    let nar = nar_of_file(b"rotated".to_vec());
    api.upload_ok(token, &nar_info_for("rot", &path, &nar), nar)
        .await;
    let base = path.rsplit('/').next().expect("base name");
    let id = format!("sha256:{}!out", "ef".repeat(32));
    let response = api
        .request(
            Method::PUT,
            &format!("/rot/realisations/{id}.doi"),
            Some(token),
        )
        .body(format!(
            r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"{base}","signatures":[]}}"#
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let old_key: PublicKey = api.public_key(token, "rot").await.parse().expect("key");
    api.configure(
        token,
        "rot",
        serde_json::json!({"rotate_keypair": {"overlap_seconds": 3600}}),
    )
    .await;
    let new_key: PublicKey = api.public_key(token, "rot").await.parse().expect("key");
    assert_ne!(old_key.name(), new_key.name());

    let (status, realisation) = fetch_realisation(&api, token, "rot", &id).await;
    assert_eq!(status, StatusCode::OK);
    let realisation = realisation.expect("a realisation");
    for key in [&old_key, &new_key] {
        assert!(
            is_signed_by(&realisation, key),
            "not signed by {}: {:?}",
            key.name(),
            realisation.signatures
        );
    }
}
