//! The grammar of blob keys, shared by storage keys and the key prefix a
//! configuration gives S3 storage: `/`-separated segments of `a-z`, `0-9`,
//! `.`, `_` and `-`, none empty, `.` or `..`. Keys so made are the same
//! on every backend (case-insensitive file systems, S3's escaping rules)
//! and can never climb out of the storage root.

/// Whether `key` is a valid blob key (or key prefix).
pub fn is_key_path(key: &str) -> bool {
    key.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
    })
}
