//! Database schema migrations for the server; filled in by the server work.
