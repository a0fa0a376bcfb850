//! Scale-out as deployed: two `atticd --mode api-server` replicas on one
//! PostgreSQL database and one S3 bucket, after one `--mode db-migrations`.
//! Whatever the run's backend, this needs PostgreSQL (`ATTIC_TEST_POSTGRES`)
//! and s3s-fs, and fails without them.

use std::collections::BTreeSet;
use std::path::Path;

use futures::StreamExt;
use integration_tests::backend::fresh_postgres_database;
use integration_tests::inspect::StoreView;
use integration_tests::nix;
use integration_tests::s3::S3Server;
use integration_tests::server::{TestHome, TestServer};
use integration_tests::upload::{Api, nar_info_from_nix, noise};
use reqwest::StatusCode;

/// A home holding `config` as atticd's config file.
fn home_with(config: &str) -> TestHome {
    let home = TestHome::new();
    let dir = home.path().join("config/attic");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("server.toml"), config).expect("write config");
    home
}

/// Pushes `paths` through `api` to cache `c`, four at a time.
async fn push_all(api: &Api, token: &str, paths: &[String]) {
    futures::stream::iter(paths)
        .map(|path| async move {
            let reply = api
                .upload_ok(
                    token,
                    &nar_info_from_nix("c", path),
                    nix::dump(Path::new(path)),
                )
                .await;
            assert!(
                reply["kind"] == "Uploaded" || reply["kind"] == "Deduplicated",
                "{path}: {reply}"
            );
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test]
async fn two_replicas_on_one_database_and_bucket_serve_what_either_was_pushed() {
    let s3 = S3Server::start();
    let database_url = fresh_postgres_database();
    let root_key = noise(32, 7)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let config = format!(
        "token-root-key = \"ed25519-private/{root_key}\"\n\
         [database]\nurl = \"{database_url}\"\n{}",
        s3.storage_toml("")
    );

    // Replicas refuse an unmigrated database, and neither they nor a
    // check of the config write to it; one migration run fixes it.
    let migrator = home_with(&config);
    let early = migrator.run("atticd", &["--mode", "api-server"]);
    assert!(!early.status.success(), "served an unmigrated database");
    let check = migrator.run("atticd", &["--check-config"]);
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("migrations pending"), "{said}");
    let store = StoreView::open(&database_url).await;
    let tables = store.table_names().await.expect("list tables");
    store.close().await;
    assert!(tables.is_empty(), "checking created {tables:?}");
    // PostgreSQL and S3 keep nothing in a data directory, so a run given
    // its config file needs no HOME to find one.
    let config_file = migrator.path().join("config/attic/server.toml");
    let migrated = migrator
        .command("atticd")
        .env_remove("HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .arg("--config")
        .arg(&config_file)
        .args(["--mode", "db-migrations"])
        .output()
        .expect("run atticd");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let one = TestServer::start_replica(home_with(&config));
    let two = TestServer::start_replica(home_with(&config));
    let token = one.make_token(&["--pull", "*", "--push", "*", "--create-cache", "*"]);
    let (api_one, api_two) = (Api::new(&one.url), Api::new(&two.url));

    // Racing creates of one name through both replicas: one wins, the
    // other is told the name is taken.
    for name in ["race-a", "race-b", "race-c"] {
        let (first, second) = tokio::join!(
            api_one.try_create_cache(&token, name, false),
            api_two.try_create_cache(&token, name, false)
        );
        let mut statuses = [first.status(), second.status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "creating {name} twice at once"
        );
    }
    api_one.create_cache(&token, "c", false).await;

    // Overlapping closures: both push the shared paths, each its own.
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = nix::build_wide_closure(dir.path(), 10, 300 * 1024);
    let own_one = nix::build_closure(dir.path(), 1 << 20).paths;
    let own_two = nix::build_closure(dir.path(), 1 << 20).paths;
    let mut through_one = shared.clone();
    through_one.extend(own_one.iter().cloned());
    let mut through_two: Vec<String> = shared.iter().rev().cloned().collect();
    through_two.extend(own_two.iter().cloned());
    tokio::join!(
        push_all(&api_one, &token, &through_one),
        push_all(&api_two, &token, &through_two)
    );

    // The store is consistent: one row per chunk and per NAR, and the
    // bucket's packs are exactly the pack rows.
    let store = StoreView::open(&database_url).await;
    let chunks = store.all_chunks().await.expect("list chunks");
    let distinct_chunks: BTreeSet<_> = chunks.iter().map(|c| c.hash).collect();
    assert_eq!(chunks.len(), distinct_chunks.len(), "chunks stored twice");
    let nars = store.all_nars().await.expect("list NARs");
    let distinct_nars: BTreeSet<_> = nars.iter().map(|n| n.nar_hash).collect();
    assert_eq!(nars.len(), distinct_nars.len());
    assert_eq!(nars.len(), shared.len() + own_one.len() + own_two.len());
    let rows: BTreeSet<String> = store
        .all_packs()
        .await
        .expect("list packs")
        .iter()
        .map(|p| p.key.as_str().to_owned())
        .collect();
    store.close().await;
    let blobs: BTreeSet<String> = s3.objects("").into_iter().collect();
    assert!(!rows.is_empty());
    assert_eq!(rows, blobs, "pack rows and the bucket's objects differ");
    assert_eq!(s3.open_uploads(), 0, "a multipart upload was left open");

    // Each replica counts its own database statements by operation.
    for replica in [&one, &two] {
        let metrics = reqwest::get(format!("{}/metrics", replica.metrics_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        let counted = |line: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(line))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        assert!(
            counted("attic_database_statements_total{operation=\"insert\"}") > 0.0,
            "{metrics}"
        );
        assert!(counted("attic_database_seconds_total{operation=\"select\"}") > 0.0);
    }

    // Every path substitutes through either replica, signed by the key
    // both replicas sign with.
    let key = api_two.public_key(&token, "c").await;
    let host = one
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host")
        .to_owned();
    let netrc = nix::write_netrc(dir.path(), &host, &token);
    let tops = [
        shared.last().expect("the wide top"),
        own_one.last().expect("a top"),
        own_two.last().expect("a top"),
    ];
    let all: Vec<String> = through_one
        .iter()
        .chain(&own_two)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for replica in [&one, &two] {
        nix::delete(&all);
        for top in tops {
            let out = nix::substitute_with_netrc(
                top,
                &format!("{}/c", replica.url),
                &key,
                Some(netrc.as_path()),
            );
            assert!(
                out.status.success(),
                "{top} through {}: {}",
                replica.url,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(all.iter().all(|path| nix::is_valid(path)));
    }
}
