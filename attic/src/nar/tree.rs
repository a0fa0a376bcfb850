//! A NAR held in memory as a tree, for tests, fuzzing and small tools.
//!
//! Directory entries live in a `BTreeMap` of byte strings, whose order is the
//! byte order Nix sorts entries in, so encoding needs no sorting step.

use std::collections::BTreeMap;

use super::encode::{put_padding, put_regular_header, put_str, put_strs, put_symlink};
use super::{NAR_MAGIC, NarError, NarEvent, NarParser};

/// One node of a NAR tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarNode {
    /// A regular file.
    Regular {
        /// Whether the file is executable.
        executable: bool,
        /// Its bytes.
        contents: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: Vec<u8>,
    },
    /// A directory, its entries by name.
    Directory(BTreeMap<Vec<u8>, NarNode>),
}

impl NarNode {
    /// Serialises the tree as a NAR.
    pub fn to_nar(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        put_str(&mut buf, NAR_MAGIC);
        self.encode_node(&mut buf);
        buf
    }

    fn encode_node(&self, buf: &mut Vec<u8>) {
        match self {
            NarNode::Regular {
                executable,
                contents,
            } => {
                put_regular_header(buf, *executable, contents.len() as u64);
                buf.extend_from_slice(contents);
                put_padding(buf, contents.len() as u64);
                put_str(buf, b")");
            }
            NarNode::Symlink { target } => put_symlink(buf, target),
            NarNode::Directory(entries) => {
                put_strs(buf, &[b"(", b"type", b"directory"]);
                for (name, node) in entries {
                    put_strs(buf, &[b"entry", b"(", b"name", name, b"node"]);
                    node.encode_node(buf);
                    put_str(buf, b")");
                }
                put_str(buf, b")");
            }
        }
    }

    /// Parses a complete NAR held in memory.
    pub fn from_nar(nar: &[u8]) -> Result<Self, NarError> {
        let mut builder = TreeBuilder::default();
        let mut parser = NarParser::new();
        parser.feed(nar, &mut |event| builder.push(event))?;
        parser.finish()?;
        Ok(builder
            .root
            .expect("a complete NAR has produced its root node"))
    }
}

/// A directory whose entries are still arriving.
struct OpenDirectory {
    /// The entry it is the node of; `None` for the root.
    entry_name: Option<Vec<u8>>,
    entries: BTreeMap<Vec<u8>, NarNode>,
}

/// Rebuilds a tree from parser events.
#[derive(Default)]
struct TreeBuilder {
    root: Option<NarNode>,
    open: Vec<OpenDirectory>,
    entry_name: Option<Vec<u8>>,
}

impl TreeBuilder {
    fn push(&mut self, event: NarEvent<'_>) {
        match event {
            NarEvent::StartDirectory => {
                self.open.push(OpenDirectory {
                    entry_name: self.entry_name.take(),
                    entries: BTreeMap::new(),
                });
            }
            NarEvent::EndDirectory => {
                let done = self.open.pop().expect("parser balances directories");
                self.entry_name = done.entry_name;
                self.place(NarNode::Directory(done.entries));
            }
            NarEvent::StartEntry { name } => self.entry_name = Some(name.to_vec()),
            NarEvent::EndEntry => {}
            NarEvent::RegularFile { executable, .. } => self.place(NarNode::Regular {
                executable,
                contents: Vec::new(),
            }),
            NarEvent::Contents(data) => {
                if let Some(NarNode::Regular { contents, .. }) = self.last_placed() {
                    contents.extend_from_slice(data);
                }
            }
            NarEvent::Symlink { target } => self.place(NarNode::Symlink {
                target: target.to_vec(),
            }),
        }
    }

    fn place(&mut self, node: NarNode) {
        match self.open.last_mut() {
            Some(open) => {
                let name = self.entry_name.clone().expect("parser names every entry");
                open.entries.insert(name, node);
            }
            None => self.root = Some(node),
        }
    }

    fn last_placed(&mut self) -> Option<&mut NarNode> {
        match self.open.last_mut() {
            Some(open) => {
                let name = self.entry_name.as_ref()?;
                open.entries.get_mut(name)
            }
            None => self.root.as_mut(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Valid entry names: no `/`, no NUL, not `.` or `..`.
    fn entry_name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..12).prop_filter("valid name", |name| {
            !name.contains(&b'/') && name != b"." && name != b".."
        })
    }

    /// Arbitrary NAR trees, a few levels deep.
    pub(crate) fn nar_node() -> impl Strategy<Value = NarNode> {
        let leaf = prop_oneof![
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..100)
            )
                .prop_map(|(executable, contents)| NarNode::Regular {
                    executable,
                    contents
                }),
            proptest::collection::vec(1u8..=255, 1..40)
                .prop_map(|target| NarNode::Symlink { target }),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            proptest::collection::btree_map(entry_name(), inner, 0..6).prop_map(NarNode::Directory)
        })
    }

    proptest! {
        #[test]
        fn nar_round_trips(node in nar_node()) {
            let nar = node.to_nar();
            prop_assert_eq!(nar.len() % 8, 0);
            prop_assert_eq!(NarNode::from_nar(&nar).expect("own NAR parses"), node);
        }
    }
}
