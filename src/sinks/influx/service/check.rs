//! The start check: one request, within `timeout-ms`, before a run, that a stop interrupts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Url;

use super::client::InfluxClient;
use super::error::{SetupError, WriteError};
use crate::config::influx::InfluxConfig;

/// How often the start check looks whether it was stopped.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// How the start check ([`check_at_start`]) ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// InfluxDB answered (and the database exists, when `create-database` is set).
    Ready,
    /// A stop (Ctrl-C, SIGTERM) came while waiting for InfluxDB: the run should end cleanly.
    Stopped,
}

/// Checks once, within `timeout-ms`, that InfluxDB answers: `CREATE DATABASE` when
/// `create-database` is set (a no-op when it exists), else `GET /ping`; no retry, so an
/// unreachable server fails the start at once with one line naming its URL (without
/// credentials). Returns [`Checked::Stopped`] as soon as `stop` is set meanwhile, without waiting
/// for the answer, so a stop during the check ends the process cleanly.
pub fn check_at_start(config: &InfluxConfig, stop: &AtomicBool) -> Result<Checked, SetupError> {
    let client = InfluxClient::new(config)?;
    let url = without_credentials(&client.base_url);
    let create = config.create_database;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("influx-check".into())
        .spawn(move || {
            let _ = sender.send(client.check(create));
        })?;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Checked::Stopped);
        }
        match receiver.recv_timeout(SLEEP_SLICE) {
            Ok(Ok(())) => return Ok(Checked::Ready),
            Ok(Err(source)) => return Err(SetupError::StartCheck { url, source }),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SetupError::StartCheck {
                    url,
                    source: WriteError::Invalid("the check thread ended without an answer".into()),
                });
            }
        }
    }
}

/// A URL as text without its user and password, whatever it holds.
fn without_credentials(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

impl InfluxClient {
    /// One `CREATE DATABASE` (when `create`) or `GET /ping`, no retry, within `timeout-ms`.
    fn check(&self, create: bool) -> Result<(), WriteError> {
        if create {
            self.create_database_once().map_err(|failed| failed.error)
        } else {
            self.ping().map(drop)
        }
    }
}
