//! Connections: opening them, and retrying with backoff while the server is away.

use std::time::Duration;

use mysql::Conn;

use super::{
    config::{MysqlConfig, endpoint},
    error::MysqlError,
};
use crate::retry::{RetryPolicy, Verdict};

/// How connections are retried: after 100 ms, doubling up to 5 s; `connect-retries` bounds them.
pub(super) const RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5));

/// Whether a connection error may go away by itself.
pub(super) fn retryable(error: &mysql::Error) -> bool {
    match error {
        // A server without TLS will not grow it.
        mysql::Error::DriverError(mysql::DriverError::TlsNotSupported) => false,
        mysql::Error::IoError(_) | mysql::Error::DriverError(_) => true,
        // Too many connections, server shutting down, connection killed.
        mysql::Error::MySqlError(e) => matches!(e.code, 1040 | 1053 | 1927),
        _ => false,
    }
}

/// Calls `f` until it succeeds, fails with an error that is not [`retryable`], or has failed
/// `retries + 1` times, sleeping by [`RETRY`] in between. The error comes with the number of
/// attempts made.
pub(super) fn retrying<T>(
    addr: &str,
    retries: u32,
    mut f: impl FnMut() -> Result<T, mysql::Error>,
) -> Result<T, (u32, mysql::Error)> {
    RETRY
        .with_retries(retries)
        .run(
            None,
            |_| f(),
            |e| {
                if retryable(e) {
                    Verdict::Retry
                } else {
                    Verdict::Fatal
                }
            },
            |e, retry| {
                let delay = retry.wait;
                tracing::warn!(%addr, attempt = retry.attempt, of = retries + 1, error = %e, ?delay, "MySQL connection failed; retrying");
            },
        )
        .map_err(|gave_up| (gave_up.attempts, gave_up.error))
}

/// A connection, retried with bounded exponential backoff.
pub(super) fn connect(config: &MysqlConfig) -> Result<Conn, MysqlError> {
    let opts = config.opts()?;
    let addr = endpoint(&opts);
    retrying(&addr, config.connect_retries, || Conn::new(opts.clone())).map_err(|(attempts, e)| {
        MysqlError::Connect {
            addr: addr.clone(),
            attempts,
            detail: e.to_string(),
        }
    })
}
