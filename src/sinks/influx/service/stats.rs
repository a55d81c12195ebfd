//! The sink's counters, shared between the client, the writer thread and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The sink's counters: cheap to share (`Arc`), updated with relaxed atomics, read with
/// [`SinkStats::snapshot`].
#[derive(Debug, Default)]
pub struct SinkStats {
    pub(super) lines_written: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) attempts: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) rejected_lines: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) max_in_flight: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Lines InfluxDB accepted.
    pub lines_written: u64,
    /// Write requests InfluxDB accepted.
    pub requests: u64,
    /// HTTP write attempts, retries included.
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Write requests given up on (fatal error or retries exhausted).
    pub failed: u64,
    /// Lines InfluxDB refused (`sink_rejected_lines`): counted, logged and skipped; the other
    /// lines of their requests are written.
    pub rejected_lines: u64,
    /// Requests queued for or being written by the writer thread now.
    pub in_flight: u64,
    /// The most requests ever in flight: at most the queue capacity plus one.
    pub max_in_flight: u64,
}

impl SinkStats {
    /// Reads every counter (each atomically; together only approximately consistent while the
    /// sink runs).
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            lines_written: get(&self.lines_written),
            requests: get(&self.requests),
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            failed: get(&self.failed),
            rejected_lines: get(&self.rejected_lines),
            in_flight: get(&self.in_flight),
            max_in_flight: get(&self.max_in_flight),
        }
    }

    /// Lines InfluxDB accepted.
    pub fn lines_written(&self) -> u64 {
        self.lines_written.load(Ordering::Relaxed)
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Lines InfluxDB refused so far.
    pub fn rejected_lines(&self) -> u64 {
        self.rejected_lines.load(Ordering::Relaxed)
    }

    pub(in crate::sinks::influx) fn add_in_flight(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    pub(in crate::sinks::influx) fn sub_in_flight(&self, n: u64) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
    }

    pub(super) fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
