//! The live figures shared by the workers, the sink thread and the terminal view.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dataflows::model::{OutputKey, OutputValue, Tick};
use dataflows::output::Batch;
use rustc_hash::FxHashMap;

/// Live figures shared by the workers, the sink thread and the terminal view.
#[derive(Debug, Default)]
pub struct Status {
    /// Set to stop the run cleanly (Ctrl-C).
    pub stop: AtomicBool,
    /// Set when the sink failed: nothing more will be written.
    pub sink_failed: AtomicBool,
    /// Events that entered the dataflow from this process's workers.
    pub generated: AtomicU64,
    /// Events an in-process producer has sent to Kafka.
    pub produced: AtomicU64,
    /// Messages this process's workers have read from Kafka, malformed ones included: an
    /// in-process producer keeps within a bound of it (see `produce_generated`).
    pub consumed: AtomicU64,
    /// The simulated time the generators have reached (the end of the last tick produced).
    pub generated_until: AtomicU64,
    /// The last timestamp handed to the sink, plus one; 0 before any. What the sink has
    /// acknowledged is its [`Acknowledged`](crate::sinks::Acknowledged) watermark, behind this.
    pub completed_until: AtomicU64,
    /// Batches handed to the sink.
    pub batches: AtomicU64,
    /// Messages not yet read from each worker's partitions, at its last look (Kafka only).
    pub consumer_lags: Mutex<BTreeMap<usize, u64>>,
    /// The newest event time each worker sent in a tick, as `(tick end, time)`, until written.
    pub event_times: Mutex<Vec<(Tick, u64)>>,
    /// The latest all-time rows and counters, for display. A hash map: the sink thread updates
    /// thousands of rows a tick, and the display sorts what it shows.
    pub table: Mutex<LiveTable>,
    /// What the HTTP server reads besides these: the recent windows, the workers' heartbeats,
    /// the per-tick histograms.
    pub observed: crate::runtime::observed::Observed,
}

/// The latest all-time rows and counters by key.
pub type LiveTable = FxHashMap<OutputKey, OutputValue>;

/// Locks a mutex, taking over one a panicking thread left behind (the data are plain figures).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps the all-time rows and counters of a batch for the terminal view.
pub(super) fn remember(status: &Status, batch: &Batch) {
    status.batches.fetch_add(1, Ordering::Relaxed);
    status
        .completed_until
        .fetch_max(batch.time + 1, Ordering::Relaxed);
    let mut table = status
        .table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for change in &batch.changes {
        if matches!(&change.key, OutputKey::Aggregate(key) if key.window.is_some()) {
            continue;
        }
        match change.value {
            // Nearly every change is of a row the table has: updated in place, no key cloned.
            Some(value) => match table.get_mut(&change.key) {
                Some(held) => *held = value,
                None => {
                    table.insert(change.key.clone(), value);
                }
            },
            None => {
                table.remove(&change.key);
            }
        }
    }
    status.observed.record(batch, &table);
}
