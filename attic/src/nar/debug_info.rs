//! The DWARF debug info files a NAR holds, as Nix indexes them in a binary
//! cache with `index-debug-info=true` (`binary-cache-store.cc`): every
//! regular file `lib/debug/.build-id/<2 hex>/<38 hex>.debug` is the debug
//! info of the build id made of those 40 hex digits, and Nix writes
//! `debuginfo/<build id>` pointing at the NAR and that member.

use super::NarEvent;

/// Most debug info files noted per NAR; a NAR with more is indexed up to
/// this many, which bounds memory whatever it holds.
pub const MAX_DEBUG_INFO_FILES: usize = 100_000;

/// A debug info file of a NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugInfoFile {
    /// The build id: 40 lowercase hex digits.
    pub build_id: String,
    /// Its path in the NAR, `lib/debug/.build-id/ab/<38 hex>.debug`.
    pub member: String,
}

/// Notes a NAR's debug info files from its parser events.
#[derive(Debug, Default)]
pub struct DebugInfoFinder {
    /// The names of the entries from the root to the current node.
    path: Vec<Vec<u8>>,
    found: Vec<DebugInfoFile>,
}

fn is_hex(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl DebugInfoFinder {
    /// A finder at the start of a NAR.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next event of the NAR.
    pub fn event(&mut self, event: &NarEvent<'_>) {
        match event {
            NarEvent::StartEntry { name } => self.path.push(name.to_vec()),
            NarEvent::EndEntry => {
                self.path.pop();
            }
            NarEvent::RegularFile { .. } => self.check_file(),
            _ => {}
        }
    }

    fn check_file(&mut self) {
        let [lib, debug, build_id, dir, file] = self.path.as_slice() else {
            return;
        };
        if lib != b"lib" || debug != b"debug" || build_id != b".build-id" {
            return;
        }
        let Some(rest) = file.strip_suffix(b".debug") else {
            return;
        };
        if dir.len() != 2 || rest.len() != 38 || !is_hex(dir) || !is_hex(rest) {
            return;
        }
        if self.found.len() >= MAX_DEBUG_INFO_FILES {
            return;
        }
        // Hex digits and fixed names: ASCII throughout.
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.found.push(DebugInfoFile {
            build_id: format!("{}{}", text(dir), text(rest)),
            member: format!("lib/debug/.build-id/{}/{}", text(dir), text(file)),
        });
    }

    /// The debug info files found.
    pub fn finish(self) -> Vec<DebugInfoFile> {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::nar::NarParser;
    use crate::nar::tree::NarNode;

    fn dir(entries: Vec<(&str, NarNode)>) -> NarNode {
        NarNode::Directory(
            entries
                .into_iter()
                .map(|(name, node)| (name.as_bytes().to_vec(), node))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn file() -> NarNode {
        NarNode::Regular {
            executable: false,
            contents: b"ELF".to_vec(),
        }
    }

    #[test]
    fn finds_the_files_nix_indexes_and_nothing_else() {
        let id = "0123456789abcdef0123456789abcdef012345";
        let tree = dir(vec![(
            "lib",
            dir(vec![(
                "debug",
                dir(vec![(
                    ".build-id",
                    dir(vec![
                        (
                            "ab",
                            dir(vec![
                                (&format!("{id}.debug"), file()),
                                ("short.debug", file()),
                                (&format!("{id}.txt"), file()),
                            ]),
                        ),
                        ("XY", dir(vec![(&format!("{id}.debug"), file())])),
                    ]),
                )]),
            )]),
        )]);
        let nar = tree.to_nar();
        let mut parser = NarParser::new();
        let mut finder = DebugInfoFinder::new();
        parser
            .feed(&nar, &mut |event| finder.event(&event))
            .expect("a valid NAR");
        assert_eq!(
            finder.finish(),
            vec![DebugInfoFile {
                build_id: format!("ab{id}"),
                member: format!("lib/debug/.build-id/ab/{id}.debug"),
            }]
        );
    }
}
