//! Prometheus counters of what the server did. Aggregates only: no cache
//! names, paths or tokens. They are served in the OpenMetrics text format
//! at `GET /metrics` (see `api::metrics`); this module knows nothing of
//! HTTP or of the server's state, so anything may count without a cycle.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::database::DatabaseCounters;
use crate::storage::StorageCounters;

/// Label of a counter split by one word.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// What happened: one of a few fixed words, so counting allocates nothing.
    pub outcome: &'static str,
}

/// Label of response counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    /// The HTTP status code.
    pub status: u16,
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Uploads accepted, by `uploaded` or `deduplicated`.
    pub uploads: Family<Outcome, Counter>,
    /// NAR bytes received in accepted uploads.
    pub upload_nar_bytes: Counter,
    /// Bytes of new packs written to storage.
    pub stored_bytes: Counter,
    /// Chunks found damaged when read (bytes failing their checksum, a
    /// short pack, a missing pack).
    pub damaged_chunks: Counter,
    /// narinfo requests, by `hit` or `miss`.
    pub narinfo_requests: Family<Outcome, Counter>,
    /// NAR bytes sent (as declared when the response starts).
    pub served_bytes: Counter,
    /// HTTP responses, by status code.
    pub responses: Family<Status, Counter>,
    /// Connections closed on arrival because `http.max-connections` and
    /// `http.probe-connections` were open.
    pub connections_refused: Counter,
    /// Connections closed on arrival because their address held
    /// `http.max-connections-per-address`.
    pub connections_refused_per_address: Counter,
    /// Garbage collections, by `ok`, `busy` (another held the lease) or `failed`.
    pub gc_runs: Family<Outcome, Counter>,
    /// What garbage collection reclaimed, by kind.
    pub gc_reclaimed: Family<Outcome, Counter>,
    /// Storage bytes garbage collection freed.
    pub gc_freed_bytes: Counter,
    /// NAR requests answered with a redirect to a presigned storage URL.
    pub nar_redirects: Counter,
    /// Paths asked of upstream caches on a miss, by `pulled`, `not_found`
    /// (no upstream had it) or `failed` (one failed or sent what did not
    /// verify, and none gave it).
    pub pull_through: Family<Outcome, Counter>,
    /// Storage requests and failures, by operation.
    pub storage: StorageCounters,
    /// Database statements, failures and time, by operation.
    pub database: DatabaseCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("attic");
        let uploads = Family::<Outcome, Counter>::default();
        registry.register("uploads", "Uploads accepted, by outcome", uploads.clone());
        let upload_nar_bytes = Counter::default();
        registry.register(
            "upload_nar_bytes",
            "NAR bytes received in accepted uploads",
            upload_nar_bytes.clone(),
        );
        let stored_bytes = Counter::default();
        registry.register(
            "stored_bytes",
            "Bytes of new packs written to storage",
            stored_bytes.clone(),
        );
        let damaged_chunks = Counter::default();
        registry.register(
            "damaged_chunks",
            "Chunks found damaged when read",
            damaged_chunks.clone(),
        );
        let narinfo_requests = Family::<Outcome, Counter>::default();
        registry.register(
            "narinfo_requests",
            "narinfo requests, by hit or miss",
            narinfo_requests.clone(),
        );
        let served_bytes = Counter::default();
        registry.register("served_nar_bytes", "NAR bytes sent", served_bytes.clone());
        let responses = Family::<Status, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP responses, by status",
            responses.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed on arrival because http.max-connections and http.probe-connections were open",
            connections_refused.clone(),
        );
        let connections_refused_per_address = Counter::default();
        registry.register(
            "connections_refused_per_address",
            "Connections closed on arrival because their address held http.max-connections-per-address",
            connections_refused_per_address.clone(),
        );
        let gc_runs = Family::<Outcome, Counter>::default();
        registry.register(
            "gc_runs",
            "Garbage collections, by outcome",
            gc_runs.clone(),
        );
        let gc_reclaimed = Family::<Outcome, Counter>::default();
        registry.register(
            "gc_reclaimed",
            "What garbage collection reclaimed, by kind",
            gc_reclaimed.clone(),
        );
        let gc_freed_bytes = Counter::default();
        registry.register(
            "gc_freed_bytes",
            "Storage bytes garbage collection freed",
            gc_freed_bytes.clone(),
        );
        let nar_redirects = Counter::default();
        registry.register(
            "nar_redirects",
            "NAR requests answered with a redirect to a presigned storage URL",
            nar_redirects.clone(),
        );
        let pull_through = Family::<Outcome, Counter>::default();
        registry.register(
            "pull_through",
            "Paths asked of upstream caches on a miss, by outcome",
            pull_through.clone(),
        );
        let storage = StorageCounters::default();
        registry.register(
            "storage_requests",
            "Storage requests, by operation",
            storage.requests.clone(),
        );
        registry.register(
            "storage_errors",
            "Storage requests that failed, by operation",
            storage.errors.clone(),
        );
        let database = DatabaseCounters::default();
        registry.register(
            "database_statements",
            "Database statements, by operation",
            database.statements.clone(),
        );
        registry.register(
            "database_errors",
            "Database statements that failed, by operation",
            database.errors.clone(),
        );
        registry.register(
            "database_seconds",
            "Seconds spent in database statements, by operation",
            database.seconds.clone(),
        );
        Self {
            database,
            gc_runs,
            gc_reclaimed,
            gc_freed_bytes,
            connections_refused,
            connections_refused_per_address,
            nar_redirects,
            pull_through,
            storage,
            registry,
            uploads,
            upload_nar_bytes,
            stored_bytes,
            damaged_chunks,
            narinfo_requests,
            served_bytes,
            responses,
        }
    }
}

impl Metrics {
    /// Every counter, in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Counts one event of a labelled counter.
    pub fn count(family: &Family<Outcome, Counter>, outcome: &'static str) {
        family.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts one response with `status`.
    pub fn count_response(&self, status: u16) {
        self.responses.get_or_create(&Status { status }).inc();
    }
}
