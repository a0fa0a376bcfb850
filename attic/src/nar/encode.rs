//! The token layer of the NAR format, shared by every writer: a string is its
//! length as a little-endian u64, its bytes, then zeros up to a multiple of 8.

/// Zero bytes that follow `len` bytes of string or contents.
pub(crate) fn padding_len(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

/// Appends one string token.
pub(crate) fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s);
    put_padding(buf, s.len() as u64);
}

/// Appends the zeros that pad `len` bytes.
pub(crate) fn put_padding(buf: &mut Vec<u8>, len: u64) {
    buf.extend_from_slice(&[0u8; 8][..padding_len(len)]);
}

/// Appends everything of a regular file node up to its contents:
/// `( type regular [executable ""] contents <len>`.
pub(crate) fn put_regular_header(buf: &mut Vec<u8>, executable: bool, size: u64) {
    put_strs(buf, &[b"(", b"type", b"regular"]);
    if executable {
        put_strs(buf, &[b"executable", b""]);
    }
    put_str(buf, b"contents");
    buf.extend_from_slice(&size.to_le_bytes());
}

/// Appends a whole symlink node.
pub(crate) fn put_symlink(buf: &mut Vec<u8>, target: &[u8]) {
    put_strs(buf, &[b"(", b"type", b"symlink", b"target", target, b")"]);
}

/// Appends several string tokens.
pub(crate) fn put_strs(buf: &mut Vec<u8>, tokens: &[&[u8]]) {
    for token in tokens {
        put_str(buf, token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_strings_to_eight_bytes() {
        let mut buf = Vec::new();
        put_str(&mut buf, b"type");
        assert_eq!(buf, b"\x04\0\0\0\0\0\0\0type\0\0\0\0");
        let mut empty = Vec::new();
        put_str(&mut empty, b"");
        assert_eq!(empty, [0u8; 8]);
    }
}
