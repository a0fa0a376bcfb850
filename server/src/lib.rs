//! The `atticd` server: HTTP API, binary cache protocol, chunk store and GC; filled in by the server work.
