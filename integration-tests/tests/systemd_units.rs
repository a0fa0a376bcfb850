//! The repository's systemd units (`packaging/systemd/`) with the plain
//! binaries: what "Running in production" tells an operator to install,
//! run as the units say, with the build's binaries in place of
//! `/usr/local/bin` and a temporary `/etc/atticd` and `/var/lib/atticd`.
//! The book shows the unit files as they are.

use std::path::Path;

use integration_tests::backend::{Backend, Services};
use integration_tests::deployment::{UNIT_NAMES, repository_units_dir, serve_push_and_substitute};
use integration_tests::nginx::free_port;
use integration_tests::server::binary;
use integration_tests::systemd::{SystemUser, Unit};

/// A new token key, in the form `token-root-key` takes.
fn fresh_token_root_key() -> String {
    use std::io::Read;
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .expect("read /dev/urandom");
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519-private/{hex}")
}

#[test]
fn the_repository_units_serve_pushes_and_substitutes_with_the_plain_binaries() {
    let root = tempfile::tempdir().expect("tempdir");
    let etc = root.path().join("etc");
    let data = root.path().join("data");
    std::fs::create_dir_all(&etc).expect("mkdir etc");
    let bin = binary("atticd")
        .parent()
        .expect("the build directory")
        .to_owned();

    // The config the production page describes: secrets and the listen
    // address from the environment file, the rest in the file.
    let services = (Backend::from_env() == Backend::PostgresS3).then(Services::start);
    let backend = match &services {
        Some(services) => services.config_toml(),
        None => format!(
            "[database]\nurl = \"sqlite://{data}/server.db?mode=rwc\"\n\n[storage]\ntype = \"local\"\npath = \"{data}/storage\"\n",
            data = data.display()
        ),
    };
    std::fs::write(
        etc.join("server.toml"),
        format!(
            "listen = \"${{ATTIC_LISTEN:-127.0.0.1:8080}}\"\ntoken-root-key = \"${{ATTIC_TOKEN_ROOT_KEY}}\"\n\n{backend}"
        ),
    )
    .expect("write server.toml");
    let address = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        etc.join("atticd.env"),
        format!(
            "# secrets\nATTIC_TOKEN_ROOT_KEY={}\nATTIC_LISTEN={address}\n",
            fresh_token_root_key()
        ),
    )
    .expect("write atticd.env");

    serve_push_and_substitute(
        &repository_units_dir(),
        |service| {
            service
                .rewrite("/usr/local/bin/", &bin.join(""))
                .rewrite("/etc/atticd/", &etc.join(""))
                .rewrite("/var/lib/atticd", &data)
                .run_as(SystemUser::current())
        },
        &address,
        &binary("attic"),
    );
    // The state directory was made as StateDirectoryMode= says.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&data)
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the data directory is private");
}

/// Every ```ini block of `book/src/production.md` is one of the unit
/// files, byte for byte, and every unit file is shown.
#[test]
fn the_book_shows_the_unit_files_as_they_are() {
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src/production.md");
    let book = std::fs::read_to_string(&book).expect("read production.md");
    let mut blocks = Vec::new();
    let mut lines = book.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```ini" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(format!("{}\n", block.join("\n")));
        }
    }
    let units_dir = repository_units_dir();
    for name in UNIT_NAMES {
        let file = std::fs::read_to_string(units_dir.join(name)).expect("read the unit");
        assert!(
            blocks.contains(&file),
            "production.md does not show packaging/systemd/{name} as it is"
        );
        // The file is a unit our reader understands.
        let unit = Unit::load(&units_dir.join(name));
        assert!(unit.value("Service", "ExecStart").is_some(), "{name}");
    }
    for block in &blocks {
        let shown = UNIT_NAMES.iter().any(|name| {
            std::fs::read_to_string(units_dir.join(name)).is_ok_and(|file| &file == block)
        });
        assert!(
            shown,
            "an ini block in production.md is no unit file:\n{block}"
        );
    }
}
