//! Biscuit tokens that grant permissions on caches; filled in by the server work.
