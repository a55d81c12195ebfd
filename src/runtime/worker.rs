//! One worker's loop, tick by tick: its events source (`super::source`) sends a tick's events
//! at its capability and moves it by the tick rule, while the loop steps the worker; once the
//! tick closes, the loop feeds the other inputs, `advance_to`s them where the source went, and
//! steps; with backpressure from the output and from the sink, a checkpoint at every boundary,
//! and offsets committed behind the sink or behind a complete checkpoint.

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
use super::events::WorkerEvents;
use super::failure::StopOthersOnFailure;
use super::source::{EventsSource as _, Report, SourceHandle, TickEnd};
use super::status::{Status, lock};
use super::tick::TickRule;
use super::{Plan, WorkerError};
use crate::checkpoint::{self, WorkerCheckpoint};
use crate::generators::events::EventGenerator;
use crate::sinks::Acknowledged;

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

    /// The run's first tick: the one of its start, never before the checkpoint it restores (a
    /// clock set back does not take the run there).
    fn first_tick(&self) -> Tick {
        let tick = self.start_ms - self.start_ms % self.tick_ms();
        let restored_at = self.checkpoints.as_ref().and_then(Checkpoints::restored_at);
        restored_at.map_or(tick, |at| tick.max(at))
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
    /// The events source: the start of the next tick, and the next checkpoint boundary (every
    /// worker stops its inputs exactly there).
    source: SourceHandle,
    demographics: Demographics,
    checkpointer: Checkpointer,
    /// A graceful stop checkpoints first: set, the run ends at the next boundary.
    stopping: bool,
}

impl<'a> WorkerLoop<'a> {
    /// Builds the dataflow behind the worker's events source and its other inputs, restores
    /// its share of the checkpoint, and opens its sources.
    fn start(shared: &'a Shared, worker: &mut Worker) -> Result<WorkerLoop<'a>, WorkerError> {
        let (index, peers) = (worker.index(), worker.peers());
        let sender = shared
            .sender
            .lock()
            .expect("no worker panicked while cloning the sender")
            .clone();
        let tick = shared.first_tick();
        let checkpoints = shared.checkpoints.as_ref();
        let interval = checkpoints.map_or(u64::MAX, |c| c.interval_ms);
        let restoring = checkpoints.and_then(Checkpoints::restored_at).is_some();
        let rule = TickRule::new(shared.tick_ms(), tick, interval, restoring);
        let (mut inputs, probe, handles, source) = worker.dataflow::<Tick, _, _>(|scope| {
            let status = Arc::clone(&shared.status);
            let (events, source) = scope.events_source(rule, tick, status, (index, peers));
            let (inputs, rows, handles) = Inputs::analytics_of(scope, events, shared.params);
            let (probe, rows) = rows.probe();
            emit_batches(rows, move |progress| {
                // The sink thread only stops early on a sink error, which ends the run anyway.
                let _ = sender.send((index, progress));
            });
            (inputs, probe, handles, source)
        });
        let restored = match checkpoints {
            Some(checkpoints) => checkpoints.load(index, peers)?,
            None => None,
        };
        let (state, resume) = restored.unzip();
        source.open(WorkerEvents::open(shared, index, peers, resume.as_ref())?);
        let handles = shared.checkpoints.as_ref().map(|_| handles);
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
        Ok(WorkerLoop {
            shared,
            index,
            peers,
            inputs,
            probe,
            handles,
            source,
            demographics,
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
            self.source.start(self.stopping);
            let Some(closed) = self.next_tick(worker)? else {
                break;
            };
            self.note(&closed);
            // The tick's other inputs, at its time; then every input where the source went.
            let inputs = &mut self.inputs;
            self.source
                .drain_malformed(|counter, n| inputs.count(counter, n));
            self.demographics
                .feed(&mut self.inputs, closed.tick, closed.end)?;
            self.inputs.advance_to(closed.next);
            status
                .generated_until
                .fetch_max(closed.next, Ordering::Relaxed);
            status.observed.tick_closed(self.index, closed.next);
            self.commit_behind_sink()?;
            worker.step();
            let finished = match self.handles.is_some() {
                true => match self.checkpoint(worker)? {
                    Boundary::Passed => closed.finished,
                    Boundary::Last => true,
                    Boundary::OthersFailed => break,
                },
                false => closed.finished,
            };
            if finished {
                break;
            }
        }
        Ok(())
    }

    /// Steps the worker until the source closes the tick it was started on; `None` once the
    /// generator has sent its last event.
    fn next_tick(&mut self, worker: &mut Worker) -> Result<Option<TickEnd>, WorkerError> {
        loop {
            match self.source.take()? {
                Some(Report::Closed(closed)) => return Ok(Some(closed)),
                Some(Report::Ended) => return Ok(None),
                // The source activates itself, at once or after a delay: parking ends there.
                None => worker.step_or_park(Some(Duration::from_millis(50))),
            };
        }
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
            .source
            .tick()
            .saturating_sub(engine.max_ticks_in_flight * engine.tick_ms);
        while self.probe.less_than(&behind) && !status.stop.load(Ordering::Relaxed) {
            worker.step();
        }
        wait_for_sink(worker, status, behind, &self.source);
    }

    /// Counts what the tick sent, for the view and the freshness metric.
    fn note(&self, closed: &TickEnd) {
        let status = &self.shared.status;
        let (sent, newest) = (closed.tally.sent, closed.tally.newest);
        status.generated.fetch_add(sent, Ordering::Relaxed);
        if sent > 0 {
            lock(&status.event_times).push((closed.end, newest));
        }
        tracing::debug!(tick = closed.tick, sent, "tick produced");
    }

    /// Without checkpoints, commits the offsets the sink has acknowledged what they cover of.
    /// (With checkpoints, the checkpoint is what a restart resumes from: offsets are committed
    /// once one covering them is complete, in [`checkpoint`](Self::checkpoint).)
    fn commit_behind_sink(&mut self) -> Result<(), WorkerError> {
        let tick = self.source.tick();
        if self.shared.checkpoints.is_none()
            && let Some(mut reader) = self.source.reader()
        {
            // The source holds until the next tick starts: these are the tick's positions.
            reader.end_tick(tick);
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
        let tick = self.source.tick();
        let at_boundary = tick == self.source.boundary();
        let mut boundary = Boundary::Passed;
        // A checkpoint still waiting for the sink (an outage) is not joined by another copy of
        // the state: this worker skips the boundary, which leaves that checkpoint incomplete,
        // and ignored.
        if at_boundary && self.checkpointer.waiting() && !self.stopping {
            self.source.pass_boundary();
        } else if at_boundary {
            // Once the dataflow has done everything before the boundary (which needs every
            // worker's inputs there), this worker's state is the boundary's.
            while self.probe.less_than(&tick) && !shared.others_failed() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            if shared.others_failed() {
                return Ok(Boundary::OthersFailed);
            }
            let state = handles.capture(tick).ok_or(WorkerError::State(tick))?;
            // The source holds at the boundary until the next tick starts: nothing of a later
            // tick is read yet.
            let offsets = self
                .source
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
            self.source.pass_boundary();
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
        handles.allow_compaction(frontier.min(self.source.boundary() - 1));
        self.checkpointer
            .write_acknowledged(shared.acknowledged.below(), checkpoints);
        if let Some(mut reader) = self.source.reader() {
            self.checkpointer
                .commit_complete(&mut reader, checkpoints, false)?;
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
            source,
            mut checkpointer,
            ..
        } = self;
        let tick = source.tick();
        source.shut();
        drop(inputs);
        while !probe.done() && !shared.others_failed() {
            worker.step();
        }
        if let Some(mut reader) = source.reader() {
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
                        if let Err(error) =
                            checkpointer.commit_complete(&mut reader, checkpoints, true)
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
fn wait_for_sink(worker: &mut Worker, status: &Status, behind: Tick, source: &SourceHandle) {
    let started = Instant::now();
    let mut paused = false;
    while status.completed_until.load(Ordering::Relaxed) < behind
        && !status.stop.load(Ordering::Relaxed)
    {
        if !paused && started.elapsed() >= Duration::from_secs(1) {
            tracing::warn!("the sink is behind; the sources wait");
            if let Some(Err(error)) = source.reader().map(|mut r| r.pause()) {
                tracing::warn!(%error, "cannot pause the partitions");
            }
            paused = true;
        }
        status.observed.heartbeat(worker.index());
        // Promptly at first (a short wait is the common case), then without burning a core.
        worker.step_or_park(Some(Duration::from_millis(if paused { 10 } else { 1 })));
    }
    if paused {
        if let Some(Err(error)) = source.reader().map(|mut r| r.resume()) {
            tracing::warn!(%error, "cannot resume the partitions");
        }
        let consumer_lag = source.reader().and_then(|mut r| r.lag());
        let waited_ms = started.elapsed().as_millis() as u64;
        tracing::warn!(
            waited_ms,
            consumer_lag,
            "the sink caught up; the sources resume"
        );
    }
}
