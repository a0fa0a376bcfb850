//! Shared harness for end-to-end tests that drive real Nix and real binaries.
