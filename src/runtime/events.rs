//! A worker's event pump: its share of the generator, or its Kafka partitions, sent into the
//! dataflow one tick at a time by the events source ([`super::source`]), a go at a time: a
//! pump never waits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dataflows::model::{Counter, Event, Tick};

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
    /// Its start: the time its events are sent at.
    pub(super) tick: Tick,
    /// When it is due to end, on the clock.
    pub(super) due: Tick,
    /// This worker's index, and the number of workers.
    pub(super) index: usize,
    pub(super) peers: u64,
}

/// What one go of a pump did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pumped {
    /// The tick goes on: pump again after this long (at once if zero).
    Again(Duration),
    /// The tick is over. `clock` is the wall clock at its close when ticks follow it (Kafka),
    /// `None` for simulated time; `finished` when the input is read to its end.
    Closed { clock: Option<u64>, finished: bool },
    /// The generator has sent its last event.
    Ended,
}

/// What a tick sent, over the goes of its pump.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Events sent.
    pub(super) sent: u64,
    /// The newest event time sent.
    pub(super) newest: u64,
}

impl Tally {
    /// Counts `event`, on its way out.
    #[inline]
    pub(super) fn count(&mut self, event: &Event) {
        self.newest = self.newest.max(event.event_time.0);
        self.sent += 1;
    }
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

    /// Closes a tick without reading anything.
    pub(super) fn unread(&self) -> Pumped {
        let clock = match self {
            WorkerEvents::Generator { .. } => None,
            WorkerEvents::Kafka { .. } => Some(now_ms()),
        };
        Pumped::Closed {
            clock,
            finished: false,
        }
    }

    /// One go at the tick: sends what is there now through `emit` (and a poll's malformed
    /// messages through `count`) without waiting, and says when to go on.
    pub(super) fn pump(
        &mut self,
        turn: &Turn,
        status: &Status,
        emit: impl FnMut(Event),
        count: impl FnMut(Counter, isize),
    ) -> Result<Pumped, KafkaSourceError> {
        match self {
            WorkerEvents::Generator {
                generator,
                pace,
                last_event,
            } => Ok(generate(generator, *pace, *last_event, turn, status, emit)),
            WorkerEvents::Kafka {
                reader,
                until_caught_up,
                producer_done,
            } => {
                let done = until_caught_up.then_some(producer_done.as_deref());
                read(reader, done, turn, status, emit, count)
            }
        }
    }
}

/// The generator's events of the tick that are this worker's: event `n` is worker
/// `n mod peers`'s. Realtime, not before the tick's end on the clock.
fn generate(
    generator: &EventGenerator,
    pace: Pace,
    last_event: u64,
    turn: &Turn,
    status: &Status,
    mut emit: impl FnMut(Event),
) -> Pumped {
    let (tick, end, peers) = (turn.tick, turn.due, turn.peers);
    let first = generator.first_at_or_after(tick);
    if first >= last_event {
        return Pumped::Ended;
    }
    if pace == Pace::Realtime {
        let now = now_ms();
        if now < end && !status.stop.load(Ordering::Relaxed) {
            return Pumped::Again(Duration::from_millis((end - now).min(50)));
        }
    }
    let last = generator.first_at_or_after(end).min(last_event);
    let mut n = first + (turn.index as u64 + peers - first % peers) % peers;
    while n < last {
        emit(generator.event(n));
        n += peers;
    }
    Pumped::Closed {
        clock: None,
        finished: false,
    }
}

/// Polls the worker's partitions once, with a zero timeout; the tick closes at its end on the
/// wall clock (processing time is the wall clock). With `until_caught_up` (`Some`, holding the
/// producer's flag if there is one), the input is finished once every partition is read to its
/// end and the producer is done.
fn read(
    reader: &mut PartitionReader,
    until_caught_up: Option<Option<&AtomicBool>>,
    turn: &Turn,
    status: &Status,
    emit: impl FnMut(Event),
    mut count: impl FnMut(Counter, isize),
) -> Result<Pumped, KafkaSourceError> {
    let end = turn.due;
    let polled = reader.poll(turn.tick, emit)?;
    status
        .consumed
        .fetch_add(polled.messages as u64, Ordering::Relaxed);
    for (counter, n) in polled.malformed {
        count(counter, n);
    }
    let now = now_ms();
    let mut finished = false;
    if now < end && !status.stop.load(Ordering::Relaxed) {
        if polled.messages > 0 {
            return Ok(Pumped::Again(Duration::ZERO));
        }
        let caught_up = until_caught_up.is_some_and(|producer_done| {
            producer_done.is_none_or(|done| done.load(Ordering::Relaxed))
        }) && reader.lag() == Some(0)
            // The watermarks may predate the producer's last messages; its own count may not.
            && status.consumed.load(Ordering::Relaxed) >= status.produced.load(Ordering::Relaxed);
        if !caught_up {
            return Ok(Pumped::Again(Duration::from_millis((end - now).min(5))));
        }
        finished = true;
    }
    let clock = Some(now_ms());
    if let Some(lag) = reader.lag() {
        lock(&status.consumer_lags).insert(turn.index, lag as u64);
        status.observed.source_answered(turn.index);
    }
    Ok(Pumped::Closed { clock, finished })
}
