//! `atticd`: a multi-tenant Nix binary cache with a global, chunk-deduplicated store.
//!
//! Requests enter through [`api`], are authorised by [`access`], and read or
//! write metadata through [`database`] and blobs through [`storage`]. Uploads
//! are verified and chunked by [`ingest`] into [`pack`]s; NARs are served by
//! [`nar_stream`]; [`scrub`] checks every stored byte for `atticadm verify`.
//! [`setup`] turns a configuration into a running server; [`import`]
//! brings an Attic server's caches over (`atticadm import-attic`); [`oidc`]
//! exchanges CI jobs' ID tokens for short-lived tokens.

pub mod access;
pub mod api;
pub mod backup;
pub mod build_log;
pub mod cache_admin;
pub mod cache_stats;
pub mod compressed;
pub mod config;
pub mod database;
pub mod encoded_upload;
pub mod error;
pub mod expect_continue;
pub mod gc;
pub mod import;
pub mod ingest;
mod key_path;
pub mod key_rotation;
pub mod landing_page;
pub mod late_listing;
pub mod linger;
pub mod log_line;
pub mod log_writer;
pub mod metrics;
pub mod nar_range;
pub mod nar_stream;
pub mod oidc;
pub mod pack;
pub mod pull_through;
pub mod recent;
pub mod request_log;
mod row_id;
pub mod scrub;
pub mod serve;
pub mod setup;
pub mod stall;
pub mod state;
pub mod storage;
pub mod uploads;
