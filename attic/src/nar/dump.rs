//! Serialising a filesystem tree as a NAR, byte for byte as `nix-store --dump`.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::encode::{put_padding, put_regular_header, put_str, put_strs, put_symlink};
use super::{NAR_MAGIC, NarError};

/// Writes the NAR of the tree at `path` (a file, symlink or directory) to
/// `out`, returning the NAR's size. Files are streamed, never held whole;
/// `out` is best buffered. A file that changes length while it is read is an
/// error, since the NAR would no longer describe one state of the tree.
pub async fn dump_path<W: AsyncWrite + Unpin>(path: &Path, out: &mut W) -> Result<u64, NarError> {
    let mut dumper = Dumper {
        out,
        written: 0,
        header: Vec::with_capacity(256),
    };
    dumper.write_tokens(|buf| put_str(buf, NAR_MAGIC)).await?;
    dumper.dump_node(path).await?;
    dumper.out.flush().await.map_err(NarError::io(path))?;
    Ok(dumper.written)
}

struct Dumper<'w, W> {
    out: &'w mut W,
    written: u64,
    header: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> Dumper<'_, W> {
    async fn dump_node(&mut self, path: &Path) -> Result<(), NarError> {
        let metadata = fs::symlink_metadata(path)
            .await
            .map_err(NarError::io(path))?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(path).await.map_err(NarError::io(path))?;
            self.write_tokens(|buf| put_symlink(buf, target.as_os_str().as_bytes()))
                .await
        } else if file_type.is_file() {
            // Nix marks a file executable when its owner may execute it.
            let executable = metadata.permissions().mode() & 0o100 != 0;
            self.dump_file(path, executable, metadata.len()).await
        } else if file_type.is_dir() {
            self.dump_directory(path).await
        } else {
            Err(NarError::UnsupportedFileType(path.to_owned()))
        }
    }

    async fn dump_file(
        &mut self,
        path: &Path,
        executable: bool,
        size: u64,
    ) -> Result<(), NarError> {
        self.write_tokens(|buf| put_regular_header(buf, executable, size))
            .await?;
        let file = fs::File::open(path).await.map_err(NarError::io(path))?;
        // Read one byte past the expected end to notice a file that grew.
        let mut limited = file.take(size + 1);
        let copied = tokio::io::copy(&mut limited, self.out)
            .await
            .map_err(NarError::io(path))?;
        if copied != size {
            return Err(NarError::FileChanged(path.to_owned()));
        }
        self.written += copied;
        self.write_tokens(|buf| {
            put_padding(buf, size);
            put_str(buf, b")");
        })
        .await
    }

    async fn dump_directory(&mut self, path: &Path) -> Result<(), NarError> {
        let mut names = Vec::new();
        let mut dir = fs::read_dir(path).await.map_err(NarError::io(path))?;
        while let Some(entry) = dir.next_entry().await.map_err(NarError::io(path))? {
            names.push(entry.file_name());
        }
        // Nix orders entries by their bytes.
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

        self.write_tokens(|buf| put_strs(buf, &[b"(", b"type", b"directory"]))
            .await?;
        for name in names {
            self.write_tokens(|buf| {
                put_strs(buf, &[b"entry", b"(", b"name", name.as_bytes(), b"node"])
            })
            .await?;
            Box::pin(self.dump_node(&path.join(&name))).await?;
            self.write_tokens(|buf| put_str(buf, b")")).await?;
        }
        self.write_tokens(|buf| put_str(buf, b")")).await
    }

    /// Encodes some tokens into the scratch buffer and writes them out.
    async fn write_tokens(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), NarError> {
        self.header.clear();
        encode(&mut self.header);
        self.out
            .write_all(&self.header)
            .await
            .map_err(|source| NarError::Io {
                path: "<NAR output>".into(),
                source,
            })?;
        self.written += self.header.len() as u64;
        Ok(())
    }
}
