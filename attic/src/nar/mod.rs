//! NAR (Nix ARchive): the canonical serialisation of a store path's tree.
//!
//! [`parser`] validates and decodes a NAR pushed to it in pieces of any size,
//! so one stream can feed it, a hasher and a chunker at once; [`read`] drives
//! it from an `AsyncRead`; [`dump`] serialises a filesystem tree exactly as
//! `nix-store --dump` does; [`tree`] holds small NARs in memory for tests and
//! tools; [`listing`] writes the `.ls` listing Nix's binary caches keep
//! beside a NAR; [`debug_info`] finds the DWARF files Nix indexes under
//! `debuginfo/`. Nothing here holds a whole NAR in memory except [`tree`].

pub mod debug_info;
pub mod dump;
mod encode;
mod error;
pub mod listing;
pub mod parser;
pub mod read;
pub mod tree;

pub use debug_info::{DebugInfoFile, DebugInfoFinder};
pub use dump::{dump_path, dump_path_to};
pub use error::NarError;
pub use listing::ListingWriter;
pub use parser::{NarEvent, NarParser};
pub use read::{NarSummary, read_nar, validate_nar};
pub use tree::NarNode;

/// The string every NAR starts with.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Longest directory entry name accepted (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Longest symlink target accepted (Linux `PATH_MAX` less the NUL).
pub const MAX_TARGET_LEN: usize = 4095;

/// Deepest directory nesting accepted; deeper trees cannot be restored on
/// Linux anyway, and the bound caps the parser's memory.
pub const MAX_DEPTH: usize = 2048;
