//! The `attic` client against a real `atticd`, with real Nix: pushing,
//! errors, cache management, progress, tokens, keys and login.
//! `watch-store` is in `client_watch_store.rs`.

use std::path::Path;

use integration_tests::client::{TestClient, logged_in, text};
use integration_tests::nix;
use integration_tests::server::TestServer;

#[tokio::test]
async fn push_then_substitute_through_attic_use() {
    let (server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1024 * 1024);
    let original = nix::dump(Path::new(closure.top()));

    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(out.contains("pushed 3 paths"), "{out}");

    // A second push uploads nothing and says so.
    let out = client.attic_ok(&["push", "local:demo", closure.top()]);
    assert!(
        out.contains("nothing to push: 3 paths already in the cache"),
        "{out}"
    );

    // `attic use` makes Nix substitute from the private cache; twice is the same as once.
    client.attic_ok(&["use", "demo"]);
    let conf_once = std::fs::read_to_string(client.nix_conf()).expect("nix.conf");
    client.attic_ok(&["use", "demo"]);
    assert_eq!(
        std::fs::read_to_string(client.nix_conf()).expect("nix.conf"),
        conf_once
    );
    assert!(
        conf_once.contains(&format!("extra-substituters = {}/demo", server.url)),
        "{conf_once}"
    );
    assert!(
        conf_once.contains("netrc-file"),
        "a private cache needs credentials: {conf_once}"
    );

    nix::delete(&closure.paths);
    let realised = client.realise(closure.top());
    assert!(realised.status.success(), "{}", text(&realised));
    for path in &closure.paths {
        assert!(nix::is_valid(path), "{path} was not substituted");
    }
    assert_eq!(nix::dump(Path::new(closure.top())), original);
}

#[tokio::test]
async fn a_half_present_closure_uploads_only_the_rest() {
    let (_server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    let leaf = &closure.paths[0];
    let out = client.attic_ok(&["push", "demo", "--no-closure", leaf]);
    assert!(out.contains("pushed 1 path ("), "{out}");
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(out.contains("2 paths to push to demo"), "{out}");
    assert!(out.contains("1 already there"), "{out}");
    assert!(out.contains("pushed 2 paths"), "{out}");
    // Nothing is said of the path the cache held: no line names it.
    assert!(!out.contains(leaf.as_str()), "{out}");
}

#[test]
fn clear_errors_and_failing_exit_codes() {
    let (server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);

    // A path that is not in the store.
    let out = client.attic(&[
        "push",
        "demo",
        "/nix/store/00000000000000000000000000000000-missing",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not valid") || text(&out).contains("does not exist"),
        "{}",
        text(&out)
    );
    let out = client.attic(&["push", "demo", "/etc"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not in the Nix store"),
        "{}",
        text(&out)
    );

    // A token without push rights, and a garbage token.
    let pull_only = server.make_token(&["--pull", "*"]);
    client.attic_ok(&["login", "puller", &server.url, &pull_only]);
    let out = client.attic(&["push", "puller:demo", closure.top()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("403"), "{}", text(&out));
    client.attic_ok(&["login", "bad", &server.url, "garbage", "--no-verify"]);
    let out = client.attic(&["push", "bad:demo", closure.top()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("401") && text(&out).contains("token"),
        "{}",
        text(&out)
    );

    // An unreachable server: retried, then a clear failure.
    client.attic_ok(&["login", "down", "http://127.0.0.1:9", "--no-verify"]);
    let out = client.attic(&["push", "down:demo", "--retries", "1", closure.top()]);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("cannot reach http://127.0.0.1:9/"), "{all}");
    assert!(all.contains("retrying"), "{all}");

    // No server configured at all.
    let fresh = TestClient::new();
    let out = fresh.attic(&["push", "demo", closure.top()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("attic login"), "{}", text(&out));
}

#[tokio::test]
async fn a_push_interrupted_by_a_server_restart_completes_on_rerun() {
    let (mut server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 64 * 1024 * 1024);
    let push = client
        .command("attic")
        .args(["push", "demo", "--retries", "0", closure.top()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start push");
    // Kill the server once the pack of the 64 MiB path is being written.
    for _ in 0..1000 {
        if server.temp_file_count() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.kill();
    let first = push.wait_with_output().expect("push ends");
    assert!(
        !first.status.success(),
        "the first push should have failed: {}",
        text(&first)
    );
    assert!(text(&first).contains("cannot reach"), "{}", text(&first));
    server.restart();
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(
        out.contains("pushed") || out.contains("nothing to push"),
        "{out}\nfirst run: {}",
        text(&first)
    );
    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(out.contains("nothing to push: 3 paths"), "{out}");

    // Nothing corrupt: Nix substitutes the closure.
    client.attic_ok(&["use", "demo"]);
    let original = nix::dump(Path::new(&closure.paths[0]));
    nix::delete(&closure.paths);
    let realised = client.realise(closure.top());
    assert!(realised.status.success(), "{}", text(&realised));
    assert_eq!(nix::dump(Path::new(&closure.paths[0])), original);
}

#[test]
fn cache_management_commands() {
    let (_server, client, _) = logged_in();
    let info = client.attic_ok(&["cache", "info", "demo"]);
    assert!(info.contains("public:            false"), "{info}");
    let key_before = info
        .lines()
        .find(|l| l.starts_with("public key"))
        .expect("key")
        .to_owned();
    client.attic_ok(&[
        "cache",
        "configure",
        "demo",
        "--public",
        "--priority",
        "30",
        "--regenerate-keypair",
    ]);
    let info = client.attic_ok(&["cache", "info", "demo"]);
    assert!(info.contains("public:            true"), "{info}");
    assert!(info.contains("priority:          30"), "{info}");
    assert!(!info.contains(&key_before), "the key was regenerated");

    // Destroy asks for confirmation, and without a terminal refuses.
    let out = client.attic(&["cache", "destroy", "demo"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--no-confirm"), "{}", text(&out));
    client.attic_ok(&["cache", "destroy", "demo", "--no-confirm"]);
    let out = client.attic(&["cache", "info", "demo"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("404"), "{}", text(&out));
}

/// Terminal output as text: CSI sequences (colours, cursor moves, line
/// clears) removed.
fn without_control_sequences(shown: &str) -> String {
    let mut out = String::new();
    let mut chars = shown.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[tokio::test]
async fn progress_bars_on_a_terminal_and_plain_lines_in_logs() {
    let server = TestServer::start();
    let token = server.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &token]);
    client.attic_ok(&["cache", "create", "tty"]);
    client.attic_ok(&["cache", "create", "log"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 100 * 1024 * 1024);

    // On a terminal (a pty from `script`): bars with bytes and rate.
    let attic = integration_tests::server::binary("attic");
    let tty = client
        .command("script")
        .args([
            "-qfec",
            &format!(
                "stty cols 80 rows 24; {} push tty {}",
                attic.display(),
                closure.top()
            ),
            "/dev/null",
        ])
        .env("TERM", "xterm-256color")
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(
        shown.contains('\u{1b}'),
        "no terminal control sequences: {shown}"
    );
    assert!(shown.contains("paths,"), "no overall line: {shown}");
    // A rate, whatever its unit (a fast machine reaches GiB/s).
    assert!(shown.contains("iB/s"), "no transfer rate: {shown}");
    assert!(shown.contains("[="), "no bar: {shown}");
    assert!(shown.contains("pushed 3 paths"), "no summary: {shown}");
    // Each bar fits the 80 columns (no wrapping), and its label starts
    // with the path's name, then the start of its hash.
    let leaf = &closure.paths[0]["/nix/store/".len()..];
    let label = format!("{} ({})", &leaf[33..], &leaf[..8]);
    let screen = without_control_sequences(&shown);
    assert!(screen.contains(&label), "no label {label:?}: {screen}");
    // indicatif pads each line to the terminal's width and lets it wrap,
    // so measure each drawn bar: spinner, label, ..., up to its rate (or
    // the verifying note).
    for (at, _) in screen.match_indices(&label) {
        let start = screen[..at].trim_end_matches(' ');
        let start = start.len() - start.chars().last().map_or(0, char::len_utf8);
        let rest = &screen[at..];
        let end = ["/s", "verifying"]
            .iter()
            .filter_map(|end| rest.find(end).map(|i| i + end.len()))
            .min()
            .expect("a bar ends with its rate or the verifying note");
        let bar = &screen[start..at + end];
        assert!(
            bar.chars().count() <= 80,
            "a bar wider than the terminal: {bar:?}"
        );
    }

    // Each finished path's line (up to its rate, as indicatif pads it)
    // and the summary fit the 80 columns too, the path named by its label.
    let segments: Vec<&str> = screen.split(['\n', '\r']).collect();
    let fits = |start: &str, end: Option<&str>| {
        let line = segments
            .iter()
            .find_map(|s| s.find(start).map(|at| s[at..].trim_end()))
            .unwrap_or_else(|| panic!("no line {start:?}: {screen}"));
        let line = match end.and_then(|end| line.find(end).map(|i| i + end.len())) {
            Some(i) => &line[..i],
            None => line,
        };
        assert!(
            line.chars().count() < 80,
            "wider than the terminal: {line:?}"
        );
    };
    for path in &closure.paths {
        let base = &path["/nix/store/".len()..];
        fits(
            &format!("pushed {} ({}): ", &base[33..], &base[..8]),
            Some("/s"),
        );
    }
    fits("pushed 3 paths (", None);

    // Not a terminal: plain lines only.
    let out = client.attic_ok(&["push", "log", closure.top()]);
    assert!(!out.contains('\u{1b}'), "control sequences in a log: {out}");
    // One line per path, once it is done, naming it in full.
    for path in &closure.paths {
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(path.as_str())).collect();
        assert_eq!(lines.len(), 1, "{path}: {out}");
        assert!(
            lines[0].starts_with(&format!("pushed {path}: ")) && lines[0].ends_with("iB/s"),
            "{out}"
        );
    }
    assert!(out.contains("pushed 3 paths"), "{out}");
}

#[test]
fn paths_signed_by_an_upstream_key_are_skipped_unless_asked() {
    let (_server, client, _) = logged_in();
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    // Sign the leaf as cache.nixos.org would (a key of that name).
    let (secret, _) = nix::generate_key("cache.nixos.org-1");
    let key_file = dir.path().join("upstream-key");
    std::fs::write(&key_file, secret).expect("write key");
    nix::run(
        nix::command("nix")
            .args(["store", "sign", "--key-file"])
            .arg(&key_file)
            .arg(&closure.paths[0]),
    );

    let out = client.attic_ok(&["push", "demo", closure.top()]);
    assert!(out.contains("1 signed upstream"), "{out}");
    assert!(out.contains("pushed 2 paths"), "{out}");
    let out = client.attic_ok(&[
        "push",
        "demo",
        "--ignore-upstream-cache-filter",
        closure.top(),
    ]);
    assert!(out.contains("pushed 1 path ("), "{out}");
}

/// A token that may push but not pull (what CI often gets) pushes a
/// closure with the client: it may read the cache's settings and ask
/// which of its paths are missing.
#[tokio::test]
async fn a_push_only_token_pushes() {
    let (server, _, _) = logged_in();
    let push_only = server.make_token(&["--push", "demo"]);
    let ci = TestClient::new();
    ci.attic_ok(&["login", "ci", &server.url, &push_only]);
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 64 * 1024);
    let out = ci.attic_ok(&["push", "demo", closure.top()]);
    assert!(out.contains("pushed 3 paths"), "{out}");
    let again = ci.attic_ok(&["push", "demo", closure.top()]);
    assert!(again.contains("nothing to push"), "{again}");
}

/// The public key line of `attic cache info`.
fn public_key(client: &TestClient, cache: &str) -> String {
    let info = client.attic_ok(&["cache", "info", cache]);
    info.lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .expect("a public key line")
        .trim()
        .to_owned()
}

/// After `cache configure --regenerate-keypair`, `attic use` trusts the new
/// key instead of the old one, and Nix substitutes with it.
#[test]
fn attic_use_after_a_key_rotation_trusts_only_the_new_key() {
    let (_server, client, _) = logged_in();
    client.attic_ok(&["use", "demo"]);
    let old_key = public_key(&client, "demo");
    client.attic_ok(&["cache", "configure", "demo", "--regenerate-keypair"]);
    let new_key = public_key(&client, "demo");
    assert_ne!(old_key, new_key);
    let out = client.attic(&["use", "demo"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no longer trusting"), "{}", text(&out));

    let conf = std::fs::read_to_string(client.nix_conf()).expect("nix.conf");
    assert!(
        !conf.contains(&old_key),
        "the old key is still trusted: {conf}"
    );
    let trusted: Vec<&str> = conf
        .lines()
        .filter(|l| l.starts_with("extra-trusted-public-keys"))
        .collect();
    assert_eq!(
        trusted,
        vec![format!("extra-trusted-public-keys = {new_key}")],
        "{conf}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 1000);
    client.attic_ok(&["push", "demo", closure.top()]);
    nix::delete(&closure.paths);
    let realised = client.realise(closure.top());
    assert!(realised.status.success(), "{}", text(&realised));
}

/// Nix's netrc holds one password per host: after `attic use` of two
/// private caches on one server, the single entry lets Nix pull from both,
/// and it is a pull-only token that cannot push.
#[tokio::test]
async fn two_private_caches_on_one_server_share_a_pull_only_netrc_entry() {
    let (server, client, login_token) = logged_in();
    client.attic_ok(&["cache", "create", "demo2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = nix::build_closure(dir.path(), 1000);
    let second = nix::build_closure(dir.path(), 2000);
    client.attic_ok(&["push", "demo", first.top()]);
    client.attic_ok(&["push", "demo2", second.top()]);
    client.attic_ok(&["use", "demo"]);
    client.attic_ok(&["use", "demo2"]);

    let netrc_path = client.home().join("config/nix/netrc");
    let netrc = std::fs::read_to_string(&netrc_path).expect("netrc");
    let entries: Vec<&str> = netrc.lines().collect();
    assert_eq!(entries.len(), 1, "{netrc}");
    let netrc_token = entries[0]
        .strip_prefix("machine 127.0.0.1 password ")
        .expect("an entry for the server's host");
    assert_ne!(netrc_token, login_token);

    // Real Nix, with only this netrc, substitutes from both caches.
    let url = &server.url;
    for (cache, closure) in [("demo", &first), ("demo2", &second)] {
        nix::delete(&closure.paths);
        let key = public_key(&client, cache);
        let out = nix::substitute_with_netrc(
            closure.top(),
            &format!("{url}/{cache}"),
            &key,
            Some(&netrc_path),
        );
        assert!(out.status.success(), "{cache}: {}", text(&out));
        assert!(nix::is_valid(closure.top()));
    }

    // The netrc token may not push to either cache.
    let api = integration_tests::upload::Api::new(url);
    let nar = nix::dump(Path::new(&first.paths[0]));
    for cache in ["demo", "demo2"] {
        let info = integration_tests::upload::nar_info_from_nix(cache, &first.paths[0]);
        let reply = api.upload(Some(netrc_token), &info, nar.clone()).await;
        assert_eq!(reply.status(), reqwest::StatusCode::FORBIDDEN, "{cache}");
    }
    // The config remembers both, so the entry can be regenerated.
    let config =
        client::config::ClientConfig::load_from(&client.home().join("config/attic/config.toml"))
            .expect("config");
    let used: Vec<&str> = config.servers["local"]
        .used_caches
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(used, ["demo", "demo2"]);

    // Logging in again with a new token rewrites the entry from it, still
    // covering both caches, so Nix never keeps sending a replaced token.
    let renewed = server.make_token(&["--pull", "*", "--push", "*"]);
    let out = client.attic(&["login", "local", url, &renewed]);
    assert!(out.status.success(), "{}", text(&out));
    let netrc = std::fs::read_to_string(&netrc_path).expect("netrc");
    assert_eq!(netrc.lines().count(), 1, "{netrc}");
    let refreshed = netrc
        .trim()
        .strip_prefix("machine 127.0.0.1 password ")
        .expect("an entry for the server's host");
    assert_ne!(refreshed, netrc_token);
    nix::delete(&second.paths);
    let key = public_key(&client, "demo2");
    let out = nix::substitute_with_netrc(
        second.top(),
        &format!("{url}/demo2"),
        &key,
        Some(&netrc_path),
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// A TCP server that answers every request with a web page, as a
/// misconfigured URL might.
fn not_atticd() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\
                  Connection: close\r\n\r\n<html></html>",
            );
        }
    });
    format!("http://{address}")
}

/// `attic login` checks the URL and token with the server and saves
/// nothing when they are wrong, saying what is wrong.
#[test]
fn login_checks_the_url_and_token_before_saving() {
    let (server, _, token) = logged_in();
    let client = TestClient::new();
    let config = client.home().join("config/attic/config.toml");
    let url = &server.url;
    let port = url.rsplit_once(':').expect("a port").1;
    let refused = |args: &[&str], expected: &[&str]| {
        let out = client.attic(args);
        let all = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {all}");
        for words in expected {
            assert!(all.contains(words), "{args:?}: no {words:?} in {all}");
        }
        assert!(!config.exists(), "{args:?} saved the config");
    };
    refused(
        &["login", "s", &format!("{url}/demo"), &token],
        &["is a cache's URL", &format!("the server URL is {url}/")],
    );
    // Also for a private cache the token may not read.
    let other_cache_only = server.make_token(&["--pull", "elsewhere"]);
    refused(
        &["login", "s", &format!("{url}/demo/"), &other_cache_only],
        &["is a cache's URL", &format!("the server URL is {url}/")],
    );
    refused(
        &["login", "s", &format!("https://127.0.0.1:{port}"), &token],
        &["TLS", &format!("use http://127.0.0.1:{port}/")],
    );
    refused(
        &["login", "s", &not_atticd(), &token],
        &["does not look like an atticd server"],
    );
    refused(
        &["login", "s", "http://127.0.0.1:9", &token],
        &["cannot reach http://127.0.0.1:9/", "refused"],
    );
    refused(
        &["login", "s", url, "garbage"],
        &["rejected the token", "malformed"],
    );

    let out = client.attic(&["login", "s", url, &token]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("accepts the token"), "{}", text(&out));
    let out = client.attic(&["login", "later", "http://127.0.0.1:9", "--no-verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let saved = std::fs::read_to_string(&config).expect("config");
    assert!(
        saved.contains("[servers.s]") && saved.contains("[servers.later]"),
        "{saved}"
    );
}
