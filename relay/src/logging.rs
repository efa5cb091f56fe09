//! Log output of the `relay` and `operator` binaries: `--log-format text|json|auto`.
//!
//! `text` (the default) is tracing's human-readable line; `json` is one JSON object per
//! line (tracing-subscriber's JSON formatter) with the event's fields flattened beside
//! `timestamp`, `level`, `target` and `message`; `auto` is text on a terminal and JSON
//! otherwise (a container's log pipe). Logs go to stderr, filtered by `RUST_LOG`
//! (default `info`). The field names of message outcome events are listed in the README
//! ("Observe"); this module owns only the output format.

use std::io::IsTerminal;

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
        _ => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
