//! Serialising a filesystem tree as a NAR, byte for byte as `nix-store --dump`.
//!
//! The walk is plain blocking I/O ([`dump_path_to`]): reading a tree is a
//! long run of small system calls, and doing each through the async
//! runtime's thread pool costs a thread hand-off apiece. [`dump_path`] runs
//! that walk on a blocking thread and hands out the NAR as a stream of
//! pieces, a few at a time, so memory stays bounded whatever the tree's size.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::mpsc;

use super::encode::{put_padding, put_regular_header, put_str, put_strs, put_symlink};
use super::{NAR_MAGIC, NarError};

/// Size of the pieces [`dump_path`] yields, and of file reads.
const PIECE_SIZE: usize = 256 * 1024;

/// Pieces [`dump_path`] keeps ready ahead of its reader.
const PIECES_AHEAD: usize = 4;

/// Writes the NAR of the tree at `path` (a file, symlink or directory) to
/// `out`, returning its size. Blocks: call it from a blocking thread. A file
/// that changes length while it is read is an error, since the NAR would no
/// longer describe one state of the tree.
pub fn dump_path_to<W: Write>(path: &Path, out: &mut W) -> Result<u64, NarError> {
    let mut dumper = Dumper {
        out,
        written: 0,
        scratch: Vec::with_capacity(256),
        buffer: vec![0; PIECE_SIZE],
    };
    dumper.tokens(|buf| put_str(buf, NAR_MAGIC))?;
    dumper.node(path)?;
    dumper.out.flush().map_err(output_error)?;
    Ok(dumper.written)
}

/// The NAR of the tree at `path`, as a stream of pieces produced on a
/// blocking thread; at most a few pieces are buffered. A failure ends the
/// stream with the error.
pub fn dump_path(
    path: impl Into<PathBuf>,
) -> impl Stream<Item = Result<Bytes, NarError>> + Send + 'static {
    let path = path.into();
    let (tx, rx) = mpsc::channel(PIECES_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx: tx.clone(),
            piece: BytesMut::with_capacity(PIECE_SIZE),
        };
        // A send fails only when the reader is gone; then nobody cares.
        if let Err(e) = dump_path_to(&path, &mut writer) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Sends what is written as pieces of up to [`PIECE_SIZE`] bytes.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, NarError>>,
    piece: BytesMut,
}

impl ChannelWriter {
    fn send_piece(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = self.piece.split().freeze();
        self.piece.reserve(PIECE_SIZE);
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the NAR's reader went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PIECE_SIZE - self.piece.len();
        let n = room.min(data.len());
        self.piece.extend_from_slice(&data[..n]);
        if self.piece.len() == PIECE_SIZE {
            self.send_piece()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_piece()
    }
}

fn output_error(source: io::Error) -> NarError {
    NarError::Io {
        path: "<NAR output>".into(),
        source,
    }
}

struct Dumper<'w, W> {
    out: &'w mut W,
    written: u64,
    scratch: Vec<u8>,
    buffer: Vec<u8>,
}

impl<W: Write> Dumper<'_, W> {
    fn node(&mut self, path: &Path) -> Result<(), NarError> {
        let metadata = fs::symlink_metadata(path).map_err(NarError::io(path))?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(NarError::io(path))?;
            self.tokens(|buf| put_symlink(buf, target.as_os_str().as_bytes()))
        } else if file_type.is_file() {
            // Nix marks a file executable when its owner may execute it.
            let executable = metadata.permissions().mode() & 0o100 != 0;
            self.file(path, executable, metadata.len())
        } else if file_type.is_dir() {
            self.directory(path)
        } else {
            Err(NarError::UnsupportedFileType(path.to_owned()))
        }
    }

    fn file(&mut self, path: &Path, executable: bool, size: u64) -> Result<(), NarError> {
        self.tokens(|buf| put_regular_header(buf, executable, size))?;
        let mut file = fs::File::open(path).map_err(NarError::io(path))?;
        let mut remaining = size;
        while remaining > 0 {
            let want = (remaining as usize).min(self.buffer.len());
            let n = file
                .read(&mut self.buffer[..want])
                .map_err(NarError::io(path))?;
            if n == 0 {
                return Err(NarError::FileChanged(path.to_owned()));
            }
            self.out
                .write_all(&self.buffer[..n])
                .map_err(output_error)?;
            remaining -= n as u64;
        }
        // A file that grew since we measured it no longer matches its header.
        if file
            .read(&mut self.buffer[..1])
            .map_err(NarError::io(path))?
            != 0
        {
            return Err(NarError::FileChanged(path.to_owned()));
        }
        self.written += size;
        self.tokens(|buf| {
            put_padding(buf, size);
            put_str(buf, b")");
        })
    }

    fn directory(&mut self, path: &Path) -> Result<(), NarError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(NarError::io(path))? {
            names.push(entry.map_err(NarError::io(path))?.file_name());
        }
        // Nix orders entries by their bytes.
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

        self.tokens(|buf| put_strs(buf, &[b"(", b"type", b"directory"]))?;
        for name in names {
            self.tokens(|buf| put_strs(buf, &[b"entry", b"(", b"name", name.as_bytes(), b"node"]))?;
            self.node(&path.join(&name))?;
            self.tokens(|buf| put_str(buf, b")"))?;
        }
        self.tokens(|buf| put_str(buf, b")"))
    }

    /// Encodes some tokens into the scratch buffer and writes them out.
    fn tokens(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), NarError> {
        self.scratch.clear();
        encode(&mut self.scratch);
        self.out.write_all(&self.scratch).map_err(output_error)?;
        self.written += self.scratch.len() as u64;
        Ok(())
    }
}
