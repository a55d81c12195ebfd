//! What can go wrong: a request ([`WriteError`], retryable or not) or the client's setup
//! ([`SetupError`]), and how a transport failure becomes one.

use crate::config::ConfigError;

/// A request to InfluxDB failed.
///
/// Retryable (see [`WriteError::is_retryable`]): [`Connect`](WriteError::Connect),
/// [`Timeout`](WriteError::Timeout), [`Transport`](WriteError::Transport) and
/// [`Unavailable`](WriteError::Unavailable) (5xx, 429, 408). Fatal: [`Rejected`](WriteError::Rejected)
/// (any other non-2xx status, with InfluxDB's own message), [`Invalid`](WriteError::Invalid) and
/// [`RetriesExhausted`](WriteError::RetriesExhausted). A write answered with a refusal of some of
/// its lines ([`WriteError::refuses_lines`]) is not an error of the write: those lines are
/// counted and skipped, the others written. No variant carries a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// InfluxDB refused the request (4xx other than 408 and 429, or an unexpected status); sending
    /// it again would not help.
    #[error("InfluxDB rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// The HTTP status code.
        status: u16,
        /// InfluxDB's message: the `error` (v1) or `message` (v2) field of its JSON answer, else
        /// the `X-Influxdb-Error` header, else the body text.
        message: String,
    },
    /// InfluxDB could not take the request now (5xx, 429 Too Many Requests, 408).
    #[error("InfluxDB is unavailable (HTTP {status}): {message}")]
    Unavailable {
        /// The HTTP status code.
        status: u16,
        /// InfluxDB's message, as for `Rejected`.
        message: String,
    },
    /// No connection could be made (refused, unreachable, DNS, TLS handshake).
    #[error("cannot connect to InfluxDB: {0}")]
    Connect(String),
    /// No complete answer within `timeout-ms`.
    #[error("InfluxDB did not answer within {0} ms")]
    Timeout(u64),
    /// The connection failed mid-request (reset, closed, malformed answer).
    #[error("the request to InfluxDB failed: {0}")]
    Transport(String),
    /// The request could not be built (a token that is no valid header value, an operation the
    /// API lacks).
    #[error("cannot make the request: {0}")]
    Invalid(String),
    /// Every attempt failed with a retryable error (or retrying was cancelled).
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made, the first included.
        attempts: u32,
        /// The last attempt's error.
        last: Box<WriteError>,
    },
}

impl WriteError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WriteError::Unavailable { .. }
                | WriteError::Connect(_)
                | WriteError::Timeout(_)
                | WriteError::Transport(_)
        )
    }

    /// Whether InfluxDB refused lines of the body rather than the request: 400 or 422 saying it
    /// could not parse a line, wrote only part of the body, or found lines whose field types
    /// conflict (`unable to parse`, `failed to parse`, `partial write`, `field type conflict`),
    /// or 413 (the body too large, so it is split). A 4xx caused by the request itself (401 and
    /// 403 authentication, 404 database not found, 400 `gzip: invalid header`, ...) is not: the
    /// same request would fail for every line.
    pub fn refuses_lines(&self) -> bool {
        match self {
            WriteError::Rejected { status: 413, .. } => true,
            WriteError::Rejected {
                status: 400 | 422,
                message,
            } => {
                let message = message.to_ascii_lowercase();
                [
                    "unable to parse",
                    "failed to parse",
                    "partial write",
                    "field type conflict",
                ]
                .iter()
                .any(|m| message.contains(m))
            }
            _ => false,
        }
    }

    /// The HTTP status InfluxDB answered with, if it answered (of the last attempt).
    pub fn status(&self) -> Option<u16> {
        match self {
            WriteError::Rejected { status, .. } | WriteError::Unavailable { status, .. } => {
                Some(*status)
            }
            WriteError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}

/// The client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is invalid, or a secret file unreadable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built (TLS initialisation).
    #[error("cannot set up the HTTP client for InfluxDB: {0}")]
    Client(String),
    /// `CREATE DATABASE` failed.
    #[error("cannot create InfluxDB database {database:?}: {source}")]
    CreateDatabase {
        /// The database.
        database: String,
        /// Why.
        source: WriteError,
    },
    /// The writer thread could not be started.
    #[error("cannot start the InfluxDB writer thread: {0}")]
    Thread(#[from] std::io::Error),
    /// InfluxDB did not answer the start check within `timeout-ms`, or refused it.
    #[error("InfluxDB at {url} failed the start check: {source}")]
    StartCheck {
        /// The base URL, without credentials.
        url: String,
        /// Why.
        source: WriteError,
    },
}

/// A reqwest failure as a retryable [`WriteError`], with its cause chain but not its URL.
pub(super) fn classify_transport(error: reqwest::Error, timeout_ms: u64) -> WriteError {
    if error.is_timeout() {
        return WriteError::Timeout(timeout_ms);
    }
    let connect = error.is_connect();
    let text = error_chain(&error.without_url());
    if connect {
        WriteError::Connect(text)
    } else {
        WriteError::Transport(text)
    }
}

/// An error and its sources, `: `-separated, each distinct message once.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability() {
        assert!(WriteError::Connect("refused".into()).is_retryable());
        assert!(WriteError::Timeout(5).is_retryable());
        assert!(
            WriteError::Unavailable {
                status: 503,
                message: String::new()
            }
            .is_retryable()
        );
        let rejected = WriteError::Rejected {
            status: 400,
            message: "bad".into(),
        };
        assert!(!rejected.is_retryable());
        let exhausted = WriteError::RetriesExhausted {
            attempts: 3,
            last: Box::new(WriteError::Unavailable {
                status: 503,
                message: "busy".into(),
            }),
        };
        assert!(!exhausted.is_retryable());
        assert_eq!(exhausted.status(), Some(503));
        assert_eq!(
            exhausted.to_string(),
            "gave up after 3 attempts: InfluxDB is unavailable (HTTP 503): busy"
        );
    }
}
