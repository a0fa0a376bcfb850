//! The `.ls` listing of a NAR, as Nix writes it beside the NAR in a binary
//! cache with `write-nar-listing=true` (`listNar` in Nix's
//! `nar-accessor.cc`): `{"version":1,"root":NODE}`, where a node is
//! `{"type":"regular","size":N,"executable":true,"narOffset":N}` (the
//! `executable` only when true), `{"type":"symlink","target":"…"}` or
//! `{"type":"directory","entries":{"name":NODE,…}}`.
//!
//! A NAR lists a directory's entries sorted and depth first, which is the
//! order the JSON nests in, so the listing is written as the NAR's events
//! arrive, with no tree in memory: only the text, which stops growing (and
//! is then dropped) past a bound.

use super::NarEvent;

/// Writes a NAR's listing from its parser events.
#[derive(Debug)]
pub struct ListingWriter {
    text: Vec<u8>,
    /// For each open directory, whether an entry was written in it yet.
    open: Vec<bool>,
    limit: usize,
    over_limit: bool,
}

impl ListingWriter {
    /// A writer whose listing may take at most `limit` bytes; a NAR with a
    /// longer one (hundreds of thousands of files) gets none.
    pub fn new(limit: usize) -> Self {
        Self {
            text: br#"{"version":1,"root":"#.to_vec(),
            open: Vec::new(),
            limit,
            over_limit: false,
        }
    }

    /// Takes the next event of the NAR.
    pub fn event(&mut self, event: &NarEvent<'_>) {
        if self.over_limit {
            return;
        }
        match event {
            NarEvent::StartDirectory => {
                self.text
                    .extend_from_slice(br#"{"type":"directory","entries":{"#);
                self.open.push(false);
            }
            NarEvent::EndDirectory => {
                self.open.pop();
                self.text.extend_from_slice(b"}}");
            }
            NarEvent::StartEntry { name } => {
                if let Some(written) = self.open.last_mut() {
                    if *written {
                        self.text.push(b',');
                    }
                    *written = true;
                }
                self.string(name);
                self.text.push(b':');
            }
            NarEvent::EndEntry | NarEvent::Contents(_) => {}
            NarEvent::RegularFile {
                executable,
                size,
                offset,
            } => {
                let executable = if *executable {
                    r#","executable":true"#
                } else {
                    ""
                };
                self.text.extend_from_slice(
                    format!(
                        r#"{{"type":"regular","size":{size}{executable},"narOffset":{offset}}}"#
                    )
                    .as_bytes(),
                );
            }
            NarEvent::Symlink { target } => {
                self.text
                    .extend_from_slice(br#"{"type":"symlink","target":"#);
                self.string(target);
                self.text.push(b'}');
            }
        }
        if self.text.len() > self.limit {
            self.over_limit = true;
            self.text = Vec::new();
        }
    }

    /// The listing, once the NAR is complete; `None` if it outgrew its bound.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        if self.over_limit {
            return None;
        }
        self.text.push(b'}');
        Some(self.text)
    }

    /// A name or target as a JSON string. NAR names are bytes; JSON holds
    /// text, so bytes that are not UTF-8 are replaced, as Nix's own
    /// listing does not promise more.
    fn string(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let quoted = serde_json::to_string(&text).expect("a string serialises");
        self.text.extend_from_slice(quoted.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::NarParser;
    use crate::nar::tree::NarNode;
    use std::collections::BTreeMap;

    fn listing_of(nar: &[u8], limit: usize) -> Option<serde_json::Value> {
        let mut parser = NarParser::new();
        let mut writer = ListingWriter::new(limit);
        // In small pieces, as uploads arrive.
        for piece in nar.chunks(7) {
            parser
                .feed(piece, &mut |event| writer.event(&event))
                .expect("a valid NAR");
        }
        parser.finish().expect("complete");
        writer
            .finish()
            .map(|text| serde_json::from_slice(&text).expect("valid JSON"))
    }

    fn file(contents: &[u8], executable: bool) -> NarNode {
        NarNode::Regular {
            executable,
            contents: contents.to_vec(),
        }
    }

    #[test]
    fn lists_a_tree_as_nix_does_with_offsets_that_point_at_the_contents() {
        let tree = NarNode::Directory(BTreeMap::from([
            (
                b"bin".to_vec(),
                NarNode::Directory(BTreeMap::from([
                    (b"hello".to_vec(), file(b"#!/bin/sh\necho hi\n", true)),
                    (
                        b"link".to_vec(),
                        NarNode::Symlink {
                            target: b"../share/\"data\"".to_vec(),
                        },
                    ),
                ])),
            ),
            (b"empty".to_vec(), NarNode::Directory(BTreeMap::new())),
            (b"data".to_vec(), file(b"some data", false)),
        ]));
        let nar = tree.to_nar();
        let listing = listing_of(&nar, 1 << 20).expect("within the bound");
        assert_eq!(listing["version"], 1);
        let root = &listing["root"];
        assert_eq!(root["type"], "directory");
        assert_eq!(
            root["entries"]["empty"],
            serde_json::json!({"type": "directory", "entries": {}})
        );
        assert_eq!(
            root["entries"]["bin"]["entries"]["link"],
            serde_json::json!({"type": "symlink", "target": "../share/\"data\""})
        );
        let hello = &root["entries"]["bin"]["entries"]["hello"];
        assert_eq!(hello["type"], "regular");
        assert_eq!(hello["executable"], true);
        assert_eq!(hello["size"], 18);
        let offset = hello["narOffset"].as_u64().expect("test input") as usize;
        assert_eq!(&nar[offset..offset + 18], b"#!/bin/sh\necho hi\n");
        let data = &root["entries"]["data"];
        assert!(data.get("executable").is_none(), "{data}");
        let offset = data["narOffset"].as_u64().expect("test input") as usize;
        assert_eq!(&nar[offset..offset + 9], b"some data");
    }

    #[test]
    fn a_single_file_nar_is_listed_as_its_root() {
        let nar = file(b"x", false).to_nar();
        let listing = listing_of(&nar, 1 << 20).expect("within the bound");
        assert_eq!(listing["root"]["type"], "regular");
        assert_eq!(listing["root"]["size"], 1);
    }

    #[test]
    fn a_listing_past_its_bound_is_dropped() {
        let entries = (0..1000)
            .map(|i| (format!("file-{i:04}").into_bytes(), file(b"", false)))
            .collect();
        let nar = NarNode::Directory(entries).to_nar();
        assert!(listing_of(&nar, 10_000).is_none());
        assert!(listing_of(&nar, 1 << 20).is_some());
    }
}
