//! Database schema migrations of `atticd`, one per file, applied in order at
//! start-up (or alone with `atticd --mode db-migrations`).
//!
//! Timestamps are Unix seconds in `BIGINT` columns, and lists are JSON text,
//! so the same schema works unchanged on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_tables;
mod m20261202_000001_add_packs;
mod m20261202_000002_nix_uploads;
mod m20261202_000003_gc;
mod m20261202_000004_add_nar_last_referenced;
mod m20261206_000001_logs_in_storage;
mod m20261206_000002_create_reserved_cache_name;
mod m20261206_000003_create_revoked_subjects;
mod m20261207_000001_create_pins;
mod m20261207_000002_create_audit_log;
mod m20261207_000003_add_cache_previous_key;
mod m20261208_000001_create_nar_listings;
mod m20261208_000002_create_realisations;
mod m20261208_000003_add_cache_upstreams;
mod m20261208_000004_add_object_nix_upload_file;
mod m20261209_000001_add_pack_level;
mod m20261210_000001_create_cache_usage;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_tables::Migration),
            Box::new(m20261202_000001_add_packs::Migration),
            Box::new(m20261202_000002_nix_uploads::Migration),
            Box::new(m20261202_000003_gc::Migration),
            Box::new(m20261202_000004_add_nar_last_referenced::Migration),
            Box::new(m20261206_000001_logs_in_storage::Migration),
            Box::new(m20261206_000002_create_reserved_cache_name::Migration),
            Box::new(m20261206_000003_create_revoked_subjects::Migration),
            Box::new(m20261207_000001_create_pins::Migration),
            Box::new(m20261207_000002_create_audit_log::Migration),
            Box::new(m20261207_000003_add_cache_previous_key::Migration),
            Box::new(m20261208_000001_create_nar_listings::Migration),
            Box::new(m20261208_000002_create_realisations::Migration),
            Box::new(m20261208_000003_add_cache_upstreams::Migration),
            Box::new(m20261208_000004_add_object_nix_upload_file::Migration),
            Box::new(m20261209_000001_add_pack_level::Migration),
            Box::new(m20261210_000001_create_cache_usage::Migration),
        ]
    }
}
