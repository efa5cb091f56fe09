//! Log output of the `relay` and `operator` binaries: `--log-format text|json|auto`.
//!
//! `text` (the default) is tracing's human-readable line; `json` is one JSON object per
//! line (tracing-subscriber's JSON formatter) with the event's fields flattened beside
//! `timestamp`, `level`, `target` and `message`; `auto` is text on a terminal and JSON
//! otherwise (a container's log pipe). Logs go to stderr, filtered by `RUST_LOG`
//! (default `info`). The field names of message outcome events are listed in the README
//! ("Observe"); this module owns only the output format.
//!
//! Many fields carry what a client chose: an AUTH identity (anything fits in `AUTH
//! PLAIN`'s base64, CR/LF included), a HELO name, addresses, a server's reply text. Text
//! logs escape every control character of every field value, in one place
//! ([`text_fields`]), so such a value cannot start a forged line of its own or send
//! terminal escapes; JSON strings escape them by themselves.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

/// How log events are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

impl LogFormat {
    /// `Text` or `Json`: what `Auto` means for this process's stderr.
    pub fn resolve(self) -> Self {
        match self {
            LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Text,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Installs the global subscriber; call once, early in `main`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed log pipe must not take the process down (the fallback report would
        // itself go to the closed stderr and panic).
        .log_internal_errors(false);
    match format.resolve() {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // Colour only for a person at a terminal, not in container logs.
        _ => builder
            .fmt_fields(text_fields())
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
}

/// The field formatter of text logs: tracing's layout (`message` first, then
/// `name=value` separated by spaces) with every control character of a value escaped as
/// Rust does (`\r`, `\n`, `\t`, `\u{1b}`).
pub fn text_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(
        |writer: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
            let mut out = Escaping(writer);
            if field.name() == "message" {
                write!(out, "{value:?}")
            } else {
                write!(out, "{}={value:?}", field.name())
            }
        },
    )
    .delimited(" ")
}

/// Writes through to `W`, control characters escaped.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_escape_control_characters_in_every_field() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(text_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let identity = "mallory\r\nINFO forged line";
            let helo = "evil\x1b[31m";
            tracing::info!(client = %"192.0.2.1", %identity, helo, count = 3, result = "invalid", "SMTP AUTH");
            tracing::warn!("a message with\na line break");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(
                r#"SMTP AUTH client=192.0.2.1 identity=mallory\r\nINFO forged line helo="evil\u{1b}[31m" count=3 result="invalid""#
            ),
            "{text}"
        );
        assert!(
            lines[1].ends_with(r"a message with\na line break"),
            "{text}"
        );
    }
}
