//! Packs end to end, with real Nix: one blob per upload, damage that is
//! never served and heals on the next push, `atticadm verify`, and an
//! installation from before packs that keeps serving after the upgrade.

use std::path::Path;
use std::process::Output;

use integration_tests::client::TestClient;
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, path_hash};
use reqwest::{Method, StatusCode};

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A server, a user who may pull and push everywhere, and two private
/// caches, `main` and `second`, each holding the same three-path closure
/// (its leaf has a 4 MiB file of noise: a pack of many chunks).
struct Pushed {
    server: TestServer,
    api: Api,
    token: String,
    client: TestClient,
    closure: nix::TestClosure,
    _dir: tempfile::TempDir,
}

fn push_closure_to_two_caches() -> Pushed {
    let server = TestServer::start();
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &token]);
    client.attic_ok(&["cache", "create", "main"]);
    client.attic_ok(&["cache", "create", "second"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 4 * 1024 * 1024);
    let out = client.attic_ok(&["push", "main", closure.top()]);
    assert!(out.contains("pushed 3 paths"), "{out}");
    client.attic_ok(&["push", "second", closure.top()]);
    Pushed {
        api: Api::new(&server.url),
        server,
        token,
        client,
        closure,
        _dir: dir,
    }
}

impl Pushed {
    fn leaf(&self) -> &str {
        &self.closure.paths[0]
    }

    /// The storage key of the pack that is the leaf's whole NAR.
    async fn leaf_pack(&self) -> String {
        let nar_hash = nix::path_info(self.leaf()).nar_hash;
        let store = self.server.store().await;
        let nar = store
            .find_nar(&nar_hash)
            .await
            .expect("read NARs")
            .expect("the leaf's NAR");
        let pack_id = nar
            .pack_id
            .expect("the leaf was uploaded whole, so its NAR is one pack");
        let packs = store.all_packs().await.expect("list packs");
        store.close().await;
        let pack = packs.iter().find(|p| p.id == pack_id).expect("its pack");
        pack.key.as_str().to_owned()
    }

    async fn status(&self, path: &str) -> StatusCode {
        self.api
            .request(Method::GET, path, Some(&self.token))
            .send()
            .await
            .expect("request")
            .status()
    }

    async fn narinfo_status(&self, cache: &str) -> StatusCode {
        self.status(&format!("/{cache}/{}.narinfo", path_hash(self.leaf())))
            .await
    }

    /// Fetches the leaf's NAR in full; whether it arrived as a clean 200 of
    /// the declared length.
    async fn fetch_is_clean(&self, suffix: &str) -> bool {
        let response = self
            .api
            .request(
                Method::GET,
                &format!("/main/nar/{}{suffix}", path_hash(self.leaf())),
                Some(&self.token),
            )
            .send()
            .await
            .expect("request");
        if response.status() != StatusCode::OK {
            return false;
        }
        let declared = response.content_length();
        match response.bytes().await {
            Ok(body) => Some(body.len() as u64) == declared,
            Err(_) => false,
        }
    }

    /// Nix substitutes the closure from `cache` into an empty store, as a
    /// user of only that cache would, and gets the original bytes.
    fn substitutes_from(&self, cache: &str) {
        let user = TestClient::new();
        user.attic_ok(&["login", "local", &self.server.url, &self.token]);
        user.attic_ok(&["use", cache]);
        let original = nix::dump(Path::new(self.leaf()));
        nix::delete(&self.closure.paths);
        let realised = user.realise(self.closure.top());
        assert!(realised.status.success(), "{cache}: {}", text(&realised));
        assert_eq!(nix::dump(Path::new(self.leaf())), original);
    }
}

/// How a test damages a pack.
#[derive(Debug, Clone, Copy)]
enum Harm {
    FlipAByteInTheMiddle,
    Truncate,
    Delete,
}

fn harm(file: &Path, harm: Harm) {
    match harm {
        Harm::FlipAByteInTheMiddle => {
            let mut bytes = std::fs::read(file).expect("read the pack");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x20;
            std::fs::write(file, bytes).expect("write the pack");
        }
        Harm::Truncate => {
            let len = std::fs::metadata(file).expect("stat").len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .expect("open")
                .set_len(len / 2)
                .expect("truncate");
        }
        Harm::Delete => std::fs::remove_file(file).expect("delete the pack"),
    }
}

/// After `how` is done to the pack of a path held by two caches: reading
/// it never yields a clean 200, its narinfo then answers 404 in both
/// caches, it is listed missing, a push re-uploads exactly it, and Nix
/// substitutes it from both caches again.
async fn damage_is_never_served_and_heals(how: Harm) {
    let pushed = push_closure_to_two_caches();
    let pack = pushed.leaf_pack().await;
    assert_eq!(pushed.narinfo_status("main").await, StatusCode::OK);
    harm(&pushed.server.blob_path(&pack), how);

    // (a) No client gets the damaged NAR as a clean, complete response,
    // compressed or not; the second read is refused outright.
    assert!(!pushed.fetch_is_clean(".nar.zst").await, "{how:?}");
    assert!(!pushed.fetch_is_clean(".nar").await, "{how:?}");

    // (b) From then on the path is missing, in both caches that hold it.
    assert_eq!(pushed.narinfo_status("main").await, StatusCode::NOT_FOUND);
    assert_eq!(pushed.narinfo_status("second").await, StatusCode::NOT_FOUND);
    let hashes: Vec<&str> = pushed.closure.paths.iter().map(|p| path_hash(p)).collect();
    assert_eq!(
        pushed.api.missing(&pushed.token, "main", &hashes).await,
        vec![path_hash(pushed.leaf()).to_owned()]
    );
    let metrics = Api::new(&pushed.server.metrics_url)
        .get_text("/metrics")
        .await
        .1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("attic_damaged_chunks_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // (c) A push of the closure re-uploads exactly the damaged path...
    let out = pushed
        .client
        .attic_ok(&["push", "main", pushed.closure.top()]);
    assert!(
        out.contains("pushed 1 path (") && out.contains("2 already in the cache"),
        "{how:?}: {out}"
    );
    assert_eq!(pushed.narinfo_status("main").await, StatusCode::OK);
    assert!(pushed.fetch_is_clean(".nar.zst").await);
    pushed.substitutes_from("main");
    // (d) ...and heals the other cache holding the same NAR.
    assert_eq!(pushed.narinfo_status("second").await, StatusCode::OK);
    pushed.substitutes_from("second");
    let verify = pushed.server.atticadm(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[tokio::test]
async fn a_flipped_byte_is_never_served_and_heals_on_push() {
    damage_is_never_served_and_heals(Harm::FlipAByteInTheMiddle).await;
}

#[tokio::test]
async fn a_truncated_pack_is_never_served_and_heals_on_push() {
    damage_is_never_served_and_heals(Harm::Truncate).await;
}

#[tokio::test]
async fn a_deleted_pack_is_never_served_and_heals_on_push() {
    damage_is_never_served_and_heals(Harm::Delete).await;
}

#[tokio::test]
async fn verify_finds_a_flipped_byte_no_one_has_read() {
    let pushed = push_closure_to_two_caches();
    let clean = pushed.server.atticadm(&["verify"]);
    assert!(clean.status.success(), "{}", text(&clean));
    let report = String::from_utf8_lossy(&clean.stdout);
    assert!(report.contains("checked 3 packs"), "{report}");
    assert!(report.contains("found 0 damaged"), "{report}");

    let pack = pushed.leaf_pack().await;
    harm(&pushed.server.blob_path(&pack), Harm::FlipAByteInTheMiddle);
    let scoped = pushed.server.atticadm(&["verify", "--cache", "second"]);
    assert!(!scoped.status.success(), "{}", text(&scoped));
    let report = String::from_utf8_lossy(&scoped.stdout);
    assert!(report.contains("found 1 damaged"), "{report}");
    assert!(
        report.contains("damaged: chunk") && report.contains(&pack),
        "the report names the chunk and its pack: {report}"
    );
    assert_eq!(pushed.narinfo_status("main").await, StatusCode::NOT_FOUND);

    // Still damaged until pushed again: verify keeps failing, and says so.
    let again = pushed.server.atticadm(&["verify"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    pushed
        .client
        .attic_ok(&["push", "second", pushed.closure.top()]);
    let healed = pushed.server.atticadm(&["verify"]);
    assert!(healed.status.success(), "{}", text(&healed));
    pushed.substitutes_from("main");
}

#[tokio::test]
async fn a_push_of_232_paths_writes_one_pack_per_path_at_most() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = nix::build_wide_closure(dir.path(), 231, 160 * 1024);
    assert_eq!(paths.len(), 232);
    let server = TestServer::start();
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &token]);
    client.attic_ok(&["cache", "create", "wide"]);
    let top = paths.last().expect("a top path");
    let out = client.attic_ok(&["push", "wide", top]);
    assert!(out.contains("pushed 232 paths"), "{out}");
    let counts = server.row_counts().await;
    let chunks = counts.chunks;
    let blobs = server.blob_count();
    // Each 160 KiB file of noise is two to four chunks: far more chunks
    // than blobs is the point of packs.
    assert!(chunks > 2 * 232, "{chunks} chunks");
    assert!(blobs <= 232, "{blobs} blobs for 232 uploads");
    assert_eq!(counts.packs as usize, blobs);
}

/// Chunks that have not earned a checksum of their stored bytes yet.
async fn unchecked_chunks(server: &TestServer) -> usize {
    let store = server.store().await;
    let chunks = store.all_chunks().await.expect("list chunks");
    store.close().await;
    chunks.iter().filter(|c| c.checksum.is_none()).count()
}

/// The data directory an earlier version (one blob per chunk) wrote.
fn v1_fixture() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/v1-store"))
}

const V1_LEAF: &str = "/nix/store/pyj72kkg5lpysrmkbp0hj6facwimlq9j-v1-fixture-leaf";
const V1_TOP: &str = "/nix/store/rmgbwycrvf3mivvspnhs5bda4zrwqc25-v1-fixture-top";

#[tokio::test]
async fn a_store_from_before_packs_serves_every_path_after_the_upgrade() {
    let server = TestServer::start_on_copy_of(v1_fixture());
    let token = server.make_token(&["--pull", "*", "--push", "*"]);
    let api = Api::new(&server.url);
    assert_eq!(server.row_counts().await.packs, 9);
    assert_eq!(
        unchecked_chunks(&server).await,
        9,
        "checksums of old chunks are earned by a check, never assumed"
    );

    // Real Nix substitutes both paths from the public cache, and the
    // shared leaf from the private one.
    for (cache, paths) in [("alpha", vec![V1_LEAF, V1_TOP]), ("beta", vec![V1_LEAF])] {
        let key = api.public_key(&token, cache).await;
        for path in [V1_TOP, V1_LEAF] {
            if nix::is_valid(path) {
                nix::delete(&[path.to_owned()]);
            }
        }
        let user = TestClient::new();
        user.attic_ok(&["login", "local", &server.url, &token]);
        user.attic_ok(&["use", cache]);
        let target = paths.last().expect("a path");
        let realised = user.realise(target);
        assert!(realised.status.success(), "{cache}: {}", text(&realised));
        for path in &paths {
            assert!(nix::is_valid(path), "{path} from {cache}");
        }
        assert!(key.contains(&format!("-{cache}-1:")), "{key}");
    }
    let numbers = std::fs::read_to_string(format!("{V1_LEAF}/share/numbers")).expect("numbers");
    assert_eq!(numbers.lines().count(), 90000);

    // verify checks the old chunks against their content hashes and
    // records the checksums they earn.
    let verify = server.atticadm(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("checked 9 packs"));
    assert_eq!(unchecked_chunks(&server).await, 0);
}

#[tokio::test]
async fn an_old_chunk_that_fails_its_content_check_is_damaged() {
    let server = TestServer::start_on_copy_of(v1_fixture());
    let token = server.make_token(&["--pull", "*"]);
    let api = Api::new(&server.url);
    let store = server.store().await;
    let packs = store.all_packs().await.expect("list packs");
    store.close().await;
    let key = packs
        .iter()
        .max_by_key(|p| p.size)
        .expect("a pack")
        .key
        .as_str()
        .to_owned();
    harm(&server.blob_path(&key), Harm::FlipAByteInTheMiddle);
    let verify = server.atticadm(&["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let leaf = path_hash(V1_LEAF);
    let status = api
        .request(Method::GET, &format!("/alpha/{leaf}.narinfo"), Some(&token))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
}
