//! Pull-through: a cache names upstream binary caches, and a narinfo it
//! misses is fetched from them, verified against the upstream's key,
//! stored through the upload ingest and served signed with the cache's own
//! key. Upstreams here are real: a directory Nix wrote with `nix copy --to
//! file://` served by a real nginx, and a second `atticd`.

use std::path::Path;

use integration_tests::client::text;
use integration_tests::gated_upstream::GatedUpstream;
use integration_tests::nginx::{HangingUpstream, Nginx};
use integration_tests::nix::{self, FreshStore};
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, path_hash};
use reqwest::StatusCode;
use serde_json::json;

/// A binary cache directory as `nix copy` writes it, behind nginx, and the
/// key it is signed with.
struct FileUpstream {
    dir: tempfile::TempDir,
    nginx: Nginx,
    public_key: String,
}

impl FileUpstream {
    /// `paths` (and their closures), copied with `compression` and signed
    /// by a key made by `nix key generate-secret`.
    fn with(paths: &[&str], compression: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        let (secret, public_key) = nix::generate_key("upstream-1");
        for path in paths {
            nix::copy_to_file_cache(&cache, compression, &secret, path);
        }
        let nginx = Nginx::serve(&cache);
        Self {
            dir,
            nginx,
            public_key,
        }
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("cache")
    }

    /// The file the narinfo of `path` names, under the cache directory.
    fn nar_file(&self, path: &str) -> std::path::PathBuf {
        let narinfo = std::fs::read_to_string(
            self.cache_dir()
                .join(format!("{}.narinfo", path_hash(path))),
        )
        .expect("the upstream has the narinfo");
        let url = narinfo
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .expect("a URL line");
        self.cache_dir().join(url)
    }

    /// Requests nginx saw for NARs.
    fn nar_requests(&self) -> usize {
        self.nginx.requests("/nar/").len()
    }

    /// Requests nginx saw for the narinfo of `path`.
    fn narinfo_requests(&self, path: &str) -> usize {
        self.nginx
            .requests(&format!("/{}.narinfo", path_hash(path)))
            .len()
    }
}

/// What `/metrics` on the test servers' public listener takes.
const METRICS_TOKEN: &str = "pull-through-metrics-token";

/// The `attic_pull_through_total` line of `outcome`, as `/metrics` has it.
async fn pull_through_count(api: &Api, outcome: &str) -> String {
    let metrics = api
        .request(reqwest::Method::GET, "/metrics", Some(METRICS_TOKEN))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text");
    let prefix = format!("attic_pull_through_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("0")
        .to_owned()
}

/// A server with a token that may do everything, and a cache `mirror`.
async fn server_with_cache(public: bool) -> (TestServer, Api, String) {
    let server = TestServer::start_with_config(&format!(
        "metrics-token = \"{METRICS_TOKEN}\"\n[pull-through]\ntimeout = \"2s\"\n"
    ));
    let api = Api::new(&server.url);
    let admin = server.make_token(&[
        "--pull",
        "*",
        "--push",
        "*",
        "--create-cache",
        "*",
        "--configure-cache",
        "*",
    ]);
    api.create_cache(&admin, "mirror", public).await;
    (server, api, admin)
}

async fn set_upstreams(api: &Api, token: &str, upstreams: &[(&str, &str)]) {
    let list: Vec<_> = upstreams
        .iter()
        .map(|(url, key)| json!({"url": url, "public_key": key}))
        .collect();
    api.configure(token, "mirror", json!({ "upstreams": list }))
        .await;
}

/// The narinfo of `path` in `mirror` (which must answer 200) and the
/// body of the NAR its URL names: its bytes, or why there are none (a
/// body that ended abnormally, or a 404 for a NAR refused before the
/// request came).
async fn pull_narinfo_and_nar(
    api: &Api,
    token: &str,
    path: &str,
) -> (String, Result<Vec<u8>, String>) {
    let narinfo = narinfo_text(api, token, path).await;
    let response = api
        .request(reqwest::Method::GET, &nar_url(&narinfo), Some(token))
        .send()
        .await
        .expect("request");
    let body = match response.status() {
        StatusCode::OK => (response.bytes().await)
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string()),
        StatusCode::NOT_FOUND => Err("404".to_owned()),
        status => panic!("the NAR request answered {status}"),
    };
    (narinfo, body)
}

async fn narinfo_text(api: &Api, token: &str, path: &str) -> String {
    let response = api
        .request(
            reqwest::Method::GET,
            &format!("/mirror/{}.narinfo", path_hash(path)),
            Some(token),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("text")
}

/// The first bytes of a response's body, however few: proof it is being
/// sent.
async fn first_bytes(response: &mut reqwest::Response) -> Vec<u8> {
    let mut received = Vec::new();
    while received.is_empty() {
        let piece = response.chunk().await.expect("body").expect("more body");
        received.extend_from_slice(&piece);
    }
    received
}

/// The rest of a response's body, which must end cleanly, after `received`.
async fn read_rest(response: &mut reqwest::Response, received: &mut Vec<u8>) {
    while let Some(piece) = response.chunk().await.expect("a whole body") {
        received.extend_from_slice(&piece);
    }
}

/// The server path of the NAR a narinfo of `mirror` names.
fn nar_url(narinfo: &str) -> String {
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("a URL line");
    format!("/mirror/{url}")
}

fn field<'a>(narinfo: &'a str, name: &str) -> Option<&'a str> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// Real Nix realising `path` into the store at `root`, substituting from
/// `mirror` on the server at `url` and trusting only `key`.
fn substitute_from_mirror(
    url: &str,
    root: &Path,
    netrc: &Path,
    key: &str,
    path: &str,
) -> std::process::Output {
    nix::run_unchecked(
        nix::command("nix-store")
            .arg("--store")
            .arg(root)
            .args(["--realise", path])
            .arg("--option")
            .arg("netrc-file")
            .arg(netrc)
            .args([
                "--option",
                "substituters",
                &format!("{url}/mirror"),
                "--option",
                "trusted-public-keys",
                key,
            ]),
    )
}

/// A path of its own holding `size` bytes of noise.
fn noise_path(size: usize) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = dir.path().join(format!("payload-{}", nix::nonce()));
    std::fs::create_dir(&payload).expect("mkdir");
    std::fs::write(
        payload.join("noise"),
        integration_tests::upload::noise(size, rand_seed()),
    )
    .expect("write");
    nix::add(&payload)
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64
}

#[tokio::test]
async fn nix_substitutes_a_closure_pulled_through_from_nginx_trusting_only_our_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 512 * 1024);
    let upstream = FileUpstream::with(&[closure.top()], "zstd");
    // Public: anonymous readers pull through too.
    let (server, api, admin) = server_with_cache(true).await;
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;
    let our_key = api.public_key(&admin, "mirror").await;
    let substituter = format!("{}/mirror", server.url);

    let first = FreshStore::new();
    let out = first.substitute(closure.top(), &substituter, &our_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &closure.paths {
        assert!(first.is_valid(path), "{path} was not substituted");
    }
    let fetched = upstream.nar_requests();
    assert_eq!(fetched, 3, "one NAR fetch per path of the closure");
    // The cache holds the paths now, signed by its own key.
    let (status, narinfo) = api
        .get_text(&format!("/mirror/{}.narinfo", path_hash(closure.top())))
        .await;
    assert_eq!(status, StatusCode::OK);
    let our_name = our_key.split(':').next().expect("key name");
    assert!(narinfo.contains(&format!("Sig: {our_name}:")), "{narinfo}");

    // A second client is served from our store: the upstream sees nothing.
    let second = FreshStore::new();
    let out = second.substitute(closure.top(), &substituter, &our_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(second.is_valid(closure.top()));
    assert_eq!(upstream.nar_requests(), fetched);
    assert_eq!(server.row_counts().await.paths, 3);
    let log = server.atticadm(&["audit", "--cache", "mirror"]);
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(log.contains("pull-through"), "{log}");
}

#[tokio::test]
async fn the_first_client_gets_the_nar_while_the_upstream_is_still_sending_it() {
    let path = noise_path(1024 * 1024);
    let files = FileUpstream::with(&[&path], "zstd");
    let upstream = GatedUpstream::serve(files.cache_dir()).await;
    // A join window longer than the test: the client's NAR request is
    // always in time for the first byte.
    let server = TestServer::start_with_config("[pull-through]\ntimeout = \"10m\"\n");
    let api = Api::new(&server.url);
    let admin = server.make_token(&[
        "--pull",
        "*",
        "--create-cache",
        "*",
        "--configure-cache",
        "*",
    ]);
    api.create_cache(&admin, "mirror", false).await;
    set_upstreams(&api, &admin, &[(&upstream.url, &files.public_key)]).await;
    let our_key = api.public_key(&admin, "mirror").await;

    // The narinfo comes first, signed by us for the upstream's NAR hash
    // and size, naming the NAR uncompressed.
    let narinfo = narinfo_text(&api, &admin, &path).await;
    let upstream_narinfo = std::fs::read_to_string(
        files
            .cache_dir()
            .join(format!("{}.narinfo", path_hash(&path))),
    )
    .expect("the upstream's narinfo");
    for name in ["NarHash", "NarSize", "StorePath"] {
        assert_eq!(
            field(&narinfo, name),
            field(&upstream_narinfo, name),
            "{name}"
        );
    }
    assert_eq!(field(&narinfo, "Compression"), Some("none"));
    assert_eq!(field(&narinfo, "FileSize"), None);
    let our_name = our_key.split(':').next().expect("key name");
    assert!(narinfo.contains(&format!("Sig: {our_name}:")), "{narinfo}");

    let mut response = api
        .request(reqwest::Method::GET, &nar_url(&narinfo), Some(&admin))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = first_bytes(&mut response).await;
    // Bytes arrived while the upstream holds back half the NAR.
    assert_eq!(upstream.nar_requests(), 1);
    assert_eq!(upstream.nars_finished(), 0, "the upstream had sent it all");
    // Its length is the narinfo's, announced before it is all here.
    let nar_size: u64 = field(&narinfo, "NarSize")
        .expect("NarSize")
        .parse()
        .expect("a size");
    let length = response.headers().get(reqwest::header::CONTENT_LENGTH);
    assert_eq!(
        length.and_then(|l| l.to_str().ok()),
        Some(nar_size.to_string().as_str())
    );
    // A client resuming meanwhile gets its exact range once the NAR is
    // stored, not the whole NAR from the upstream.
    let resuming = api
        .request(reqwest::Method::GET, &nar_url(&narinfo), Some(&admin))
        .header(reqwest::header::RANGE, "bytes=1000-1999");
    let resuming = tokio::spawn(async move {
        let response = resuming.send().await.expect("request");
        let status = response.status();
        (status, response.bytes().await.expect("body"))
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!resuming.is_finished(), "answered before the NAR was whole");
    upstream.open();
    read_rest(&mut response, &mut received).await;
    assert!(
        received == nix::dump(Path::new(&path)),
        "other bytes than the NAR"
    );
    assert_eq!(upstream.nars_finished(), 1);
    let (status, range) = resuming.await.expect("the resuming client");
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(range == received[1000..2000], "other bytes than the range");

    // The resuming client was answered from the stored copy: the path is
    // stored, and its narinfo is ours.
    assert_eq!(server.row_counts().await.paths, 1);
    let stored = narinfo_text(&api, &admin, &path).await;
    assert_eq!(field(&stored, "NarHash"), field(&narinfo, "NarHash"));
    assert!(field(&stored, "FileSize").is_some(), "{stored}");
    // The URL handed out while streaming still serves the NAR.
    let again = api.get_bytes(&admin, &nar_url(&narinfo)).await;
    assert!(
        again == received,
        "the uncompressed URL serves another body"
    );
    let store = FreshStore::new();
    let netrc_dir = tempfile::tempdir().expect("tempdir");
    let netrc = nix::write_netrc(netrc_dir.path(), "127.0.0.1", &admin);
    let out = substitute_from_mirror(&server.url, store.root(), &netrc, &our_key, &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(upstream.nar_requests(), 1, "served from our store");
}

#[tokio::test]
async fn a_client_that_asks_while_the_nar_arrives_is_sent_it_from_its_start() {
    let path = noise_path(256 * 1024);
    let files = FileUpstream::with(&[&path], "zstd");
    let upstream = GatedUpstream::serve(files.cache_dir()).await;
    let (server, api, admin) = server_with_cache(false).await;
    set_upstreams(&api, &admin, &[(&upstream.url, &files.public_key)]).await;

    // The first client's request starts the download; the upstream holds
    // back half the NAR.
    let narinfo = narinfo_text(&api, &admin, &path).await;
    let get = || api.request(reqwest::Method::GET, &nar_url(&narinfo), Some(&admin));
    let mut first = get().send().await.expect("request");
    assert_eq!(first.status(), StatusCode::OK);
    first.chunk().await.expect("body").expect("a first piece");
    // A second client comes after bytes went out: it is sent the NAR
    // from its first byte while the rest is still held back, rather than
    // waiting for the stored copy.
    let mut second = get().send().await.expect("request");
    assert_eq!(second.status(), StatusCode::OK);
    let mut received = first_bytes(&mut second).await;
    assert_eq!(upstream.nars_finished(), 0, "the upstream had sent it all");
    assert_eq!(server.row_counts().await.paths, 0, "stored before whole");
    upstream.open();
    read_rest(&mut second, &mut received).await;
    assert!(
        received == nix::dump(Path::new(&path)),
        "other bytes than the NAR"
    );
    assert_eq!(upstream.nar_requests(), 1, "one download");
}

#[tokio::test]
async fn a_tampered_upstream_nar_is_refused_stored_nowhere_and_a_miss() {
    let path = noise_path(200 * 1024);
    let upstream = FileUpstream::with(&[&path], "zstd");
    let nar_file = upstream.nar_file(&path);
    let mut bytes = std::fs::read(&nar_file).expect("read the NAR");
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 16] {
        *byte ^= 0xff;
    }
    std::fs::write(&nar_file, bytes).expect("tamper with the NAR");
    let (server, api, admin) = server_with_cache(false).await;
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;
    let before = server.row_counts().await;

    // Answered before the NAR arrives; the NAR's body then ends abnormally.
    let (_, nar) = pull_narinfo_and_nar(&api, &admin, &path).await;
    assert!(nar.is_err(), "a tampered NAR ended like a whole one");
    assert_eq!(
        upstream.nar_requests(),
        1,
        "the NAR was fetched, then refused"
    );
    // Now a miss.
    let status = api
        .status(
            Some(&admin),
            &format!("/mirror/{}.narinfo", path_hash(&path)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(pull_through_count(&api, "failed").await, "1");
    assert_eq!(pull_through_count(&api, "pulled").await, "0");
    let after = server.row_counts().await;
    assert_eq!(after.paths, before.paths);
    assert_eq!(after.nars, before.nars);
    assert_eq!(after.chunks, before.chunks);
    let our_key = api.public_key(&admin, "mirror").await;
    let netrc_dir = tempfile::tempdir().expect("tempdir");
    let netrc = nix::write_netrc(netrc_dir.path(), "127.0.0.1", &admin);
    let store = FreshStore::new();
    let out = substitute_from_mirror(&server.url, store.root(), &netrc, &our_key, &path);
    assert!(!out.status.success(), "Nix got a tampered path");
    assert!(!store.is_valid(&path));
}

#[tokio::test]
async fn an_upstream_cannot_name_another_tenants_nar_into_a_cache_without_its_content() {
    // Another tenant holds the path; an upstream the mirror's admin
    // controls signs its narinfo (hash and size are public) but cannot
    // send the content.
    let path = noise_path(100 * 1024);
    let upstream = FileUpstream::with(&[&path], "none");
    let nar_file = upstream.nar_file(&path);
    let original = std::fs::read(&nar_file).expect("read the NAR");
    let mut tampered = original.clone();
    let near_end = tampered.len() - 200;
    tampered[near_end] ^= 0x01;
    std::fs::write(&nar_file, &tampered).expect("tamper with the NAR");
    // FileHash is not signed: without it, only the signed NarHash is left
    // to catch the content.
    let narinfo_file = upstream
        .cache_dir()
        .join(format!("{}.narinfo", path_hash(&path)));
    let text = std::fs::read_to_string(&narinfo_file).expect("read the narinfo");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("FileHash:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&narinfo_file, text).expect("rewrite the narinfo");
    let (server, api, admin) = server_with_cache(false).await;
    api.create_cache(&admin, "victim", false).await;
    api.push_path(&admin, "victim", &path).await;
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;
    let stored = server.row_counts().await;

    let (_, nar) = pull_narinfo_and_nar(&api, &admin, &path).await;
    assert!(nar.is_err(), "the wrong content ended like a whole NAR");
    let narinfo = format!("/mirror/{}.narinfo", path_hash(&path));
    assert_eq!(
        api.status(Some(&admin), &narinfo).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(upstream.nar_requests(), 1, "the content was asked for");
    assert_eq!(
        server.row_counts().await.paths,
        1,
        "the victim's path alone"
    );

    // With the real content, the stored NAR is attached, not stored again.
    std::fs::write(&nar_file, &original).expect("restore the NAR");
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;
    let (_, nar) = pull_narinfo_and_nar(&api, &admin, &path).await;
    assert_eq!(nar.expect("the real content"), original);
    assert_eq!(api.status(Some(&admin), &narinfo).await, StatusCode::OK);
    let after = server.row_counts().await;
    assert_eq!(after.paths, 2);
    assert_eq!((after.nars, after.chunks), (stored.nars, stored.chunks));
}

#[tokio::test]
async fn a_path_signed_by_another_key_is_a_miss_remembered_briefly() {
    let path = noise_path(4 * 1024);
    let upstream = FileUpstream::with(&[&path], "none");
    let (_, wrong_key) = nix::generate_key("upstream-1");
    let (_server, api, admin) = server_with_cache(false).await;
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &wrong_key)]).await;
    let narinfo = format!("/mirror/{}.narinfo", path_hash(&path));

    assert_eq!(
        api.status(Some(&admin), &narinfo).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(upstream.narinfo_requests(&path), 1);
    assert_eq!(
        upstream.nar_requests(),
        0,
        "no NAR is fetched for a bad signature"
    );
    // Asked again within the negative TTL: answered without the upstream.
    assert_eq!(
        api.status(Some(&admin), &narinfo).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(upstream.narinfo_requests(&path), 1);

    // With the right key (a change that forgets the misses), it arrives.
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;
    assert_eq!(api.status(Some(&admin), &narinfo).await, StatusCode::OK);
}

#[tokio::test]
async fn an_upstream_that_hangs_is_a_miss_and_the_next_upstream_is_asked() {
    let path = noise_path(4 * 1024);
    let upstream = FileUpstream::with(&[&path], "xz");
    let hanging = HangingUpstream::start();
    let (server, api, admin) = server_with_cache(false).await;
    let narinfo = format!("/mirror/{}.narinfo", path_hash(&path));

    set_upstreams(&api, &admin, &[(&hanging.url, &upstream.public_key)]).await;
    assert_eq!(
        api.status(Some(&admin), &narinfo).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.row_counts().await.paths, 0);

    set_upstreams(
        &api,
        &admin,
        &[
            (&hanging.url, &upstream.public_key),
            (&upstream.nginx.url, &upstream.public_key),
        ],
    )
    .await;
    let (_, nar) = pull_narinfo_and_nar(&api, &admin, &path).await;
    assert_eq!(nar.expect("the NAR"), nix::dump(Path::new(&path)));
    assert_eq!(server.row_counts().await.paths, 1);
}

#[tokio::test]
async fn concurrent_requests_for_one_path_cause_one_upstream_fetch() {
    let path = noise_path(2 * 1024 * 1024);
    let upstream = FileUpstream::with(&[&path], "zstd");
    let (_server, api, admin) = server_with_cache(false).await;
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;

    // Each asks for the narinfo, then the NAR: those who come while the
    // tee replays it share the download, the others get the stored copy.
    let requests = (0..12).map(|_| {
        let (api, admin, path) = (api.clone(), admin.clone(), path.clone());
        tokio::spawn(async move { pull_narinfo_and_nar(&api, &admin, &path).await.1 })
    });
    let expected = nix::dump(Path::new(&path));
    for nar in futures::future::join_all(requests).await {
        let nar = nar.expect("request task").expect("a whole NAR");
        assert!(nar == expected, "a client got other bytes than the NAR");
    }
    assert_eq!(upstream.narinfo_requests(&path), 1);
    assert_eq!(upstream.nar_requests(), 1);
    // Clients are answered once the NAR verified; the pull is counted
    // once it is stored.
    let mut pulled = pull_through_count(&api, "pulled").await;
    for _ in 0..100 {
        if pulled != "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pulled = pull_through_count(&api, "pulled").await;
    }
    assert_eq!(pulled, "1");
}

/// A NAR asked for with no pull of it running here (its narinfo came from
/// another replica behind the same load balancer, or from a pull that
/// failed since) starts one: the client gets the NAR, not a 404.
#[tokio::test]
async fn a_nar_request_with_no_pull_running_here_pulls_the_path() {
    let path = noise_path(512 * 1024);
    let upstream = FileUpstream::with(&[&path], "zstd");
    let (_server, api, admin) = server_with_cache(false).await;
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;

    let url = format!("/mirror/nar/{}.nar", path_hash(&path));
    let response = api
        .request(reqwest::Method::GET, &url, Some(&admin))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let nar = response.bytes().await.expect("a whole NAR");
    assert!(
        nar.as_ref() == nix::dump(Path::new(&path)),
        "other bytes than the NAR"
    );
    assert_eq!(upstream.nar_requests(), 1);
    // Stored: the narinfo now comes from the store, with no second fetch.
    narinfo_text(&api, &admin, &path).await;
    assert_eq!(upstream.nar_requests(), 1);

    // A path no upstream has stays a 404.
    let missing = format!("/mirror/nar/{}.nar", "0".repeat(32));
    assert_eq!(
        api.status(Some(&admin), &missing).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_caller_without_pull_never_makes_the_server_ask_an_upstream() {
    let path = noise_path(4 * 1024);
    let upstream = FileUpstream::with(&[&path], "zstd");
    let (server, api, admin) = server_with_cache(false).await;
    set_upstreams(&api, &admin, &[(&upstream.nginx.url, &upstream.public_key)]).await;
    let other = server.make_token(&["--pull", "elsewhere"]);
    let hash = path_hash(&path);

    // Exactly what a missing cache answers, and the upstream hears nothing.
    for token in [None, Some(other.as_str())] {
        let ours = api.status(token, &format!("/mirror/{hash}.narinfo")).await;
        let missing = api
            .status(token, &format!("/no-such-cache/{hash}.narinfo"))
            .await;
        assert_eq!(ours, missing);
        assert!(ours.is_client_error(), "{ours}");
    }
    assert_eq!(upstream.narinfo_requests(&path), 0);
}

#[tokio::test]
async fn another_atticd_serves_as_an_upstream() {
    let path = noise_path(300 * 1024);
    let upstream = TestServer::start();
    let upstream_api = Api::new(&upstream.url);
    let upstream_admin =
        upstream.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    upstream_api
        .create_cache(&upstream_admin, "origin", true)
        .await;
    upstream_api
        .push_path(&upstream_admin, "origin", &path)
        .await;
    let upstream_key = upstream_api.public_key(&upstream_admin, "origin").await;

    let (server, api, admin) = server_with_cache(true).await;
    set_upstreams(
        &api,
        &admin,
        &[(&format!("{}/origin", upstream.url), &upstream_key)],
    )
    .await;
    let our_key = api.public_key(&admin, "mirror").await;
    let store = FreshStore::new();
    let out = store.substitute(&path, &format!("{}/mirror", server.url), &our_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        nix::dump(&store.root().join(path.trim_start_matches('/'))),
        nix::dump(Path::new(&path))
    );
}

#[test]
fn the_client_sets_shows_and_clears_a_caches_upstreams() {
    let (_server, client, _token) = integration_tests::client::logged_in();
    let (_, key) = nix::generate_key("upstream-1");
    client.attic_ok(&[
        "cache",
        "configure",
        "demo",
        "--upstream",
        "https://cache.example.org/",
        "--upstream-key",
        &key,
    ]);
    let info = client.attic_ok(&["cache", "info", "demo"]);
    assert!(
        info.contains(&format!(
            "pulls through:     https://cache.example.org ({key})"
        )),
        "{info}"
    );
    let unpaired = client.attic(&[
        "cache",
        "configure",
        "demo",
        "--upstream",
        "https://x.example",
    ]);
    assert!(!unpaired.status.success());
    assert!(
        text(&unpaired).contains("--upstream-key"),
        "{}",
        text(&unpaired)
    );
    let bad = client.attic(&[
        "cache",
        "configure",
        "demo",
        "--upstream",
        "ftp://x.example",
        "--upstream-key",
        &key,
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("InvalidUpstream"), "{}", text(&bad));
    client.attic_ok(&["cache", "configure", "demo", "--clear-upstreams"]);
    let info = client.attic_ok(&["cache", "info", "demo"]);
    assert!(info.contains("pulls through:     -"), "{info}");
}
