//! The InfluxDB sink: completed batches, as line protocol, over HTTP to InfluxDB 1.x (`/write`) or
//! 2.x (`/api/v2/write`).
//!
//! Laid out as Vector lays out its sinks:
//!
//! - [`config`]: what the sink is, the `[influx]` section ([`InfluxConfig`]), plain serde data with
//!   [`InfluxConfig::validate`] naming the bad key. Passwords and tokens are [`Secret`]s, which
//!   print as `***` everywhere (`Debug`, `Display`, `check-config`) and may come from a file
//!   (`password-file`, `token-file`) or an environment variable.
//! - [`service`]: the HTTP client ([`InfluxClient`]): one [`InfluxClient::write`] is one write
//!   request, at millisecond precision, optionally gzip-compressed. Connection errors, timeouts,
//!   429, 408 and 5xx answers are retried with exponential backoff and full jitter, or after the
//!   wait a `Retry-After` asks for when that is longer (the shared [`crate::retry`] policy; each
//!   retry logged at `warn` with the attempt and the reason, never a credential), up to `max-retries`.
//!   Lines InfluxDB refuses (400 or 422 saying a line does not parse, a field type conflicts or
//!   the write was partial; 413 too large) are found by halving the body, counted (`rejected_lines`), logged at most
//!   once a second and appended to `rejects-file`; the others are written and the request is
//!   done. Any other non-2xx answer (401, 403, 404 database not found, ...) is fatal at once and
//!   the [`WriteError`] carries InfluxDB's own message. It also runs `CREATE DATABASE` (v1, the
//!   name quoted and escaped) and `/ping`, and [`check_at_start`] checks the server once, within
//!   `timeout-ms`, before a run.
//! - [`sink`]: [`InfluxSink`], the [`Sink`](crate::sinks::Sink). `write_batch` encodes a batch
//!   with the line-protocol [`Encoder`](crate::sinks::line_protocol::Encoder), cuts it into
//!   requests of at most `batch-lines` lines and hands them, through a bounded queue of
//!   [`QUEUE_REQUESTS`], to a dedicated writer thread, so encoding overlaps sending. When
//!   InfluxDB is slow or down the queue fills and `write_batch` blocks: backpressure reaches the
//!   runtime, and memory stays bounded by [`MAX_IN_FLIGHT`] requests. The writer sends requests
//!   one at a time in order (merging queued small ones up to `batch-lines`), so points arrive in
//!   time order. The first fatal error stops the writer and is returned by the next
//!   `write_batch` and by `finish`, which otherwise waits until everything queued is written.
//!   Counters ([`SinkStats`]: lines written, requests, attempts, retries, failures, requests in
//!   flight) are shared through [`InfluxSink::stats`].
//!
//! Removals are encoded as zero-valued points and every point is an absolute value at a fixed
//! timestamp, so writes are idempotent: a retried request that InfluxDB had in fact applied, or a
//! replayed batch, writes the same points again.
//!
//! Until [`SinkError`](crate::sinks::SinkError) has a variant of its own, a [`WriteError`] reaches
//! the runtime inside `SinkError::Io` (`std::io::Error::other`); `get_ref()` and `downcast_ref`
//! recover it.

pub mod service;
pub mod sink;

pub use crate::config::influx::{self as config, Api, InfluxConfig, MAX_BATCH_LINES, Secret};
pub use service::{
    Checked, InfluxClient, SetupError, SinkStats, StatsSnapshot, WriteError, check_at_start,
};
pub use sink::{InfluxSink, MAX_IN_FLIGHT, QUEUE_REQUESTS};
