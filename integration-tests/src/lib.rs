//! Shared harness for end-to-end tests: real Nix as the client and oracle,
//! the real `atticd`/`atticadm` binaries, and a real S3 server, on loopback.
//!
//! Every helper fails loudly when a tool is missing, so a green run means
//! the tests really ran against Nix and the real server.

pub mod attic_store;
pub mod backend;
pub mod bombs;
pub mod browser;
pub mod caddy;
pub mod client;
pub mod deployment;
pub mod gated_upstream;
pub mod gc;
pub mod hostile;
pub mod inspect;
pub mod nginx;
pub mod nix;
pub mod podman;
pub mod reverse_proxy;
pub mod s3;
pub mod server;
pub mod systemd;
pub mod upload;
