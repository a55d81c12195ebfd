//! The runtime: builds timely's configuration, runs the workers, and wires
//! sources → [`dataflows::analytics`] → the sink thread. It computes nothing itself.
//!
//! Each worker drives its own inputs tick by tick (timely's loop: send, `advance_to`, step while
//! the probe is behind); the sink thread receives every worker's finished batches and frontier,
//! and hands a timestamp to the sink only once every local worker has passed it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dataflows::model::{Counter, OutputKey, OutputValue, Tick};
use dataflows::output::{Batch, Change, Progress, emit_batches};
use dataflows::{Restored, analytics_with_state};
use differential_dataflow::input::Input as _;
use rustc_hash::FxHashMap;
use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::vec::Input as _;

use crate::checkpoint::{self, WorkerCheckpoint};
use crate::cluster::watchdog::{self, Ending, Failure, Watchdog};
use crate::cluster::{self, Agreement, ClusterError};
use crate::config::Config;
use crate::generators::demographics;
use crate::generators::events::{EventGenerator, Pace};
use crate::sinks::line_protocol::RuntimeMetrics;
use crate::sinks::{Sink, SinkError};
use crate::sources::kafka::{KafkaConfig, PartitionReader};
use crate::sources::mysql::{ChangeFeed, DemographicsSource, MysqlConfig};

/// A run could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The worker flags or hostfile are unusable.
    #[error("{0}")]
    Workers(String),
    /// The generator's knobs are unusable.
    #[error("generator: {0}")]
    Generator(String),
    /// Timely could not start or a worker failed.
    #[error("dataflow: {0}")]
    Dataflow(String),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A source failed.
    #[error("source: {0}")]
    Source(String),
    /// The processes of a cluster could not connect, or disagree.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The run failed elsewhere (another process failed or was lost), or here without its
    /// threads ending in time.
    #[error(transparent)]
    Failed(#[from] Failure),
    /// The checkpoint directory cannot be used: unwritable, or another pipeline's.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
}

/// How many workers, and where: timely's own flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workers {
    /// Worker threads per process; 0 for one per core.
    pub threads: usize,
    /// Number of processes.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// A file with one `host:port` per process.
    pub hostfile: Option<PathBuf>,
}

impl Workers {
    /// The number of threads per process, resolving 0 to the number of cores.
    pub fn threads_per_process(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
    }

    /// Timely's configuration for these flags.
    pub fn timely_config(&self) -> Result<timely::Config, RunError> {
        let threads = self.threads_per_process();
        let processes = self.processes.max(1);
        if self.process >= processes {
            return Err(RunError::Workers(format!(
                "--process {} is out of range for --processes {processes} (processes are numbered from 0)",
                self.process
            )));
        }
        if processes == 1 {
            return Ok(if threads == 1 {
                timely::Config::thread()
            } else {
                timely::Config::process(threads)
            });
        }
        let addresses = match &self.hostfile {
            Some(path) => read_hostfile(path, processes)?,
            None => (0..processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect(),
        };
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// Reads one `host:port` per line (blank lines and `#` comments skipped); needs one per process.
fn read_hostfile(path: &Path, processes: usize) -> Result<Vec<String>, RunError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Workers(format!("cannot read hostfile {}: {e}", path.display())))?;
    let hosts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if let Some(bad) = hosts.iter().find(|h| {
        h.rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    }) {
        return Err(RunError::Workers(format!(
            "hostfile {}: `{bad}` is not host:port",
            path.display()
        )));
    }
    if hosts.len() < processes {
        return Err(RunError::Workers(format!(
            "hostfile {} lists {} hosts but --processes is {processes}",
            path.display(),
            hosts.len()
        )));
    }
    Ok(hosts.into_iter().take(processes).collect())
}

/// When a run ends (besides Ctrl-C).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stop {
    /// After this many generated events.
    pub events: Option<u64>,
    /// After this much wall-clock time.
    pub duration: Option<Duration>,
}

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
    pub observed: crate::http::observed::Observed,
}

/// The latest all-time rows and counters by key.
pub type LiveTable = FxHashMap<OutputKey, OutputValue>;

/// What a finished run did.
#[derive(Debug)]
pub struct Report {
    /// Events generated by this process.
    pub events: u64,
    /// Wall-clock time from start to the last batch.
    pub elapsed: Duration,
    /// Batches handed to the sink.
    pub batches: u64,
    /// Lines or records the sink wrote.
    pub written: u64,
}

/// Where events come from.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once per run: its size does not matter"
)]
pub enum EventSource {
    /// The generator, in process: event `n` arrives at its simulated time, paced by
    /// `generator.pace`. Worker `i` of `w` generates the events `n ≡ i (mod w)`.
    Generator {
        /// The simulated time of event 0; `None` for now.
        start_ms: Option<u64>,
    },
    /// A Kafka topic; ticks follow the wall clock.
    Kafka {
        /// The topic and client settings.
        config: KafkaConfig,
        /// Stop once every partition is read to its end (and `producer_done` is set, if given).
        until_caught_up: bool,
        /// Set by an in-process producer when it has sent everything.
        producer_done: Option<Arc<AtomicBool>>,
    },
}

/// Where demographics come from: read once, at worker 0, and exchanged.
#[derive(Clone, Debug)]
pub enum DemographicSource {
    /// The generator's table and its changes (`generator.demographic-changes-per-second`).
    Generator,
    /// A MySQL table: a consistent snapshot, then its binlog.
    Mysql(MysqlConfig),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The configuration.
    pub config: Config,
    /// The workers.
    pub workers: Workers,
    /// When to stop.
    pub stop: Stop,
    /// Where events come from.
    pub events: EventSource,
    /// Where demographics come from.
    pub demographics: DemographicSource,
    /// Where to keep checkpoints (Kafka sources only): the pipeline's own directory
    /// ([`checkpoint::pipeline_dir`]); `None` for none.
    pub checkpoints: Option<PathBuf>,
}

/// Worker 0's demographics input after the initial table.
enum WorkerDemographics {
    Generated(demographics::Changes),
    Mysql(ChangeFeed),
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A worker's event input: the generator's share, or the worker's partitions.
enum WorkerEvents {
    Generator {
        generator: EventGenerator,
        pace: Pace,
        last_event: u64,
    },
    Kafka {
        reader: Box<PartitionReader>,
        until_caught_up: bool,
        producer_done: Option<Arc<AtomicBool>>,
    },
}

/// Runs the pipeline: sources → dataflow → `sink`, until `plan.stop`, Ctrl-C (`status.stop`),
/// or the end of the input.
pub fn run(plan: Plan, mut sink: Box<dyn Sink>, status: Arc<Status>) -> Result<Report, RunError> {
    // Connected first, before the sink thread and the workers start: a cluster that cannot form
    // fails before any input is read or any result written, and its processes share one start.
    let timeout = Duration::from_millis(plan.config.engine.connect_timeout_ms);
    let timely_config = plan.workers.timely_config()?;
    let communication = cluster::connect(timely_config, Agreement::of(&plan), timeout)?;
    let watchdog = communication.watchdog();
    let local_workers = plan.workers.threads_per_process();
    let process = plan.workers.process;
    let knobs = plan.config.generator.clone();
    let tick_ms = plan.config.engine.tick_ms;
    let start_ms = match &plan.events {
        EventSource::Generator { start_ms } => start_ms.unwrap_or(communication.start_ms()),
        EventSource::Kafka { .. } => now_ms(),
    };
    let generator = EventGenerator::new(knobs.clone(), start_ms).map_err(RunError::Generator)?;
    if let EventSource::Kafka { config, .. } = &plan.events {
        config.validate().map_err(RunError::Source)?;
    }
    let params = plan.config.params();
    let max_in_flight = plan.config.engine.max_ticks_in_flight;
    let stop = plan.stop;
    let source = plan.events.clone();
    let demographic_source = plan.demographics.clone();
    // Checkpoints: where, for which pipeline, and the newest complete valid one to restore.
    let checkpoints = match (&plan.checkpoints, &plan.events) {
        (Some(dir), EventSource::Kafka { config, .. }) => {
            checkpoint::prepare(dir)?;
            let pipeline = checkpoint::fingerprint(&config.topic, &config.group_id, &params);
            let selected = checkpoint::select(dir, &pipeline)?;
            for rejected in &selected.rejected {
                tracing::warn!(%rejected, "checkpoint unusable; falling back to an older one");
            }
            let found = selected.found;
            match &found {
                Some(found) => {
                    tracing::info!(tick = found.tick, workers = found.files.len(), dir = %dir.display(), "restoring a checkpoint");
                }
                None => {
                    tracing::info!(dir = %dir.display(), start = ?config.start, "no checkpoint to restore: reading the topic from kafka.start with empty state");
                }
            }
            Some(Checkpoints {
                dir: dir.clone(),
                pipeline,
                interval_ms: plan.config.engine.checkpoint_interval_ms,
                found,
            })
        }
        _ => None,
    };
    let started = Instant::now();

    // Offsets are committed and checkpoints written only behind what the sink acknowledged.
    let acknowledged = sink.acknowledged();
    status.observed.begin(crate::http::observed::Begun {
        process,
        processes: plan.workers.processes.max(1),
        workers: local_workers,
        first_worker: process * local_workers,
        kafka: matches!(plan.events, EventSource::Kafka { .. }),
        checkpoints: checkpoints.as_ref().map(|c| c.dir.clone()),
        started_ms: now_ms(),
        acknowledged: acknowledged.clone(),
        recent_windows: plan.config.http.recent_windows,
    });
    let written = match &checkpoints {
        Some(c) => Some(Written::open(
            c,
            &plan.workers,
            start_ms,
            tick_ms,
            params.windows,
        )?),
        None => None,
    };
    let (sender, receiver) = std::sync::mpsc::channel::<(usize, Progress)>();
    let sender = Mutex::new(sender);
    let sink_status = Arc::clone(&status);
    // A failed run does not wait for the sink: its retries and its full queue give up at once.
    if let Some(cancel) = sink.canceller() {
        watchdog.on_failure(cancel);
    }
    let sink_watchdog = Arc::clone(&watchdog);
    let sink_thread = std::thread::Builder::new()
        .name("shopflow-sink".into())
        .spawn(move || -> Result<u64, SinkError> {
            let _span = tracing::info_span!("sink").entered();
            let result = forward_batches(
                receiver,
                local_workers,
                process,
                sink.as_mut(),
                &sink_status,
                written,
            );
            if let Err(error) = &result {
                // Stop the sources: nothing they read could be written.
                sink_status.sink_failed.store(true, Ordering::Relaxed);
                sink_status.stop.store(true, Ordering::Relaxed);
                sink_watchdog.fail(Failure::Local(error.to_string()));
            }
            result?;
            sink.finish()?;
            Ok(sink.written())
        })
        .map_err(|e| RunError::Dataflow(format!("cannot start the sink thread: {e}")))?;

    let worker_status = Arc::clone(&status);
    // Set when a worker fails: the others stop instead of waiting for it forever.
    let failed = Arc::new(AtomicBool::new(false));
    watchdog.on_failure(stop_on_failure(&status, &failed));
    let guards = cluster::execute(communication, move |worker| -> Result<(), String> {
        let index = worker.index();
        let peers = worker.peers();
        let _span = tracing::info_span!("worker", index).entered();
        let sender: Sender<(usize, Progress)> = sender
            .lock()
            .expect("no worker panicked while cloning the sender")
            .clone();
        let status = Arc::clone(&worker_status);
        let acknowledged = acknowledged.clone();
        let mut failure = StopOthersOnFailure::new(&status, &failed);

        let mut events_in = InputHandleVec::new();
        let mut orders_in = InputHandleVec::new();
        let (
            mut demographics_in,
            mut counters_in,
            mut restored_in,
            mut segments_in,
            probe,
            handles,
        ) = worker.dataflow::<Tick, _, _>(|scope| {
            let events = scope.input_from(&mut events_in);
            let (demographics_in, demographics) = scope.new_collection();
            let (counters_in, counters) = scope.new_collection();
            let (restored_in, contributions) = scope.new_collection();
            let (segments_in, segments) = scope.new_collection();
            let restored = Restored {
                contributions,
                segments,
                orders: scope.input_from(&mut orders_in),
            };
            let (rows, handles) =
                analytics_with_state(events, demographics, counters, restored, params);
            let (probe, rows) = rows.probe();
            emit_batches(rows, move |progress| {
                // The sink thread only stops early on a sink error, which ends the run anyway.
                let _ = sender.send((index, progress));
            });
            (
                demographics_in,
                counters_in,
                restored_in,
                segments_in,
                probe,
                handles,
            )
        });
        // Holding the handles constrains compaction: only keep them to checkpoint.
        let mut handles = checkpoints.as_ref().map(|_| handles);
        // This worker's share of the checkpoint restored, and every partition's offset in it.
        let (restored_state, resume_offsets) = match checkpoints
            .as_ref()
            .and_then(|c| c.found.as_ref().map(|found| (found, &c.pipeline)))
        {
            Some((found, pipeline)) => {
                let (state, offsets) =
                    checkpoint::load(found, pipeline, index, peers).map_err(|e| e.to_string())?;
                (Some(state), Some(offsets))
            }
            None => (None, None),
        };

        let mut events = match &source {
            EventSource::Generator { .. } => WorkerEvents::Generator {
                generator: generator.clone(),
                pace: knobs.pace,
                last_event: stop.events.unwrap_or(u64::MAX),
            },
            EventSource::Kafka {
                config,
                until_caught_up,
                producer_done,
            } => {
                // A broker restarting as the run starts is waited for, as the cluster is.
                let reader = PartitionReader::open_within(
                    config,
                    index,
                    peers,
                    resume_offsets.as_ref(),
                    timeout,
                    &status.stop,
                )
                .map_err(|e| e.to_string())?;
                WorkerEvents::Kafka {
                    reader: Box::new(reader),
                    until_caught_up: *until_caught_up,
                    producer_done: producer_done.clone(),
                }
            }
        };

        let mut tick = start_ms - start_ms % tick_ms;
        if let Some(found) = checkpoints.as_ref().and_then(|c| c.found.as_ref()) {
            // A clock set back does not take the run before its checkpoint.
            tick = tick.max(found.tick);
        }
        events_in.advance_to(tick);
        orders_in.advance_to(tick);
        demographics_in.advance_to(tick);
        demographics_in.flush();
        segments_in.advance_to(tick);
        counters_in.advance_to(tick);
        // Before the restored contributions enter: they are the first timestamp's, as the
        // segments, counters and orders restored beside them (an input session starts at 0).
        restored_in.advance_to(tick);
        // The restored segments, retracted at the end of the first tick when the demographics
        // as their source holds them now enter: the first tick's output is the checkpoint's.
        let mut restored_segments = Vec::new();
        // Likewise the count of unconvertible demographics rows, which the source counts afresh.
        let mut restored_skipped = 0;
        if let Some(state) = restored_state {
            for (contribution, totals) in state.contributions {
                restored_in.update(contribution, totals);
            }
            for (segment, n) in &state.segments {
                segments_in.update(segment.clone(), *n);
            }
            restored_segments = state.segments;
            for (counter, n) in state.counters {
                counters_in.update(counter, n as isize);
                if counter == Counter::DemographicsSkipped {
                    restored_skipped = n as isize;
                }
            }
            for order in state.orders {
                orders_in.send(order);
            }
        }
        counters_in.flush();
        restored_in.advance_to(tick);
        restored_in.flush();
        segments_in.flush();
        let restoring = checkpoints.as_ref().is_some_and(|c| c.found.is_some());
        // The timestamp the checkpoint's state is restored at.
        let restored_at = restoring.then_some(tick);
        // The demographics read at start wait for the end of the first tick when restoring.
        let mut snapshot: Vec<dataflows::model::Demographic> = Vec::new();
        // The next checkpoint boundary: every worker stops its inputs exactly there.
        let interval = checkpoints.as_ref().map_or(u64::MAX, |c| c.interval_ms);
        let mut next_checkpoint = tick.saturating_add(interval) / interval * interval;
        // Checkpoints taken, waiting for the sink to pass their boundary before being written.
        let mut captured: Vec<WorkerCheckpoint> = Vec::new();
        let mut writers: Vec<std::thread::JoinHandle<()>> = Vec::new();
        // The offsets of the checkpoints written (or being written), waiting for every worker's
        // file: only a complete checkpoint's offsets are committed.
        let mut uncommitted: Vec<(Tick, BTreeMap<i32, i64>)> = Vec::new();
        let mut stopping = false;
        // Demographics enter once, at worker 0, as a real source reads its table once.
        let mut changes = match (index, &demographic_source) {
            (0, DemographicSource::Generator) => {
                snapshot = demographics::table(knobs.seed, knobs.users).collect();
                Some(WorkerDemographics::Generated(demographics::Changes::new(
                    knobs.seed,
                    knobs.users,
                    knobs.new_users,
                )))
            }
            (0, DemographicSource::Mysql(config)) => {
                let (rows, feed) = DemographicsSource::start(config).map_err(|e| e.to_string())?;
                tracing::info!(rows = rows.len(), "demographics snapshot");
                snapshot = rows;
                Some(WorkerDemographics::Mysql(feed))
            }
            _ => None,
        };
        if !restoring {
            for row in snapshot.drain(..) {
                demographics_in.update(row, 1);
            }
        }
        let change_ms =
            |k: u64| start_ms + (k as f64 * 1_000.0 / knobs.demographic_changes_per_second) as u64;
        let peers = peers as u64;

        loop {
            // A failed run ends at once: no checkpoint boundary will complete.
            if failure.others_failed() {
                break;
            }
            if status.stop.load(Ordering::Relaxed)
                || stop.duration.is_some_and(|d| started.elapsed() >= d)
            {
                if handles.is_none() {
                    break;
                }
                // A graceful stop checkpoints first: this tick ends at the next boundary.
                stopping = true;
            }
            // Backpressure: never run more than `max_in_flight` ticks ahead of the output; a
            // source that is not polled buffers nothing here.
            let behind = tick.saturating_sub(max_in_flight * tick_ms);
            while probe.less_than(&behind) && !status.stop.load(Ordering::Relaxed) {
                worker.step();
            }
            // Backpressure from the sink too: see `wait_for_sink`.
            let reader = match &mut events {
                WorkerEvents::Kafka { reader, .. } => Some(reader.as_mut()),
                WorkerEvents::Generator { .. } => None,
            };
            wait_for_sink(worker, &status, behind, reader);
            let mut end = tick + tick_ms;
            let mut sent = 0u64;
            let mut newest = 0u64;
            let mut finished = false;
            match &mut events {
                WorkerEvents::Generator {
                    generator,
                    pace,
                    last_event,
                } => {
                    let first = generator.first_at_or_after(tick);
                    if first >= *last_event {
                        break;
                    }
                    if *pace == Pace::Realtime {
                        while now_ms() < end && !status.stop.load(Ordering::Relaxed) {
                            worker.step_or_park(Some(Duration::from_millis(
                                end.saturating_sub(now_ms()).min(50),
                            )));
                        }
                    }
                    let last = generator.first_at_or_after(end).min(*last_event);
                    let mut n = first + (index as u64 + peers - first % peers) % peers;
                    while n < last {
                        let event = generator.event(n);
                        newest = newest.max(event.event_time.0);
                        events_in.send(event);
                        sent += 1;
                        n += peers;
                    }
                }
                WorkerEvents::Kafka {
                    reader,
                    until_caught_up,
                    producer_done,
                } => {
                    // Processing time is the wall clock: read until the tick's end.
                    loop {
                        let polled = reader
                            .poll(tick, |event| {
                                newest = newest.max(event.event_time.0);
                                events_in.send(event);
                                sent += 1;
                            })
                            .map_err(|e| e.to_string())?;
                        status
                            .consumed
                            .fetch_add(polled.messages as u64, Ordering::Relaxed);
                        for (counter, n) in polled.malformed {
                            counters_in.update(counter, n);
                        }
                        if now_ms() >= end || status.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if polled.messages == 0 {
                            if *until_caught_up
                                && producer_done
                                    .as_ref()
                                    .is_none_or(|done| done.load(Ordering::Relaxed))
                                && reader.lag() == Some(0)
                                // The watermarks may predate the producer's last messages; its
                                // own count may not.
                                && status.consumed.load(Ordering::Relaxed)
                                    >= status.produced.load(Ordering::Relaxed)
                            {
                                finished = true;
                                break;
                            }
                            worker.step_or_park(Some(Duration::from_millis(
                                end.saturating_sub(now_ms()).min(5),
                            )));
                        } else {
                            worker.step();
                        }
                    }
                    // A tick that fell behind the clock is followed by the current one.
                    let now = now_ms();
                    end = end.max(now - now % tick_ms);
                    if stopping {
                        end = end.max(next_checkpoint);
                    }
                    if let Some(lag) = reader.lag() {
                        lock(&status.consumer_lags).insert(index, lag as u64);
                        status.observed.source_answered(index);
                    }
                }
            }
            status.generated.fetch_add(sent, Ordering::Relaxed);
            if sent > 0 {
                lock(&status.event_times).push((end, newest));
            }
            tracing::debug!(tick, sent, "tick produced");
            // Restoring: the first timestamp's output is the checkpoint's rows alone, whole, so
            // that the sink rewrites every one of them; from the next one, the demographics as
            // their source holds them now replace the segments the checkpoint held, moving
            // whoever changed meanwhile with retractions (written as removals). Were both at the
            // first timestamp, a row the checkpoint held that no longer has a user would cancel
            // out there and never be written, and the sink would keep its old value.
            let demographics_wait = restored_at == Some(tick);
            if !demographics_wait {
                for (segment, n) in restored_segments.drain(..) {
                    segments_in.update(segment, -n);
                }
                for row in snapshot.drain(..) {
                    demographics_in.update(row, 1);
                }
                // The source counts its unconvertible rows afresh (with its changes, below).
                counters_in.update(
                    Counter::DemographicsSkipped,
                    -std::mem::take(&mut restored_skipped),
                );
            }
            match changes.as_mut().filter(|_| !demographics_wait) {
                Some(WorkerDemographics::Generated(changes)) => {
                    while knobs.demographic_changes_per_second > 0.0
                        && change_ms(changes.position()) < end
                    {
                        for (row, diff) in changes.next_change() {
                            demographics_in.update(row, diff);
                        }
                    }
                }
                Some(WorkerDemographics::Mysql(feed)) => {
                    for (row, diff) in feed.try_recv_all().map_err(|e| e.to_string())? {
                        demographics_in.update(row, diff);
                    }
                    counters_in.update(Counter::DemographicsSkipped, feed.take_skipped());
                }
                None => {}
            }
            // Every worker's inputs stop exactly at each checkpoint boundary.
            tick = end.min(next_checkpoint);
            events_in.advance_to(tick);
            orders_in.advance_to(tick);
            restored_in.advance_to(tick);
            restored_in.flush();
            segments_in.advance_to(tick);
            segments_in.flush();
            // A differential input session tells timely of its new time only when flushed.
            demographics_in.advance_to(tick);
            demographics_in.flush();
            counters_in.advance_to(tick);
            counters_in.flush();
            status.generated_until.fetch_max(tick, Ordering::Relaxed);
            status.observed.tick_closed(index, tick);
            if let WorkerEvents::Kafka { reader, .. } = &mut events {
                // With checkpoints, the checkpoint is what a restart resumes from: offsets are
                // committed once one covering them is complete (below). Without, once the sink
                // has acknowledged what they cover.
                if checkpoints.is_none() {
                    reader.end_tick(tick);
                    reader
                        .commit_through(acknowledged.below())
                        .map_err(|e| e.to_string())?;
                }
            }
            worker.step();
            if let Some(handles) = handles.as_mut() {
                // A checkpoint still waiting for the sink (an outage) is not joined by another
                // copy of the state: this worker skips the boundary, which leaves that
                // checkpoint incomplete, and ignored.
                if tick == next_checkpoint && !captured.is_empty() && !stopping {
                    next_checkpoint = next_checkpoint.saturating_add(interval);
                } else if tick == next_checkpoint {
                    // Once the dataflow has done everything before the boundary (which needs
                    // every worker's inputs there), this worker's state is the boundary's.
                    while probe.less_than(&tick) && !failure.others_failed() {
                        worker.step_or_park(Some(Duration::from_millis(1)));
                    }
                    if failure.others_failed() {
                        break;
                    }
                    let state = handles.capture(tick).ok_or_else(|| {
                        format!("cannot read the dataflow's state at the boundary {tick}")
                    })?;
                    let offsets = match &events {
                        WorkerEvents::Kafka { reader, .. } => reader.positions().clone(),
                        WorkerEvents::Generator { .. } => BTreeMap::new(),
                    };
                    let c = checkpoints
                        .as_ref()
                        .expect("handles are kept only to checkpoint");
                    captured.push(WorkerCheckpoint {
                        version: checkpoint::VERSION,
                        pipeline: c.pipeline.clone(),
                        tick,
                        worker: index,
                        peers: peers as usize,
                        offsets,
                        state,
                    });
                    next_checkpoint = next_checkpoint.saturating_add(interval);
                    // A stop asked for meanwhile ends the run here, at the boundary all
                    // workers reached: this checkpoint is then the last and complete one.
                    if stopping || status.stop.load(Ordering::Relaxed) {
                        finished = true;
                    }
                }
                // Let the counters' arrangement compact, but never across the next boundary.
                let frontier = probe.with_frontier(|f| f.first().copied().unwrap_or(Tick::MAX));
                handles.allow_compaction(frontier.min(next_checkpoint - 1));
                let written = acknowledged.below();
                write_checkpoints(
                    &mut captured,
                    &mut writers,
                    &mut uncommitted,
                    written,
                    checkpoints.as_ref(),
                );
                if let WorkerEvents::Kafka { reader, .. } = &mut events {
                    commit_complete(reader, &mut uncommitted, checkpoints.as_ref(), false)
                        .map_err(|e| e.to_string())?;
                }
            }
            if finished {
                break;
            }
        }
        drop(events_in);
        drop(orders_in);
        drop(restored_in);
        drop(segments_in);
        drop(demographics_in);
        drop(counters_in);
        while !probe.done() && !failure.others_failed() {
            worker.step();
        }
        if let WorkerEvents::Kafka { reader, .. } = &mut events {
            // Everything read has been through the dataflow; commit once the sink has
            // acknowledged it. The sink acknowledges `tick` unless it failed, which sets `stop`
            // and ends the wait.
            let sink_failed = || status.sink_failed.load(Ordering::Relaxed);
            while acknowledged.below() < tick && !sink_failed() && !failure.others_failed() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if acknowledged.below() >= tick {
                match checkpoints.as_ref() {
                    None => reader.commit_all().map_err(|e| e.to_string())?,
                    Some(_) => {
                        // The last checkpoint's offsets, once every worker's file is written.
                        write_checkpoints(
                            &mut captured,
                            &mut writers,
                            &mut uncommitted,
                            acknowledged.below(),
                            checkpoints.as_ref(),
                        );
                        for writer in writers.drain(..) {
                            let _ = writer.join();
                        }
                        // The checkpoint, not the group's offsets, is what a restart resumes
                        // from: brokers that do not answer now do not fail the stop.
                        if let Err(error) =
                            commit_complete(reader, &mut uncommitted, checkpoints.as_ref(), true)
                        {
                            tracing::warn!(%error, "the last checkpoint's offsets are not committed; a restart resumes from the checkpoint");
                        }
                    }
                }
            }
        }
        for writer in writers {
            let _ = writer.join();
        }
        failure.disarm();
        Ok(())
    })
    .map_err(RunError::Dataflow)?;

    let ending = watchdog::conclude(guards, sink_thread, &watchdog);
    let outcome = outcome(ending, &watchdog).map(|written| Report {
        events: status.generated.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        batches: status.batches.load(Ordering::Relaxed),
        written,
    });
    // The other processes learn how this one ended: a goodbye, or why it failed.
    watchdog.end(outcome.as_ref().err().map(ToString::to_string).as_deref());
    outcome
}

/// What the run's threads ended with, as the run's result (the lines written): a failure
/// elsewhere (or of the connections to elsewhere) first, since this process's own errors are
/// then its consequences.
fn outcome(
    ending: Ending<(), Result<u64, SinkError>>,
    watchdog: &Watchdog,
) -> Result<u64, RunError> {
    let failure = watchdog.failure_within(Duration::from_secs(1));
    if let Some(failure) = failure.filter(|f| !matches!(f, Failure::Local(_))) {
        return Err(failure.into());
    }
    let Ending::Joined { workers, sink } = ending else {
        return Err(watchdog
            .failure()
            .unwrap_or_else(|| Failure::Local("the run's threads were left behind".into()))
            .into());
    };
    // The workers' errors first: a worker that fails (a source that gives up) cancels the sink,
    // whose error then only follows from it; a failing sink ends the workers without an error.
    for result in workers {
        result
            .map_err(RunError::Dataflow)?
            .map_err(RunError::Source)?;
    }
    sink.map_err(|_| RunError::Dataflow("the sink thread panicked".into()))?
        .map_err(RunError::from)
}

/// The watchdog's hook: a failed run, here or elsewhere, stops every local worker.
fn stop_on_failure(
    status: &Arc<Status>,
    failed: &Arc<AtomicBool>,
) -> impl Fn() + Send + Sync + 'static {
    let (status, failed) = (Arc::clone(status), Arc::clone(failed));
    move || {
        failed.store(true, Ordering::Relaxed);
        status.stop.store(true, Ordering::Relaxed);
    }
}

/// Armed while a worker runs: if the worker ends any other way than by [`disarm`](Self::disarm)
/// (an error returned with `?`, a panic), it stops the run, so that the other workers, which
/// would wait for its progress forever, end too and the error reaches the user.
struct StopOthersOnFailure {
    status: Arc<Status>,
    failed: Arc<AtomicBool>,
    armed: bool,
}

impl StopOthersOnFailure {
    fn new(status: &Arc<Status>, failed: &Arc<AtomicBool>) -> StopOthersOnFailure {
        StopOthersOnFailure {
            status: Arc::clone(status),
            failed: Arc::clone(failed),
            armed: true,
        }
    }

    /// Whether another worker failed: then nothing it held will complete.
    fn others_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for StopOthersOnFailure {
    fn drop(&mut self) {
        if self.armed {
            self.failed.store(true, Ordering::Relaxed);
            self.status.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Holds a worker's sources back while the sink has not written the ticks before `behind`: its
/// bounded queue is full because InfluxDB is slow or down. The dataflow is stepped meanwhile but
/// nothing is polled. A wait of over a second is logged, and the worker's Kafka partitions are
/// paused until it ends, which also drops what librdkafka had pre-fetched: unread events wait in
/// Kafka (where the consumer lag shows them), not in memory.
fn wait_for_sink(
    worker: &mut timely::worker::Worker,
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
    if let Some(clear) = written.as_ref().and_then(|w| w.clear.as_ref()) {
        // The first timestamp is written even with no output of its own: it carries the removals.
        pending.entry(clear.at).or_default();
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
                written.journal.record(&batch).map_err(|e| SinkError::Io {
                    target: e.path.display().to_string(),
                    source: e.source,
                })?;
            }
            sink.write_batch(&batch)?;
            remember(status, &batch);
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

/// Locks a mutex, taking over one a panicking thread left behind (the data are plain figures).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Keeps the all-time rows and counters of a batch for the terminal view.
fn remember(status: &Status, batch: &Batch) {
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

/// Where and what a run checkpoints.
struct Checkpoints {
    dir: PathBuf,
    pipeline: String,
    interval_ms: u64,
    /// The checkpoint this run restores.
    found: Option<checkpoint::Found>,
}

/// Writes (on their own threads) the captured checkpoints whose boundary the sink has
/// acknowledged: only then is everything before the boundary in the sink, closed windows
/// included. Their offsets wait in `uncommitted` for [`commit_complete`].
fn write_checkpoints(
    captured: &mut Vec<WorkerCheckpoint>,
    writers: &mut Vec<std::thread::JoinHandle<()>>,
    uncommitted: &mut Vec<(Tick, BTreeMap<i32, i64>)>,
    acknowledged_below: Tick,
    checkpoints: Option<&Checkpoints>,
) {
    let Some(checkpoints) = checkpoints else {
        return;
    };
    writers.retain(|w| !w.is_finished());
    let ready = captured.partition_point(|c| c.tick <= acknowledged_below);
    for checkpoint in captured.drain(..ready) {
        uncommitted.push((checkpoint.tick, checkpoint.offsets.clone()));
        let dir = checkpoints.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("shopflow-checkpoint".into())
            .spawn(move || {
                let started = Instant::now();
                match checkpoint::write(&dir, &checkpoint) {
                    Ok(path) => {
                        tracing::debug!(path = %path.display(), elapsed = ?started.elapsed(), "checkpoint written");
                        if checkpoint.worker == 0
                            && let Err(error) = checkpoint::prune(&dir)
                        {
                            tracing::warn!(%error, "cannot remove old checkpoints");
                        }
                    }
                    Err(error) => tracing::error!(%error, "cannot write a checkpoint"),
                }
            });
        match spawned {
            Ok(writer) => writers.push(writer),
            Err(error) => tracing::error!(%error, "cannot start a checkpoint writer"),
        }
    }
}

/// Commits the offsets of the newest checkpoint in `uncommitted` that is complete on disk (every
/// worker's file written, in any process), and forgets it and the older ones: committed offsets
/// never run ahead of a checkpoint that holds the state they cover. At the end of a run
/// (`last`), waits a little for the other workers' files of the last one.
fn commit_complete(
    reader: &mut PartitionReader,
    uncommitted: &mut Vec<(Tick, BTreeMap<i32, i64>)>,
    checkpoints: Option<&Checkpoints>,
    last: bool,
) -> Result<(), crate::sources::kafka::KafkaSourceError> {
    let Some(checkpoints) = checkpoints else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(if last { 10 } else { 0 });
    loop {
        let newest = uncommitted
            .iter()
            .rposition(|(tick, _)| checkpoint::is_complete(&checkpoints.dir, *tick));
        if let Some(newest) = newest {
            let (_, offsets) = uncommitted.drain(..=newest).next_back().expect("one");
            return reader.commit(&offsets, last);
        }
        if uncommitted.is_empty() || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The journal of the rows this process writes, and the rows to clear in the run's first output:
/// see [`crate::journal`].
struct Written {
    journal: crate::journal::Journal,
    clear: Option<Clear>,
}

/// Rows a run before this one wrote after the restored checkpoint's boundary (or at all, with
/// none): those this process's workers keep and that its first output does not hold are written
/// as removals in it.
struct Clear {
    /// The run's first timestamp.
    at: Tick,
    keys: Vec<dataflows::model::AggregateKey>,
}

impl Written {
    fn open(
        checkpoints: &Checkpoints,
        workers: &Workers,
        start_ms: u64,
        tick_ms: u64,
        windows: dataflows::windows::WindowSpec,
    ) -> Result<Written, RunError> {
        let journal_error = |e: crate::journal::JournalError| RunError::Source(e.to_string());
        let since = checkpoints.found.as_ref().map(|f| f.tick);
        let first = (start_ms - start_ms % tick_ms).max(since.unwrap_or(0));
        let threads = workers.threads_per_process();
        let peers = threads * workers.processes.max(1);
        let local = workers.process * threads..(workers.process + 1) * threads;
        let mut keys: Vec<_> = crate::journal::written_since(&checkpoints.dir, since)
            .map_err(journal_error)?
            .into_iter()
            .filter(|key| local.contains(&dataflows::aggregates::owner(key, peers)))
            // A window closed by now keeps its values, as any window that closed while the
            // pipeline was down.
            .filter(|key| {
                key.window.is_none_or(|start| {
                    start
                        .0
                        .saturating_add(windows.size_ms + windows.allowed_lateness_ms)
                        > first
                })
            })
            .collect();
        keys.sort();
        if !keys.is_empty() {
            tracing::info!(
                rows = keys.len(),
                "rows written before the restart, checked against the restored state"
            );
        }
        Ok(Written {
            journal: crate::journal::Journal::new(
                &checkpoints.dir,
                workers.process,
                start_ms,
                checkpoints.interval_ms,
            ),
            clear: Some(Clear { at: first, keys }),
        })
    }

    /// At the run's first timestamp, adds a removal for every row to clear that `changes` does
    /// not write.
    fn clear_absent(&mut self, time: Tick, changes: &mut Vec<Change>) {
        if self.clear.as_ref().is_none_or(|clear| clear.at != time) {
            return;
        }
        let clear = self.clear.take().expect("checked above");
        let present: rustc_hash::FxHashSet<&dataflows::model::AggregateKey> = changes
            .iter()
            .filter_map(|change| match &change.key {
                OutputKey::Aggregate(key) => Some(key),
                OutputKey::Counter(_) => None,
            })
            .collect();
        let absent: Vec<Change> = clear
            .keys
            .into_iter()
            .filter(|key| !present.contains(key))
            .map(|key| Change {
                key: OutputKey::Aggregate(key),
                value: None,
            })
            .collect();
        if !absent.is_empty() {
            tracing::info!(
                rows = absent.len(),
                "rows written before the restart that the restored state does not hold: removed"
            );
        }
        changes.extend(absent);
    }
}
