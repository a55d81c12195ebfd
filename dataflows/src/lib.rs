//! shopflow's data model and its pure differential dataflow graphs.
//!
//! Nothing here performs I/O, reads configuration or logs per record: the graphs are functions from
//! collections to collections, wired to sources and sinks by the `shopflow` crate.
//!
//! Where a purchase goes, in order:
//! 1. [`orders::order_ledger`]: routed by order id; duplicates dropped, refunds matched to what
//!    they retract; out come contributions `(user, (campaign, slot))` carrying totals as their diff.
//! 2. [`windows::retire_windows`]: each windowed contribution is moved to the all-time remainder
//!    when its window closes, so window state is bounded by the allowed lateness.
//! 3. [`segments::attribute`]: joined with demographics by user (unknown users counted apart).
//! 4. [`aggregates::aggregate`]: expanded to every aggregate family and maintained by `count_total`.
//! 5. [`output::emit_batches`]: one batch of changed rows per completed timestamp.

pub mod aggregates;
pub mod harness;
pub mod model;
pub mod orders;
pub mod output;
pub mod reference;
pub mod segments;
pub mod windows;

use differential_dataflow::VecCollection;
use timely::dataflow::StreamVec;

use model::{Counter, Demographic, Event, OutputKey, OutputRow, OutputValue, Tick};
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
    let (contributions, counters) =
        orders::order_ledger(events, params.windows, params.order_horizon_ms);
    let contributions = windows::retire_windows(contributions, params.windows);
    let rows = segments::attribute(contributions, demographics);
    let aggregates = aggregates::aggregate(rows, params.windows)
        .map(|(key, totals)| (OutputKey::Aggregate(key), OutputValue::Totals(totals)));
    let counters = aggregates::count_counters(counters.concat(source_counters))
        .map(|(counter, n)| (OutputKey::Counter(counter), OutputValue::Count(n as i64)));
    aggregates.concat(counters)
}
