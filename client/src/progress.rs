//! Progress for long work: indicatif bars on a terminal, plain lines in CI
//! logs (or wherever stdout is not a terminal).
//!
//! Bytes count as they leave for the server, not when a path finishes, so
//! the overall line moves while a large path is in flight. Each bar is laid
//! out for the terminal's width so that it never wraps, and says when all
//! of a path is sent and the server is verifying it.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attic::store_path::StorePath;
use indicatif::{
    HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle,
};

/// Widest `{bytes}` or `{total_bytes}`: `1023.99 MiB`.
const BYTES_WIDTH: usize = 11;
/// Widest `{binary_bytes_per_sec}`: `1023.99 MiB/s`.
const RATE_WIDTH: usize = 13;
/// Said once a path's bytes are all sent and the reply is awaited.
const VERIFYING: &str = "sent, server verifying";

/// Reports a push: one bar per path in flight and an overall line, or one
/// plain line per event.
#[derive(Clone)]
pub struct Progress {
    bars: Option<Bars>,
    /// Bytes sent so far, over all paths (less those of attempts retried).
    sent: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Progress {
    /// Bars when stdout is a terminal, plain lines otherwise; `total_bytes`
    /// is what the push will send.
    pub fn for_stdout(total_paths: u64, total_bytes: u64) -> Self {
        if std::io::stdout().is_terminal() {
            Self::bars(total_paths, total_bytes)
        } else {
            Self::plain()
        }
    }

    /// Plain lines.
    pub fn plain() -> Self {
        Self {
            bars: None,
            sent: Arc::default(),
        }
    }

    fn bars(total_paths: u64, total_bytes: u64) -> Self {
        let sent: Arc<AtomicU64> = Arc::default();
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let sent_so_far = sent.clone();
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {pos}/{len} paths, {sent} of {msg} sent [{elapsed}]",
        )
        .expect("static template")
        .with_key(
            "sent",
            move |_: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{}", HumanBytes(sent_so_far.load(Ordering::Relaxed)));
            },
        );
        // Complete before it is added, so its first drawing is too.
        let overall = ProgressBar::new(total_paths)
            .with_style(style)
            .with_prefix("pushing")
            .with_message(HumanBytes(total_bytes).to_string());
        let overall = multi.add(overall);
        overall.enable_steady_tick(Duration::from_millis(200));
        Self {
            bars: Some(Bars { multi, overall }),
            sent,
        }
    }

    /// Bytes sent so far, over all paths.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Prints a line above the bars (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    /// Starts reporting one path of `size` NAR bytes.
    pub fn start_path(&self, path: &StorePath, size: u64) -> PathProgress {
        let name = path.to_string();
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars
                .multi
                .insert_before(&bars.overall, ProgressBar::new(size));
            bar.set_style(sending_style(terminal_width()));
            bar.set_message(label(path));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        if bar.is_none() {
            println!("pushing {name} ({})", HumanBytes(size));
        }
        PathProgress {
            name,
            bar,
            sent: self.sent.clone(),
            sent_here: Arc::default(),
            started: Instant::now(),
        }
    }

    /// Counts a finished path.
    pub fn finish_path(&self) {
        if let Some(bars) = &self.bars {
            bars.overall.inc(1);
        }
    }

    /// Removes the bars before the summary is printed.
    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.overall.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}

/// A bar's label: the path's name first, then the start of its hash, so a
/// narrow bar cuts the hash rather than the name (`hello-2.12 (q3wx8b1k)`).
pub fn label(path: &StorePath) -> String {
    let hash = path.hash().as_str();
    format!("{} ({})", path.name(), &hash[..8.min(hash.len())])
}

fn terminal_width() -> usize {
    usize::from(console::Term::stdout().size().1)
}

/// Column widths of a path's bar for a terminal `width` columns wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Columns for the label.
    label: usize,
    /// Columns for the bar itself, if there is room for one.
    bar: Option<usize>,
}

impl Layout {
    /// Columns everything but the label and the bar takes at most:
    /// spinner and spaces, brackets, `bytes/total`, rate.
    const FIXED_WITH_BAR: usize = 2 + 1 + 2 + 1 + (2 * BYTES_WIDTH + 1) + 1 + RATE_WIDTH;
    const FIXED_WITHOUT_BAR: usize = 2 + 1 + (2 * BYTES_WIDTH + 1) + 1 + RATE_WIDTH;
    const FIXED_VERIFYING: usize = 2 + 1 + BYTES_WIDTH + 1 + VERIFYING.len();

    /// Fits the line into `width - 1` columns (a line that reaches the
    /// last column wraps on some terminals): the label gets three fifths
    /// of what is left, the bar the rest, and a terminal too narrow for a
    /// bar of 10 gets none.
    fn for_width(width: usize) -> Self {
        let usable = width.saturating_sub(1);
        let room = usable.saturating_sub(Self::FIXED_WITH_BAR);
        if room >= 30 {
            let label = room * 3 / 5;
            return Self {
                label,
                bar: Some(room - label),
            };
        }
        Self {
            label: usable.saturating_sub(Self::FIXED_WITHOUT_BAR).max(8),
            bar: None,
        }
    }

    /// The label's width once all bytes are sent.
    fn verifying_label(width: usize) -> usize {
        width.saturating_sub(1 + Self::FIXED_VERIFYING).max(8)
    }
}

fn sending_style(width: usize) -> ProgressStyle {
    let layout = Layout::for_width(width);
    let template = match layout.bar {
        Some(bar) => format!(
            "{{spinner}} {{msg:{}!}} [{{bar:{bar}}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}}",
            layout.label
        ),
        None => format!(
            "{{spinner}} {{msg:{}!}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}}",
            layout.label
        ),
    };
    ProgressStyle::with_template(&template)
        .expect("the template is well-formed")
        .progress_chars("=> ")
}

fn verifying_style(width: usize) -> ProgressStyle {
    let template = format!(
        "{{spinner}} {{msg:{}!}} {{total_bytes}} {VERIFYING}",
        Layout::verifying_label(width)
    );
    ProgressStyle::with_template(&template).expect("the template is well-formed")
}

/// Progress of one path.
pub struct PathProgress {
    name: String,
    bar: Option<ProgressBar>,
    sent: Arc<AtomicU64>,
    /// Bytes of this path counted in `sent`, taken back on a retry.
    sent_here: Arc<AtomicU64>,
    started: Instant,
}

impl PathProgress {
    /// A handle that counts bytes from another task.
    pub fn counter(&self) -> ByteCounter {
        ByteCounter {
            bar: self.bar.clone(),
            sent: self.sent.clone(),
            sent_here: self.sent_here.clone(),
        }
    }

    /// Starts over, for a retry: the attempt's bytes no longer count.
    pub fn reset(&self) {
        let here = self.sent_here.swap(0, Ordering::Relaxed);
        self.sent.fetch_sub(here, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_style(sending_style(terminal_width()));
            bar.reset();
        }
    }

    /// Ends the path's bar with an outcome line.
    pub fn done(self, progress: &Progress, outcome: &str, bytes: u64) {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "{outcome} {} ({} in {:.1}s, {}/s)",
            self.name,
            HumanBytes(bytes),
            seconds,
            HumanBytes((bytes as f64 / seconds) as u64)
        );
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        progress.println(&line);
    }
}

/// Counts bytes into a path's bar and the overall total from wherever the
/// bytes flow.
#[derive(Clone)]
pub struct ByteCounter {
    bar: Option<ProgressBar>,
    sent: Arc<AtomicU64>,
    sent_here: Arc<AtomicU64>,
}

impl ByteCounter {
    /// `n` more bytes sent.
    pub fn inc(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.sent_here.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// The whole NAR is sent: from now on the server is verifying it.
    pub fn all_sent(&self) {
        if let Some(bar) = &self.bar {
            bar.set_style(verifying_style(terminal_width()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attic::store_path::StoreDir;

    fn path(name: &str) -> StorePath {
        StoreDir::default()
            .parse_path(&format!(
                "/nix/store/q3wx8b1kz0dmf1ynm0hxsc7k4m8sxvn2-{name}"
            ))
            .expect("store path")
    }

    #[test]
    fn labels_put_the_name_before_a_short_hash() {
        assert_eq!(label(&path("hello-2.12")), "hello-2.12 (q3wx8b1k)");
    }

    #[test]
    fn bars_fit_the_terminal_without_reaching_its_last_column() {
        for width in 20..=300 {
            let layout = Layout::for_width(width);
            let longest = match layout.bar {
                Some(bar) => layout.label + bar + Layout::FIXED_WITH_BAR,
                None => layout.label + Layout::FIXED_WITHOUT_BAR,
            };
            if width >= Layout::FIXED_WITHOUT_BAR + 9 {
                assert!(longest < width, "{width}: {layout:?}");
            }
            let verifying = Layout::verifying_label(width) + Layout::FIXED_VERIFYING;
            if width >= Layout::FIXED_VERIFYING + 9 {
                assert!(verifying < width, "{width}");
            }
        }
        // At 80 columns there is a bar and room for a useful label.
        let at_80 = Layout::for_width(80);
        assert!(at_80.bar.is_some_and(|bar| bar >= 10), "{at_80:?}");
        assert!(at_80.label >= 20, "{at_80:?}");
        // Worst-case field widths are what indicatif prints.
        assert_eq!(
            HumanBytes(1024 * 1024 * 1024 - 1).to_string().len(),
            BYTES_WIDTH
        );
        assert_eq!(HumanBytes(1000 * 1024).to_string().len(), BYTES_WIDTH);
    }

    #[test]
    fn bytes_count_as_they_are_sent_and_a_retry_takes_them_back() {
        let progress = Progress::plain();
        let first = progress.start_path(&path("a"), 3000);
        let second = progress.start_path(&path("b"), 5000);
        first.counter().inc(1000);
        second.counter().inc(2000);
        // Nothing has finished, yet the total moves.
        assert_eq!(progress.bytes_sent(), 3000);
        first.reset();
        assert_eq!(progress.bytes_sent(), 2000);
        first.counter().inc(3000);
        assert_eq!(progress.bytes_sent(), 5000);
    }
}
