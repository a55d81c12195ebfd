//! Checkpoints of the graph's state: what a worker holds at a tick boundary, read out and fed
//! back in, so a restarted pipeline continues where a checkpoint left it.
//!
//! A worker's state at a boundary `t` — once every input has reached `t` and nothing at or after
//! `t` has been applied — is four things, all already consolidated:
//! - the contributions by user (every all-time remainder and every open window), read from the
//!   state the join keeps anyway;
//! - every user's segment as the join holds it;
//! - the engine's counters, read from their arrangement;
//! - the orders the ledger remembers (for de-duplication and refunds).
//!
//! Restoring feeds them back in at the restart's first tick: the contributions to the join (a
//! window that closed meanwhile goes straight to the remainder), the segments beside
//! the demographics, the counters as increments, the orders into the ledger of the worker their
//! events go to. The restored graph then emits exactly the rows the sink held at the checkpoint.
//! At a later tick the runtime retracts the restored segments and enters the demographics as
//! their source holds them now: a user who changed meanwhile moves with retractions, so the sink
//! is never left with a row nobody removes. Nothing here knows where a checkpoint is stored;
//! that is the runtime's business.

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::KeySpine;
use serde::{Deserialize, Serialize};
use timely::progress::frontier::AntichainRef;

use crate::model::{Contribution, Counter, OrderId, Segment, Tick, Totals, UserId};
use crate::operators::attribute::AttributionHandle;
use crate::operators::order_ledger::{LedgerHandle, OrderState};

/// One worker's share of the graph's state at a tick boundary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Contributions with their accumulated totals, none zero.
    pub contributions: Vec<(Contribution, Totals)>,
    /// Users' segments as the join held them, with their multiplicity.
    pub segments: Vec<((UserId, Segment), isize)>,
    /// Counter totals, none zero.
    pub counters: Vec<(Counter, i64)>,
    /// The orders remembered by the ledger.
    pub orders: Vec<(OrderId, OrderState)>,
}

impl State {
    /// Adds another worker's share (restoring onto a different number of workers).
    pub fn extend(&mut self, other: State) {
        self.contributions.extend(other.contributions);
        self.segments.extend(other.segments);
        self.counters.extend(other.counters);
        self.orders.extend(other.orders);
    }
}

/// The counters arranged: their totals so far, which a checkpoint reads.
pub type CounterTrace = TraceAgent<KeySpine<Counter, Tick, isize>>;

/// A worker's handles on its own state: the join's, the counters' arrangement and the ledger.
pub struct Handles {
    attribution: AttributionHandle,
    counters: CounterTrace,
    ledger: LedgerHandle,
}

impl Handles {
    pub(crate) fn new(
        attribution: AttributionHandle,
        counters: CounterTrace,
        ledger: LedgerHandle,
    ) -> Handles {
        Handles {
            attribution,
            counters,
            ledger,
        }
    }

    /// Lets the counters' arrangement compact up to `frontier`: a held handle otherwise keeps
    /// every historical batch. Call it with each boundary the output has passed; a later
    /// [`Handles::capture`] must be at or after it.
    pub fn allow_compaction(&mut self, frontier: Tick) {
        let frontier = [frontier];
        let frontier = AntichainRef::new(&frontier);
        self.counters.set_logical_compaction(frontier);
        self.counters.set_physical_compaction(frontier);
    }

    /// How many contributions the join holds: one per (user, campaign) all-time remainder and
    /// per (user, campaign, window) not yet folded into it.
    pub fn held(&self) -> usize {
        self.attribution.held()
    }

    /// Reads this worker's state at boundary `through`: every update before it, accumulated.
    ///
    /// Only meaningful when every input of every worker has reached `through`, the dataflow has
    /// processed everything before it (a probe has passed it), and no input has gone further —
    /// the runtime pauses its inputs there. `None` when the state cannot be cut at `through`
    /// (the join has applied a tick at or after it, or compaction already went past it).
    pub fn capture(&mut self, through: Tick) -> Option<State> {
        let upper = [through];
        let upper = AntichainRef::new(&upper);

        if self
            .attribution
            .applied()
            .is_some_and(|tick| tick >= through)
        {
            return None;
        }
        let contributions = self.attribution.contributions();
        let segments = self.attribution.segments();

        let mut counters = Vec::new();
        let (mut cursor, storage) = cursor_list(self.counters.batches_through(upper)?);
        while let Some(counter) = cursor.get_key(&storage) {
            let mut total = 0i64;
            cursor.map_times(&storage, |time, diff| {
                if *time < through {
                    total += *diff as i64;
                }
            });
            if total != 0 {
                counters.push((*counter, total));
            }
            cursor.step_key(&storage);
        }

        Some(State {
            contributions,
            segments,
            counters,
            orders: self.ledger.export(),
        })
    }
}
