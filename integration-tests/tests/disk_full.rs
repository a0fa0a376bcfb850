//! A full disk is an answer a person can act on, and leaves nothing behind.
//!
//! The storage directory is a 1 MiB tmpfs the test mounts (the suite runs
//! as root, as it must to install Nix); a test that cannot mount fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use attic::nar::NarNode;
use integration_tests::client::TestClient;
use integration_tests::nix;
use integration_tests::server::TestServer;
use integration_tests::upload::{Api, fake_store_path, nar_info_for, noise};
use reqwest::StatusCode;

/// A small tmpfs, unmounted on drop.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs (the tests run as root)");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    walk(&entry.path(), found);
                } else {
                    found.push(entry.path());
                }
            }
        }
        let mut found = Vec::new();
        walk(self.path(), &mut found);
        found
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_and_stores_nothing() {
    let disk = TinyDisk::mount("1m");
    let server = TestServer::start_with_config(&format!(
        "[storage]\ntype = \"local\"\npath = \"{}\"\n",
        disk.path().display()
    ));
    let api = Api::new(&server.url);
    api.create_cache(&server.root_token, "c", false).await;
    let nar = NarNode::Regular {
        executable: false,
        contents: noise(3 * 1024 * 1024, 1),
    }
    .to_nar();
    let path = fake_store_path("too-big-for-the-disk");
    let response = api
        .upload(
            Some(&server.root_token),
            &nar_info_for("c", &path, &nar),
            nar,
        )
        .await;
    assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "InsufficientStorage");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("storage is full"),
        "{body}"
    );
    let counts = server.row_counts().await;
    assert_eq!(counts.nars, 0);
    assert_eq!(counts.packs, 0);
    assert!(
        disk.files().is_empty(),
        "the partial pack was removed: {:?}",
        disk.files()
    );

    // The client says so, in words.
    let dir = tempfile::tempdir().expect("tempdir");
    let closure = nix::build_closure(dir.path(), 3 * 1024 * 1024);
    let client = TestClient::new();
    client.attic_ok(&["login", "local", &server.url, &server.root_token]);
    let out = client.attic(&["push", "c", "--retries", "0", closure.top()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("storage is full"), "{text}");
}
