//! The analytics graph, top to bottom: the order ledger, the join of contributions with the
//! users' segments (which sums the families on the spot), the totals per key, and the engine's
//! counters beside them, as output rows.

use differential_dataflow::operators::CountTotal;
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::generic::operator::empty;
use timely::dataflow::{Scope, StreamVec};

use crate::model::{
    Contribution, Counter, Demographic, Event, OrderId, OutputKey, OutputRow, OutputValue, Segment,
    Tick, Totals, UserId,
};
use crate::operators::attribute::Attribute;
use crate::operators::count_total::HashedCountTotal;
use crate::operators::order_ledger::{OrderLedger, OrderState};
use crate::state::Handles;
use crate::windows::WindowSpec;

/// The semantics' parameters, all in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Window size and allowed lateness.
    pub windows: WindowSpec,
    /// How long after its first event an order is remembered for de-duplication and refunds.
    pub order_horizon_ms: u64,
}

/// State a checkpoint restores, entering at the restart's first tick (see [`crate::state`]);
/// restored counters enter through the source counters.
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

/// [`analytics`], restoring state and handing back this worker's [`Handles`] to read it for
/// checkpoints.
pub fn analytics_with_state<'scope>(
    events: StreamVec<'scope, Tick, Event>,
    demographics: VecCollection<'scope, Tick, Demographic>,
    source_counters: VecCollection<'scope, Tick, Counter, isize>,
    restored: Restored<'scope>,
    params: Params,
) -> (VecCollection<'scope, Tick, OutputRow>, Handles) {
    // Each order counted once: contributions `(user, (campaign, slot))` with totals as diffs.
    let (contributions, ledger_counters, ledger) =
        events.order_ledger(restored.orders, params.windows, params.order_horizon_ms);

    // A demographics row matters only through its segment: a birthday within a band moves nothing.
    let segments = demographics
        .map(|row| (row.id, row.segment()))
        .concat(restored.segments);

    // Joined with the users' segments, and summed per aggregate key of every family (the
    // families are data: `crate::families::FAMILIES`).
    let (sums, attribution) = contributions
        .concat(restored.contributions)
        .attribute(segments, params.windows);

    // One row per key, moved by retraction and insertion.
    let totals = sums.hashed_count_total(params.windows);

    // The engine's counters, arranged so that a checkpoint can read them.
    let counters = ledger_counters
        .concat(source_counters)
        .arrange_by_self_named("Arrange: counters");
    let counter_trace = counters.trace.clone();
    let counters = counters
        .count_total()
        .map(|(counter, n)| (OutputKey::Counter(counter), OutputValue::Count(n as i64)));

    let handles = Handles::new(attribution, counter_trace, ledger);
    (totals.concat(counters), handles)
}
