//! The core of Attic: what a Nix binary cache server and its client share.
//!
//! Nix's formats, exact to the byte ([`nix_base32`], [`hash`], [`store_path`],
//! [`nar`], [`narinfo`], [`realisation`], [`signing`]), the content-defined [`chunking`] that
//! deduplicates NARs, the [`api`] wire types, and how an [`error`] is told.
//! No HTTP and no database: anything that does I/O takes the stream it
//! works on.

pub mod api;
pub mod cache;
pub mod chunking;
pub mod error;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nix_base32;
pub mod pin;
pub mod realisation;
pub mod signing;
pub mod store_path;
