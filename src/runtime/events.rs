//! A worker's event pump: its share of the generator, or its Kafka partitions, sent into the
//! dataflow one tick at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dataflows::inputs::Inputs;
use dataflows::model::Tick;
use timely::worker::Worker;

use super::EventSource;
use super::now_ms;
use super::status::{Status, lock};
use super::worker::Shared;
use crate::generators::events::{EventGenerator, Pace};
use crate::sources::kafka::{KafkaSourceError, PartitionReader};

/// A worker's event input: the generator's share, or the worker's partitions.
pub(super) enum WorkerEvents {
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

/// The tick a pump fills.
pub(super) struct Turn {
    /// Its start.
    pub(super) tick: Tick,
    pub(super) tick_ms: u64,
    /// This worker's index, and the number of workers.
    pub(super) index: usize,
    pub(super) peers: u64,
    /// When stopping, the checkpoint boundary the tick must reach.
    pub(super) stop_at: Option<Tick>,
}

/// What a pump sent in a tick.
pub(super) struct Pumped {
    /// The tick's end: later than its start plus the tick length when reading fell behind.
    pub(super) end: Tick,
    /// Events sent.
    pub(super) sent: u64,
    /// The newest event time sent.
    pub(super) newest: u64,
    /// Whether the input is read to its end.
    pub(super) finished: bool,
}

impl WorkerEvents {
    /// Worker `index` of `peers`'s pump; a Kafka reader resumes at `resume` (a checkpoint's
    /// offsets) and waits for brokers restarting as the run starts, as the cluster does.
    pub(super) fn open(
        shared: &Shared,
        index: usize,
        peers: usize,
        resume: Option<&BTreeMap<i32, i64>>,
    ) -> Result<WorkerEvents, KafkaSourceError> {
        Ok(match &shared.plan.events {
            EventSource::Generator { .. } => WorkerEvents::Generator {
                generator: shared.generator.clone(),
                pace: shared.plan.config.generator.pace,
                last_event: shared.plan.stop.events.unwrap_or(u64::MAX),
            },
            EventSource::Kafka {
                config,
                until_caught_up,
                producer_done,
            } => {
                let reader = PartitionReader::open_within(
                    config,
                    index,
                    peers,
                    resume,
                    shared.timeout,
                    &shared.status.stop,
                )?;
                WorkerEvents::Kafka {
                    reader: Box::new(reader),
                    until_caught_up: *until_caught_up,
                    producer_done: producer_done.clone(),
                }
            }
        })
    }

    /// The worker's Kafka reader, if it reads Kafka.
    pub(super) fn reader(&mut self) -> Option<&mut PartitionReader> {
        match self {
            WorkerEvents::Kafka { reader, .. } => Some(reader.as_mut()),
            WorkerEvents::Generator { .. } => None,
        }
    }

    /// Sends the tick's events; `None` once the generator has sent its last event.
    pub(super) fn pump(
        &mut self,
        worker: &mut Worker,
        inputs: &mut Inputs,
        turn: &Turn,
        status: &Status,
    ) -> Result<Option<Pumped>, KafkaSourceError> {
        match self {
            WorkerEvents::Generator {
                generator,
                pace,
                last_event,
            } => Ok(generate(
                generator,
                *pace,
                *last_event,
                worker,
                inputs,
                turn,
                status,
            )),
            WorkerEvents::Kafka {
                reader,
                until_caught_up,
                producer_done,
            } => {
                let done = until_caught_up.then_some(producer_done.as_deref());
                read(reader, done, worker, inputs, turn, status).map(Some)
            }
        }
    }
}

/// The generator's events of the tick that are this worker's: event `n` is worker
/// `n mod peers`'s.
fn generate(
    generator: &EventGenerator,
    pace: Pace,
    last_event: u64,
    worker: &mut Worker,
    inputs: &mut Inputs,
    turn: &Turn,
    status: &Status,
) -> Option<Pumped> {
    let (tick, peers) = (turn.tick, turn.peers);
    let end = tick + turn.tick_ms;
    let first = generator.first_at_or_after(tick);
    if first >= last_event {
        return None;
    }
    if pace == Pace::Realtime {
        while now_ms() < end && !status.stop.load(Ordering::Relaxed) {
            worker.step_or_park(Some(Duration::from_millis(
                end.saturating_sub(now_ms()).min(50),
            )));
        }
    }
    let last = generator.first_at_or_after(end).min(last_event);
    let mut n = first + (turn.index as u64 + peers - first % peers) % peers;
    let (mut sent, mut newest) = (0u64, 0u64);
    while n < last {
        let event = generator.event(n);
        newest = newest.max(event.event_time.0);
        inputs.event(event);
        sent += 1;
        n += peers;
    }
    Some(Pumped {
        end,
        sent,
        newest,
        finished: false,
    })
}

/// Reads the worker's partitions until the tick's end on the wall clock (processing time is the
/// wall clock). With `until_caught_up` (`Some`, holding the producer's flag if there is one),
/// the input is finished once every partition is read to its end and the producer is done.
fn read(
    reader: &mut PartitionReader,
    until_caught_up: Option<Option<&AtomicBool>>,
    worker: &mut Worker,
    inputs: &mut Inputs,
    turn: &Turn,
    status: &Status,
) -> Result<Pumped, KafkaSourceError> {
    let mut end = turn.tick + turn.tick_ms;
    let (mut sent, mut newest, mut finished) = (0u64, 0u64, false);
    loop {
        let polled = reader.poll(turn.tick, |event| {
            newest = newest.max(event.event_time.0);
            inputs.event(event);
            sent += 1;
        })?;
        status
            .consumed
            .fetch_add(polled.messages as u64, Ordering::Relaxed);
        for (counter, n) in polled.malformed {
            inputs.count(counter, n);
        }
        if now_ms() >= end || status.stop.load(Ordering::Relaxed) {
            break;
        }
        if polled.messages == 0 {
            if until_caught_up.is_some_and(|producer_done| {
                producer_done.is_none_or(|done| done.load(Ordering::Relaxed))
            }) && reader.lag() == Some(0)
                // The watermarks may predate the producer's last messages; its own count may
                // not.
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
    end = end.max(now - now % turn.tick_ms);
    if let Some(boundary) = turn.stop_at {
        end = end.max(boundary);
    }
    if let Some(lag) = reader.lag() {
        lock(&status.consumer_lags).insert(turn.index, lag as u64);
        status.observed.source_answered(turn.index);
    }
    Ok(Pumped {
        end,
        sent,
        newest,
        finished,
    })
}
