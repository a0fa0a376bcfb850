//! The plain text log line, as written to a file or a collector (not a
//! terminal): tracing-subscriber's own layout (`time level target: message
//! field=value ...`), written straight into the line. Its formatter goes
//! through colour and escaping wrappers for every field even with colour
//! off, and formats the date anew for every line: at one request log line
//! per request that was a tenth of the server's CPU on a cached narinfo.
//!
//! Control characters in a value are escaped (`\n` as `\u{a}`), so that
//! nothing a client sends can start a line of its own or reach a terminal
//! as an escape sequence.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as plain text lines; for `tracing_subscriber::fmt()`'s
/// `event_format`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainLine;

impl<S, N> FormatEvent<S, N> for PlainLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_time(&mut writer, SystemTime::now())?;
        // An event from the `log` crate's bridge names its own target in
        // `log.*` fields: as tracing's formatter does, show that one and
        // leave the fields out.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str(level_label(metadata.level()))?;
        writer.write_str(metadata.target())?;
        writer.write_char(':')?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level between the time and the target, padded as tracing pads it.
fn level_label(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    }
}

thread_local! {
    /// The second a thread last logged in, and its date and time up to
    /// the fraction (`2026-12-08T01:11:25.`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes `time` as RFC 3339 in UTC with microseconds, as tracing does:
/// `2026-12-08T01:11:25.311811Z`.
fn write_time(writer: &mut impl Write, time: SystemTime) -> fmt::Result {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != seconds {
            prefix.clear();
            write_date_and_time(prefix, seconds)?;
            // Only once whole: a prefix that failed is made again.
            *second = seconds;
        }
        writer.write_str(prefix)
    })?;
    write!(writer, "{:06}Z", since_epoch.subsec_micros())
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix time in seconds.
fn write_date_and_time(out: &mut String, seconds: u64) -> fmt::Result {
    let second = UNIX_EPOCH + Duration::from_secs(seconds);
    write!(out, "{}", humantime::format_rfc3339_seconds(second))?;
    // `...:SSZ`: the fraction goes where the zone was.
    out.pop();
    out.push('.');
    Ok(())
}

/// Writes an event's fields: the message bare, the others `name=value`,
/// each after a space.
struct Fields<'w, 'a> {
    writer: &'w mut Writer<'a>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = (|| {
            self.writer.write_char(' ')?;
            if field.name() != "message" {
                self.writer.write_str(field.name())?;
                self.writer.write_char('=')?;
            }
            Escaped(&mut *self.writer).write_fmt(value)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted, as tracing writes a string field (`{:?}` of a `&str`).
        self.write(field, format_args!("{value:?}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, format_args!("{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, format_args!("{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.write(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, format_args!("{value}"));
    }
}

/// Passes text on with its control characters escaped.
struct Escaped<W>(W);

impl<W: Write> Write for Escaped<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().unwrap_or_default();
            write!(self.0, "\\u{{{:x}}}", u32::from(control))?;
            rest = &rest[at + control.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[test]
    fn time_is_rfc_3339_with_microseconds() {
        let time = UNIX_EPOCH + Duration::new(1_796_693_485, 311_811_999);
        let mut text = String::new();
        write_time(&mut text, time).expect("write");
        assert_eq!(text, "2026-12-08T01:31:25.311811Z");
        // The same second again comes from the kept prefix.
        let mut text = String::new();
        write_time(&mut text, time + Duration::from_micros(5)).expect("write");
        assert_eq!(text, "2026-12-08T01:31:25.311816Z");
        // Another second, here a leap day, comes with its own prefix.
        let mut text = String::new();
        let leap_day = UNIX_EPOCH + Duration::new(951_868_799, 500_000_000);
        write_time(&mut text, leap_day).expect("write");
        assert_eq!(text, "2000-02-29T23:59:59.500000Z");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut text = String::new();
        write!(Escaped(&mut text), "a\nb\u{1b}[31mc\té").expect("write");
        assert_eq!(text, "a\\u{a}b\\u{1b}[31mc\\u{9}é");
    }

    /// Lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// What `log` writes through a subscriber with `format`, the time of
    /// each line cut off.
    fn logged(plain: bool, log: impl Fn()) -> Vec<String> {
        let lines = Lines::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(false);
        if plain {
            tracing::subscriber::with_default(builder.event_format(PlainLine).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let text = String::from_utf8(lines.0.lock().expect("lock").clone()).expect("UTF-8");
        text.lines()
            .map(|line| {
                let (time, rest) = line.split_once(' ').expect("a time");
                assert_eq!(time.len(), "2026-12-08T01:31:25.311811Z".len(), "{line}");
                rest.to_owned()
            })
            .collect()
    }

    #[test]
    fn a_line_reads_as_tracings_own() {
        let log = || {
            let path = "/team-a/x.narinfo";
            tracing::info!(method = %"GET", %path, status = 200u16, latency_ms = 0.25, "request");
            tracing::warn!(name = "x", ok = true, count = -3i64, error = ?Some(1), "refused");
            tracing::error!("no fields");
        };
        let plain = logged(true, log);
        assert_eq!(plain, logged(false, log));
        assert_eq!(
            plain[0],
            " INFO server::log_line::tests: request method=GET path=/team-a/x.narinfo status=200 latency_ms=0.25"
        );
    }

    #[test]
    fn a_log_crate_record_reads_as_tracings_own() {
        let log = || {
            let record = log::Record::builder()
                .args(format_args!("peer sent an alert"))
                .level(log::Level::Warn)
                .target("rustls::conn")
                .module_path(Some("rustls::conn"))
                .file(Some("src/conn.rs"))
                .line(Some(7))
                .build();
            tracing_log::format_trace(&record).expect("dispatched");
        };
        let plain = logged(true, log);
        assert_eq!(plain, logged(false, log));
        assert_eq!(plain, [" WARN rustls::conn: peer sent an alert"]);
    }

    #[test]
    fn a_value_cannot_forge_a_line() {
        let plain = logged(true, || {
            let path = "/a\nforged line";
            tracing::info!(%path, "request");
        });
        assert_eq!(
            plain,
            [" INFO server::log_line::tests: request path=/a\\u{a}forged line"]
        );
    }
}
