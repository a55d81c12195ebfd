//! The sink thread: collects every local worker's batches and frontier, and hands each
//! timestamp to the sink, merged and in order, once every local worker has passed it; writes
//! the journal of rows ahead of the sink, and the engine's own `runtime` points.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataflows::model::Tick;
use dataflows::output::{Batch, Change, Progress};

use super::now_ms;
use super::status::{self, Status, lock};
use super::workers::Workers;
use crate::cluster::watchdog::{Failure, Watchdog};
use crate::journal::Written;
use crate::sinks::line_protocol::RuntimeMetrics;
use crate::sinks::{Sink, SinkError};

/// Starts the sink thread over `sink`, receiving every local worker's progress on `receiver`.
/// It ends once every worker has finished, with the lines written; on a sink error, it stops the
/// sources and fails the run at once.
pub(super) fn spawn(
    mut sink: Box<dyn Sink>,
    receiver: Receiver<(usize, Progress)>,
    workers: &Workers,
    written: Option<Written>,
    status: Arc<Status>,
    watchdog: Arc<Watchdog>,
) -> std::io::Result<JoinHandle<Result<u64, SinkError>>> {
    let local_workers = workers.threads_per_process();
    let process = workers.process;
    std::thread::Builder::new()
        .name("shopflow-sink".into())
        .spawn(move || -> Result<u64, SinkError> {
            let _span = tracing::info_span!("sink").entered();
            let result = forward_batches(
                receiver,
                local_workers,
                process,
                sink.as_mut(),
                &status,
                written,
            );
            if let Err(error) = &result {
                // Stop the sources: nothing they read could be written.
                status.sink_failed.store(true, Ordering::Relaxed);
                status.stop.store(true, Ordering::Relaxed);
                watchdog.fail(Failure::Local(error.to_string()));
            }
            result?;
            sink.finish()?;
            Ok(sink.written())
        })
}

/// The sink thread's loop: collects every local worker's batches, and hands each timestamp to the
/// sink, merged and in order, once every worker's frontier has passed it.
fn forward_batches(
    receiver: Receiver<(usize, Progress)>,
    local_workers: usize,
    process: usize,
    sink: &mut dyn Sink,
    status: &Status,
    mut written: Option<Written>,
) -> Result<(), SinkError> {
    let mut runtime = RuntimeReport::new(process);
    let mut frontiers: BTreeMap<usize, Option<Tick>> = BTreeMap::new();
    let mut pending: BTreeMap<Tick, Vec<Change>> = BTreeMap::new();
    if let Some(at) = written.as_ref().and_then(Written::clearing_at) {
        // The first timestamp is written even with no output of its own: it carries the removals.
        pending.entry(at).or_default();
    }
    while let Ok((worker, progress)) = receiver.recv() {
        for batch in progress.batches {
            pending.entry(batch.time).or_default().extend(batch.changes);
        }
        frontiers.insert(worker, progress.frontier);
        // Until every local worker has reported, nothing is known complete; `None`: all done.
        let complete_below: Option<Tick> = if frontiers.len() < local_workers {
            Some(0)
        } else {
            frontiers.values().flatten().min().copied()
        };
        while let Some(entry) = pending.first_entry() {
            if complete_below.is_some_and(|below| *entry.key() >= below) {
                break;
            }
            let (time, mut changes) = entry.remove_entry();
            if let Some(written) = written.as_mut() {
                written.clear_absent(time, &mut changes);
            }
            if changes.is_empty() {
                continue;
            }
            changes.sort();
            let batch = Batch { time, changes };
            if let Some(written) = written.as_mut() {
                written.record(&batch).map_err(|e| SinkError::Io {
                    target: e.path.display().to_string(),
                    source: e.source,
                })?;
            }
            sink.write_batch(&batch)?;
            status::remember(status, &batch);
        }
        // Everything below the frontier is handed over; with no frontier left, everything is.
        let handed_below = complete_below.unwrap_or(Tick::MAX);
        sink.complete_below(handed_below)?;
        status
            .completed_until
            .fetch_max(handed_below, Ordering::Relaxed);
        status.observed.completed(handed_below);
        runtime.maybe_write(sink, status, false)?;
        if frontiers.len() == local_workers && frontiers.values().all(Option::is_none) {
            break;
        }
    }
    runtime.maybe_write(sink, status, true)?;
    Ok(())
}

/// The sink thread's `runtime` points: at most one a second, and one at the end.
struct RuntimeReport {
    process: usize,
    last: Option<(Instant, u64)>,
    newest_written: u64,
}

impl RuntimeReport {
    fn new(process: usize) -> RuntimeReport {
        RuntimeReport {
            process,
            last: None,
            newest_written: 0,
        }
    }

    fn maybe_write(
        &mut self,
        sink: &mut dyn Sink,
        status: &Status,
        last: bool,
    ) -> Result<(), SinkError> {
        if !last
            && self
                .last
                .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        let completed = status.completed_until.load(Ordering::Relaxed);
        lock(&status.event_times).retain(|&(tick_end, time)| {
            let written = tick_end <= completed;
            if written {
                self.newest_written = self.newest_written.max(time);
            }
            !written
        });
        let generated = status.generated.load(Ordering::Relaxed);
        let events_per_second = match self.last {
            Some((at, before)) => {
                (generated - before) as f64 / at.elapsed().as_secs_f64().max(1e-3)
            }
            None => 0.0,
        };
        let now = now_ms();
        let metrics = RuntimeMetrics {
            time_ms: now,
            process: self.process,
            consumer_lag: lock(&status.consumer_lags).values().sum(),
            freshness_ms: if self.newest_written == 0 {
                0
            } else {
                now.saturating_sub(self.newest_written)
            },
            sink_retries: sink.retries(),
            sink_rejected_lines: sink.rejected_lines(),
            events_per_second,
        };
        self.last = Some((Instant::now(), generated));
        sink.write_runtime(&metrics)?;
        status
            .observed
            .runtime(&metrics, sink.written(), sink.bytes_written());
        Ok(())
    }
}
