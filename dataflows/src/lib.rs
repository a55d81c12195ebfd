//! shopflow's data model and its pure differential dataflow graphs.
//!
//! Nothing here performs I/O, reads configuration or logs per record: the graphs are functions from
//! collections to collections, wired to sources and sinks by the `shopflow` crate.
//!
//! Where a purchase goes, in order:
//! 1. [`orders::order_ledger`]: routed by order id; duplicates dropped, refunds matched to what
//!    they retract; out come contributions `(user, (campaign, slot))` carrying totals as their diff.
//! 2. [`segments::attribute`]: routed by user and joined with demographics (unknown users counted
//!    apart); held in its window until the window closes, then folded into the all-time remainder,
//!    so window state is bounded by the allowed lateness. What the join finds is expanded to every
//!    aggregate family and summed per key on the spot.
//! 3. [`aggregates::aggregate`]: routed by key and kept as one total per key.
//! 4. [`output::emit_batches`]: one batch of changed rows per completed timestamp.
//!
//! The ledger, the join and the totals are timely operators over differential collections that
//! keep their state in hash maps (the join's users in a table by id), applying a timestamp once
//! the frontier has passed it: for a totally ordered time that is what differential's
//! arrangements compute, without a sort, a batch and spine merges at every tick (see
//! docs/benchmarks.md for what each replacement measured).

pub mod aggregates;
pub mod harness;
pub mod inputs;
mod interned;
pub mod model;
mod order_table;
pub mod orders;
pub mod output;
mod pending;
mod prefetch;
pub mod reference;
mod remainders;
pub mod segments;
pub mod state;
pub mod windows;

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::generic::operator::empty;
use timely::dataflow::{Scope, StreamVec};

use model::{
    Contribution, Counter, Demographic, Event, OrderId, OutputKey, OutputRow, OutputValue, Segment,
    Tick, Totals, UserId,
};
use orders::OrderState;
use state::Handles;
use windows::WindowSpec;

/// The semantics' parameters, all in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Window size and allowed lateness.
    pub windows: WindowSpec,
    /// How long after its first event an order is remembered for de-duplication and refunds.
    pub order_horizon_ms: u64,
}

/// The whole analytics graph: raw events and the demographics collection in, output rows out.
///
/// Events enter as a plain stream at the tick they arrived; demographics as a collection, an update
/// being the old row retracted and the new one inserted; `source_counters` carries what sources
/// count before the dataflow (malformed messages), each increment in the difference. The output
/// holds one row per aggregate key and per counter, updated by retraction and insertion.
pub fn analytics<'scope>(
    events: StreamVec<'scope, Tick, Event>,
    demographics: VecCollection<'scope, Tick, Demographic>,
    source_counters: VecCollection<'scope, Tick, Counter, isize>,
    params: Params,
) -> VecCollection<'scope, Tick, OutputRow> {
    let restored = Restored::empty(events.scope());
    analytics_with_state(events, demographics, source_counters, restored, params).0
}

/// State a checkpoint restores, entering at the restart's first tick (see [`state`]); restored
/// counters enter through the source counters.
pub struct Restored<'scope> {
    /// Contributions with their accumulated totals.
    pub contributions: VecCollection<'scope, Tick, Contribution, Totals>,
    /// Users' segments as the join held them: they let the restored graph emit exactly what
    /// the sink held before the demographics, re-read from their source, replace them.
    pub segments: VecCollection<'scope, Tick, (UserId, Segment)>,
    /// Orders the ledgers remembered.
    pub orders: StreamVec<'scope, Tick, (OrderId, OrderState)>,
}

impl<'scope> Restored<'scope> {
    /// Nothing to restore.
    pub fn empty(scope: Scope<'scope, Tick>) -> Restored<'scope> {
        Restored {
            contributions: empty(scope).as_collection(),
            segments: empty(scope).as_collection(),
            orders: empty(scope),
        }
    }
}

/// [`analytics`], restoring state and handing back this worker's [`Handles`] to read it for
/// checkpoints.
pub fn analytics_with_state<'scope>(
    events: StreamVec<'scope, Tick, Event>,
    demographics: VecCollection<'scope, Tick, Demographic>,
    source_counters: VecCollection<'scope, Tick, Counter, isize>,
    restored: Restored<'scope>,
    params: Params,
) -> (VecCollection<'scope, Tick, OutputRow>, Handles) {
    let ledger = Rc::new(RefCell::new(orders::Ledger::new(
        params.windows,
        params.order_horizon_ms,
    )));
    let (contributions, counters) =
        orders::order_ledger(events, restored.orders, Rc::clone(&ledger));
    let (sums, attribution) = segments::attribute(
        contributions.concat(restored.contributions),
        demographics,
        restored.segments,
        params.windows,
    );
    let aggregates = aggregates::aggregate(sums, params.windows);
    let (counters, counter_trace) = aggregates::count_counters(counters.concat(source_counters));
    let counters =
        counters.map(|(counter, n)| (OutputKey::Counter(counter), OutputValue::Count(n as i64)));
    (
        aggregates.concat(counters),
        Handles::new(attribution, counter_trace, ledger),
    )
}
