//! A push parser for NARs: bytes go in, in pieces of any size, and events come
//! out as soon as they are known.
//!
//! Being push-based, it can sit beside a hasher and a chunker on one stream
//! without buffering: memory is bounded by the longest token (a symlink target)
//! and the nesting depth, never by file sizes. It accepts only the canonical
//! form Nix writes, so a NAR that passes has exactly one hash for its tree.

use super::encode::padding_len;
use super::{MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN, NAR_MAGIC, NarError};

/// What the parser saw, in NAR order.
#[derive(Debug, PartialEq, Eq)]
pub enum NarEvent<'a> {
    /// A directory node begins; its entries follow.
    StartDirectory,
    /// The current directory has no more entries.
    EndDirectory,
    /// An entry of the current directory begins; its node follows.
    StartEntry {
        /// The entry's name.
        name: &'a [u8],
    },
    /// The current entry's node is complete.
    EndEntry,
    /// A regular file node; `size` bytes of [`NarEvent::Contents`] follow.
    RegularFile {
        /// Whether the file is executable.
        executable: bool,
        /// The file's length.
        size: u64,
        /// Where in the NAR its contents start (Nix's `narOffset`).
        offset: u64,
    },
    /// A piece of the current file's contents.
    Contents(&'a [u8]),
    /// A symlink node.
    Symlink {
        /// Where it points.
        target: &'a [u8],
    },
}

/// Keywords are short; anything longer in a keyword's place is garbage.
const MAX_KEYWORD_LEN: u64 = 16;

/// The grammar position: which token comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Magic,
    NodeOpen,
    TypeKeyword,
    TypeValue,
    ExecutableOrContents,
    ExecutableMarker,
    ContentsKeyword,
    ContentsLength { executable: bool },
    TargetKeyword,
    Target,
    NodeClose,
    EntryOrDirectoryClose,
    EntryOpen,
    NameKeyword,
    Name,
    NodeKeyword,
    EntryClose,
    End,
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::Magic => "the nix-archive-1 magic",
            Expect::NodeOpen | Expect::EntryOpen => "\"(\"",
            Expect::TypeKeyword => "\"type\"",
            Expect::TypeValue => "\"regular\", \"symlink\" or \"directory\"",
            Expect::ExecutableOrContents => "\"executable\" or \"contents\"",
            Expect::ExecutableMarker => "\"\" after \"executable\"",
            Expect::ContentsKeyword => "\"contents\"",
            Expect::ContentsLength { .. } => "a file length",
            Expect::TargetKeyword => "\"target\"",
            Expect::Target => "a symlink target",
            Expect::NodeClose | Expect::EntryClose => "\")\"",
            Expect::EntryOrDirectoryClose => "\"entry\" or \")\"",
            Expect::NameKeyword => "\"name\"",
            Expect::Name => "an entry name",
            Expect::NodeKeyword => "\"node\"",
            Expect::End => "the end of the archive",
        }
    }

    /// The longest string token that can be valid here.
    fn max_len(self) -> (&'static str, u64) {
        match self {
            Expect::Name => ("entry name", MAX_NAME_LEN as u64),
            Expect::Target => ("symlink target", MAX_TARGET_LEN as u64),
            _ => ("keyword", MAX_KEYWORD_LEN),
        }
    }
}

/// The byte-level position: which part of a token comes next.
#[derive(Debug, Clone, Copy)]
enum Lex {
    /// The 8-byte length of a token.
    Length { buf: [u8; 8], have: usize },
    /// The bytes of a string token, gathered in `NarParser::token`.
    Str { len: usize },
    /// The bytes of a file, passed straight through; `size` is its length.
    Contents { remaining: u64, size: u64 },
    /// Zero padding, then either a finished string token or finished contents.
    Padding {
        remaining: usize,
        after: AfterPadding,
    },
}

#[derive(Debug, Clone, Copy)]
enum AfterPadding {
    Token,
    Contents,
}

const START_OF_LENGTH: Lex = Lex::Length {
    buf: [0; 8],
    have: 0,
};

/// The push parser. Feed it with [`NarParser::feed`], then call
/// [`NarParser::finish`] to learn whether the archive was complete.
#[derive(Debug)]
pub struct NarParser {
    lex: Lex,
    expect: Expect,
    /// For each open directory, the last entry name seen in it.
    directories: Vec<Option<Vec<u8>>>,
    token: Vec<u8>,
    offset: u64,
}

impl Default for NarParser {
    fn default() -> Self {
        Self::new()
    }
}

impl NarParser {
    /// A parser at the start of a NAR.
    pub fn new() -> Self {
        Self {
            lex: START_OF_LENGTH,
            expect: Expect::Magic,
            directories: Vec::new(),
            token: Vec::new(),
            offset: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the root node has closed, so the NAR is complete.
    pub fn is_complete(&self) -> bool {
        self.expect == Expect::End
    }

    /// Parses the next piece of the NAR, passing each event to `on_event`.
    /// After an error the parser must not be fed again.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        on_event: &mut impl FnMut(NarEvent<'_>),
    ) -> Result<(), NarError> {
        while !data.is_empty() {
            if self.expect == Expect::End {
                return Err(NarError::TrailingData {
                    offset: self.offset,
                });
            }
            match &mut self.lex {
                Lex::Length { buf, have } => {
                    let take = (8 - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    self.advance(&mut data, take);
                    if let Lex::Length { buf, have: 8 } = self.lex {
                        self.start_token(u64::from_le_bytes(buf), on_event)?;
                    }
                }
                Lex::Str { len } => {
                    let len = *len;
                    let take = (len - self.token.len()).min(data.len());
                    self.token.extend_from_slice(&data[..take]);
                    self.advance(&mut data, take);
                    if self.token.len() == len {
                        self.start_padding(len as u64, AfterPadding::Token, on_event)?;
                    }
                }
                Lex::Contents { remaining, size } => {
                    let size = *size;
                    let take = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    on_event(NarEvent::Contents(&data[..take]));
                    self.advance(&mut data, take);
                    if done {
                        self.start_padding(size, AfterPadding::Contents, on_event)?;
                    }
                }
                Lex::Padding { remaining, after } => {
                    let after = *after;
                    let take = (*remaining).min(data.len());
                    if let Some(pos) = data[..take].iter().position(|&b| b != 0) {
                        return Err(NarError::NonZeroPadding {
                            offset: self.offset + pos as u64,
                        });
                    }
                    *remaining -= take;
                    let done = *remaining == 0;
                    self.advance(&mut data, take);
                    if done {
                        self.finish_padding(after, on_event)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Declares the end of input: succeeds only if the NAR was complete.
    pub fn finish(&self) -> Result<(), NarError> {
        if self.is_complete() {
            Ok(())
        } else if self.expect == Expect::Magic && self.offset < 24 {
            Err(NarError::BadMagic)
        } else {
            Err(NarError::Truncated {
                offset: self.offset,
            })
        }
    }

    fn advance(&mut self, data: &mut &[u8], n: usize) {
        *data = &data[n..];
        self.offset += n as u64;
    }

    /// A length field is complete: start reading what it announces.
    fn start_token(
        &mut self,
        len: u64,
        on_event: &mut impl FnMut(NarEvent<'_>),
    ) -> Result<(), NarError> {
        if let Expect::ContentsLength { executable } = self.expect {
            on_event(NarEvent::RegularFile {
                executable,
                size: len,
                offset: self.offset,
            });
            self.expect = Expect::NodeClose;
            self.lex = Lex::Contents {
                remaining: len,
                size: len,
            };
            if len == 0 {
                self.start_padding(0, AfterPadding::Contents, on_event)?;
            }
            return Ok(());
        }
        let (what, max) = self.expect.max_len();
        if len > max {
            if self.expect == Expect::Magic {
                return Err(NarError::BadMagic);
            }
            return Err(NarError::TooLong {
                offset: self.offset,
                what,
                len,
                max,
            });
        }
        self.token.clear();
        let len = len as usize;
        self.lex = Lex::Str { len };
        if len == 0 {
            self.start_padding(0, AfterPadding::Token, on_event)?;
        }
        Ok(())
    }

    fn start_padding(
        &mut self,
        len: u64,
        after: AfterPadding,
        on_event: &mut impl FnMut(NarEvent<'_>),
    ) -> Result<(), NarError> {
        let remaining = padding_len(len);
        self.lex = Lex::Padding { remaining, after };
        if remaining == 0 {
            self.finish_padding(after, on_event)?;
        }
        Ok(())
    }

    fn finish_padding(
        &mut self,
        after: AfterPadding,
        on_event: &mut impl FnMut(NarEvent<'_>),
    ) -> Result<(), NarError> {
        self.lex = START_OF_LENGTH;
        match after {
            // The grammar already moved on to NodeClose when the file began.
            AfterPadding::Contents => Ok(()),
            AfterPadding::Token => {
                let token = std::mem::take(&mut self.token);
                let result = self.accept_token(&token, on_event);
                self.token = token;
                result
            }
        }
    }

    /// Advances the grammar by one complete string token.
    fn accept_token(
        &mut self,
        token: &[u8],
        on_event: &mut impl FnMut(NarEvent<'_>),
    ) -> Result<(), NarError> {
        let expected = |want: &[u8]| token == want;
        self.expect = match self.expect {
            Expect::Magic if expected(NAR_MAGIC) => Expect::NodeOpen,
            Expect::Magic => return Err(NarError::BadMagic),
            Expect::NodeOpen if expected(b"(") => Expect::TypeKeyword,
            Expect::TypeKeyword if expected(b"type") => Expect::TypeValue,
            Expect::TypeValue if expected(b"regular") => Expect::ExecutableOrContents,
            Expect::TypeValue if expected(b"symlink") => Expect::TargetKeyword,
            Expect::TypeValue if expected(b"directory") => {
                if self.directories.len() >= MAX_DEPTH {
                    return Err(NarError::TooDeep {
                        offset: self.offset,
                        max: MAX_DEPTH,
                    });
                }
                self.directories.push(None);
                on_event(NarEvent::StartDirectory);
                Expect::EntryOrDirectoryClose
            }
            Expect::ExecutableOrContents if expected(b"executable") => Expect::ExecutableMarker,
            Expect::ExecutableOrContents if expected(b"contents") => {
                Expect::ContentsLength { executable: false }
            }
            Expect::ExecutableMarker if expected(b"") => Expect::ContentsKeyword,
            Expect::ContentsKeyword if expected(b"contents") => {
                Expect::ContentsLength { executable: true }
            }
            Expect::TargetKeyword if expected(b"target") => Expect::Target,
            Expect::Target => {
                if token.is_empty() || token.contains(&0) {
                    return Err(NarError::BadSymlinkTarget {
                        offset: self.offset,
                    });
                }
                on_event(NarEvent::Symlink { target: token });
                Expect::NodeClose
            }
            Expect::NodeClose if expected(b")") => self.node_closed(),
            Expect::EntryOrDirectoryClose if expected(b"entry") => Expect::EntryOpen,
            Expect::EntryOrDirectoryClose if expected(b")") => {
                self.directories.pop();
                on_event(NarEvent::EndDirectory);
                self.node_closed()
            }
            Expect::EntryOpen if expected(b"(") => Expect::NameKeyword,
            Expect::NameKeyword if expected(b"name") => Expect::Name,
            Expect::Name => {
                self.check_entry_name(token)?;
                on_event(NarEvent::StartEntry { name: token });
                Expect::NodeKeyword
            }
            Expect::NodeKeyword if expected(b"node") => Expect::NodeOpen,
            Expect::EntryClose if expected(b")") => {
                on_event(NarEvent::EndEntry);
                Expect::EntryOrDirectoryClose
            }
            other => {
                let shown = &token[..token.len().min(64)];
                return Err(NarError::UnexpectedToken {
                    offset: self.offset,
                    expected: other.describe(),
                    found: String::from_utf8_lossy(shown).into_owned(),
                });
            }
        };
        Ok(())
    }

    /// What follows a node's closing parenthesis: the end of its entry, or of
    /// the archive when it was the root.
    fn node_closed(&self) -> Expect {
        if self.directories.is_empty() {
            Expect::End
        } else {
            Expect::EntryClose
        }
    }

    fn check_entry_name(&mut self, name: &[u8]) -> Result<(), NarError> {
        let bad = |reason| NarError::BadEntryName {
            offset: self.offset,
            name: String::from_utf8_lossy(name).into_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name == b"." || name == b".." {
            return Err(bad("it is `.` or `..`"));
        }
        if name.contains(&b'/') {
            return Err(bad("it contains `/`"));
        }
        if name.contains(&0) {
            return Err(bad("it contains NUL"));
        }
        let offset = self.offset;
        let previous = self
            .directories
            .last_mut()
            .expect("an entry name is only expected inside a directory");
        if let Some(prev) = previous.as_deref()
            && name <= prev
        {
            return Err(NarError::UnsortedEntries {
                offset,
                name: String::from_utf8_lossy(name).into_owned(),
                previous: String::from_utf8_lossy(prev).into_owned(),
            });
        }
        *previous = Some(name.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
