//! The `attic` client: login, push, cache management; filled in by the client work.
