//! Progress for long work: indicatif bars on a terminal, plain lines in CI
//! logs (or wherever stdout is not a terminal).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports a push: one bar per path in flight and an overall line, or one
/// plain line per event.
#[derive(Clone)]
pub struct Progress {
    bars: Option<Bars>,
}

#[derive(Clone)]
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Progress {
    /// Bars when stdout is a terminal, plain lines otherwise.
    pub fn for_stdout(total_paths: u64) -> Self {
        if std::io::stdout().is_terminal() {
            Self::bars(total_paths)
        } else {
            Self::plain()
        }
    }

    /// Plain lines.
    pub fn plain() -> Self {
        Self { bars: None }
    }

    fn bars(total_paths: u64) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let overall = multi.add(ProgressBar::new(total_paths));
        overall.set_style(
            ProgressStyle::with_template("{prefix:.bold} {pos}/{len} paths, {msg} [{elapsed}]")
                .expect("static template"),
        );
        overall.set_prefix("pushing");
        overall.set_message("0 B sent");
        overall.enable_steady_tick(Duration::from_millis(200));
        Self {
            bars: Some(Bars { multi, overall }),
        }
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

    /// Starts reporting one path of `size` bytes.
    pub fn start_path(&self, name: &str, size: u64) -> PathProgress {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars
                .multi
                .insert_before(&bars.overall, ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:40!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        if bar.is_none() {
            println!("pushing {name} ({})", HumanBytes(size));
        }
        PathProgress {
            name: name.to_owned(),
            bar,
            started: Instant::now(),
        }
    }

    /// Counts a finished path and the bytes sent for it.
    pub fn finish_path(&self, total_bytes_sent: u64) {
        if let Some(bars) = &self.bars {
            bars.overall.inc(1);
            bars.overall
                .set_message(format!("{} sent", HumanBytes(total_bytes_sent)));
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

/// Progress of one path.
pub struct PathProgress {
    name: String,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl PathProgress {
    /// `n` more bytes sent.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// A handle that counts bytes from another task.
    pub fn counter(&self) -> ByteCounter {
        ByteCounter {
            bar: self.bar.clone(),
        }
    }

    /// Starts over, for a retry.
    pub fn reset(&self) {
        if let Some(bar) = &self.bar {
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

/// Counts bytes into a path's bar from wherever the bytes flow.
#[derive(Clone)]
pub struct ByteCounter {
    bar: Option<ProgressBar>,
}

impl ByteCounter {
    /// `n` more bytes sent.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}
