//! The graph's operators, each an extension trait in its own file, for a totally ordered time
//! ([`Tick`](crate::model::Tick)), keeping its state behind it and its tuned containers private.

pub mod attribute;
pub mod count_total;
pub mod order_ledger;
pub(crate) mod pending;
mod prefetch;
