//! The analytics graph's six inputs, owned together: what the runtime, the test harness and the
//! experiments feed, wired once.
//!
//! Events and the orders a checkpoint restores enter as plain streams; the demographics, the
//! source counters, and the restored contributions and segments as differential collections.
//! [`Inputs::analytics`] builds the graph of [`crate::analytics_with_state`] behind them, and
//! [`Inputs::advance_to`] moves all six to a new time at once, so that no driver can leave one
//! behind (which would hold the output's frontier back forever).
//!
//! A driver whose events come from an operator of its own (the runtime's source, which sends
//! them at its capability's time) builds the same graph with [`Inputs::analytics_of`]: the
//! events are then that stream, and the other five inputs stay here, advanced to the source's
//! time each time it moves.

use differential_dataflow::VecCollection;
use differential_dataflow::input::{Input as _, InputSession};
use timely::dataflow::operators::vec::Input as _;
use timely::dataflow::{InputHandleVec, Scope, StreamVec};

use crate::model::{
    Contribution, Counter, Demographic, Event, OrderId, OutputRow, Segment, Tick, Totals, UserId,
};
use crate::orders::OrderState;
use crate::state::{Handles, State};
use crate::{Params, Restored, analytics_with_state};

/// One recorded input, as the harness and the experiments replay them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An event delivery.
    Event(Event),
    /// A demographics change: `+1` inserts the row, `-1` deletes it; an update is both.
    Demographic(Demographic, isize),
    /// A source-side counter increment (a malformed message).
    Counter(Counter, isize),
}

/// A worker's handles on the graph's inputs.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use dataflows::Params;
/// use dataflows::inputs::Inputs;
/// use dataflows::model::{Counter, OutputKey, OutputValue, Tick};
/// use dataflows::windows::WindowSpec;
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let rows_seen = Arc::clone(&seen);
/// timely::execute(timely::Config::thread(), move |worker| {
///     let params = Params {
///         windows: WindowSpec { size_ms: 1_000, allowed_lateness_ms: 0 },
///         order_horizon_ms: 10_000,
///     };
///     let rows_seen = Arc::clone(&rows_seen);
///     let (mut inputs, probe) = worker.dataflow::<Tick, _, _>(|scope| {
///         let (inputs, rows, _handles) = Inputs::analytics(scope, params);
///         let rows = rows.inspect(move |(row, _, diff)| {
///             rows_seen.lock().unwrap().push((row.clone(), *diff))
///         });
///         (inputs, rows.probe().0)
///     });
///     inputs.count(Counter::MalformedFraming, 1);
///     inputs.advance_to(10);
///     worker.step_while(|| probe.less_than(&10));
/// })
/// .expect("the example runs");
/// let counted = (OutputKey::Counter(Counter::MalformedFraming), OutputValue::Count(1));
/// assert_eq!(*seen.lock().unwrap(), vec![(counted, 1)]);
/// ```
pub struct Inputs {
    /// `None` when the events come from a stream given to [`Inputs::analytics_of`].
    events: Option<InputHandleVec<Tick, Event>>,
    demographics: InputSession<Tick, Demographic, isize>,
    counters: InputSession<Tick, Counter, isize>,
    contributions: InputSession<Tick, Contribution, Totals>,
    segments: InputSession<Tick, (UserId, Segment), isize>,
    orders: InputHandleVec<Tick, (OrderId, OrderState)>,
}

impl Inputs {
    /// Builds the analytics graph in `scope` behind a new set of inputs, and returns them with
    /// the graph's output rows and this worker's [`Handles`] on its state (drop them unless you
    /// checkpoint: held, they keep the counters' arrangement from compacting).
    pub fn analytics<'scope>(
        scope: Scope<'scope, Tick>,
        params: Params,
    ) -> (Inputs, VecCollection<'scope, Tick, OutputRow>, Handles) {
        let mut events = InputHandleVec::new();
        let event_stream = scope.input_from(&mut events);
        let (mut inputs, rows, handles) = Inputs::analytics_of(scope, event_stream, params);
        inputs.events = Some(events);
        (inputs, rows, handles)
    }

    /// Like [`analytics`](Self::analytics), with the events coming from `events` (a source
    /// operator's stream) instead of an input of these: the one wiring of the graph, whichever
    /// way its events come. [`event`](Self::event) is then not to be called, and the source's
    /// capability holds the output back as much as these inputs do: advance these to the
    /// source's time each time it moves.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    ///
    /// use dataflows::Params;
    /// use dataflows::inputs::Inputs;
    /// use dataflows::model::{Counter, Event, OutputKey, OutputValue, Tick};
    /// use dataflows::windows::WindowSpec;
    /// use timely::dataflow::operators::generic::operator::empty;
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let rows_seen = Arc::clone(&seen);
    /// timely::execute(timely::Config::thread(), move |worker| {
    ///     let params = Params {
    ///         windows: WindowSpec { size_ms: 1_000, allowed_lateness_ms: 0 },
    ///         order_horizon_ms: 10_000,
    ///     };
    ///     let rows_seen = Arc::clone(&rows_seen);
    ///     let (mut inputs, probe) = worker.dataflow::<Tick, _, _>(|scope| {
    ///         // A source operator of the driver's own would stand here.
    ///         let events = empty::<_, Vec<Event>>(scope);
    ///         let (inputs, rows, _handles) = Inputs::analytics_of(scope, events, params);
    ///         let rows = rows.inspect(move |(row, _, diff)| {
    ///             rows_seen.lock().unwrap().push((row.clone(), *diff))
    ///         });
    ///         (inputs, rows.probe().0)
    ///     });
    ///     inputs.count(Counter::MalformedFraming, 2);
    ///     inputs.advance_to(10);
    ///     worker.step_while(|| probe.less_than(&10));
    /// })
    /// .expect("the example runs");
    /// let counted = (OutputKey::Counter(Counter::MalformedFraming), OutputValue::Count(2));
    /// assert_eq!(*seen.lock().unwrap(), vec![(counted, 1)]);
    /// ```
    pub fn analytics_of<'scope>(
        scope: Scope<'scope, Tick>,
        events: StreamVec<'scope, Tick, Event>,
        params: Params,
    ) -> (Inputs, VecCollection<'scope, Tick, OutputRow>, Handles) {
        let mut orders = InputHandleVec::new();
        let (demographics, demographic_rows) = scope.new_collection();
        let (counters, counter_increments) = scope.new_collection();
        let (contributions, restored_contributions) = scope.new_collection();
        let (segments, restored_segments) = scope.new_collection();
        let restored = Restored {
            contributions: restored_contributions,
            segments: restored_segments,
            orders: scope.input_from(&mut orders),
        };
        let (rows, handles) = analytics_with_state(
            events,
            demographic_rows,
            counter_increments,
            restored,
            params,
        );
        let inputs = Inputs {
            events: None,
            demographics,
            counters,
            contributions,
            segments,
            orders,
        };
        (inputs, rows, handles)
    }

    /// The time the inputs are at: what is sent now enters at it.
    pub fn time(&self) -> Tick {
        *self.orders.time()
    }

    /// Moves every input to `tick` and tells timely (a differential input session announces its
    /// new time only when flushed): everything before `tick` is then complete at this worker.
    pub fn advance_to(&mut self, tick: Tick) {
        if let Some(events) = &mut self.events {
            events.advance_to(tick);
        }
        self.orders.advance_to(tick);
        self.contributions.advance_to(tick);
        self.contributions.flush();
        self.segments.advance_to(tick);
        self.segments.flush();
        self.demographics.advance_to(tick);
        self.demographics.flush();
        self.counters.advance_to(tick);
        self.counters.flush();
    }

    /// Sends an event.
    ///
    /// # Panics
    ///
    /// When the inputs were built by [`analytics_of`](Self::analytics_of): their events come
    /// from its stream.
    #[inline]
    pub fn event(&mut self, event: Event) {
        self.events
            .as_mut()
            .expect("events are sent only to the inputs of Inputs::analytics")
            .send(event);
    }

    /// Changes the demographics: `+1` inserts `row`, `-1` deletes it.
    #[inline]
    pub fn demographic(&mut self, row: Demographic, diff: isize) {
        self.demographics.update(row, diff);
    }

    /// Adds `n` to a source counter.
    #[inline]
    pub fn count(&mut self, counter: Counter, n: isize) {
        self.counters.update(counter, n);
    }

    /// Feeds a worker's share of a checkpoint back in at the current time: its contributions,
    /// its segments (retract them with [`retract_segments`](Self::retract_segments) once the
    /// demographics enter), its counters as increments, and its orders.
    pub fn restore(&mut self, state: &State) {
        for (contribution, totals) in &state.contributions {
            self.contributions.update(*contribution, *totals);
        }
        for (segment, n) in &state.segments {
            self.segments.update(segment.clone(), *n);
        }
        for (counter, n) in &state.counters {
            self.counters.update(*counter, *n as isize);
        }
        for order in &state.orders {
            self.orders.send(order.clone());
        }
    }

    /// Retracts segments [`restore`](Self::restore) fed in, at the current time.
    pub fn retract_segments(&mut self, segments: &[((UserId, Segment), isize)]) {
        for (segment, n) in segments {
            self.segments.update(segment.clone(), -*n);
        }
    }

    /// Sends one recorded input as the runtime's sources would: an event at the worker whose
    /// turn it is in `spread`, anything else at worker 0 only.
    pub fn replay(&mut self, input: &Input, spread: &mut RoundRobin) {
        match input {
            Input::Event(event) => {
                if spread.take_turn() {
                    self.event(event.clone());
                }
            }
            Input::Demographic(row, diff) if spread.index == 0 => {
                self.demographic(row.clone(), *diff)
            }
            Input::Counter(counter, n) if spread.index == 0 => self.count(*counter, *n),
            Input::Demographic(..) | Input::Counter(..) => {}
        }
    }
}

/// Deals recorded events to the workers in turn: the `n`th event (counted over every worker) to
/// worker `n % peers`.
#[derive(Clone, Copy, Debug)]
pub struct RoundRobin {
    index: usize,
    peers: usize,
    seen: usize,
}

impl RoundRobin {
    /// The turns of worker `index` of `peers`.
    pub fn new(index: usize, peers: usize) -> RoundRobin {
        RoundRobin {
            index,
            peers: peers.max(1),
            seen: 0,
        }
    }

    /// Counts one event, and says whether it is this worker's.
    fn take_turn(&mut self) -> bool {
        let mine = self.seen % self.peers == self.index;
        self.seen += 1;
        mine
    }
}
