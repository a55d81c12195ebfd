//! Connections: opening them, and retrying with backoff while the server is away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mysql::Conn;

use super::{
    config::{MysqlConfig, endpoint},
    error::MysqlError,
};

/// The first reconnection delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whether a connection error may go away by itself.
pub(super) fn retryable(error: &mysql::Error) -> bool {
    match error {
        mysql::Error::IoError(_) | mysql::Error::DriverError(_) => true,
        // Too many connections, server shutting down, connection killed.
        mysql::Error::MySqlError(e) => matches!(e.code, 1040 | 1053 | 1927),
        _ => false,
    }
}

/// The delay before retry `attempt` (1-based).
pub(super) fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// Sleeps for `duration`, waking early when `stop` is set.
pub(super) fn sleep_unless(duration: Duration, stop: &AtomicBool) {
    let end = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Calls `f` until it succeeds, fails with an error that is not [`retryable`], or has failed
/// `retries + 1` times, sleeping with exponential backoff in between. The error comes with the
/// number of attempts made.
pub(super) fn retrying<T>(
    addr: &str,
    retries: u32,
    mut f: impl FnMut() -> Result<T, mysql::Error>,
) -> Result<T, (u32, mysql::Error)> {
    let mut attempt = 1;
    loop {
        match f() {
            Ok(value) => return Ok(value),
            Err(e) if attempt <= retries && retryable(&e) => {
                let delay = backoff(attempt);
                tracing::warn!(%addr, attempt, of = retries + 1, error = %e, ?delay, "MySQL connection failed; retrying");
                std::thread::sleep(delay);
                attempt += 1;
            }
            Err(e) => return Err((attempt, e)),
        }
    }
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
