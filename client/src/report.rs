//! What a push tells its user: one record per path and a summary, either as
//! JSON lines for scripts (`--json`) or as lines for people.
//!
//! Lines for people fit the terminal: a path's line cuts its label (the
//! hash first, then the name's tail) rather than its figures, and the
//! summary wraps between clauses, never inside a quantity such as
//! `1.20 MiB` or `1m 05s`. Counts agree with their nouns ("1 path").

use std::time::Duration;

use indicatif::HumanBytes;
use serde::Serialize;

/// Where a push's report goes and in what form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputMode {
    /// Bars on a terminal, plain lines elsewhere, a summary at the end.
    #[default]
    Human,
    /// One JSON object per line on stdout: a record per path, then the
    /// summary. Notices go to stderr.
    Json,
    /// Nothing on stdout; errors on stderr.
    Quiet,
}

/// What became of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Uploaded now (or attached to the cache after the server verified it).
    Pushed,
    /// The cache held it already.
    AlreadyPresent,
    /// An upstream cache of the cache signed it, so it was not pushed.
    SkippedUpstream,
    /// Not pushed: see the record's `error`.
    Failed,
}

/// One path's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathReport {
    /// The full store path.
    pub path: String,
    /// What became of it.
    pub outcome: Outcome,
    /// Its NAR's size in bytes.
    pub nar_size: u64,
    /// Bytes sent for it (after compression) in the attempt that counted.
    pub bytes_sent: u64,
    /// NAR bytes the server did not need to store again.
    pub deduplicated_bytes: u64,
    /// Time from its first attempt to its outcome.
    pub seconds: f64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The totals of a push, as the JSON summary gives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SummaryReport {
    /// Paths pushed now.
    pub pushed: usize,
    /// Paths the cache held already.
    pub already_present: usize,
    /// Paths skipped as signed upstream.
    pub skipped_upstream: usize,
    /// Paths not pushed.
    pub failed: usize,
    /// NAR bytes of the paths pushed.
    pub nar_bytes: u64,
    /// Of those, bytes the server did not need to store again.
    pub deduplicated_bytes: u64,
    /// Bytes sent for the paths pushed.
    pub bytes_sent: u64,
    /// The whole push, from asking what is missing to the last reply.
    pub seconds: f64,
}

/// A line of `--json` output, tagged by `"type"`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Record<'a> {
    Path(&'a PathReport),
    Summary(&'a SummaryReport),
}

impl PathReport {
    /// The record as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(&Record::Path(self)).expect("a record serialises")
    }

    /// The line for people. `label` names the path (the full path in a
    /// log; on a terminal, a short label cut to fit `width` columns).
    pub fn human_line(&self, label: &str) -> String {
        match self.outcome {
            Outcome::Failed => format!(
                "failed {label}: {}",
                self.error.as_deref().unwrap_or("unknown error")
            ),
            outcome => {
                let verb = match outcome {
                    Outcome::Pushed if self.deduplicated_bytes >= self.nar_size => {
                        "pushed (deduplicated)"
                    }
                    Outcome::Pushed => "pushed",
                    Outcome::AlreadyPresent => "already in the cache",
                    Outcome::SkippedUpstream => "signed upstream",
                    Outcome::Failed => unreachable!("matched above"),
                };
                format!("{verb} {label}{}", self.figures())
            }
        }
    }

    /// A line for a terminal `width` columns wide: the label (`name
    /// (hash)`, see [`crate::progress::label`]) is cut to keep the
    /// figures; a failure's reason is cut last, ending in `…`.
    pub fn terminal_line(&self, label: &str, width: usize) -> String {
        let usable = width.saturating_sub(1);
        // A failure keeps room for the start of its reason.
        let fixed = match &self.error {
            Some(error) => "failed : ".len() + error.chars().count().min(30),
            None => self.human_line("").chars().count(),
        };
        let room = usable.saturating_sub(fixed).max(8);
        let label = truncate(label, room);
        truncate(&self.human_line(&label), usable)
    }

    fn figures(&self) -> String {
        let seconds = self.seconds.max(0.001);
        format!(
            ": {} in {}, {}/s",
            bytes(self.nar_size),
            duration(Duration::from_secs_f64(self.seconds)),
            HumanBytes((self.bytes_sent as f64 / seconds) as u64)
        )
        .replace('\u{a0}', " ")
    }
}

impl SummaryReport {
    /// The summary as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(&Record::Summary(self)).expect("a summary serialises")
    }

    /// The summary for people, one line. Quantities, and counts with the
    /// word after them, hold no-break spaces (U+00A0) where [`wrap`] must
    /// not break; [`wrap`] turns them back into spaces.
    pub fn human(&self) -> String {
        const GLUE: char = '\u{a0}';
        let elapsed = duration(Duration::from_secs_f64(self.seconds));
        let paths = |n| count(n, "path", "paths").replace(' ', "\u{a0}");
        let mut clauses = Vec::new();
        if self.pushed == 0 && self.failed == 0 {
            let mut line = format!(
                "nothing to push: {}{GLUE}already in the cache",
                paths(self.already_present)
            );
            if self.skipped_upstream > 0 {
                line.push_str(&format!(", {}{GLUE}signed upstream", self.skipped_upstream));
            }
            line.push_str(&format!(" (checked in {elapsed})"));
            return line;
        }
        clauses.push(format!(
            "pushed {} ({}, {} of it deduplicated, {} sent) in {elapsed}",
            paths(self.pushed),
            bytes(self.nar_bytes),
            bytes(self.deduplicated_bytes),
            bytes(self.bytes_sent),
        ));
        if self.already_present > 0 {
            clauses.push(format!(
                "{}{GLUE}already in the cache",
                self.already_present
            ));
        }
        if self.skipped_upstream > 0 {
            clauses.push(format!("{}{GLUE}signed upstream", self.skipped_upstream));
        }
        if self.failed > 0 {
            clauses.push(format!("{}{GLUE}failed", self.failed));
        }
        clauses.join("; ")
    }
}

/// `1 path`, `2 paths`, `0 paths`.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A byte count with its unit joined by a no-break space: `1.20\u{a0}MiB`.
pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string().replace(' ', "\u{a0}")
}

/// An elapsed time for people: `0.4s`, `59.9s`, `1m\u{a0}05s`, `2h\u{a0}03m`.
pub fn duration(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let seconds = d.as_secs();
    if seconds < 3600 {
        format!("{}m\u{a0}{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}h\u{a0}{:02}m", seconds / 3600, seconds / 60 % 60)
    }
}

/// Breaks `text` into lines of fewer than `width` columns (a line that
/// reaches the last column wraps on some terminals) at ordinary spaces
/// only, then shows no-break spaces as spaces. A word longer than a line
/// gets a line of its own.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let limit = width.saturating_sub(1).max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > limit {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
        .into_iter()
        .map(|l| l.replace('\u{a0}', " "))
        .collect()
}

/// `text` cut to `columns` characters, ending in `…` when cut.
pub fn truncate(text: &str, columns: usize) -> String {
    if text.chars().count() <= columns {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(columns.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(path: &str, nar_size: u64) -> PathReport {
        PathReport {
            path: path.to_owned(),
            outcome: Outcome::Pushed,
            nar_size,
            bytes_sent: nar_size / 2,
            deduplicated_bytes: 0,
            seconds: 1.5,
            error: None,
        }
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(0, "path", "paths"), "0 paths");
        assert_eq!(count(1, "path", "paths"), "1 path");
        assert_eq!(count(2, "path", "paths"), "2 paths");
        let one = SummaryReport {
            pushed: 1,
            ..SummaryReport::default()
        };
        let one = one.human().replace('\u{a0}', " ");
        assert!(one.starts_with("pushed 1 path ("), "{one}");
        let none = SummaryReport {
            already_present: 1,
            ..SummaryReport::default()
        };
        assert_eq!(
            none.human().replace('\u{a0}', " "),
            "nothing to push: 1 path already in the cache (checked in 0.0s)"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_millis(420)), "0.4s");
        assert_eq!(duration(Duration::from_millis(59_940)), "59.9s");
        assert_eq!(duration(Duration::from_secs(65)), "1m\u{a0}05s");
        assert_eq!(duration(Duration::from_secs(2 * 3600 + 185)), "2h\u{a0}03m");
    }

    #[test]
    fn the_summary_wraps_between_words_never_inside_a_quantity() {
        let summary = SummaryReport {
            pushed: 232,
            already_present: 1000,
            skipped_upstream: 12,
            failed: 3,
            nar_bytes: 1023 * 1024 * 1024,
            deduplicated_bytes: 1000 * 1024,
            bytes_sent: 512 * 1024 * 1024 + 1,
            seconds: 3725.0,
        };
        let text = summary.human();
        assert_eq!(
            text.replace('\u{a0}', " "),
            "pushed 232 paths (1023.00 MiB, 1000.00 KiB of it deduplicated, 512.00 MiB sent) \
             in 1h 02m; 1000 already in the cache; 12 signed upstream; 3 failed"
        );
        for width in [40, 60, 80, 120] {
            let lines = wrap(&text, width);
            for line in &lines {
                assert!(line.chars().count() < width, "{width}: {line:?}");
                // No line starts with a unit or a noun cut from its number.
                for word in ["MiB", "KiB", "02m", "paths", "already", "signed", "failed"] {
                    assert!(!line.starts_with(word), "{width}: {lines:?}");
                }
            }
            assert_eq!(lines.join(" "), text.replace('\u{a0}', " "));
        }
        // At 80 columns: quantities whole on each line.
        let at_80 = wrap(&text, 80);
        assert!(at_80.len() >= 2, "{at_80:?}");
        for quantity in [
            "232 paths",
            "1023.00 MiB",
            "1000.00 KiB",
            "512.00 MiB",
            "1h 02m",
            "1000 already",
            "12 signed",
            "3 failed",
        ] {
            assert!(at_80.iter().any(|l| l.contains(quantity)), "{at_80:?}");
        }
        // Without a terminal, one line.
        assert_eq!(wrap(&text, usize::MAX).len(), 1);
    }

    #[test]
    fn a_path_line_on_a_terminal_keeps_the_name_and_figures_within_80_columns() {
        let name = "a-rather-long-package-name-with-a-version-1.2.3-and-more";
        let report = pushed(
            &format!("/nix/store/q3wx8b1kz0dmf1ynm0hxsc7k4m8sxvn2-{name}"),
            3 << 30,
        );
        let label = format!("{name} (q3wx8b1k)");
        let line = report.terminal_line(&label, 80);
        assert!(line.chars().count() < 80, "{line:?}");
        assert!(
            line.starts_with(&format!("pushed {}", &name[..20])),
            "{line}"
        );
        assert!(line.ends_with(": 3.00 GiB in 1.5s, 1.00 GiB/s"), "{line}");
        // A short label is shown whole, hash and all.
        let short = pushed(
            "/nix/store/q3wx8b1kz0dmf1ynm0hxsc7k4m8sxvn2-hello-2.12",
            1000,
        );
        let line = short.terminal_line("hello-2.12 (q3wx8b1k)", 80);
        assert!(line.starts_with("pushed hello-2.12 (q3wx8b1k): "), "{line}");
        // A failure's reason is cut to fit.
        let failed = PathReport {
            outcome: Outcome::Failed,
            error: Some("x".repeat(200)),
            ..short
        };
        let line = failed.terminal_line("hello-2.12 (q3wx8b1k)", 80);
        assert_eq!(line.chars().count(), 79, "{line:?}");
        assert!(line.starts_with("failed hello-2.12 (q3wx8b1k): x") && line.ends_with('…'));
    }

    #[test]
    fn json_lines_carry_a_type_and_every_field() {
        let line = pushed("/nix/store/q3wx8b1kz0dmf1ynm0hxsc7k4m8sxvn2-a", 2048).to_json_line();
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["type"], "path");
        assert_eq!(value["outcome"], "pushed");
        assert_eq!(value["nar_size"], 2048);
        assert_eq!(value["bytes_sent"], 1024);
        assert!(value.get("error").is_none(), "{value}");
        let summary = SummaryReport::default().to_json_line();
        let value: serde_json::Value = serde_json::from_str(&summary).expect("json");
        assert_eq!(value["type"], "summary");
        assert_eq!(value["failed"], 0);
        assert!(!line.contains('\n') && !summary.contains('\n'));
    }
}
