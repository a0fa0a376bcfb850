//! Version 1 of the API, under `/_api/v1/`: one module per route.

pub mod cache_config;
pub mod cache_log;
pub mod caches;
pub mod get_missing_paths;
pub mod oidc_exchange;
pub mod pins;
pub mod upload_path;
pub mod whoami;
