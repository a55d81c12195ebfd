//! The order ledger: turns delivered events into counted contributions, once each.
//!
//! Events are routed by order id. Each worker keeps, per order seen within the last
//! `order_horizon_ms` of processing time, what was counted for it: whether its click was, and the
//! purchase (so a refund can retract exactly what was counted, in the window it was counted in).
//! That state is bounded by the event rate times the horizon, never by the total number of events;
//! an order is forgotten `order_horizon_ms` after its first event arrived.
//!
//! Events of one tick are applied when the tick is complete, in a canonical order (by order, then
//! click < purchase < refund, then the whole record), so the result is the same for any number of
//! workers and any arrival order within and across ticks.

mod ledger;
mod order_table;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

pub use ledger::{Ledger, OrderState, TickOutput};

use crate::model::{Contribution, Counter, Event, OrderId, Tick, Totals};
use crate::windows::WindowSpec;

/// The order id's route to a worker: events and restored orders take the same one.
fn route(order: OrderId) -> u64 {
    order.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17
}

/// A worker's handle on its [`OrderLedger`]'s state, as an arrangement's trace is one on the
/// arrangement's: it reads the ledger for a checkpoint while the dataflow is paused at a tick
/// boundary.
pub struct LedgerHandle {
    ledger: Rc<RefCell<Ledger>>,
}

impl LedgerHandle {
    /// Every order this worker's ledger remembers (see [`Ledger::export`]).
    pub fn export(&self) -> Vec<(OrderId, OrderState)> {
        self.ledger.borrow().export()
    }

    /// How many orders this worker's ledger remembers.
    pub fn len(&self) -> usize {
        self.ledger.borrow().len()
    }

    /// Whether this worker's ledger remembers no order.
    pub fn is_empty(&self) -> bool {
        self.ledger.borrow().is_empty()
    }
}

/// Extension trait for the `order_ledger` method, on a stream of delivered events.
pub trait OrderLedger<'scope> {
    /// Routes events by order and applies them to per-worker [`Ledger`]s, one complete tick at
    /// a time: each event counted once, duplicates dropped, a refund retracting exactly the
    /// purchase it names, in the window the purchase was counted in.
    ///
    /// `restored` carries the orders a checkpoint remembered; they join the ledger of the worker
    /// their events go to before any tick at or after their time is applied. Orders are
    /// remembered for `horizon_ms` of processing time after their first event, and windows are
    /// those of `spec`.
    ///
    /// Returns the counted contributions, each carrying its totals in the difference; the
    /// engine's counters, each carrying its increment in the difference; and this worker's
    /// [`LedgerHandle`], for checkpoints.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::capture::{Capture, Extract};
    /// use timely::dataflow::operators::generic::operator::empty;
    /// use timely::dataflow::operators::ToStream;
    ///
    /// use dataflows::model::{
    ///     CampaignId, Cents, Counter, Event, EventTimeMs, OrderId, Slot, Tag, Totals, UserId,
    /// };
    /// use dataflows::operators::order_ledger::OrderLedger;
    /// use dataflows::windows::WindowSpec;
    ///
    /// let event = |tag, total| Event {
    ///     order_id: OrderId(7),
    ///     tag,
    ///     user_id: UserId(1),
    ///     campaign_id: CampaignId(2),
    ///     total: Cents(total),
    ///     units: u32::from(total > 0),
    ///     event_time: EventTimeMs(1_500),
    /// };
    /// let spec = WindowSpec { size_ms: 1_000, allowed_lateness_ms: 1_000 };
    /// let (contributions, counters) = timely::example(move |scope| {
    ///     // A click, its purchase, and the purchase delivered twice.
    ///     let events = vec![
    ///         event(Tag::Click, 0),
    ///         event(Tag::Purchased, 500),
    ///         event(Tag::Purchased, 500),
    ///     ];
    ///     let (contributions, counters, _ledger) =
    ///         events.to_stream(scope).order_ledger(empty(scope), spec, 60_000);
    ///     (
    ///         contributions.consolidate().inner.capture(),
    ///         counters.consolidate().inner.capture(),
    ///     )
    /// });
    ///
    /// // The order counts once: its click and one purchase, in the window of its event time.
    /// let mut totals = Totals::click();
    /// totals.add(&Totals::purchase(Cents(500), 1));
    /// let contribution = (UserId(1), (CampaignId(2), Slot::Window(EventTimeMs(1_000))));
    /// let found: Vec<_> = contributions.extract().into_iter().flat_map(|(_, rows)| rows).collect();
    /// assert_eq!(found, [(contribution, 0, totals)]);
    /// let found: Vec<_> = counters.extract().into_iter().flat_map(|(_, rows)| rows).collect();
    /// assert_eq!(found, [(Counter::EventsIn, 0, 3), (Counter::Duplicates, 0, 1)]);
    /// ```
    fn order_ledger(
        self,
        restored: StreamVec<'scope, Tick, (OrderId, OrderState)>,
        spec: WindowSpec,
        horizon_ms: u64,
    ) -> (
        VecCollection<'scope, Tick, Contribution, Totals>,
        VecCollection<'scope, Tick, Counter, isize>,
        LedgerHandle,
    );
}

impl<'scope> OrderLedger<'scope> for StreamVec<'scope, Tick, Event> {
    fn order_ledger(
        self,
        restored: StreamVec<'scope, Tick, (OrderId, OrderState)>,
        spec: WindowSpec,
        horizon_ms: u64,
    ) -> (
        VecCollection<'scope, Tick, Contribution, Totals>,
        VecCollection<'scope, Tick, Counter, isize>,
        LedgerHandle,
    ) {
        let ledger = Rc::new(RefCell::new(Ledger::new(spec, horizon_ms)));
        let handle = LedgerHandle {
            ledger: Rc::clone(&ledger),
        };
        let events = self;
        let events_route = Exchange::new(|event: &Event| route(event.order_id));
        let restored_route = Exchange::new(|(order, _): &(OrderId, OrderState)| route(*order));
        // Two inputs and two outputs: contributions and counters leave apart, each at its own port,
        // rather than as one stream copied and filtered twice.
        let mut builder = OperatorBuilder::new("Ledger: orders".to_owned(), events.scope());
        let mut input = builder.new_input(events, events_route);
        let mut restored = builder.new_input(restored, restored_route);
        let (contributions_out, contributions) = builder.new_output();
        let (counters_out, counters) = builder.new_output();
        let mut contributions_out: OutputBuilder<_, CapacityContainerBuilder<Vec<_>>> =
            OutputBuilder::from(contributions_out);
        let mut counters_out: OutputBuilder<_, CapacityContainerBuilder<Vec<_>>> =
            OutputBuilder::from(counters_out);
        builder.build(move |_capabilities| {
            // A tick's events, with a capability for each output.
            let mut pending: BTreeMap<Tick, ([Capability<Tick>; 2], Vec<Event>)> = BTreeMap::new();
            move |frontiers| {
                let mut contributions_out = contributions_out.activate();
                let mut counters_out = counters_out.activate();
                let ports = [
                    contributions_out.output_index(),
                    counters_out.output_index(),
                ];
                restored.for_each_stamp(|_capability, data| {
                    let mut ledger = ledger.borrow_mut();
                    for batch in data {
                        ledger.import(batch.drain(..));
                    }
                });
                input.for_each_stamp(|capability, data| {
                    if let (Some(for_contributions), Some(for_counters)) = (
                        capability.retain_least(ports[0]),
                        capability.retain_least(ports[1]),
                    ) {
                        let time = *for_contributions.time();
                        let entry = pending
                            .entry(time)
                            .or_insert_with(|| ([for_contributions, for_counters], Vec::new()));
                        for batch in data {
                            entry.1.append(batch);
                        }
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontiers
                        .iter()
                        .any(|frontier| frontier.less_equal(entry.key()))
                    {
                        break;
                    }
                    let (tick, ([for_contributions, for_counters], mut events)) =
                        entry.remove_entry();
                    let produced = ledger.borrow_mut().apply_tick(tick, &mut events);
                    contributions_out.session(&for_contributions).give_iterator(
                        produced
                            .contributions
                            .into_iter()
                            .map(|(contribution, totals)| (contribution, tick, totals)),
                    );
                    counters_out.session(&for_counters).give_iterator(
                        produced
                            .counters
                            .into_iter()
                            .map(|(counter, n)| (counter, tick, n as isize)),
                    );
                }
            }
        });
        (
            contributions.as_collection(),
            counters.as_collection(),
            handle,
        )
    }
}
