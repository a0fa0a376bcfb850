//! The NAR parser never panics, gives the same verdict however its input is
//! split, and accepts only canonical NARs: re-encoding what it accepted
//! reproduces the input byte for byte.
#![no_main]

use attic::nar::{NarNode, NarParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first byte picks a piece size, so splits are fuzzed too.
    let Some((&split, nar)) = input.split_first() else {
        return;
    };
    let whole = NarNode::from_nar(nar);

    let mut parser = NarParser::new();
    let piece = usize::from(split).max(1);
    let pieces = nar
        .chunks(piece)
        .try_for_each(|p| parser.feed(p, &mut |_| ()))
        .and_then(|()| parser.finish());
    assert_eq!(whole.is_ok(), pieces.is_ok(), "verdict depends on piece size {piece}");

    if let Ok(tree) = whole {
        assert_eq!(tree.to_nar(), nar, "accepted a non-canonical NAR");
    }
});
