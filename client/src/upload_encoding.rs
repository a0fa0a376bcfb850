//! Whether a push compresses the NARs it sends.
//!
//! Compressing pays when the link is slower than the compressor: fewer
//! bytes cross it. On loopback, a LAN, or wherever the link is faster than
//! one core compressing, it only costs: the sender waits for the
//! compressor, and the server spends CPU undoing it. `auto` (the default)
//! finds out: the first [`PROBE_BYTES`] of NAR go compressed while the body
//! stream measures how long it spends compressing ("producing") against
//! how long it waits for the connection to take what it produced
//! ("waiting"). If the connection waited longer than the compressor
//! worked, the link is the bottleneck and compression stays on; otherwise
//! the rest of the push goes uncompressed. A server on a loopback address
//! gets uncompressed NARs from the start.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

/// NAR bytes sent compressed and measured before `auto` decides.
pub const PROBE_BYTES: u64 = 8 * 1024 * 1024;

/// How NARs go on the wire (`attic push --compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadCompression {
    /// Measure the first megabytes and choose (uncompressed to loopback).
    #[default]
    Auto,
    /// Always zstd, when the server takes it.
    Zstd,
    /// Never compress.
    None,
}

const UNDECIDED: u8 = 0;
const COMPRESS: u8 = 1;
const PLAIN: u8 = 2;

/// The choice for one push: fixed, or being measured.
#[derive(Debug)]
pub struct CompressionChoice {
    decision: AtomicU8,
    probe: Mutex<Probe>,
}

/// What the probing uploads measured so far.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Probe {
    nar_bytes: u64,
    producing: Duration,
    waiting: Duration,
}

impl Probe {
    /// Keep compressing when the connection, not the compressor, held the
    /// upload back.
    fn verdict(&self) -> Option<bool> {
        (self.nar_bytes >= PROBE_BYTES).then_some(self.waiting > self.producing)
    }
}

impl CompressionChoice {
    /// The choice for a push of `mode` to a server that takes zstd bodies
    /// (`server_takes_zstd`) at `host`, a name or an address.
    pub fn new(mode: UploadCompression, server_takes_zstd: bool, host: &str) -> Self {
        let decision = match mode {
            _ if !server_takes_zstd => PLAIN,
            UploadCompression::None => PLAIN,
            UploadCompression::Zstd => COMPRESS,
            UploadCompression::Auto if is_loopback(host) => PLAIN,
            UploadCompression::Auto => UNDECIDED,
        };
        Self {
            decision: AtomicU8::new(decision),
            probe: Mutex::default(),
        }
    }

    /// Whether the next upload is compressed. While undecided, uploads are
    /// compressed and measured.
    pub fn compress(&self) -> bool {
        self.decision.load(Ordering::Relaxed) != PLAIN
    }

    /// Whether uploads are still being measured.
    pub fn probing(&self) -> bool {
        self.decision.load(Ordering::Relaxed) == UNDECIDED
    }

    /// Adds what one compressed upload measured, deciding once enough NAR
    /// has gone.
    fn record(&self, measured: Probe) {
        if !self.probing() {
            return;
        }
        let mut probe = self.probe.lock().expect("never poisoned");
        probe.nar_bytes += measured.nar_bytes;
        probe.producing += measured.producing;
        probe.waiting += measured.waiting;
        if let Some(compress) = probe.verdict() {
            let decision = if compress { COMPRESS } else { PLAIN };
            // The first verdict stands; a racing upload's comes too late.
            let _ = self.decision.compare_exchange(
                UNDECIDED,
                decision,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// Whether `host` (as in a URL: a name, an address, an IPv6 address in
/// brackets) is this machine.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(address) => address.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// A compressed body stream that measures, for `choice`, the time spent
/// producing each piece and the time the consumer took to ask for the
/// next; `nar_bytes` is the NAR size it carries.
pub struct Metered<S> {
    inner: S,
    choice: Arc<CompressionChoice>,
    measured: Probe,
    /// When the last piece was handed over (the consumer's turn since).
    handed_over: Option<Instant>,
    done: bool,
}

impl<S> Metered<S> {
    /// Measures `inner`, a compressed body carrying `nar_bytes` of NAR.
    pub fn new(inner: S, choice: Arc<CompressionChoice>, nar_bytes: u64) -> Self {
        Self {
            inner,
            choice,
            measured: Probe {
                nar_bytes,
                ..Probe::default()
            },
            handed_over: None,
            done: false,
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.choice.record(self.measured);
        }
    }
}

impl<S, E> Stream for Metered<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let asked = Instant::now();
        if let Some(handed_over) = self.handed_over.take() {
            self.measured.waiting += asked - handed_over;
        }
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        let now = Instant::now();
        self.measured.producing += now - asked;
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.handed_over = Some(now),
            // An upload that failed says nothing about the link.
            Poll::Ready(Some(Err(_))) => self.done = true,
            Poll::Ready(None) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "cache.example.com",
            "[fd00::1]",
            "localhost.example",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn fixed_modes_never_probe() {
        let zstd = CompressionChoice::new(UploadCompression::Zstd, true, "cache.example.com");
        assert!(zstd.compress() && !zstd.probing());
        let none = CompressionChoice::new(UploadCompression::None, true, "cache.example.com");
        assert!(!none.compress() && !none.probing());
        let old_server = CompressionChoice::new(UploadCompression::Zstd, false, "x");
        assert!(!old_server.compress());
        let local = CompressionChoice::new(UploadCompression::Auto, true, "127.0.0.1");
        assert!(!local.compress() && !local.probing());
    }

    fn measured(nar_bytes: u64, producing_ms: u64, waiting_ms: u64) -> Probe {
        Probe {
            nar_bytes,
            producing: Duration::from_millis(producing_ms),
            waiting: Duration::from_millis(waiting_ms),
        }
    }

    #[test]
    fn auto_compresses_while_probing_then_follows_the_bottleneck() {
        let slow_link = CompressionChoice::new(UploadCompression::Auto, true, "cache.example.com");
        assert!(slow_link.compress() && slow_link.probing());
        slow_link.record(measured(PROBE_BYTES / 2, 10, 400));
        assert!(slow_link.probing(), "half the probe decides nothing");
        slow_link.record(measured(PROBE_BYTES / 2, 10, 400));
        assert!(slow_link.compress() && !slow_link.probing());

        let fast_link = CompressionChoice::new(UploadCompression::Auto, true, "cache.example.com");
        fast_link.record(measured(PROBE_BYTES, 300, 20));
        assert!(!fast_link.compress() && !fast_link.probing());
        // Later measurements change nothing.
        fast_link.record(measured(PROBE_BYTES, 1, 10_000));
        assert!(!fast_link.compress());
    }

    #[tokio::test]
    async fn metering_counts_the_consumer_waits_and_ignores_failed_uploads() {
        use futures::StreamExt;
        let choice = Arc::new(CompressionChoice::new(
            UploadCompression::Auto,
            true,
            "cache.example.com",
        ));
        let pieces = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"a")),
            Ok(Bytes::from_static(b"b")),
        ]);
        let mut body = Metered::new(pieces, choice.clone(), PROBE_BYTES);
        body.next().await.expect("a piece").expect("ok");
        tokio::time::sleep(Duration::from_millis(30)).await;
        body.next().await.expect("a piece").expect("ok");
        assert!(body.next().await.is_none());
        // The consumer took 30 ms between pieces, the producer none: the
        // link held the upload back, so compression stays.
        assert!(choice.compress() && !choice.probing());

        let choice = Arc::new(CompressionChoice::new(
            UploadCompression::Auto,
            true,
            "cache.example.com",
        ));
        let failing = futures::stream::iter(vec![Err::<Bytes, _>(std::io::Error::other("x"))]);
        let mut body = Metered::new(failing, choice.clone(), PROBE_BYTES);
        assert!(body.next().await.expect("an item").is_err());
        drop(body);
        assert!(choice.probing(), "a failed upload decides nothing");
    }
}
