//! The streaming NAR parser against well-formed, truncated and hostile NARs.

use std::collections::BTreeMap;

use super::super::encode::{put_str, put_strs};
use super::*;
use crate::nar::NarNode;

fn sample_tree() -> NarNode {
    let file = |executable, contents: &[u8]| NarNode::Regular {
        executable,
        contents: contents.to_vec(),
    };
    let mut sub = BTreeMap::new();
    sub.insert(b"empty".to_vec(), NarNode::Directory(BTreeMap::new()));
    sub.insert(b"x".to_vec(), file(true, b"#!/bin/sh\n"));
    let mut root = BTreeMap::new();
    root.insert(b"a".to_vec(), file(false, b"hello"));
    root.insert(b"b".to_vec(), NarNode::Directory(sub));
    root.insert(
        b"link".to_vec(),
        NarNode::Symlink {
            target: b"b/x".to_vec(),
        },
    );
    root.insert(b"zero".to_vec(), file(false, b""));
    NarNode::Directory(root)
}

fn parse(nar: &[u8]) -> Result<(), NarError> {
    let mut parser = NarParser::new();
    parser.feed(nar, &mut |_| ())?;
    parser.finish()
}

/// A NAR from raw tokens, for shapes our writers never produce.
fn tokens(list: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::new();
    put_strs(&mut buf, list);
    buf
}

/// `nix-archive-1 ( type directory` followed by `entries`, then `)`.
fn directory_with(entries: &[&[u8]]) -> Vec<u8> {
    let mut buf = tokens(&[NAR_MAGIC, b"(", b"type", b"directory"]);
    for name in entries {
        put_strs(
            &mut buf,
            &[
                b"entry",
                b"(",
                b"name",
                name,
                b"node",
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"",
                b")",
                b")",
            ],
        );
    }
    put_str(&mut buf, b")");
    buf
}

#[test]
fn same_events_whatever_the_piece_size() {
    let nar = sample_tree().to_nar();
    let events_with_pieces = |size: usize| {
        let mut parser = NarParser::new();
        let mut seen = Vec::new();
        for piece in nar.chunks(size) {
            parser
                .feed(piece, &mut |e| seen.push(format!("{e:?}")))
                .expect("valid NAR");
        }
        parser.finish().expect("complete");
        // Contents may arrive split; join adjacent pieces to compare.
        seen.dedup_by(|b, a| {
            if a.starts_with("Contents(") && b.starts_with("Contents(") {
                a.push_str(b);
                true
            } else {
                false
            }
        });
        seen.iter()
            .filter(|e| !e.starts_with("Contents("))
            .cloned()
            .collect::<Vec<_>>()
    };
    let whole = events_with_pieces(nar.len());
    assert_eq!(whole.len(), 22, "{whole:?}");
    for size in [1, 3, 7, 8, 9, 64] {
        assert_eq!(events_with_pieces(size), whole, "piece size {size}");
    }
}

#[test]
fn rejects_bad_magic() {
    let mut nar = sample_tree().to_nar();
    nar[8] = b'X';
    assert!(matches!(parse(&nar), Err(NarError::BadMagic)));
    assert!(matches!(
        parse(b"garbage!garbage!garbage!"),
        Err(NarError::BadMagic)
    ));
    assert!(matches!(parse(b""), Err(NarError::BadMagic)));
}

#[test]
fn rejects_every_truncation() {
    let nar = sample_tree().to_nar();
    for len in 0..nar.len() {
        assert!(
            parse(&nar[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    parse(&nar).expect("the whole NAR is valid");
}

#[test]
fn rejects_trailing_data() {
    let mut nar = sample_tree().to_nar();
    nar.extend_from_slice(&[0; 8]);
    assert!(matches!(parse(&nar), Err(NarError::TrailingData { .. })));
}

#[test]
fn rejects_non_zero_padding() {
    // After the magic (24 bytes) and "(" (16 bytes), "type" sits at
    // bytes 48..52 and its padding at 52..56.
    let mut nar = sample_tree().to_nar();
    assert_eq!(&nar[48..52], b"type");
    nar[53] = 1;
    assert!(matches!(
        parse(&nar),
        Err(NarError::NonZeroPadding { offset: 53 })
    ));
}

#[test]
fn rejects_unsorted_and_duplicate_entries() {
    parse(&directory_with(&[b"a", b"b"])).expect("sorted is fine");
    assert!(matches!(
        parse(&directory_with(&[b"b", b"a"])),
        Err(NarError::UnsortedEntries { .. })
    ));
    assert!(matches!(
        parse(&directory_with(&[b"a", b"a"])),
        Err(NarError::UnsortedEntries { .. })
    ));
}

#[test]
fn rejects_names_that_escape_the_directory() {
    for name in [&b""[..], b".", b"..", b"a/b", b"/etc", b"a\0b"] {
        assert!(
            matches!(
                parse(&directory_with(&[name])),
                Err(NarError::BadEntryName { .. })
            ),
            "{name:?}"
        );
    }
}

#[test]
fn rejects_absurd_lengths() {
    let mut nar = tokens(&[NAR_MAGIC, b"("]);
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&nar), Err(NarError::TooLong { .. })));

    let mut long_name = tokens(&[
        NAR_MAGIC,
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
    ]);
    put_str(&mut long_name, &[b'a'; 256]);
    assert!(matches!(parse(&long_name), Err(NarError::TooLong { .. })));
}

#[test]
fn rejects_bad_symlinks() {
    let empty = tokens(&[NAR_MAGIC, b"(", b"type", b"symlink", b"target", b"", b")"]);
    assert!(matches!(
        parse(&empty),
        Err(NarError::BadSymlinkTarget { .. })
    ));
    let nul = tokens(&[
        NAR_MAGIC, b"(", b"type", b"symlink", b"target", b"a\0", b")",
    ]);
    assert!(matches!(
        parse(&nul),
        Err(NarError::BadSymlinkTarget { .. })
    ));
}

#[test]
fn rejects_non_canonical_shapes() {
    let cases = [
        // "executable" must be followed by an empty string.
        tokens(&[
            NAR_MAGIC,
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"yes",
            b"contents",
        ]),
        // A regular file must have contents.
        tokens(&[NAR_MAGIC, b"(", b"type", b"regular", b")"]),
        // Unknown node type.
        tokens(&[NAR_MAGIC, b"(", b"type", b"fifo", b")"]),
        // Stray token in a directory.
        tokens(&[NAR_MAGIC, b"(", b"type", b"directory", b"name", b")"]),
    ];
    for nar in cases {
        assert!(
            matches!(parse(&nar), Err(NarError::UnexpectedToken { .. })),
            "{:?}",
            parse(&nar)
        );
    }
}

#[test]
fn rejects_nesting_beyond_the_limit() {
    let mut nar = tokens(&[NAR_MAGIC]);
    for _ in 0..=MAX_DEPTH {
        put_strs(
            &mut nar,
            &[
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
                b"d",
                b"node",
            ],
        );
    }
    assert!(matches!(parse(&nar), Err(NarError::TooDeep { .. })));
}
