//! Progress for long work: indicatif bars on a terminal, plain lines in CI
//! logs (or wherever stdout is not a terminal), JSON lines for scripts, or
//! nothing (see [`OutputMode`]). A line per path once it is done; what the
//! lines say is in [`crate::report`].
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

use crate::report::{OutputMode, PathReport, SummaryReport, wrap};

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
    display: Display,
    /// Bytes sent so far, over all paths (less those of attempts retried).
    sent: Arc<AtomicU64>,
}

/// Where reports go.
#[derive(Clone)]
enum Display {
    /// Bars on a terminal; lines printed above them.
    Bars(Bars),
    /// Plain lines on stdout.
    Lines,
    /// JSON lines on stdout, notices on stderr.
    Json,
    /// Nothing.
    Quiet,
}

#[derive(Clone)]
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Progress {
    /// For people, bars when stdout is a terminal and plain lines
    /// otherwise; or JSON lines, or nothing. `total_bytes` is what the push
    /// will send.
    pub fn for_stdout(mode: OutputMode, total_paths: u64, total_bytes: u64) -> Self {
        let display = match mode {
            OutputMode::Human if std::io::stdout().is_terminal() => {
                return Self::bars(total_paths, total_bytes);
            }
            OutputMode::Human => Display::Lines,
            OutputMode::Json => Display::Json,
            OutputMode::Quiet => Display::Quiet,
        };
        Self {
            display,
            sent: Arc::default(),
        }
    }

    /// Plain lines.
    pub fn plain() -> Self {
        Self {
            display: Display::Lines,
            sent: Arc::default(),
        }
    }

    fn bars(total_paths: u64, total_bytes: u64) -> Self {
        let sent: Arc<AtomicU64> = Arc::default();
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let sent_so_far = sent.clone();
        let noun = if total_paths == 1 { "path" } else { "paths" };
        let style = ProgressStyle::with_template(&format!(
            "{{prefix:.bold}} {{pos}}/{{len}} {noun}, {{sent}} of {{msg}} sent [{{elapsed}}]"
        ))
        .expect("the template is well-formed")
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
            display: Display::Bars(Bars { multi, overall }),
            sent,
        }
    }

    /// Bytes sent so far, over all paths.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Prints a notice for people: above the bars (wrapped at spaces to
    /// the terminal's width), or plainly; on stderr beside JSON; not at all
    /// when quiet.
    pub fn println(&self, line: &str) {
        match &self.display {
            Display::Bars(bars) => {
                let _ = bars.multi.println(wrap(line, terminal_width()).join("\n"));
            }
            Display::Lines => println!("{line}"),
            Display::Json => eprintln!("{line}"),
            Display::Quiet => {}
        }
    }

    /// Reports a path that was not uploaded (already present, signed
    /// upstream): a record in JSON, nothing for people, who get the count.
    pub fn record(&self, report: &PathReport) {
        if let Display::Json = self.display {
            println!("{}", report.to_json_line());
        }
    }

    /// Reports a path's outcome: a line that fits the terminal (naming
    /// the path by `label`), a line with the full path in a log, or a JSON
    /// record.
    pub fn path_done(&self, label: &str, report: &PathReport) {
        match &self.display {
            Display::Bars(bars) => {
                let line = report.terminal_line(label, terminal_width());
                let _ = bars.multi.println(line);
            }
            Display::Lines => println!("{}", report.human_line(&report.path)),
            Display::Json => println!("{}", report.to_json_line()),
            Display::Quiet => {}
        }
    }

    fn drawn_bars(&self) -> Option<&Bars> {
        match &self.display {
            Display::Bars(bars) => Some(bars),
            Display::Lines | Display::Json | Display::Quiet => None,
        }
    }

    /// Starts reporting one path of `size` NAR bytes.
    pub fn start_path(&self, path: &StorePath, size: u64) -> PathProgress {
        let bar = self.drawn_bars().map(|bars| {
            let bar = bars
                .multi
                .insert_before(&bars.overall, ProgressBar::new(size));
            bar.set_style(sending_style(terminal_width()));
            bar.set_message(label(path));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        PathProgress {
            label: label(path),
            bar,
            sent: self.sent.clone(),
            sent_here: Arc::default(),
            started: Instant::now(),
        }
    }

    /// Counts a finished path.
    pub fn finish_path(&self) {
        if let Some(bars) = self.drawn_bars() {
            bars.overall.inc(1);
        }
    }

    /// Removes the bars before the summary is printed.
    pub fn finish(&self) {
        if let Some(bars) = self.drawn_bars() {
            bars.overall.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}

/// Prints a push's summary: wrapped to a terminal's width, on one line in a
/// log, as a JSON line, or not at all.
pub fn print_summary(mode: OutputMode, summary: &SummaryReport) {
    match mode {
        OutputMode::Human => {
            let width = if std::io::stdout().is_terminal() {
                terminal_width()
            } else {
                usize::MAX
            };
            for line in wrap(&summary.human(), width) {
                println!("{line}");
            }
        }
        OutputMode::Json => println!("{}", summary.to_json_line()),
        OutputMode::Quiet => {}
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
    /// The path's label on a terminal (see [`label`]).
    label: String,
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

    /// Time since the path's first attempt began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the path's bar with its outcome: a line that fits the
    /// terminal, a line with the full path in a log, or a JSON record.
    pub fn done(self, progress: &Progress, report: &PathReport) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        progress.path_done(&self.label, report);
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
