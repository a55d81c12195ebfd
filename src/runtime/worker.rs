//! One worker's loop, tick by tick, as timely's own: send the tick's inputs, `advance_to` its
//! end, step the dataflow; with backpressure from the output and from the sink, a checkpoint at
//! every boundary, and offsets committed behind the sink or behind a complete checkpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::Params;
use dataflows::inputs::Inputs;
use dataflows::model::Tick;
use dataflows::output::{Progress, emit_batches};
use dataflows::state::Handles;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::checkpoints::{Checkpointer, Checkpoints};
use super::demographics::Demographics;
use super::events::{Pumped, Turn, WorkerEvents};
use super::failure::StopOthersOnFailure;
use super::status::{Status, lock};
use super::{Plan, WorkerError};
use crate::checkpoint::{self, WorkerCheckpoint};
use crate::generators::events::EventGenerator;
use crate::sinks::Acknowledged;
use crate::sources::kafka::PartitionReader;

/// What every worker of the run shares.
pub(super) struct Shared {
    pub(super) plan: Plan,
    pub(super) params: Params,
    pub(super) generator: EventGenerator,
    /// The run's start on the clock its ticks follow.
    pub(super) start_ms: u64,
    pub(super) started: Instant,
    /// How long a source waits for its brokers at the start.
    pub(super) timeout: Duration,
    pub(super) checkpoints: Option<Checkpoints>,
    /// Towards the sink thread.
    pub(super) sender: Mutex<Sender<(usize, Progress)>>,
    pub(super) status: Arc<Status>,
    /// What the sink has acknowledged.
    pub(super) acknowledged: Acknowledged,
    /// Set when a worker fails: the others stop instead of waiting for it forever.
    pub(super) failed: Arc<AtomicBool>,
}

impl Shared {
    /// Runs one worker from its first tick to its last.
    pub(super) fn run(&self, worker: &mut Worker) -> Result<(), WorkerError> {
        let index = worker.index();
        let _span = tracing::info_span!("worker", index).entered();
        let mut failure = StopOthersOnFailure::new(&self.status, &self.failed);
        let mut this = WorkerLoop::start(self, worker)?;
        this.run(worker)?;
        this.finish(worker)?;
        failure.disarm();
        Ok(())
    }

    /// Whether another worker failed: then nothing it held will complete.
    fn others_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn tick_ms(&self) -> u64 {
        self.plan.config.engine.tick_ms
    }
}

/// What a checkpoint boundary ended with.
enum Boundary {
    /// The run goes on.
    Passed,
    /// A stop was asked for: this boundary's checkpoint is the run's last.
    Last,
    /// Another worker failed while this one waited for the boundary.
    OthersFailed,
}

/// A worker's state between ticks.
struct WorkerLoop<'a> {
    shared: &'a Shared,
    index: usize,
    peers: usize,
    inputs: Inputs,
    probe: ProbeHandle<Tick>,
    /// Held only to checkpoint: holding them constrains compaction.
    handles: Option<Handles>,
    events: WorkerEvents,
    demographics: Demographics,
    /// The start of the next tick.
    tick: Tick,
    /// The checkpoint interval (`u64::MAX` without checkpoints), and the next boundary: every
    /// worker stops its inputs exactly there.
    interval: Tick,
    next_checkpoint: Tick,
    checkpointer: Checkpointer,
    /// A graceful stop checkpoints first: set, the run ends at the next boundary.
    stopping: bool,
}

impl<'a> WorkerLoop<'a> {
    /// Builds the dataflow behind the worker's inputs, restores its share of the checkpoint,
    /// and opens its sources.
    fn start(shared: &'a Shared, worker: &mut Worker) -> Result<WorkerLoop<'a>, WorkerError> {
        let (index, peers) = (worker.index(), worker.peers());
        let sender = shared
            .sender
            .lock()
            .expect("no worker panicked while cloning the sender")
            .clone();
        let (mut inputs, probe, handles) = worker.dataflow::<Tick, _, _>(|scope| {
            let (inputs, rows, handles) = Inputs::analytics(scope, shared.params);
            let (probe, rows) = rows.probe();
            emit_batches(rows, move |progress| {
                // The sink thread only stops early on a sink error, which ends the run anyway.
                let _ = sender.send((index, progress));
            });
            (inputs, probe, handles)
        });
        let handles = shared.checkpoints.as_ref().map(|_| handles);
        let restored = match &shared.checkpoints {
            Some(checkpoints) => checkpoints.load(index, peers)?,
            None => None,
        };
        let (state, resume) = restored.unzip();
        let events = WorkerEvents::open(shared, index, peers, resume.as_ref())?;

        let tick_ms = shared.tick_ms();
        let mut tick = shared.start_ms - shared.start_ms % tick_ms;
        if let Some(at) = shared
            .checkpoints
            .as_ref()
            .and_then(Checkpoints::restored_at)
        {
            // A clock set back does not take the run before its checkpoint.
            tick = tick.max(at);
        }
        // Before the restored state enters: it is the first timestamp's (an input session
        // starts at 0).
        inputs.advance_to(tick);
        let mut demographics = match state {
            Some(state) => {
                inputs.restore(&state);
                Demographics::restored(state, tick)
            }
            None => Demographics::default(),
        };
        inputs.advance_to(tick);
        let plan = &shared.plan;
        let knobs = &plan.config.generator;
        demographics.start(
            index,
            &plan.demographics,
            knobs,
            shared.start_ms,
            &mut inputs,
        )?;
        let interval = shared
            .checkpoints
            .as_ref()
            .map_or(u64::MAX, |c| c.interval_ms);
        Ok(WorkerLoop {
            shared,
            index,
            peers,
            inputs,
            probe,
            handles,
            events,
            demographics,
            tick,
            interval,
            next_checkpoint: tick.saturating_add(interval) / interval * interval,
            checkpointer: Checkpointer::default(),
            stopping: false,
        })
    }

    /// Runs tick after tick until the input ends, a stop (after a last checkpoint, with
    /// checkpoints), or another worker's failure.
    fn run(&mut self, worker: &mut Worker) -> Result<(), WorkerError> {
        let status = Arc::clone(&self.shared.status);
        loop {
            // A failed run ends at once: no checkpoint boundary will complete.
            if self.shared.others_failed() {
                break;
            }
            if status.stop.load(Ordering::Relaxed) || self.duration_elapsed() {
                if self.handles.is_none() {
                    break;
                }
                self.stopping = true;
            }
            self.hold_back(worker);
            let turn = Turn {
                tick: self.tick,
                tick_ms: self.shared.tick_ms(),
                index: self.index,
                peers: self.peers as u64,
                stop_at: self.stopping.then_some(self.next_checkpoint),
            };
            let Some(pumped) = self.events.pump(worker, &mut self.inputs, &turn, &status)? else {
                break;
            };
            self.note(&pumped);
            self.demographics
                .feed(&mut self.inputs, self.tick, pumped.end)?;
            // The first tick after a restore ends before the first boundary, whatever the clock
            // or a stop says: the demographics read at start enter in the second, so they are in
            // every worker's state at every boundary. Were the first tick to reach the boundary
            // (a stop during it jumps there), the run would end there with the checkpoint's
            // demographics as its last output and its last checkpoint.
            let mut end = pumped.end;
            if self.demographics.waits_at(self.tick) && self.next_checkpoint - 1 > self.tick {
                end = end.min(self.next_checkpoint - 1);
            }
            // Every worker's inputs stop exactly at each checkpoint boundary.
            self.tick = end.min(self.next_checkpoint);
            self.inputs.advance_to(self.tick);
            status
                .generated_until
                .fetch_max(self.tick, Ordering::Relaxed);
            status.observed.tick_closed(self.index, self.tick);
            self.commit_behind_sink()?;
            worker.step();
            let finished = match self.handles.is_some() {
                true => match self.checkpoint(worker)? {
                    Boundary::Passed => pumped.finished,
                    Boundary::Last => true,
                    Boundary::OthersFailed => break,
                },
                false => pumped.finished,
            };
            if finished {
                break;
            }
        }
        Ok(())
    }

    fn duration_elapsed(&self) -> bool {
        let stop = self.shared.plan.stop;
        stop.duration
            .is_some_and(|d| self.shared.started.elapsed() >= d)
    }

    /// Backpressure: never runs more than `engine.max-ticks-in-flight` ticks ahead of the output
    /// (a source that is not polled buffers nothing here), nor of the sink (see
    /// [`wait_for_sink`]).
    fn hold_back(&mut self, worker: &mut Worker) {
        let engine = &self.shared.plan.config.engine;
        let status = &self.shared.status;
        let behind = self
            .tick
            .saturating_sub(engine.max_ticks_in_flight * engine.tick_ms);
        while self.probe.less_than(&behind) && !status.stop.load(Ordering::Relaxed) {
            worker.step();
        }
        wait_for_sink(worker, status, behind, self.events.reader());
    }

    /// Counts what the tick sent, for the view and the freshness metric.
    fn note(&self, pumped: &Pumped) {
        let status = &self.shared.status;
        status.generated.fetch_add(pumped.sent, Ordering::Relaxed);
        if pumped.sent > 0 {
            lock(&status.event_times).push((pumped.end, pumped.newest));
        }
        tracing::debug!(tick = self.tick, sent = pumped.sent, "tick produced");
    }

    /// Without checkpoints, commits the offsets the sink has acknowledged what they cover of.
    /// (With checkpoints, the checkpoint is what a restart resumes from: offsets are committed
    /// once one covering them is complete, in [`checkpoint`](Self::checkpoint).)
    fn commit_behind_sink(&mut self) -> Result<(), WorkerError> {
        if self.shared.checkpoints.is_none()
            && let Some(reader) = self.events.reader()
        {
            reader.end_tick(self.tick);
            reader.commit_through(self.shared.acknowledged.below())?;
        }
        Ok(())
    }

    /// At a boundary, captures the worker's checkpoint; at every tick, writes the checkpoints
    /// the sink has passed and commits the newest complete one's offsets.
    fn checkpoint(&mut self, worker: &mut Worker) -> Result<Boundary, WorkerError> {
        let shared = self.shared;
        let checkpoints = shared
            .checkpoints
            .as_ref()
            .expect("handles are kept only to checkpoint");
        let handles = self
            .handles
            .as_mut()
            .expect("called only with handles kept");
        let tick = self.tick;
        let mut boundary = Boundary::Passed;
        // A checkpoint still waiting for the sink (an outage) is not joined by another copy of
        // the state: this worker skips the boundary, which leaves that checkpoint incomplete,
        // and ignored.
        if tick == self.next_checkpoint && self.checkpointer.waiting() && !self.stopping {
            self.next_checkpoint = self.next_checkpoint.saturating_add(self.interval);
        } else if tick == self.next_checkpoint {
            // Once the dataflow has done everything before the boundary (which needs every
            // worker's inputs there), this worker's state is the boundary's.
            while self.probe.less_than(&tick) && !shared.others_failed() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            if shared.others_failed() {
                return Ok(Boundary::OthersFailed);
            }
            let state = handles.capture(tick).ok_or(WorkerError::State(tick))?;
            let offsets = self
                .events
                .reader()
                .map_or_else(BTreeMap::new, |reader| reader.positions().clone());
            self.checkpointer.capture(WorkerCheckpoint {
                version: checkpoint::VERSION,
                pipeline: checkpoints.pipeline.clone(),
                tick,
                worker: self.index,
                peers: self.peers,
                offsets,
                state,
            });
            self.next_checkpoint = self.next_checkpoint.saturating_add(self.interval);
            // A stop asked for meanwhile ends the run here, at the boundary all workers
            // reached: this checkpoint is then the last and complete one.
            if self.stopping || shared.status.stop.load(Ordering::Relaxed) {
                boundary = Boundary::Last;
            }
        }
        // Let the counters' arrangement compact, but never across the next boundary.
        let frontier = self
            .probe
            .with_frontier(|f| f.first().copied().unwrap_or(Tick::MAX));
        handles.allow_compaction(frontier.min(self.next_checkpoint - 1));
        self.checkpointer
            .write_acknowledged(shared.acknowledged.below(), checkpoints);
        if let Some(reader) = self.events.reader() {
            self.checkpointer
                .commit_complete(reader, checkpoints, false)?;
        }
        Ok(boundary)
    }

    /// Closes the inputs, lets the dataflow finish, and commits what was read once the sink has
    /// acknowledged it.
    fn finish(self, worker: &mut Worker) -> Result<(), WorkerError> {
        let WorkerLoop {
            shared,
            inputs,
            probe,
            mut events,
            mut checkpointer,
            tick,
            ..
        } = self;
        drop(inputs);
        while !probe.done() && !shared.others_failed() {
            worker.step();
        }
        if let Some(reader) = events.reader() {
            // Everything read has been through the dataflow; commit once the sink has
            // acknowledged it. The sink acknowledges `tick` unless it failed, which sets `stop`
            // and ends the wait.
            let acknowledged = &shared.acknowledged;
            let sink_failed = || shared.status.sink_failed.load(Ordering::Relaxed);
            while acknowledged.below() < tick && !sink_failed() && !shared.others_failed() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if acknowledged.below() >= tick {
                match shared.checkpoints.as_ref() {
                    None => reader.commit_all()?,
                    Some(checkpoints) => {
                        // The last checkpoint's offsets, once every worker's file is written.
                        checkpointer.write_acknowledged(acknowledged.below(), checkpoints);
                        checkpointer.join_writers();
                        // The checkpoint, not the group's offsets, is what a restart resumes
                        // from: brokers that do not answer now do not fail the stop.
                        if let Err(error) = checkpointer.commit_complete(reader, checkpoints, true)
                        {
                            tracing::warn!(%error, "the last checkpoint's offsets are not committed; a restart resumes from the checkpoint");
                        }
                    }
                }
            }
        }
        checkpointer.join_writers();
        Ok(())
    }
}

/// Holds a worker's sources back while the sink has not written the ticks before `behind`: its
/// bounded queue is full because InfluxDB is slow or down. The dataflow is stepped meanwhile but
/// nothing is polled. A wait of over a second is logged, and the worker's Kafka partitions are
/// paused until it ends, which also drops what librdkafka had pre-fetched: unread events wait in
/// Kafka (where the consumer lag shows them), not in memory.
fn wait_for_sink(
    worker: &mut Worker,
    status: &Status,
    behind: Tick,
    mut reader: Option<&mut PartitionReader>,
) {
    let started = Instant::now();
    let mut paused = false;
    while status.completed_until.load(Ordering::Relaxed) < behind
        && !status.stop.load(Ordering::Relaxed)
    {
        if !paused && started.elapsed() >= Duration::from_secs(1) {
            tracing::warn!("the sink is behind; the sources wait");
            if let Some(Err(error)) = reader.as_mut().map(|r| r.pause()) {
                tracing::warn!(%error, "cannot pause the partitions");
            }
            paused = true;
        }
        status.observed.heartbeat(worker.index());
        // Promptly at first (a short wait is the common case), then without burning a core.
        worker.step_or_park(Some(Duration::from_millis(if paused { 10 } else { 1 })));
    }
    if paused {
        if let Some(Err(error)) = reader.as_mut().map(|r| r.resume()) {
            tracing::warn!(%error, "cannot resume the partitions");
        }
        let consumer_lag = reader.and_then(|r| r.lag());
        let waited_ms = started.elapsed().as_millis() as u64;
        tracing::warn!(
            waited_ms,
            consumer_lag,
            "the sink caught up; the sources resume"
        );
    }
}
