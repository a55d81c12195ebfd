//! The HTTP client: one call of [`InfluxClient::write`] is one write of a line-protocol body,
//! retried by the shared [`RetryPolicy`](crate::retry::RetryPolicy) while the failure is transient
//! (waiting at least what a 429 or 503 asks for in `Retry-After`, as InfluxDB 2.x and Cloud send
//! it; 1.x's throttling sends none), and classified when it is not.
//!
//! Laid out by what each part does:
//!
//! - `client`: [`InfluxClient`] built from `[influx]`, its requests, their authentication and
//!   retries, `CREATE DATABASE`, queries and `/ping`;
//! - `write`: [`InfluxClient::write`], and the lines InfluxDB refuses, found by halving the body;
//! - `check`: [`check_at_start`], the one request before a run;
//! - `error`: [`WriteError`] and [`SetupError`];
//! - `answer`: InfluxDB's error answers read as messages;
//! - `stats`: [`SinkStats`], the counters the sink shares.

mod answer;
mod check;
mod client;
mod error;
mod stats;
mod write;

pub use check::{Checked, check_at_start};
pub use client::{InfluxClient, quote_identifier};
pub use error::{SetupError, WriteError};
pub use stats::{SinkStats, StatsSnapshot};
