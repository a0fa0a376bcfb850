//! Reporting errors: what the server logs and the client prints about an
//! error, causes included, on one line.

use std::error::Error;

/// `error` and its causes joined by `: `, each cause skipped whose text
/// the line already holds (an error that prints its own source, as
/// reqwest's do, would otherwise say it twice). Top-level messages are
/// often too terse alone: reqwest's is only "error sending request".
pub fn format_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    /// An error saying `text`, caused by `source`.
    #[derive(Debug)]
    struct Layer {
        text: &'static str,
        source: Option<Box<Layer>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.text)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|s| s as &(dyn Error + 'static))
        }
    }

    fn chain(texts: &[&'static str]) -> Layer {
        let (text, causes) = texts.split_first().expect("one at least");
        Layer {
            text,
            source: (!causes.is_empty()).then(|| Box::new(chain(causes))),
        }
    }

    #[test]
    fn joins_an_error_and_its_causes() {
        assert_eq!(format_chain(&chain(&["gc failed"])), "gc failed");
        assert_eq!(
            format_chain(&chain(&["error sending request", "connect", "refused"])),
            "error sending request: connect: refused"
        );
    }

    #[test]
    fn skips_a_cause_the_line_already_says() {
        assert_eq!(
            format_chain(&chain(&[
                "storage error: disk full",
                "disk full",
                "os error 28"
            ])),
            "storage error: disk full: os error 28"
        );
    }
}
