//! `attic`, the client: log in to servers, manage caches, push store paths
//! and turn caches into Nix substituters.
//!
//! It talks to `atticd` only through the `/_api/v1/` API ([`api`]) and reads
//! the local store through Nix itself ([`nix_store`]). [`push`] is the upload
//! pipeline shared by `attic push` and `attic watch-store`.

pub mod api;
pub mod cache_ref;
pub mod command;
pub mod config;
pub mod nix_store;
pub mod progress;
pub mod push;
pub mod queue;
pub mod report;
pub mod token_expiry;
pub mod upload_encoding;
