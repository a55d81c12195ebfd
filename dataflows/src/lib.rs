//! shopflow's data model and its pure differential dataflow graphs.
//!
//! Nothing here performs I/O, reads configuration or logs per record: the graphs are functions from
//! collections to collections, wired to sources and sinks by the `shopflow` crate.
//!
//! The graph is [`graph`], in one file; where a purchase goes, in order:
//! 1. [`OrderLedger`](operators::order_ledger::OrderLedger): routed by order id; duplicates
//!    dropped, refunds matched to what they retract; out come contributions `(user, (campaign,
//!    slot))` carrying totals as their diff.
//! 2. [`Attribute`](operators::attribute::Attribute): routed by user and joined with the users'
//!    segments (unknown users counted apart); held in its window until the window closes, then
//!    folded into the all-time remainder, so window state is bounded by the allowed lateness. What
//!    the join finds is expanded to every aggregate family ([`families`]) and summed per key on
//!    the spot.
//! 3. [`HashedCountTotal`](operators::count_total::HashedCountTotal): routed by key and kept as
//!    one total per key.
//! 4. [`output::emit_batches`]: one batch of changed rows per completed timestamp.
//!
//! The ledger, the join and the totals are timely operators over differential collections that
//! keep their state in hash maps (the join's users in a table by id), applying a timestamp once
//! the frontier has passed it: for a totally ordered time that is what differential's
//! arrangements compute, without a sort, a batch and spine merges at every tick (see
//! docs/benchmarks.md for what each replacement measured).

pub mod families;
pub mod graph;
pub mod harness;
pub mod inputs;
pub mod model;
pub mod operators;
pub mod output;
pub mod reference;
pub mod state;
pub mod windows;

/// The aggregates' public face, kept at the path callers outside the crate use: which
/// dimensions a contribution counts in, and which worker keeps a key's row.
pub mod aggregates {
    pub use crate::families::dimensions;
    pub use crate::operators::count_total::owner;
}

/// The order ledger's state, kept at the path callers outside the crate use (the sequential
/// references replay it).
pub mod orders {
    pub use crate::operators::order_ledger::{Ledger, OrderState, TickOutput};
}

pub use graph::{Params, Restored, analytics, analytics_with_state};
