//! `atticadm import-attic`: an Attic server's caches, paths and NAR bytes,
//! brought into this server while Attic keeps serving (the import only
//! reads Attic's database and storage).
//!
//! Each live Attic cache becomes (or, on a re-run, stays) the cache of the
//! same name here, with Attic's signing key, so the `trusted-public-keys`
//! clients hold stay valid. Each of its paths is brought over with its
//! metadata and times: if this store holds its NAR already (by NAR hash),
//! the path is attached to it; otherwise the NAR is rebuilt from Attic's
//! chunks and goes through the ingest path every upload takes (verified
//! against Attic's NAR hash and size, re-chunked, packed), then committed
//! by the one upload service. Nothing is written to our tables but
//! through that service and the typed database API.
//!
//! Resumable by construction: a path the cache holds already is skipped,
//! so a run killed at any point and run again finishes the job without
//! duplicating anything (a pack written but not committed when it was
//! killed is an orphan the garbage collector sweeps). Damage in Attic's
//! store (chunks missing or corrupt, NARs stuck in `PendingUpload`) skips
//! that NAR and is reported with the paths that needed it.
//!
//! `config` reads Attic's `server.toml`, `source` its database, `chunks`
//! its chunk files.

mod chunks;
pub mod cli;
mod config;
mod source;

pub use chunks::SourceFault;
pub use config::{AtticConfig, AtticStorage, DATABASE_URL_VARIABLE};
pub use source::SourceTotals;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attic::api::v1::upload_path::UploadPathNarInfo;
use attic::cache::CacheName;
use attic::hash::Sha256Hash;
use attic::signing::SigningKey;
use attic::store_path::{StoreDir, StorePathHash};
use futures::{StreamExt, TryStreamExt};

use self::chunks::{ChunkFiles, nar_reader};
use self::source::{AtticCache, AtticObject, AtticSource, NarState};
use crate::database::{
    Actor, AuditAction, AuditEvent, Cache, CacheChanges, DatabaseError, NewCache, NewObject,
    PathTimestamps,
};
use crate::error::ServerError;
use crate::ingest::{self, Declared, Expect};
use crate::state::AppState;
use crate::uploads::{Uploads, new_object};

/// Attic objects read per page: memory per page is this many rows.
const OBJECT_PAGE: u64 = 256;

/// Why an import stopped. Damage in Attic's store does not stop it: that
/// is reported per NAR in the [`ImportReport`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Attic's config file could not be read.
    #[error("reading Attic's config {path}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Attic's config is not TOML.
    #[error("Attic's config is not valid TOML")]
    ConfigSyntax(#[source] toml::de::Error),
    /// A key the import needs is missing from Attic's config.
    #[error("Attic's config has no {0}")]
    ConfigMissing(&'static str),
    /// A key of Attic's config holds something unusable.
    #[error("Attic's config: {key}: {reason}")]
    ConfigInvalid {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Attic's database URL is of a kind Attic does not support.
    #[error("Attic's database URL is {0}:, but Attic runs on sqlite: or postgres: only")]
    UnsupportedDatabase(String),
    /// Attic's database failed or refused a query.
    #[error("reading Attic's database failed")]
    SourceDatabase(#[source] sea_orm::DbErr),
    /// A column of Attic's database did not hold what its schema says.
    #[error("Attic's database: column {column} does not hold what Attic's schema says")]
    SourceColumn {
        /// The column.
        column: &'static str,
        /// The decoding error.
        #[source]
        source: sea_orm::DbErr,
    },
    /// Attic's storage did not answer (a damaged chunk does not stop the
    /// import; this is an outage or a permission problem).
    #[error("reading Attic's storage failed")]
    SourceStorage(#[source] std::io::Error),
    /// Our own database failed.
    #[error("writing to this server's database failed")]
    TargetDatabase(#[from] DatabaseError),
    /// Our own store failed.
    #[error("storing into this server failed")]
    Target(#[from] ServerError),
}

/// What an import run shows as it goes; the binary draws it.
pub trait ImportProgress: Sync {
    /// The import is starting, with this much to go through.
    fn begin(&self, totals: &SourceTotals);
    /// Starting on a cache.
    fn cache(&self, name: &str);
    /// A path is done with (imported, skipped or refused), its NAR being
    /// `nar_bytes` long.
    fn path_done(&self, nar_bytes: u64);
}

/// Settings of a run.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// NARs read and stored at once (at least 1).
    pub jobs: usize,
}

/// A NAR Attic's store cannot give back whole, and the paths that need it.
#[derive(Debug, Clone)]
pub struct DamagedNar {
    /// Its hash, as Attic records it.
    pub nar_hash: String,
    /// What is wrong.
    pub reason: String,
    /// `cache: store path` of each path that was not imported for it.
    pub paths: Vec<String>,
}

/// A cache or path refused for what its row holds (not damage to bytes).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The cache, or `cache: store path`.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Caches brought over (created here, or there already with the same key).
    pub caches: u64,
    /// Caches Attic had soft-deleted, left out.
    pub deleted_caches: u64,
    /// Paths whose NAR was read from Attic and stored.
    pub paths_imported: u64,
    /// Paths attached to a NAR this store held already.
    pub paths_attached: u64,
    /// Paths the cache held already (an earlier run, or a push).
    pub paths_skipped: u64,
    /// NARs that could not be imported, with their paths.
    pub damaged: Vec<DamagedNar>,
    /// Caches refused for what their rows hold, or for a cache of the
    /// same name here with another key; none of their paths is imported.
    pub refused_caches: Vec<Refusal>,
    /// Paths refused for what their rows hold.
    pub refused_paths: Vec<Refusal>,
    /// NARs stuck in `PendingUpload` in Attic's database.
    pub pending_nars: u64,
    /// NAR bytes read from Attic and stored.
    pub nar_bytes_read: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

impl ImportReport {
    /// Paths not imported because their NAR is damaged.
    pub fn paths_damaged(&self) -> u64 {
        self.damaged.iter().map(|nar| nar.paths.len() as u64).sum()
    }

    /// NAR bytes read per second, in MiB.
    pub fn mib_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.nar_bytes_read as f64 / (1024.0 * 1024.0) / seconds
        } else {
            0.0
        }
    }

    /// Whether everything Attic serves was brought over.
    pub fn is_complete(&self) -> bool {
        self.damaged.is_empty() && self.refused_caches.is_empty() && self.refused_paths.is_empty()
    }
}

/// Imports everything Attic's config points at into this server.
pub async fn import_attic(
    state: &Arc<AppState>,
    attic: &AtticConfig,
    options: ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let source = AtticSource::connect(&attic.database_url).await?;
    let files = Arc::new(ChunkFiles::open(&attic.storage).await);
    let run = Run {
        state,
        source: source.clone(),
        files,
        progress,
        jobs: options.jobs.max(1),
        report: Mutex::new(ImportReport::default()),
        damaged: Mutex::new(HashMap::new()),
    };
    let result = run.all().await;
    source.close().await;
    result?;
    let mut report = run
        .report
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut damaged: Vec<DamagedNar> = run
        .damaged
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .into_values()
        .collect();
    damaged.sort_by(|a, b| a.nar_hash.cmp(&b.nar_hash));
    report.damaged = damaged;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One run's shared state.
struct Run<'a> {
    state: &'a Arc<AppState>,
    source: AtticSource,
    files: Arc<ChunkFiles>,
    progress: &'a dyn ImportProgress,
    jobs: usize,
    report: Mutex<ImportReport>,
    /// Attic NAR id → what is wrong with it: read once per run.
    damaged: Mutex<HashMap<i64, DamagedNar>>,
}

/// What became of one path.
enum Outcome {
    Imported { nar_bytes: u64 },
    Attached,
    Damaged { reason: String },
    Refused { reason: String },
}

impl Run<'_> {
    fn report(&self) -> std::sync::MutexGuard<'_, ImportReport> {
        self.report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn all(&self) -> Result<(), ImportError> {
        let totals = self.source.totals().await?;
        {
            let mut report = self.report();
            report.deleted_caches = totals.deleted_caches;
            report.pending_nars = totals.pending_nars;
        }
        self.progress.begin(&totals);
        for attic in self.source.caches().await? {
            self.progress.cache(&attic.name);
            match self.target_cache(&attic).await? {
                Ok(cache) => {
                    self.report().caches += 1;
                    self.import_cache(&attic, &cache).await?;
                }
                Err(reason) => self.report().refused_caches.push(Refusal {
                    what: attic.name.clone(),
                    reason,
                }),
            }
        }
        Ok(())
    }

    /// Our cache for an Attic cache: created with its key and settings,
    /// or, on a re-run, the one created before (its settings refreshed
    /// from Attic's). `Err` with the reason if it cannot be.
    async fn target_cache(&self, attic: &AtticCache) -> Result<Result<Cache, String>, ImportError> {
        let settings = match CacheSettings::of(attic) {
            Ok(settings) => settings,
            Err(reason) => return Ok(Err(reason)),
        };
        let database = &self.state.database;
        let existing = match database.find_cache(&settings.name).await? {
            Some(existing) => existing,
            None => match database.create_cache(settings.new_cache()).await {
                Ok(created) => {
                    database
                        .record_audit(
                            AuditEvent::new(AuditAction::CreateCache, Actor::Atticadm)
                                .on_cache(&created)
                                .with_detail("imported from Attic"),
                        )
                        .await?;
                    created
                }
                // Created meanwhile (another run): checked below like any.
                Err(DatabaseError::CacheExists) => {
                    match database.find_cache(&settings.name).await? {
                        Some(existing) => existing,
                        None => return Ok(Err("its name is taken here".to_owned())),
                    }
                }
                Err(e) => return Err(e.into()),
            },
        };
        if existing.signing_key.public_key().to_string()
            != settings.signing_key.public_key().to_string()
        {
            return Ok(Err(format!(
                "a cache named {} exists here with another signing key ({}); \
                 destroy or rename it to import Attic's",
                settings.name,
                existing.signing_key.public_key()
            )));
        }
        database
            .configure_cache(&existing, settings.changes())
            .await?;
        let cache = database.find_cache(&settings.name).await?.ok_or_else(|| {
            DatabaseError::CorruptRow {
                table: "cache",
                id: existing.id.get(),
                reason: "vanished while being imported".to_owned(),
            }
        })?;
        self.state.read_cache.forget_cache(&cache.name, cache.id);
        Ok(Ok(cache))
    }

    /// Every path of one cache, a page of Attic's rows at a time.
    async fn import_cache(&self, attic: &AtticCache, cache: &Cache) -> Result<(), ImportError> {
        let mut after = i64::MIN;
        loop {
            let page = self.source.objects(attic.id, after, OBJECT_PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.id;
            let held = self.held(cache, &page).await?;
            let mut first_of_nar = Vec::new();
            let mut rest = Vec::new();
            let mut seen = HashSet::new();
            for object in page {
                if held.contains(&object.store_path_hash) {
                    self.report().paths_skipped += 1;
                    self.progress.path_done(size(object.nar.nar_size));
                } else if seen.insert(object.nar.id) {
                    first_of_nar.push(object);
                } else {
                    rest.push(object);
                }
            }
            // A NAR several paths of the page share is stored once, by
            // the first; the rest then attach to it.
            for batch in [first_of_nar, rest] {
                futures::stream::iter(batch)
                    .map(|object| self.import_path(cache, object))
                    .buffer_unordered(self.jobs)
                    .try_collect::<Vec<()>>()
                    .await?;
            }
        }
    }

    /// Which of a page's paths the cache holds already.
    async fn held(
        &self,
        cache: &Cache,
        page: &[AtticObject],
    ) -> Result<HashSet<String>, ImportError> {
        let hashes: Vec<StorePathHash> = page
            .iter()
            .filter_map(|object| object.store_path_hash.parse().ok())
            .collect();
        let missing: HashSet<StorePathHash> = self
            .state
            .database
            .find_missing_paths(cache.id, &hashes)
            .await?
            .into_iter()
            .collect();
        Ok(hashes
            .into_iter()
            .filter(|hash| !missing.contains(hash))
            .map(|hash| hash.as_str().to_owned())
            .collect())
    }

    async fn import_path(&self, cache: &Cache, object: AtticObject) -> Result<(), ImportError> {
        let nar_size = size(object.nar.nar_size);
        let path = format!("{}: {}", cache.name, object.store_path);
        let outcome = self.path_outcome(cache, &object).await?;
        self.progress.path_done(nar_size);
        match outcome {
            Outcome::Imported { nar_bytes } => {
                let mut report = self.report();
                report.paths_imported += 1;
                report.nar_bytes_read += nar_bytes;
            }
            Outcome::Attached => self.report().paths_attached += 1,
            Outcome::Refused { reason } => self
                .report()
                .refused_paths
                .push(Refusal { what: path, reason }),
            Outcome::Damaged { reason } => {
                let mut damaged = self
                    .damaged
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                damaged
                    .entry(object.nar.id)
                    .or_insert_with(|| DamagedNar {
                        nar_hash: object.nar.nar_hash.clone(),
                        reason,
                        paths: Vec::new(),
                    })
                    .paths
                    .push(path);
            }
        }
        Ok(())
    }

    async fn path_outcome(
        &self,
        cache: &Cache,
        object: &AtticObject,
    ) -> Result<Outcome, ImportError> {
        let known_damage = self
            .damaged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&object.nar.id)
            .map(|nar| nar.reason.clone());
        if let Some(reason) = known_damage {
            return Ok(Outcome::Damaged { reason });
        }
        match &object.nar.state {
            NarState::Valid => {}
            NarState::PendingUpload => {
                return Ok(Outcome::Damaged {
                    reason: "its upload never completed (PendingUpload)".to_owned(),
                });
            }
            NarState::Other(state) => {
                return Ok(Outcome::Damaged {
                    reason: format!("its state is {state:?}, not valid"),
                });
            }
        }
        let (new, declared) = match path_to_import(cache, object) {
            Ok(parsed) => parsed,
            Err(reason) => return Ok(Outcome::Refused { reason }),
        };
        let uploads = Uploads::new(self.state);
        if let Some(nar) = self.state.database.find_nar(&declared.nar_hash).await?
            && nar.nar_size == declared.nar_size
        {
            match uploads.attach_existing(&nar, new.clone(), None).await {
                Ok(()) => return Ok(Outcome::Attached),
                // Reclaimed or found damaged meanwhile: store it afresh.
                Err(ServerError::RetryUpload) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let body = nar_reader(self.source.clone(), self.files.clone(), &object.nar);
        match ingest::store_nar(self.state, body, Expect::Declared(declared)).await {
            Ok(stored) => {
                uploads.commit_path(stored, new).await?;
                crash_point();
                Ok(Outcome::Imported {
                    nar_bytes: declared.nar_size,
                })
            }
            Err(e) => damage_or_failure(e),
        }
    }
}

/// Whether a failed NAR is damage in Attic's store (reported, skipped) or
/// a failure that stops the import.
fn damage_or_failure(error: ServerError) -> Result<Outcome, ImportError> {
    match error {
        ServerError::MalformedNar(e) => Ok(Outcome::Damaged {
            reason: format!("its chunks do not make a valid NAR: {e}"),
        }),
        ServerError::NarMismatch(message) => Ok(Outcome::Damaged {
            reason: format!("its chunks do not make the NAR Attic recorded: {message}"),
        }),
        ServerError::UploadInterrupted(e) | ServerError::UploadStalled(e) => {
            match SourceFault::find(&e) {
                Some(SourceFault::Damaged(reason)) => Ok(Outcome::Damaged {
                    reason: reason.clone(),
                }),
                _ => Err(ImportError::SourceStorage(e)),
            }
        }
        other => Err(other.into()),
    }
}

/// An Attic cache's settings, checked as ours.
struct CacheSettings {
    name: CacheName,
    signing_key: SigningKey,
    is_public: bool,
    store_dir: StoreDir,
    priority: i32,
    upstream_cache_key_names: Vec<String>,
    retention_period: Option<i64>,
}

impl CacheSettings {
    fn of(attic: &AtticCache) -> Result<Self, String> {
        Ok(Self {
            name: attic
                .name
                .parse()
                .map_err(|e| format!("its name is not valid here: {e}"))?,
            signing_key: attic
                .keypair
                .parse()
                .map_err(|e| format!("its signing keypair does not parse: {e}"))?,
            is_public: attic.is_public,
            store_dir: StoreDir::new(&attic.store_dir)
                .map_err(|e| format!("its store directory is not valid: {e}"))?,
            priority: i32::try_from(attic.priority)
                .map_err(|_| format!("its priority {} is out of range", attic.priority))?,
            upstream_cache_key_names: serde_json::from_str(&attic.upstream_cache_key_names)
                .map_err(|e| format!("its upstream_cache_key_names do not parse: {e}"))?,
            retention_period: attic.retention_period,
        })
    }

    fn new_cache(&self) -> NewCache {
        NewCache {
            name: self.name.clone(),
            signing_key: self.signing_key.clone(),
            is_public: self.is_public,
            store_dir: self.store_dir.clone(),
            priority: self.priority,
            upstream_cache_key_names: self.upstream_cache_key_names.clone(),
        }
    }

    /// Attic's settings, all of them: a re-run brings over what changed.
    fn changes(&self) -> CacheChanges {
        CacheChanges {
            signing_key: None,
            is_public: Some(self.is_public),
            store_dir: Some(self.store_dir.clone()),
            priority: Some(self.priority),
            upstream_cache_key_names: Some(self.upstream_cache_key_names.clone()),
            retention_period: Some(self.retention_period),
            quota: None,
            upstreams: None,
        }
    }
}

/// An Attic object as the path to attach, checked as an upload's metadata
/// is, and the NAR it needs. `Err` with the reason if its row is unusable.
fn path_to_import(cache: &Cache, object: &AtticObject) -> Result<(NewObject, Declared), String> {
    let json_list = |column: &str, text: &str| -> Result<Vec<String>, String> {
        serde_json::from_str(text).map_err(|e| format!("its {column} do not parse: {e}"))
    };
    let nar_hash: Sha256Hash = object
        .nar
        .nar_hash
        .parse()
        .map_err(|e| format!("its NAR hash {:?} does not parse: {e}", object.nar.nar_hash))?;
    let nar_size = u64::try_from(object.nar.nar_size)
        .map_err(|_| format!("its NAR size {} is negative", object.nar.nar_size))?;
    let info = UploadPathNarInfo {
        cache: cache.name.clone(),
        store_path_hash: object
            .store_path_hash
            .parse()
            .map_err(|e| format!("its store path hash does not parse: {e}"))?,
        store_path: object.store_path.clone(),
        references: json_list("references", &object.references)?,
        system: object.system.clone(),
        deriver: object.deriver.clone(),
        sigs: json_list("sigs", &object.sigs)?,
        ca: object.ca.clone(),
        nar_hash,
        nar_size,
    };
    let mut new = new_object(&info, cache, object.created_by.clone()).map_err(|e| e.to_string())?;
    // The import is the operator's act; who pushed the path to Attic is
    // worth keeping beside it.
    new.audit = Some(
        AuditEvent::new(AuditAction::Import, Actor::Atticadm)
            .on_cache(cache)
            .on_path(new.info.store_path.clone())
            .with_detail(match &object.created_by {
                Some(subject) => format!("from Attic, pushed there by {subject}"),
                None => "from Attic".to_owned(),
            }),
    );
    new.timestamps = Some(PathTimestamps {
        created_at: object.created_at.unwrap_or_else(crate::database::now),
        last_accessed_at: object.last_accessed_at,
    });
    Ok((new, Declared { nar_hash, nar_size }))
}

/// A test hook: with `ATTIC_IMPORT_CRASH_AFTER=<n>` in the environment,
/// the process aborts (as a kill would) once it has committed `n` NARs.
/// Only in builds with the `fault-injection` feature, which the end-to-end
/// tests' binaries have and a release `atticadm` has not.
#[cfg(feature = "fault-injection")]
fn crash_point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COMMITTED: AtomicU64 = AtomicU64::new(0);
    let committed = COMMITTED.fetch_add(1, Ordering::SeqCst) + 1;
    let limit = std::env::var("ATTIC_IMPORT_CRASH_AFTER")
        .ok()
        .and_then(|n| n.parse::<u64>().ok());
    if limit == Some(committed) {
        eprintln!("ATTIC_IMPORT_CRASH_AFTER={committed}: aborting");
        std::process::abort();
    }
}

/// Without the `fault-injection` feature the hook does nothing and
/// compiles away.
#[cfg(not(feature = "fault-injection"))]
fn crash_point() {}

/// A size from a row, which is never negative in a sound one.
fn size(bytes: i64) -> u64 {
    u64::try_from(bytes).unwrap_or(0)
}
