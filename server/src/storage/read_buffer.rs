//! Buffers that local reads fill, kept for the next read once a response
//! has sent them. A read into a new buffer zeroes it first (the read calls
//! take initialised memory) and allocates it: on NARs served from the page
//! cache that was a tenth of the server's CPU beside the copy itself.
//! Buffers come in a few sizes, each kept up to a few MiB, so what is kept
//! stays small beside what is in flight.

use std::sync::Mutex;

use bytes::Bytes;

/// Reads shorter than half this take a buffer of their own.
const SMALLEST_KEPT: usize = 64 * 1024;

/// Sizes of kept buffers: `SMALLEST_KEPT` doubled up to 1 MiB, the
/// largest piece a local read makes.
const SIZES: usize = 5;

/// Bytes of buffers kept per size, at most.
const KEPT_BYTES_PER_SIZE: usize = 4 * 1024 * 1024;

/// Buffers waiting for a read, by size (index `i` holds
/// `SMALLEST_KEPT << i` bytes each, all initialised).
static KEPT: [Mutex<Vec<Vec<u8>>>; SIZES] = [const { Mutex::new(Vec::new()) }; SIZES];

/// The size a buffer for `len` bytes comes in, if such buffers are kept.
fn size_index(len: usize) -> Option<usize> {
    if len < SMALLEST_KEPT / 2 {
        return None;
    }
    let index = len
        .div_ceil(SMALLEST_KEPT)
        .next_power_of_two()
        .trailing_zeros() as usize;
    (index < SIZES).then_some(index)
}

/// `len` bytes to read into, initialised, from the kept ones when it can.
/// Its bytes go back to be kept when the last [`Bytes`] made from it is
/// dropped.
#[derive(Debug)]
pub(super) struct ReadBuffer {
    /// All initialised; `len` of them are this read's.
    buffer: Vec<u8>,
    len: usize,
    /// Where it goes back to, if kept.
    size: Option<usize>,
}

impl ReadBuffer {
    pub(super) fn new(len: usize) -> Self {
        let size = size_index(len);
        let buffer = size
            .and_then(|size| KEPT[size].lock().ok()?.pop())
            .unwrap_or_else(|| vec![0; size.map_or(len, |size| SMALLEST_KEPT << size)]);
        Self { buffer, len, size }
    }

    /// The bytes to read into.
    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buffer[..self.len]
    }

    /// Keeps only the first `len` bytes (a read that ended early).
    pub(super) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The bytes read, sharing the buffer.
    pub(super) fn into_bytes(mut self) -> Bytes {
        if self.size.is_none() {
            let mut buffer = std::mem::take(&mut self.buffer);
            buffer.truncate(self.len);
            return Bytes::from(buffer);
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        let Some(size) = self.size else { return };
        let buffer = std::mem::take(&mut self.buffer);
        if let Ok(mut kept) = KEPT[size].lock()
            && kept.len() * buffer.len() < KEPT_BYTES_PER_SIZE
        {
            kept.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_double_from_64_kib_to_1_mib() {
        assert_eq!(size_index(1), None);
        assert_eq!(size_index(32 * 1024 - 1), None);
        assert_eq!(size_index(32 * 1024), Some(0));
        assert_eq!(size_index(64 * 1024), Some(0));
        assert_eq!(size_index(64 * 1024 + 1), Some(1));
        assert_eq!(size_index(128 * 1024), Some(1));
        assert_eq!(size_index(300 * 1024), Some(3));
        assert_eq!(size_index(1024 * 1024), Some(4));
        assert_eq!(size_index(1024 * 1024 + 1), None);
    }

    #[test]
    fn a_buffer_goes_back_when_its_last_bytes_are_dropped() {
        // A size no other test in this process reads.
        let len = 700 * 1024;
        let mut buffer = ReadBuffer::new(len);
        buffer.as_mut_slice().fill(7);
        buffer.truncate(len - 1);
        let bytes = buffer.into_bytes();
        assert_eq!(bytes.len(), len - 1);
        assert!(bytes.iter().all(|&b| b == 7));
        let slice = bytes.slice(10..20);
        drop(bytes);
        let kept = || KEPT[4].lock().expect("lock").len();
        let before = kept();
        drop(slice);
        assert_eq!(kept(), before + 1, "the buffer was not kept");
        // The next read of that size takes it, with its old bytes in it:
        // only what a read fills is ever handed out.
        let again = ReadBuffer::new(900 * 1024);
        assert_eq!(kept(), before);
        assert_eq!(again.as_ref().len(), 900 * 1024);
    }

    #[test]
    fn small_reads_get_exact_buffers() {
        let mut buffer = ReadBuffer::new(100);
        buffer.as_mut_slice().copy_from_slice(&[1; 100]);
        buffer.truncate(60);
        let bytes = buffer.into_bytes();
        assert_eq!(&bytes[..], &[1; 60][..]);
    }
}
