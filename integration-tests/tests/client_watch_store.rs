//! `attic watch-store` against a real `atticd` and real Nix builds: what
//! it queues survives a killed client and a server that is down.

use integration_tests::client::{TestClient, logged_in, text};
use integration_tests::nix;
use integration_tests::upload::path_hash;

/// `attic watch-store demo` in the background, killed (as a crash would) on drop.
struct WatchStore(std::process::Child);

impl WatchStore {
    /// Starts it with its stderr lines sent to the returned channel.
    fn start_with_log(client: &TestClient) -> (Self, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead;
        let mut child = client
            .command("attic")
            .args(["watch-store", "demo"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start watch-store");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        (Self(child), lines_rx)
    }
}

/// Waits for a line containing `needle`; panics with what came instead.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?}; got:\n{}", seen.join("\n")),
        }
    }
}

impl Drop for WatchStore {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_watch_store_queue_survives_a_killed_client() {
    let (mut server, client, token) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);

    // The post-build-hook mode queues without contacting the server.
    server.kill();
    let hook = client
        .command("attic")
        .args(["watch-store", "demo", "--enqueue"])
        .env("OUT_PATHS", closure.top())
        .output()
        .expect("run hook");
    assert!(hook.status.success(), "{}", text(&hook));

    // The pusher cannot reach the server; kill it while it waits.
    let (watcher, log) = WatchStore::start_with_log(&client);
    wait_for_line(&log, "watching");
    drop(watcher);

    // Back up: the queue still holds the path, and draining pushes its
    // closure (and whatever other tests built while the watcher ran).
    server.restart();
    let out = client.attic_ok(&["watch-store", "demo", "--once"]);
    for path in &closure.paths {
        assert!(out.contains(&format!("pushed {path}: ")), "{out}");
    }
    let api = integration_tests::upload::Api::new(&server.url);
    let hashes: Vec<&str> = closure.paths.iter().map(|p| path_hash(p)).collect();
    assert!(api.missing(&token, "demo", &hashes).await.is_empty());
    // And the queue is empty now.
    let out = client.attic_ok(&["watch-store", "demo", "--once"]);
    assert!(!out.contains("pushed"), "{out}");
}

/// A path built while watch-store starts against a down server is queued
/// at once, before any server contact, and pushed once the server is up.
#[tokio::test]
async fn watch_store_queues_paths_built_while_the_server_is_down() {
    let (mut server, client, token) = logged_in();
    server.kill();
    let (watcher, log) = WatchStore::start_with_log(&client);
    wait_for_line(&log, "watching");
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    wait_for_line(&log, &format!("queued {}", closure.top()));

    server.restart();
    let api = integration_tests::upload::Api::new(&server.url);
    let hashes: Vec<&str> = closure.paths.iter().map(|p| path_hash(p)).collect();
    let mut missing = hashes.len();
    for _ in 0..240 {
        missing = api.missing(&token, "demo", &hashes).await.len();
        if missing == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    drop(watcher);
    assert_eq!(missing, 0, "watch-store did not push what it queued");
}

#[tokio::test]
async fn watch_store_pushes_paths_as_nix_builds_them() {
    let (server, client, token) = logged_in();
    // Build only once it watches: a path that lands before misses the watch.
    let (watcher, log) = WatchStore::start_with_log(&client);
    wait_for_line(&log, "watching");
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    let api = integration_tests::upload::Api::new(&server.url);
    let hashes: Vec<&str> = closure.paths.iter().map(|p| path_hash(p)).collect();
    // As long as the test of a down server allows: a push refused while
    // the machine is loaded is retried after a backoff of up to a minute.
    let mut missing = hashes.len();
    for _ in 0..240 {
        missing = api.missing(&token, "demo", &hashes).await.len();
        if missing == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    drop(watcher);
    let said: Vec<String> = log.try_iter().collect();
    assert_eq!(
        missing,
        0,
        "watch-store did not push the new closure; it said:\n{}",
        said.join("\n")
    );
}

/// Nix's own post-build hook running `attic watch-store --enqueue` as the
/// book shows: Nix 2.8 hands it an empty `OUT_PATHS` (NixOS/nix#6446),
/// for an input-addressed and a content-addressed derivation alike, and
/// the hook still queues what was built, from `DRV_PATH`; draining the
/// queue pushes it.
#[tokio::test]
async fn the_real_post_build_hook_queues_what_nix_built() {
    let (_server, client, _token) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = dir.path().join("out-paths-seen");
    let hook = dir.path().join("attic-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"[$OUT_PATHS]\" >> '{}'\nexec '{}' watch-store demo --enqueue\n",
            seen.display(),
            integration_tests::server::binary("attic").display()
        ),
    )
    .expect("write hook");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let content_addressed =
        r#"__contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";"#;
    let mut built = Vec::new();
    for (name, extra) in [("hook-ia", ""), ("hook-ca", content_addressed)] {
        let file = dir.path().join(format!("{name}.nix"));
        std::fs::write(
            &file,
            format!(
                r#"derivation {{ name = "{name}"; system = builtins.currentSystem;
                  builder = "/bin/sh"; args = [ "-c" "echo {} > $out" ]; {extra} }}"#,
                nix::nonce()
            ),
        )
        .expect("write derivation");
        let out = client
            .command("nix-build")
            .arg(&file)
            .arg("--no-out-link")
            .args([
                "--option",
                "experimental-features",
                "nix-command ca-derivations",
            ])
            .arg("--option")
            .arg("post-build-hook")
            .arg(&hook)
            .output()
            .expect("run nix-build");
        assert!(out.status.success(), "{}", text(&out));
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("running post-build-hook"), "{log}");
        assert!(log.contains("queued 1 paths for demo"), "{log}");
        built.push(
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_owned(),
        );
    }
    // What Nix 2.8 handed the hook: no OUT_PATHS at all.
    let seen = std::fs::read_to_string(&seen).expect("the hook ran");
    assert_eq!(seen, "[]\n[]\n");

    let out = client.attic_ok(&["watch-store", "demo", "--once"]);
    for path in &built {
        assert!(out.contains(&format!("pushed {path}: ")), "{out}");
    }
}
