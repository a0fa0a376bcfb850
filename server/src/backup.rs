//! `atticadm backup` and `atticadm restore`: a consistent copy of a
//! running server on SQLite (its database, the blobs that database names,
//! its config), and bringing such a copy up on a fresh machine.
//!
//! Why this order. An upload makes its pack durable before the transaction
//! that names it commits, and the collector deletes a blob only after its
//! row has been marked `deleting` for a grace period, deleting the row
//! last. So the database is copied first (`VACUUM INTO`: one read
//! transaction's view, while pushes go on), and then exactly the blobs that
//! copy names: each was durable before the copy began, and a blob the copy
//! names as `valid` can only disappear if the collector marked it after the
//! copy began and a whole grace period passed. Packs written after the copy
//! began are not copied, and not needed: nothing in the copy names them.
//! The other order (blobs, then database) would let the database name
//! packs written in between, which the copy lacks.
//!
//! Restore is the same rule in reverse: blobs first, the database last (a
//! rename), so a restore cut short never leaves a database naming blobs
//! that are not there.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::config::{DatabaseKind, ServerConfig, SqliteFile};
use crate::database::{Database, LogId, now};
use crate::pack::BlobState;
use crate::setup::{self, OpenDatabase, create_private_dir};
use crate::storage::{ByteStream, LocalStorage, StorageBackend, StorageError, StorageKey, WHOLE};

/// The file that says a backup is complete, written last.
pub const MANIFEST_FILE: &str = "backup.json";
/// The database snapshot in a backup.
const DATABASE_FILE: &str = "server.db";
/// The server's config in a backup (it holds the token key).
const CONFIG_FILE: &str = "server.toml";
/// The blobs in a backup, laid out as local storage lays them out.
const STORAGE_DIR: &str = "storage";
/// The manifest's format, bumped when the layout changes.
const FORMAT: u32 = 1;
/// Rows read per query, and blobs copied at once.
const PAGE: u64 = 500;
const PARALLEL_COPIES: usize = 4;

/// What the book says of PostgreSQL and S3, for the refusals.
const POSTGRES_REFUSAL: &str = "atticadm backup and restore copy a SQLite database; on PostgreSQL \
     back up with pg_dump and the bucket's versioning or a bucket copy, in the order the book's \
     \"Backup and restore\" page (book/src/backup.md) gives";

/// `backup.json`: what a complete backup holds.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// Unix seconds when the database snapshot was taken.
    created_at: i64,
    /// Whether `server.toml` is in the backup.
    config: bool,
    /// Every blob copied, with its size.
    blobs: Vec<BlobEntry>,
}

/// One blob of a backup.
#[derive(Debug, Serialize, Deserialize)]
struct BlobEntry {
    key: String,
    size: u64,
}

/// What a backup copied.
#[derive(Debug, Default)]
pub struct BackupReport {
    /// Packs copied.
    pub packs: u64,
    /// Build logs copied.
    pub logs: u64,
    /// Bytes of blobs copied.
    pub bytes: u64,
    /// Packs the collector was deleting and had deleted (harmless: the
    /// restored collector finishes the job).
    pub deleting_packs_gone: u64,
    /// Logs whose blob went while the backup ran (replaced or removed):
    /// their rows are left out of the backup.
    pub logs_gone: u64,
    /// Packs whose copy is not the size their row says: damaged in the
    /// source, and found so by `atticadm verify` after a restore.
    pub wrong_size: Vec<String>,
}

/// Copies the server `config` describes to `destination`, a directory
/// that must not exist or be empty: the database first, then the blobs it
/// names, then the config file at `config_path` (when it is a file), then
/// the manifest. The server may run and take pushes meanwhile.
pub async fn backup(
    config: &ServerConfig,
    config_path: Option<&Path>,
    data_dir: &Path,
    destination: &Path,
) -> Result<BackupReport> {
    if DatabaseKind::of_url(&config.database_url(data_dir)) == Some(DatabaseKind::Postgres) {
        bail!("{POSTGRES_REFUSAL}");
    }
    prepare_destination(destination)?;
    let snapshot_file = destination.join(DATABASE_FILE);
    let database = setup::open_database(config, data_dir, OpenDatabase::Existing).await?;
    // SQLite writes the snapshot under its umask: create it private first,
    // since it holds every cache's signing key.
    create_private_file(&snapshot_file)?;
    let created_at = now();
    database
        .snapshot_into(&snapshot_file)
        .await
        .context("copying the database (VACUUM INTO)")?;
    database.close().await?;

    let source = setup::open_storage(config, data_dir).await?;
    let copy = LocalStorage::open(destination.join(STORAGE_DIR))
        .await
        .context("creating the backup's storage directory")?;
    let snapshot = Database::open_snapshot(&snapshot_file)
        .await
        .context("opening the database copy")?;
    let mut report = BackupReport::default();
    let mut blobs = Vec::new();
    copy_packs(&snapshot, &*source, &copy, &mut report, &mut blobs).await?;
    copy_logs(&snapshot, &*source, &copy, &mut report, &mut blobs).await?;
    snapshot.close().await?;
    sync_file(&snapshot_file)?;
    // Empty once every put has finished.
    let _ = std::fs::remove_dir(destination.join(STORAGE_DIR).join(".tmp"));

    let config_copied = match config_path.filter(|path| path.is_file()) {
        Some(path) => {
            let target = destination.join(CONFIG_FILE);
            copy_private(path, &target)?;
            true
        }
        None => false,
    };
    let manifest = Manifest {
        format: FORMAT,
        created_at,
        config: config_copied,
        blobs,
    };
    write_durably(
        &destination.join(MANIFEST_FILE),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(report)
}

/// Copies every pack the snapshot names. One it names as valid that is
/// gone fails the backup: the collector deleted it, which it does only a
/// grace period after marking it, so the copy ran longer than that.
async fn copy_packs(
    snapshot: &Database,
    source: &dyn StorageBackend,
    copy: &LocalStorage,
    report: &mut BackupReport,
    blobs: &mut Vec<BlobEntry>,
) -> Result<()> {
    let mut after = None;
    loop {
        let page = snapshot.packs_page(after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.id);
        let copied: Vec<_> = futures::stream::iter(&page)
            .map(|pack| async move {
                let key = pack.key.storage_key();
                copy_blob(source, copy, key)
                    .await
                    .with_context(|| format!("copying pack {key}"))
            })
            .buffered(PARALLEL_COPIES)
            .try_collect()
            .await?;
        for (pack, size) in page.iter().zip(copied) {
            let key = pack.key.storage_key().as_str().to_owned();
            match (size, pack.state) {
                (Some(size), _) => {
                    if size != pack.size {
                        report.wrong_size.push(key.clone());
                    }
                    report.packs += 1;
                    report.bytes += size;
                    blobs.push(BlobEntry { key, size });
                }
                (None, BlobState::Deleting) => report.deleting_packs_gone += 1,
                (None, BlobState::Valid | BlobState::Damaged) => bail!(
                    "pack {key} was deleted while the backup ran: the garbage collector deletes \
                     a pack a grace period after marking it, and this backup took longer. Run \
                     it again, with the collector stopped or a longer \
                     garbage-collection.grace-period"
                ),
            }
        }
    }
}

/// Copies every log blob the snapshot names; a log whose blob went
/// meanwhile (replaced by a newer upload of it, or its cache destroyed) is
/// left out of the backup, row and all.
async fn copy_logs(
    snapshot: &Database,
    source: &dyn StorageBackend,
    copy: &LocalStorage,
    report: &mut BackupReport,
    blobs: &mut Vec<BlobEntry>,
) -> Result<()> {
    let mut after = None;
    let mut gone: Vec<LogId> = Vec::new();
    loop {
        let page = snapshot.log_blobs_page(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.id);
        for log in page {
            let key = StorageKey::new(log.key.clone())
                .with_context(|| format!("log {} has an invalid storage key", log.id))?;
            match copy_blob(source, copy, &key)
                .await
                .with_context(|| format!("copying log {key}"))?
            {
                Some(size) => {
                    report.logs += 1;
                    report.bytes += size;
                    blobs.push(BlobEntry { key: log.key, size });
                }
                None => gone.push(log.id),
            }
        }
    }
    for ids in gone.chunks(PAGE as usize) {
        report.logs_gone += snapshot.delete_logs(ids).await?;
    }
    Ok(())
}

/// Copies one blob; `None` if the source has no such blob.
async fn copy_blob(
    source: &dyn StorageBackend,
    copy: &dyn StorageBackend,
    key: &StorageKey,
) -> Result<Option<u64>, StorageError> {
    match source.get(key, WHOLE).await {
        Ok(stream) => copy.put(key, stream).await.map(Some),
        Err(StorageError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a restore put in place.
#[derive(Debug)]
pub struct RestoreReport {
    /// The database file written.
    pub database: PathBuf,
    /// The config the restored server reads, and whether it came from the
    /// backup.
    pub config: PathBuf,
    /// Whether the config was written from the backup.
    pub config_restored: bool,
    /// Blobs put in storage.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Brings the backup at `source` up where the config says (the one at
/// `config_path`, or the default; written from the backup if there is none
/// there yet) and in `data_dir`: blobs into its storage first, then the
/// database, last, so a restore cut short leaves no database naming
/// missing blobs. Refuses to overwrite a database.
pub async fn restore(
    source: &Path,
    config_path: Option<&Path>,
    data_dir: Option<PathBuf>,
) -> Result<RestoreReport> {
    let manifest: Manifest = {
        let path = source.join(MANIFEST_FILE);
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "{} is not a complete backup: it has no {MANIFEST_FILE} (a backup writes it last)",
                source.display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))?
    };
    if manifest.format != FORMAT {
        bail!(
            "the backup is of format {}; this atticadm reads format {FORMAT}",
            manifest.format
        );
    }
    let config_file = match config_path {
        Some(path) => path.to_owned(),
        None => setup::default_config_path()?,
    };
    let config_restored = !config_file.exists() && manifest.config;
    if config_restored {
        if let Some(parent) = config_file.parent() {
            create_private_dir(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        copy_private(&source.join(CONFIG_FILE), &config_file)?;
    }
    let loaded = setup::load_existing_config(Some(&config_file))?;
    let config = &loaded.config;
    let data_dir = setup::data_dir(data_dir, config)?;
    let url = config.database_url(&data_dir);
    if DatabaseKind::of_url(&url) == Some(DatabaseKind::Postgres) {
        bail!("{POSTGRES_REFUSAL}");
    }
    let database = SqliteFile::of_url(&url)
        .context("the config's database is not a SQLite file")?
        .path;
    if database.exists() {
        bail!(
            "there is a database at {} already: restore brings a backup up on a fresh server \
             only (move that database away first)",
            database.display()
        );
    }
    if config.database.url.is_none() {
        create_private_dir(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    }

    let storage = setup::open_storage(config, &data_dir).await?;
    let blobs = &manifest.blobs;
    let storage = &*storage;
    let copied: Vec<u64> = futures::stream::iter(blobs)
        .map(|blob| async move {
            let key = StorageKey::new(blob.key.clone())
                .with_context(|| format!("the backup names an invalid key {:?}", blob.key))?;
            let file = source.join(STORAGE_DIR).join(key.as_str());
            let reader = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let stream: ByteStream = Box::pin(tokio_util::io::ReaderStream::new(reader));
            let size = storage
                .put(&key, stream)
                .await
                .with_context(|| format!("storing {key}"))?;
            if size != blob.size {
                bail!(
                    "{} is {size} bytes, the backup recorded {}: the backup is damaged",
                    file.display(),
                    blob.size
                );
            }
            Ok(size)
        })
        .buffer_unordered(PARALLEL_COPIES)
        .try_collect()
        .await?;

    // The database last, by a rename: present means whole.
    let partial = database.with_extension("db.restoring");
    let _ = std::fs::remove_file(&partial);
    copy_private(&source.join(DATABASE_FILE), &partial)?;
    std::fs::rename(&partial, &database)
        .with_context(|| format!("moving the database into place at {}", database.display()))?;
    sync_parent(&database)?;
    Ok(RestoreReport {
        database,
        config: config_file,
        config_restored,
        blobs: copied.len() as u64,
        bytes: copied.iter().sum(),
    })
}

/// Creates `destination` (only this user may enter it), or checks it is
/// an empty directory.
fn prepare_destination(destination: &Path) -> Result<()> {
    if destination.exists() {
        let mut entries = std::fs::read_dir(destination)
            .with_context(|| format!("reading {}", destination.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty: a backup goes into a new or empty directory",
                destination.display()
            );
        }
    }
    create_private_dir(destination).with_context(|| format!("creating {}", destination.display()))
}

/// Creates an empty file only this user may read; an existing one is
/// truncated and made private.
fn create_private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))
}

/// Copies `from` to a new file `to` that only this user may read (never
/// readable by others even for a moment, whatever `from`'s mode), synced.
fn copy_private(from: &Path, to: &Path) -> Result<()> {
    let mut source =
        std::fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
    create_private_file(to)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .with_context(|| format!("writing {}", to.display()))?;
    std::io::copy(&mut source, &mut target)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    target
        .sync_all()
        .with_context(|| format!("syncing {}", to.display()))
}

/// Flushes a file to disk.
fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Flushes the directory entry of `path` to disk.
fn sync_parent(path: &Path) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_file(parent)
}

/// Writes `bytes` to `path` by a synced temporary file and a rename.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    sync_file(&partial)?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    sync_parent(path)
}
