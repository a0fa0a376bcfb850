//! The narinfo parser never panics, and what it accepts re-serialises to a
//! narinfo that parses back to the same value.
#![no_main]

use attic::narinfo::NarInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(info) = text.parse::<NarInfo>() {
        let written = info.to_string();
        let again: NarInfo = written.parse().expect("our own output parses");
        assert_eq!(again, info, "round trip changed the narinfo:\n{written}");
    }
});
