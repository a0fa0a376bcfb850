//! Where log lines go: gathered in memory and written to stderr by a
//! background thread every [`FLUSH_INTERVAL`], so a line per request costs
//! the request a copy under a lock, never a system call or a wake-up. An
//! idle server's writer sleeps until a line comes: the first line after a
//! quiet spell wakes it, the lines after that wait for its next interval.
//!
//! A queue handing each line to a writer thread (tracing-appender's) wakes
//! that thread and writes once per line whenever it keeps up, which at
//! thousands of requests a second is a futex wake, a context switch and a
//! `write` per request on a machine with few cores. Gathering lines for a
//! few milliseconds turns those into one each per interval. Nothing is
//! dropped: past [`HELD_MAX`] bytes a logger writes what is gathered
//! itself, and dropping the [`FlushGuard`] writes the rest.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line waits in memory at most, when nothing else flushes it.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(25);

/// Bytes gathered before a logger writes them itself rather than wait.
pub const HELD_MAX: usize = 4 * 1024 * 1024;

/// A [`MakeWriter`] for `tracing_subscriber::fmt` gathering lines for `W`.
#[derive(Clone)]
pub struct BatchedWriter<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
}

struct Shared<W> {
    gathered: Mutex<Gathered>,
    /// Signalled when the writer should stop, or wake for a first line.
    wake: Condvar,
    /// The destination, locked while a batch is written, so batches keep
    /// the order their lines were logged in.
    out: Mutex<W>,
}

/// What the loggers and the background thread share.
#[derive(Default)]
struct Gathered {
    /// Lines not yet written.
    lines: Vec<u8>,
    /// The writer is stopping: write what is left and end.
    stopping: bool,
    /// The writer sleeps until a line comes.
    asleep: bool,
}

/// Writes what is still gathered, and stops the background thread, when
/// dropped: keep it until the program ends.
pub struct FlushGuard<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the background thread has written its last batch.
    finished: mpsc::Receiver<()>,
}

/// How long dropping the [`FlushGuard`] waits for the last lines to be
/// written: stderr may be a pipe nobody reads, and exit must not hang.
pub const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

impl<W: Write + Send + 'static> BatchedWriter<W> {
    /// A writer to `out`, with its background thread started.
    pub fn new(out: W) -> io::Result<(Self, FlushGuard<W>)> {
        let shared = Arc::new(Shared {
            gathered: Mutex::new(Gathered {
                lines: Vec::with_capacity(64 * 1024),
                ..Gathered::default()
            }),
            wake: Condvar::new(),
            out: Mutex::new(out),
        });
        let background = shared.clone();
        let (done, finished) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || {
                background.write_periodically();
                // Lines logged after the last batch.
                background.write_gathered(&mut Vec::new());
                drop(done);
            })?;
        Ok((
            Self {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                thread: Some(thread),
                finished,
            },
        ))
    }
}

impl<W: Write + Send> Shared<W> {
    fn gathered(&self) -> MutexGuard<'_, Gathered> {
        // A logger that panicked mid-copy leaves at worst a partial line.
        self.gathered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes everything gathered so far, in order.
    fn write_gathered(&self, spare: &mut Vec<u8>) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut self.gathered().lines, spare);
        if !spare.is_empty() {
            // Nowhere to report a failure to write the log.
            let _ = out.write_all(spare);
            let _ = out.flush();
            spare.clear();
        }
    }

    fn write_periodically(&self) {
        let mut spare = Vec::with_capacity(64 * 1024);
        loop {
            let stopping = {
                let mut gathered = self.gathered();
                gathered.asleep = true;
                let mut gathered = self
                    .wake
                    .wait_while(gathered, |g| g.lines.is_empty() && !g.stopping)
                    .unwrap_or_else(|e| e.into_inner());
                gathered.asleep = false;
                // Awake: gather for an interval before writing.
                let (gathered, _) = self
                    .wake
                    .wait_timeout_while(gathered, FLUSH_INTERVAL, |g| !g.stopping)
                    .unwrap_or_else(|e| e.into_inner());
                gathered.stopping
            };
            self.write_gathered(&mut spare);
            if stopping {
                return;
            }
        }
    }
}

impl<W: Write + Send + 'static> Drop for FlushGuard<W> {
    fn drop(&mut self) {
        self.shared.gathered().stopping = true;
        self.shared.wake.notify_all();
        // A write blocked on a full pipe is left behind rather than waited
        // for: the process is ending.
        if let Err(mpsc::RecvTimeoutError::Disconnected) =
            self.finished.recv_timeout(FINAL_WRITE_TIMEOUT)
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
            self.shared.write_gathered(&mut Vec::new());
        }
    }
}

/// One event's writer: appends to what is gathered.
pub struct LineWriter<'a, W: Write + Send + 'static> {
    shared: &'a Shared<W>,
}

impl<W: Write + Send + 'static> Write for LineWriter<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let (first, full) = {
            let mut gathered = self.shared.gathered();
            let first = gathered.asleep && gathered.lines.is_empty();
            gathered.lines.extend_from_slice(bytes);
            (first, gathered.lines.len() >= HELD_MAX)
        };
        if first {
            self.shared.wake.notify_one();
        }
        if full {
            self.shared.write_gathered(&mut Vec::new());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for BatchedWriter<W> {
    type Writer = LineWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (writer, guard) = BatchedWriter::new(sink.clone()).expect("start");
        for i in 0..10_000 {
            writeln!(writer.make_writer(), "line {i}").expect("write");
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("text");
        let expected: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        assert!(text == expected, "lines lost or out of order");
    }

    /// stderr a pipe nobody reads: every write blocks for ever.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Err(io::Error::other("never"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn exit_does_not_wait_for_ever_on_a_blocked_destination() {
        let (_never, blocked) = std::sync::mpsc::channel();
        let (writer, guard) = BatchedWriter::new(Stuck(blocked)).expect("start");
        writer
            .make_writer()
            .write_all(b"a line\n")
            .expect("gathered");
        std::thread::sleep(FLUSH_INTERVAL * 4);
        // The background thread is stuck writing; dropping the guard
        // gives up after FINAL_WRITE_TIMEOUT instead of hanging.
        drop(guard);
    }

    #[test]
    fn lines_reach_the_destination_without_a_flush_from_the_logger() {
        let sink = Sink::default();
        let (writer, _guard) = BatchedWriter::new(sink.clone()).expect("start");
        writeln!(writer.make_writer(), "soon").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().expect("sink").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line was never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&sink.0.lock().expect("sink")[..], b"soon\n");
    }

    #[test]
    fn a_line_after_an_idle_spell_wakes_the_sleeping_writer() {
        let sink = Sink::default();
        let (writer, _guard) = BatchedWriter::new(sink.clone()).expect("start");
        // Idle long enough for the writer to sleep, several times over.
        std::thread::sleep(FLUSH_INTERVAL * 4);
        assert!(writer.shared.gathered().asleep, "the idle writer is awake");
        for line in ["first\n", "second\n"] {
            writer
                .make_writer()
                .write_all(line.as_bytes())
                .expect("write");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !sink.0.lock().expect("sink").ends_with(line.as_bytes()) {
                assert!(std::time::Instant::now() < deadline, "{line} never written");
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(FLUSH_INTERVAL * 4);
        }
        assert_eq!(&sink.0.lock().expect("sink")[..], b"first\nsecond\n");
    }
}
