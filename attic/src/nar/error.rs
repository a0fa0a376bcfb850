use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a NAR could not be read or written.
///
/// Format errors carry the byte offset where the NAR went wrong.
#[derive(Debug, Error)]
pub enum NarError {
    /// The stream does not start with `nix-archive-1`.
    #[error("not a NAR: it does not start with the nix-archive-1 magic")]
    BadMagic,
    /// A token other than the one the grammar allows here.
    #[error("malformed NAR at byte {offset}: expected {expected}, found {found:?}")]
    UnexpectedToken {
        /// Offset of the token's end.
        offset: u64,
        /// What the grammar wanted.
        expected: &'static str,
        /// What was there (truncated, lossily decoded).
        found: String,
    },
    /// A string token longer than anything valid in its place.
    #[error("malformed NAR at byte {offset}: {what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Offset of the length field's end.
        offset: u64,
        /// Which kind of token.
        what: &'static str,
        /// Its declared length.
        len: u64,
        /// The most allowed.
        max: u64,
    },
    /// Padding after a string or file contents was not zero.
    #[error("malformed NAR at byte {offset}: padding is not zero")]
    NonZeroPadding {
        /// Offset of the bad byte.
        offset: u64,
    },
    /// A directory entry name that could escape or confuse a directory.
    #[error("malformed NAR at byte {offset}: entry name {name:?} is invalid: {reason}")]
    BadEntryName {
        /// Offset of the name's end.
        offset: u64,
        /// The name, lossily decoded.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Entries out of Nix's order, or the same name twice.
    #[error("malformed NAR at byte {offset}: entry {name:?} does not sort after {previous:?}")]
    UnsortedEntries {
        /// Offset of the name's end.
        offset: u64,
        /// The name, lossily decoded.
        name: String,
        /// The entry before it.
        previous: String,
    },
    /// An empty symlink target or one with a NUL byte.
    #[error("malformed NAR at byte {offset}: symlink target is empty or contains NUL")]
    BadSymlinkTarget {
        /// Offset of the target's end.
        offset: u64,
    },
    /// Directories nested deeper than [`super::MAX_DEPTH`].
    #[error("malformed NAR at byte {offset}: directories nested deeper than {max}")]
    TooDeep {
        /// Offset where the limit was passed.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended before the root node closed.
    #[error("truncated NAR: the stream ended at byte {offset} inside the archive")]
    Truncated {
        /// Bytes received.
        offset: u64,
    },
    /// Bytes after the root node closed.
    #[error("malformed NAR: data continues after the archive ends at byte {offset}")]
    TrailingData {
        /// Where the archive ended.
        offset: u64,
    },
    /// The file at this path is neither regular, directory nor symlink.
    #[error("cannot archive {0}: it is not a regular file, directory or symlink")]
    UnsupportedFileType(PathBuf),
    /// A file changed size while it was being archived.
    #[error("cannot archive {0}: it changed while being read")]
    FileChanged(PathBuf),
    /// Reading the NAR stream failed.
    #[error("reading the NAR stream failed")]
    Read(#[source] io::Error),
    /// Reading the tree, or writing its NAR, failed.
    #[error("I/O error on {path}")]
    Io {
        /// The file or stream concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl NarError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
