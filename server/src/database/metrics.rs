//! Database statements counted by operation, with their time, fed by
//! sea-orm's per-statement callback; `/metrics` shows them as
//! `attic_database_statements`, `attic_database_errors` and
//! `attic_database_seconds`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Label of database counters: the statement's kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseOperation {
    /// `select`, `insert`, `update`, `delete`, `begin`, `commit`,
    /// `rollback` or `other`.
    pub operation: &'static str,
}

/// Statements, failures and time by operation; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct DatabaseCounters {
    /// Statements run.
    pub statements: Family<DatabaseOperation, Counter>,
    /// Statements that failed (a constraint refused them, the connection
    /// broke, a timeout passed).
    pub errors: Family<DatabaseOperation, Counter>,
    /// Seconds spent in statements, summed.
    pub seconds: Family<DatabaseOperation, Counter<f64, AtomicU64>>,
}

impl DatabaseCounters {
    /// Counts one statement.
    pub fn record(&self, sql: &str, elapsed: Duration, failed: bool) {
        let label = DatabaseOperation {
            operation: operation_of(sql),
        };
        self.statements.get_or_create(&label).inc();
        self.seconds
            .get_or_create(&label)
            .inc_by(elapsed.as_secs_f64());
        if failed {
            self.errors.get_or_create(&label).inc();
        }
    }
}

/// The kind of an SQL statement, from its first word.
fn operation_of(sql: &str) -> &'static str {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default();
    for operation in [
        "select", "insert", "update", "delete", "begin", "commit", "rollback",
    ] {
        if first.eq_ignore_ascii_case(operation) {
            return operation;
        }
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_counted_by_their_first_word() {
        assert_eq!(operation_of("SELECT \"id\" FROM \"nar\""), "select");
        assert_eq!(operation_of("  insert into chunk"), "insert");
        assert_eq!(operation_of("UPDATE x SET y = 1"), "update");
        assert_eq!(operation_of("CREATE TABLE t"), "other");
        assert_eq!(operation_of(""), "other");
    }

    #[test]
    fn failures_and_time_are_kept_per_operation() {
        let counters = DatabaseCounters::default();
        counters.record("SELECT 1", Duration::from_millis(500), false);
        counters.record("SELECT 2", Duration::from_millis(250), true);
        let select = DatabaseOperation {
            operation: "select",
        };
        assert_eq!(counters.statements.get_or_create(&select).get(), 2);
        assert_eq!(counters.errors.get_or_create(&select).get(), 1);
        assert!((counters.seconds.get_or_create(&select).get() - 0.75).abs() < 1e-9);
    }
}
