//! Shared harness for end-to-end tests: real Nix as the client and oracle.
//!
//! Every helper fails loudly when a tool is missing, so a green run means
//! the tests really ran against Nix.

pub mod nix;
