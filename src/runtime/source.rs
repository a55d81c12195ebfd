//! The events source: a timely source operator per worker that owns the worker's event pump
//! (the generator's share, or its Kafka partitions), as timely's kafkaesque source: each
//! activation polls with a zero timeout (or emits the generator's share), sends at the
//! capability's time, and re-activates itself; the capability moves by one rule, [`TickRule`].
//!
//! The worker loop drives it through a [`SourceHandle`]. After each tick the source holds until
//! the loop has taken the tick: the loop then feeds the other inputs at the tick's time and
//! advances them to where the source's capability went, records the reader's positions as the
//! tick's (commits without checkpoints), captures the checkpoint at a boundary (the positions
//! are then exactly the boundary's: nothing of a later tick is read before), applies
//! backpressure, and starts the next tick.

use std::cell::{RefCell, RefMut};
use std::mem;
use std::rc::Rc;
use std::sync::Arc;

use dataflows::model::{Counter, Event, Tick};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use timely::scheduling::Activator;

use super::events::{Pumped, Tally, Turn, WorkerEvents};
use super::status::Status;
use super::tick::TickRule;
use crate::sources::kafka::{KafkaSourceError, PartitionReader};

/// Builds a worker's events source in a scope.
pub(super) trait EventsSource<'scope> {
    /// A source operator ("Events"), the first tick starting at `first` (what its capability
    /// is downgraded to at once), its ticks moving by `rule`; with the handle through which the
    /// worker loop gives it its pump ([`SourceHandle::open`]) and drives it. Worker `index` of
    /// `peers`.
    fn events_source(
        self,
        rule: TickRule,
        first: Tick,
        status: Arc<Status>,
        worker: (usize, usize),
    ) -> (StreamVec<'scope, Tick, Event>, SourceHandle);
}

impl<'scope> EventsSource<'scope> for Scope<'scope, Tick> {
    fn events_source(
        self,
        rule: TickRule,
        first: Tick,
        status: Arc<Status>,
        (index, peers): (usize, usize),
    ) -> (StreamVec<'scope, Tick, Event>, SourceHandle) {
        let state = Rc::new(RefCell::new(SourceState {
            events: None,
            rule,
            tick: first,
            phase: Phase::Held,
            stopping: false,
            malformed: Vec::new(),
        }));
        let shared = Rc::clone(&state);
        let mut activator = None;
        let stream = source::<_, CapacityContainerBuilder<Vec<Event>>, _, _>(
            self,
            "Events",
            |mut capability, info| {
                let wake = self.activator_for(info.address);
                activator = Some(wake.clone());
                capability.downgrade(&first);
                let mut capability = Some(capability);
                move |output| {
                    // The loop never steps the worker while it holds the state; were it to,
                    // the source waits for the next activation rather than fail.
                    let Ok(mut state) = shared.try_borrow_mut() else {
                        wake.activate();
                        return;
                    };
                    let mut tally = match state.phase {
                        Phase::Pumping(tally) => tally,
                        Phase::Shut => {
                            capability = None;
                            return;
                        }
                        Phase::Held | Phase::Closed(_) | Phase::Ended | Phase::Failed(_) => return,
                    };
                    let Some(held) = capability.as_mut() else {
                        return;
                    };
                    let state = &mut *state;
                    let turn = Turn {
                        tick: state.tick,
                        due: state.rule.due(state.tick),
                        index,
                        peers: peers as u64,
                    };
                    let mut session = output.session(held);
                    let malformed = &mut state.malformed;
                    let pumped = match state.events.as_mut() {
                        // The first tick after a restore reads nothing: its output is the
                        // checkpoint's rows alone (see `TickRule::reads_nothing`).
                        Some(events) if state.rule.reads_nothing(state.tick) => Ok(events.unread()),
                        Some(events) => events.pump(
                            &turn,
                            &status,
                            |event| {
                                tally.count(&event);
                                session.give(event);
                            },
                            |counter, n| malformed.push((counter, n)),
                        ),
                        None => Ok(Pumped::Ended),
                    };
                    drop(session);
                    if let Some(next) = state.went((pumped, tally), &wake) {
                        held.downgrade(&next);
                    }
                }
            },
        );
        let activator = activator.expect("timely calls a source's constructor as it builds it");
        (stream, SourceHandle { state, activator })
    }
}

/// How a tick ended, for the worker loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TickEnd {
    /// The tick's start: the time its events were sent at.
    pub(super) tick: Tick,
    /// Its end on the clock: what its demographics are fed up to.
    pub(super) end: Tick,
    /// Where the next tick starts: the source's capability is there now.
    pub(super) next: Tick,
    /// What it sent.
    pub(super) tally: Tally,
    /// Whether the input is read to its end.
    pub(super) finished: bool,
}

/// What the source has to report to the worker loop.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// A tick closed; the source holds until [`SourceHandle::start`].
    Closed(TickEnd),
    /// The generator sent its last event.
    Ended,
}

/// Where the source is.
#[derive(Debug)]
enum Phase {
    /// Waiting for the loop to start the next tick.
    Held,
    /// Pumping the tick: what it has sent so far.
    Pumping(Tally),
    /// The tick closed; the loop has not taken it yet.
    Closed(TickEnd),
    /// The generator sent its last event.
    Ended,
    /// The pump failed: the loop returns the error.
    Failed(KafkaSourceError),
    /// The capability is dropped (or about to be): nothing more comes.
    Shut,
}

/// What the source operator and its handle share.
struct SourceState {
    /// The pump; `None` until the handle opens it, and once the handle is dropped.
    events: Option<WorkerEvents>,
    rule: TickRule,
    /// The current tick's start: the capability's time.
    tick: Tick,
    phase: Phase,
    /// A stop is under way: the tick reaches the next boundary.
    stopping: bool,
    /// The malformed messages the tick's polls counted, for the counters input.
    malformed: Vec<(Counter, isize)>,
}

impl SourceState {
    /// Moves on after a go of the pump; returns where the capability goes when the tick closed.
    fn went(
        &mut self,
        (pumped, tally): (Result<Pumped, KafkaSourceError>, Tally),
        wake: &Activator,
    ) -> Option<Tick> {
        match pumped {
            Ok(Pumped::Again(delay)) => {
                self.phase = Phase::Pumping(tally);
                if delay.is_zero() {
                    wake.activate();
                } else {
                    wake.activate_after(delay);
                }
                None
            }
            Ok(Pumped::Closed { clock, finished }) => {
                let closed = self.rule.close(self.tick, clock, self.stopping);
                self.phase = Phase::Closed(TickEnd {
                    tick: self.tick,
                    end: closed.end,
                    next: closed.next,
                    tally,
                    finished,
                });
                self.tick = closed.next;
                Some(closed.next)
            }
            Ok(Pumped::Ended) => {
                self.phase = Phase::Ended;
                None
            }
            Err(error) => {
                self.phase = Phase::Failed(error);
                None
            }
        }
    }
}

/// The worker loop's handle on its events source. Dropped, it shuts the source (its capability
/// goes, and the pump with its reader).
pub(super) struct SourceHandle {
    state: Rc<RefCell<SourceState>>,
    activator: Activator,
}

impl SourceHandle {
    /// Gives the source its pump, before its first tick starts.
    pub(super) fn open(&self, events: WorkerEvents) {
        self.state.borrow_mut().events = Some(events);
    }

    /// The current tick's start: the source's capability is there, and the other inputs should
    /// be.
    pub(super) fn tick(&self) -> Tick {
        self.state.borrow().tick
    }

    /// The next checkpoint boundary.
    pub(super) fn boundary(&self) -> Tick {
        self.state.borrow().rule.boundary()
    }

    /// Moves on to the boundary after the current one, taken or skipped.
    pub(super) fn pass_boundary(&self) {
        self.state.borrow_mut().rule.pass_boundary();
    }

    /// Starts the next tick (`stopping`: it reaches the next boundary), once the last one is
    /// taken.
    pub(super) fn start(&self, stopping: bool) {
        let mut state = self.state.borrow_mut();
        debug_assert!(matches!(state.phase, Phase::Held), "{:?}", state.phase);
        if matches!(state.phase, Phase::Held) {
            state.stopping = stopping;
            state.phase = Phase::Pumping(Tally::default());
            self.activator.activate();
        }
    }

    /// Takes what the source has to report, if anything: a closed tick (the source then holds
    /// until [`start`](Self::start)), its end, or the pump's error.
    pub(super) fn take(&self) -> Result<Option<Report>, KafkaSourceError> {
        let mut state = self.state.borrow_mut();
        match mem::replace(&mut state.phase, Phase::Held) {
            Phase::Closed(end) => Ok(Some(Report::Closed(end))),
            Phase::Ended => {
                state.phase = Phase::Ended;
                Ok(Some(Report::Ended))
            }
            Phase::Failed(error) => {
                state.phase = Phase::Shut;
                Err(error)
            }
            other => {
                state.phase = other;
                Ok(None)
            }
        }
    }

    /// Hands the malformed messages counted since the last call to `count`.
    pub(super) fn drain_malformed(&self, mut count: impl FnMut(Counter, isize)) {
        for (counter, n) in self.state.borrow_mut().malformed.drain(..) {
            count(counter, n);
        }
    }

    /// The worker's Kafka reader, if it reads Kafka. Not to be held while the worker steps.
    pub(super) fn reader(&self) -> Option<RefMut<'_, PartitionReader>> {
        RefMut::filter_map(self.state.borrow_mut(), |state| {
            state.events.as_mut().and_then(WorkerEvents::reader)
        })
        .ok()
    }

    /// Shuts the source: its capability goes at its next activation, which this asks for.
    pub(super) fn shut(&self) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            state.phase = Phase::Shut;
        }
        self.activator.activate();
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.shut();
        if let Ok(mut state) = self.state.try_borrow_mut() {
            state.events = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::config::Config;
    use crate::generators::events::{EventGenerator, Pace};

    const START_MS: u64 = 1_700_000_000_000;

    /// Steps `worker` until the source reports.
    fn report(worker: &mut timely::worker::Worker, source: &SourceHandle) -> Report {
        for _ in 0..1_000 {
            if let Some(report) = source.take().expect("a generator never fails") {
                return report;
            }
            worker.step();
        }
        panic!("the source did not close its tick");
    }

    /// The generator's source sends exactly the events of each tick at the tick, moves its
    /// capability by the rule, holds after each tick (reading nothing until started again), stops
    /// at the boundary, and, dropped, lets the dataflow complete.
    #[test]
    fn the_source_sends_each_tick_at_its_time_and_holds_between_ticks() {
        let mut knobs = Config::load(None).expect("the defaults load").generator;
        knobs.pace = Pace::Unbounded;
        knobs.events_per_second = 500.0;
        let generator = EventGenerator::new(knobs, START_MS).expect("the defaults are valid");
        timely::execute(timely::Config::thread(), move |worker| {
            let first = START_MS + 3_000;
            let boundary = START_MS + 10_000;
            let rule = TickRule::new(1_000, first, 10_000, false);
            assert_eq!(rule.boundary(), boundary);
            let seen: Rc<RefCell<Vec<(Tick, Event)>>> = Rc::default();
            let (probe, source) = worker.dataflow::<Tick, _, _>(|scope| {
                let status = Arc::new(Status::default());
                let (events, source) = scope.events_source(rule, first, status, (0, 1));
                let seen = Rc::clone(&seen);
                let events = events.inspect_core(move |event| {
                    if let Ok((stamp, events)) = event {
                        let time = *stamp.least().expect("sent at a time");
                        seen.borrow_mut()
                            .extend(events.iter().map(|e| (time, e.clone())));
                    }
                });
                (events.probe().0, source)
            });
            source.open(WorkerEvents::Generator {
                generator: generator.clone(),
                pace: Pace::Unbounded,
                last_event: u64::MAX,
            });
            let settle = |worker: &mut timely::worker::Worker| {
                for _ in 0..20 {
                    worker.step();
                }
            };
            // Held until started: nothing sent, the capability at the first tick.
            settle(worker);
            assert!(seen.borrow().is_empty());
            assert!(!probe.less_than(&first) && probe.less_equal(&first));
            let mut tick = first;
            while tick < boundary {
                source.start(tick == START_MS + 8_000);
                let Report::Closed(closed) = report(worker, &source) else {
                    panic!("the generator has no last event here");
                };
                // The last tick stops: it jumps to the boundary, and no further.
                let stopping = tick == START_MS + 8_000;
                let end = if stopping { boundary } else { tick + 1_000 };
                assert_eq!((closed.tick, closed.end, closed.next), (tick, end, end));
                settle(worker);
                assert!(!probe.less_than(&end) && probe.less_equal(&end));
                // The generator's tick is its share of simulated time, however far it jumps.
                let expected: Vec<(Tick, Event)> = (generator.first_at_or_after(tick)
                    ..generator.first_at_or_after(tick + 1_000))
                    .map(|n| (tick, generator.event(n)))
                    .collect();
                assert!(!expected.is_empty());
                assert_eq!(closed.tally.sent, expected.len() as u64);
                assert_eq!(*seen.borrow(), expected, "the tick at {tick}");
                seen.borrow_mut().clear();
                tick = end;
            }
            assert_eq!(tick, boundary);
            drop(source);
            settle(worker);
            assert!(probe.done());
        })
        .expect("the test's worker runs");
    }
}
