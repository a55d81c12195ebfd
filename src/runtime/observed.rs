//! What the HTTP server reads, recorded as the run goes: never computed on request from the
//! dataflow, and never anything per event.
//!
//! The workers record once per tick (a heartbeat, their CPU time, that the Kafka source answered);
//! the sink thread records each batch it hands to the sink (the recent windows, and a message for
//! the Server-Sent Events stream when anyone listens), each advance of its completed frontier, and
//! the runtime figures it writes once a second. The server only reads, briefly, under the same
//! mutexes: it never holds one while it encodes or sends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use dataflows::model::{Dimension, OutputKey, OutputValue, Tick, Totals};
use dataflows::output::{Batch, Change};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rustc_hash::FxHashMap;
use tokio::sync::broadcast;

use crate::runtime::{LiveTable, now_ms};
use crate::sinks::Acknowledged;
use crate::sinks::line_protocol::RuntimeMetrics;

/// Ticks a Server-Sent Events client may fall behind before it is told to refetch (`reset`).
pub const STREAM_BUFFER_TICKS: usize = 16;
/// The default of `http.recent-windows`, before a run says otherwise.
const DEFAULT_RECENT_WINDOWS: usize = 30;
/// Tick closings kept for the sink thread at most: it drains them as timestamps complete.
const MAX_CLOSED: usize = 8_192;

/// What a run is: set once when it starts.
#[derive(Clone, Debug)]
pub struct Begun {
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads in this process.
    pub workers: usize,
    /// The index of this process's first worker.
    pub first_worker: usize,
    /// Whether events come from Kafka (then readiness needs its answers).
    pub kafka: bool,
    /// Where checkpoints go, if anywhere.
    pub checkpoints: Option<PathBuf>,
    /// When the run started, in ms since the epoch.
    pub started_ms: u64,
    /// The sink's acknowledgement watermark.
    pub acknowledged: Acknowledged,
    /// How many recent windows to keep.
    pub recent_windows: usize,
    /// The MySQL binlog follower's slot, in the process whose worker 0 reads MySQL (then
    /// readiness needs it connected).
    pub mysql: Option<crate::runtime::FollowerSlot>,
}

/// One local worker's figures, each written by that worker alone.
#[derive(Debug, Default)]
pub struct WorkerSlot {
    /// When it last stepped, in ms since the epoch.
    pub heartbeat_ms: AtomicU64,
    /// When its Kafka partitions last answered (their lag was measured), in ms since the epoch.
    pub source_answered_ms: AtomicU64,
    /// Its thread's CPU time at its last tick, in ns.
    cpu_ns: AtomicU64,
    /// Its thread's CPU time over the ticks it closed, in ns.
    pub busy_ns: AtomicU64,
}

/// A worker closed its inputs at `tick`: every timestamp before it is complete on that worker's
/// side.
#[derive(Clone, Copy, Debug)]
struct Closed {
    worker: usize,
    tick: Tick,
    at: Instant,
    busy_ns: u64,
}

/// What the sink thread keeps for the API: the last timestamp written, the recent windows, and
/// the latest runtime figures.
#[derive(Debug)]
pub struct Recent {
    /// The last timestamp whose batch the sink was handed; `None` before any.
    pub time: Option<Tick>,
    /// The rows of the most recent windows by window start; each window's rows as the sink last
    /// wrote them.
    pub windows: BTreeMap<u64, FxHashMap<Dimension, Totals>>,
    /// How many windows `windows` keeps.
    capacity: usize,
    /// The latest `runtime` point.
    pub runtime: Option<RuntimeMetrics>,
    /// Lines the sink wrote, as of `runtime`.
    pub lines: u64,
    /// Bytes of line protocol the sink wrote, as of `runtime`.
    pub bytes: u64,
    /// When the sink last saw its completed frontier advance, in ms since the epoch.
    pub completed_advanced_ms: u64,
    /// The completed frontier: every timestamp before it was handed to the sink.
    pub completed_below: Tick,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent {
            time: None,
            windows: BTreeMap::new(),
            capacity: DEFAULT_RECENT_WINDOWS,
            runtime: None,
            lines: 0,
            bytes: 0,
            completed_advanced_ms: 0,
            completed_below: 0,
        }
    }
}

impl Recent {
    fn apply(&mut self, start: u64, dimension: &Dimension, value: Option<Totals>) {
        let full = self.windows.len() >= self.capacity;
        if full
            && !self.windows.contains_key(&start)
            && self
                .windows
                .first_key_value()
                .is_some_and(|(&s, _)| start < s)
        {
            // Older than every window kept: a late correction of a window already dropped.
            return;
        }
        match value {
            Some(totals) => {
                let rows = self.windows.entry(start).or_default();
                match rows.get_mut(dimension) {
                    Some(held) => *held = totals,
                    None => {
                        rows.insert(dimension.clone(), totals);
                    }
                }
            }
            None => {
                if let Some(rows) = self.windows.get_mut(&start) {
                    rows.remove(dimension);
                }
            }
        }
        while self.windows.len() > self.capacity {
            self.windows.pop_first();
        }
    }
}

/// One completed timestamp, as the stream sends it: encoded once, for every client, on the
/// server's thread.
#[derive(Debug)]
pub struct TickMessage {
    /// The timestamp.
    pub time: Tick,
    /// Its aggregate changes.
    pub changes: Vec<Change>,
    /// The counters after it.
    pub counters: Vec<(&'static str, i64)>,
    /// The latest runtime figures.
    pub runtime: Option<RuntimeMetrics>,
    /// The JSON, once encoded.
    pub json: OnceLock<String>,
}

/// The histograms the sink thread observes.
#[derive(Clone, Debug)]
pub struct Histograms {
    /// CPU seconds each worker spent per tick, by `worker` (its global index).
    pub worker_busy: Family<Vec<(String, String)>, Histogram>,
    /// Seconds from the last local worker closing a timestamp's inputs to the timestamp
    /// reaching the sink.
    pub tick_processing: Histogram,
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            worker_busy: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            tick_processing: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

/// Everything the HTTP server reads besides [`Status`](crate::runtime::Status)'s own figures.
#[derive(Debug)]
pub struct Observed {
    begun: OnceLock<Begun>,
    workers: OnceLock<Box<[WorkerSlot]>>,
    closed: Mutex<Vec<Closed>>,
    /// The sink thread's recent windows and figures. Lock order: the live table first.
    pub recent: Mutex<Recent>,
    ticks: broadcast::Sender<Arc<TickMessage>>,
    /// The histograms.
    pub histograms: Histograms,
}

impl Default for Observed {
    fn default() -> Observed {
        Observed {
            begun: OnceLock::new(),
            workers: OnceLock::new(),
            closed: Mutex::new(Vec::new()),
            recent: Mutex::new(Recent::default()),
            ticks: broadcast::channel(STREAM_BUFFER_TICKS).0,
            histograms: Histograms::default(),
        }
    }
}

/// Locks a mutex, taking over one a panicking thread left behind (the data are plain figures).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This thread's CPU time in ns (0 if the clock cannot be read).
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which is valid for it.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if read {
        (now.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec as u64)
    } else {
        0
    }
}

impl Observed {
    /// Records what the run is, once, when it starts.
    pub fn begin(&self, begun: Begun) {
        let slots: Box<[WorkerSlot]> = (0..begun.workers).map(|_| WorkerSlot::default()).collect();
        let now = now_ms();
        for slot in slots.iter() {
            slot.heartbeat_ms.store(now, Ordering::Relaxed);
        }
        let _ = self.workers.set(slots);
        lock(&self.recent).capacity = begun.recent_windows.max(1);
        let _ = self.begun.set(begun);
    }

    /// What the run is, once it has started.
    pub fn begun(&self) -> Option<&Begun> {
        self.begun.get()
    }

    /// The local workers' figures (empty before the run starts).
    pub fn workers(&self) -> &[WorkerSlot] {
        self.workers.get().map_or(&[], |w| w)
    }

    fn slot(&self, worker: usize) -> Option<&WorkerSlot> {
        let first = self.begun.get()?.first_worker;
        self.workers.get()?.get(worker.checked_sub(first)?)
    }

    /// Worker `worker` (global index) is stepping.
    pub fn heartbeat(&self, worker: usize) {
        if let Some(slot) = self.slot(worker) {
            slot.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Worker `worker` closed its inputs at `tick`; called on its thread, once per tick.
    pub fn tick_closed(&self, worker: usize, tick: Tick) {
        let Some(slot) = self.slot(worker) else {
            return;
        };
        slot.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        let cpu = thread_cpu_ns();
        let before = slot.cpu_ns.swap(cpu, Ordering::Relaxed);
        // The first tick's time would include the worker's start: not a tick's work.
        let busy_ns = if before == 0 {
            0
        } else {
            cpu.saturating_sub(before)
        };
        slot.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
        let mut closed = lock(&self.closed);
        if closed.len() >= MAX_CLOSED {
            // The sink thread is not draining (it is blocked on a full sink): keep the newest.
            closed.drain(..MAX_CLOSED / 2);
        }
        closed.push(Closed {
            worker,
            tick,
            at: Instant::now(),
            busy_ns,
        });
    }

    /// Worker `worker`'s Kafka partitions answered (their lag was measured).
    pub fn source_answered(&self, worker: usize) {
        if let Some(slot) = self.slot(worker) {
            slot.source_answered_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The sink thread handed `batch` to the sink; `table` is the live table after it (held
    /// locked by the caller, which keeps the two consistent for readers).
    pub fn record(&self, batch: &Batch, table: &LiveTable) {
        let mut recent = lock(&self.recent);
        recent.time = Some(batch.time);
        for change in &batch.changes {
            if let OutputKey::Aggregate(key) = &change.key
                && let Some(start) = key.window
            {
                let totals = match change.value {
                    Some(OutputValue::Totals(totals)) => Some(totals),
                    _ => None,
                };
                recent.apply(start.0, &key.dimension, totals);
            }
        }
        if self.ticks.receiver_count() == 0 {
            return;
        }
        let message = TickMessage {
            time: batch.time,
            changes: batch
                .changes
                .iter()
                .filter(|c| matches!(c.key, OutputKey::Aggregate(_)))
                .cloned()
                .collect(),
            counters: counters(table),
            runtime: recent.runtime,
            json: OnceLock::new(),
        };
        drop(recent);
        // Never blocks: a client that falls behind loses the oldest and is told to refetch.
        let _ = self.ticks.send(Arc::new(message));
    }

    /// A receiver of every completed timestamp from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TickMessage>> {
        self.ticks.subscribe()
    }

    /// The sink thread handed every timestamp before `below` to the sink: observes the
    /// per-tick histograms of the ticks this completes.
    pub fn completed(&self, below: Tick) {
        {
            let mut recent = lock(&self.recent);
            // Called on every progress message: nothing to do unless the frontier moved.
            if below <= recent.completed_below {
                return;
            }
            recent.completed_below = below;
            recent.completed_advanced_ms = now_ms();
        }
        let done: Vec<Closed> = {
            let mut closed = lock(&self.closed);
            let (done, waiting): (Vec<Closed>, Vec<Closed>) =
                closed.drain(..).partition(|c| c.tick <= below);
            *closed = waiting;
            done
        };
        if done.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut last_closed: BTreeMap<Tick, Instant> = BTreeMap::new();
        for c in &done {
            let label = vec![("worker".to_owned(), c.worker.to_string())];
            self.histograms
                .worker_busy
                .get_or_create(&label)
                .observe(c.busy_ns as f64 / 1e9);
            let at = last_closed.entry(c.tick).or_insert(c.at);
            *at = (*at).max(c.at);
        }
        for at in last_closed.values() {
            self.histograms
                .tick_processing
                .observe(now.saturating_duration_since(*at).as_secs_f64());
        }
    }

    /// The sink thread wrote a `runtime` point; the sink has written `lines` lines and `bytes`
    /// bytes so far.
    pub fn runtime(&self, metrics: &RuntimeMetrics, lines: u64, bytes: u64) {
        let mut recent = lock(&self.recent);
        recent.runtime = Some(*metrics);
        recent.lines = lines;
        recent.bytes = bytes;
    }
}

/// Every counter's value in `table` (0 for one not written yet), in declaration order.
pub fn counters(table: &LiveTable) -> Vec<(&'static str, i64)> {
    dataflows::model::Counter::ALL
        .iter()
        .map(|&counter| {
            let n = match table.get(&OutputKey::Counter(counter)) {
                Some(OutputValue::Count(n)) => *n,
                _ => 0,
            };
            (counter.name(), n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use dataflows::model::{AggregateKey, CampaignId, EventTimeMs};
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;

    fn batch(time: Tick, window: u64) -> Batch {
        Batch {
            time,
            changes: vec![Change {
                key: OutputKey::Aggregate(AggregateKey {
                    dimension: Dimension::Campaign(CampaignId(1)),
                    window: Some(EventTimeMs(window)),
                }),
                value: Some(OutputValue::Totals(Totals::click())),
            }],
        }
    }

    /// A stream client that does not read loses the oldest ticks and is told so (the server
    /// sends it a `reset`); the sink thread never waits for it. Without clients nothing is kept.
    #[test]
    fn a_client_that_falls_behind_is_told_and_never_waited_for() {
        let observed = Observed::default();
        let table = LiveTable::default();
        let mut slow = observed.subscribe();
        let ticks = STREAM_BUFFER_TICKS as u64 + 5;
        for time in 0..ticks {
            observed.record(&batch(time, 0), &table);
        }
        assert_eq!(slow.try_recv().err(), Some(TryRecvError::Lagged(5)));
        let next = slow.try_recv().expect("the oldest tick kept");
        assert_eq!(next.time, 5);
        drop(slow);
        observed.record(&batch(ticks, 0), &table);
        let late = observed.subscribe();
        assert_eq!(late.len(), 0, "no client, no message kept");
    }

    /// The recent windows are bounded: the oldest go, and a late change to one gone is not kept.
    #[test]
    fn recent_windows_are_bounded() {
        let observed = Observed::default();
        lock(&observed.recent).capacity = 3;
        let table = LiveTable::default();
        for (time, window) in [(1, 10), (2, 20), (3, 30), (4, 40), (5, 10)] {
            observed.record(&batch(time, window), &table);
        }
        let recent = lock(&observed.recent);
        assert_eq!(
            recent.windows.keys().copied().collect::<Vec<_>>(),
            [20, 30, 40]
        );
        assert_eq!(recent.time, Some(5));
    }
}
