//! Where log lines go and how they look: `tracing` to standard error, as text for a person or as
//! one JSON object per line for a log collector (`--log-format`, config `log.format`).
//!
//! Colour is for terminals only: piped into a file or a collector, ANSI escape codes are noise
//! that every reader has to strip. librdkafka's own messages reach the same subscriber (target
//! `librdkafka`, rate-limited in [`crate::sources::kafka`]), so they take the same format.

use std::io::{IsTerminal as _, Write as _};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset or invalid: warnings and errors only.
const DEFAULT_FILTER: &str = "warn";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One line of text per event, coloured when standard error is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields
    /// and its spans.
    Json,
}

/// The `[log]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// The format of the lines on standard error.
    pub format: LogFormat,
}

/// The format chosen at [`init`], for the few lines the commands print themselves.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Whether standard error gets ANSI colours: only on a terminal, and not when `NO_COLOR` is set
/// (<https://no-color.org>).
pub fn stderr_has_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global `tracing` subscriber writing to standard error in `format`, filtered by
/// `RUST_LOG` (warnings and errors by default). The `log` crate's records, which the Kafka
/// client library writes, are forwarded to it. Only the first call has an effect.
pub fn init(format: LogFormat) {
    if FORMAT.set(format).is_err() {
        return;
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init`: a subscriber already set (a test harness's) is kept.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(stderr_has_colour()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The format [`init`] installed (text before it).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Prints a line a command reports on standard error whatever the filter (a run's summary, the
/// error it ends with): as it is with text logs, as one JSON object with JSON logs, so that a
/// collector reading the stream finds nothing but JSON.
pub fn report(level: tracing::Level, message: &str) {
    let line = match format() {
        LogFormat::Text => format!("{message}\n"),
        LogFormat::Json => format!("{}\n", json_line(level, message)),
    };
    // Nowhere left to say that standard error is gone.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `message` as a JSON log line shaped like the subscriber's own (without spans).
fn json_line(level: tracing::Level, message: &str) -> String {
    let timestamp = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    serde_json::json!({
        "timestamp": timestamp,
        "level": level.as_str(),
        "message": message,
        "target": "shopflow",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report is one line of valid JSON whatever its text holds: quotes, newlines, escapes.
    #[test]
    fn json_reports_are_one_object_on_one_line() {
        let hostile = "error: \"quoted\"\nsecond line\t\u{1b}[31mred\\";
        let line = json_line(tracing::Level::ERROR, hostile);
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["message"], hostile);
        assert_eq!(value["level"], "ERROR");
        assert_eq!(value["target"], "shopflow");
    }

    #[test]
    fn formats_parse_from_config_text() {
        #[derive(Deserialize)]
        struct Wrapper {
            log: LogConfig,
        }
        let parsed: Wrapper = toml::from_str("[log]\nformat = \"json\"\n").expect("parses");
        assert_eq!(parsed.log.format, LogFormat::Json);
        assert!(toml::from_str::<Wrapper>("[log]\nformat = \"xml\"\n").is_err());
    }
}
