//! The aggregates' totals: one operator that keeps every key's total, per window and all time.

mod rows;

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxBuildHasher;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};

use crate::model::{AggregateKey, OutputKey, OutputRow, OutputValue, Tick, Totals};
use crate::operators::pending::by_time;
use crate::windows::WindowSpec;
use rows::Rows;

/// The hash by which [`HashedCountTotal`] routes a key to the worker that keeps its row.
fn route_hash(key: &AggregateKey) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The worker, of `peers`, that keeps `key`'s row: where [`HashedCountTotal`] routes it (timely's
/// exchange takes the hash masked by `peers - 1` for a power of two, else modulo `peers`). Its
/// rows reach the sink of that worker's process; a restarted run uses this to know which of
/// the keys written before a crash its own process must clear.
pub fn owner(key: &AggregateKey, peers: usize) -> usize {
    let (hash, peers) = (route_hash(key), peers.max(1) as u64);
    let index = if peers.is_power_of_two() {
        hash & (peers - 1)
    } else {
        hash % peers
    };
    index as usize
}

/// Extension trait for the `hashed_count_total` method, on sums per aggregate key.
pub trait HashedCountTotal<'scope> {
    /// Maintains every aggregate from sums of attributed contributions: output rows of `(key,
    /// total)`, one per key, a change being the old total retracted and the new one inserted, and a
    /// key whose total returns to zero retracted (its row forgotten at the next sweep of closed
    /// windows, see [`Rows`]). This is what `arrange_by_self().count_total()` computes, for a totally
    /// ordered time; it holds one total per key in a hash table instead of the arrangement's history.
    ///
    /// The keys are few (thousands) and nearly all change at every tick, so the arrangement's costs
    /// came at every tick whatever its size: sorting the keys (comparing segment names), sealing a
    /// batch, merging the spine's batches and seeking each key through them. At 10,000 events a
    /// tick that was a large part of the engine's time (perf, `shopflow bench -w 2`).
    ///
    /// Keys are routed by hash, so each lives on one worker and a timestamp's changes of it are in
    /// one batch, as with the arrangement. Updates are applied a whole timestamp at a time, once the
    /// frontier has passed it, in time order.
    ///
    /// Changes to a closed window's rows (a demographic change moving a user's contributions to it
    /// before the window is folded) are not changes of the aggregate and are dropped, so a closed
    /// window's last value is its final value; its totals are forgotten at the first timestamp at
    /// which it is closed. (A window has about as many keys as the all-time totals, and every
    /// window's were once kept for the whole run.)
    ///
    /// # Examples
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::capture::{Capture, Extract};
    ///
    /// use dataflows::model::{AggregateKey, CampaignId, Dimension, OutputKey, OutputValue, Totals};
    /// use dataflows::operators::count_total::HashedCountTotal;
    /// use dataflows::windows::WindowSpec;
    ///
    /// let spec = WindowSpec { size_ms: 1_000, allowed_lateness_ms: 1_000 };
    /// let key = AggregateKey { dimension: Dimension::Campaign(CampaignId(7)), window: None };
    /// let rows = timely::example(move |scope| {
    ///     let (mut sums, collection) = scope.new_collection();
    ///     // Two clicks at time 0, and a third at time 1.
    ///     sums.update_at(key.clone(), 0, Totals::click());
    ///     sums.update_at(key.clone(), 0, Totals::click());
    ///     sums.update_at(key, 1, Totals::click());
    ///     collection.hashed_count_total(spec).inner.capture()
    /// });
    ///
    /// let total = |clicks| {
    ///     let key = AggregateKey { dimension: Dimension::Campaign(CampaignId(7)), window: None };
    ///     (OutputKey::Aggregate(key), OutputValue::Totals(Totals { clicks, ..Totals::default() }))
    /// };
    /// // The key's row is 2 at time 0, then moves to 3 by retraction and insertion.
    /// let rows: Vec<_> = rows.extract().into_iter().flat_map(|(_, rows)| rows).collect();
    /// assert_eq!(rows, [(total(2), 0, 1), (total(2), 1, -1), (total(3), 1, 1)]);
    /// ```
    fn hashed_count_total(self, spec: WindowSpec) -> VecCollection<'scope, Tick, OutputRow, isize>;
}

impl<'scope> HashedCountTotal<'scope> for VecCollection<'scope, Tick, AggregateKey, Totals> {
    fn hashed_count_total(self, spec: WindowSpec) -> VecCollection<'scope, Tick, OutputRow, isize> {
        let updates = self;
        let route = Exchange::new(|(key, _, _): &(AggregateKey, Tick, Totals)| route_hash(key));
        updates
            .inner
            .unary_frontier(route, "Aggregate: totals", |_capability, _info| {
                let mut pending: BTreeMap<Tick, (Capability<Tick>, Updates)> = BTreeMap::new();
                let mut rows = Rows::default();
                // When the earliest window with totals held closes.
                let mut next_close: Option<Tick> = None;
                // Emptied lists of applied timestamps, reused rather than grown afresh each tick.
                let mut spare: Vec<Updates> = Vec::new();
                move |(input, frontier), output| {
                    let port = output.output_index();
                    input.for_each_stamp(|capability, data| {
                        for batch in data {
                            by_time(
                                batch.drain(..),
                                &mut pending,
                                |time| {
                                    let list = spare.pop().unwrap_or_default();
                                    (capability.delayed(&time, port), list)
                                },
                                |(_, deltas), key, delta| deltas.push((key, delta)),
                            );
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (time, (capability, mut deltas)) = entry.remove_entry();
                        let closed = |key: &AggregateKey| {
                            key.window.is_some_and(|start| spec.is_closed(start, time))
                        };
                        if next_close.is_some_and(|close| time >= close) {
                            rows.retain(|key, total| !closed(key) && !total.is_empty());
                            next_close = rows
                                .keys()
                                .filter_map(|key| key.window)
                                .map(|start| spec.closes_at(start))
                                .min();
                        }
                        for (key, delta) in deltas.drain(..) {
                            if delta.is_empty() || closed(&key) {
                                continue;
                            }
                            // A new row's window may close first; the others' were counted when
                            // they were new, or at the last sweep.
                            let window = key.window;
                            if rows.add(time, key, &delta)
                                && let Some(start) = window
                            {
                                let close = spec.closes_at(start);
                                next_close = Some(next_close.map_or(close, |c| c.min(close)));
                            }
                        }
                        spare.push(deltas);
                        let mut session = output.session(&capability);
                        rows.changed(|key, old, new| {
                            let row = |totals: &Totals| {
                                (
                                    OutputKey::Aggregate(key.clone()),
                                    OutputValue::Totals(*totals),
                                )
                            };
                            if !old.is_empty() {
                                session.give((row(old), time, -1));
                            }
                            if !new.is_empty() {
                                session.give((row(new), time, 1));
                            }
                        });
                    }
                }
            })
            .as_collection()
    }
}

/// A timestamp's updates, as they arrived.
type Updates = Vec<(AggregateKey, Totals)>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CampaignId, Dimension, Name};

    /// [`owner`] names the worker whose [`HashedCountTotal`] emits a key's rows, at worker counts that
    /// are and are not powers of two.
    #[test]
    fn owner_is_the_worker_that_emits_the_row() {
        use std::sync::{Arc, Mutex};

        use differential_dataflow::input::Input as _;

        let keys: Vec<AggregateKey> = (0..200u32)
            .map(|n| AggregateKey {
                dimension: match n % 3 {
                    0 => Dimension::Campaign(CampaignId(n)),
                    1 => Dimension::Country(Some(Name::from(format!("country {n}")))),
                    _ => Dimension::CampaignCountry(CampaignId(n), None),
                },
                window: (n % 2 == 0).then_some(crate::model::EventTimeMs(u64::from(n) * 60_000)),
            })
            .collect();
        for peers in [2, 3, 4] {
            let seen: Arc<Mutex<Vec<(usize, AggregateKey)>>> = Arc::default();
            let (sent, shared) = (keys.clone(), Arc::clone(&seen));
            timely::execute(timely::Config::process(peers), move |worker| {
                let index = worker.index();
                let seen = Arc::clone(&shared);
                let mut input = worker.dataflow::<Tick, _, _>(|scope| {
                    let (input, updates) = scope.new_collection::<AggregateKey, Totals>();
                    let spec = WindowSpec {
                        size_ms: 60_000,
                        allowed_lateness_ms: u64::MAX / 4,
                    };
                    updates
                        .hashed_count_total(spec)
                        .inspect(move |((key, _), _, _)| {
                            if let OutputKey::Aggregate(key) = key {
                                seen.lock().unwrap().push((index, key.clone()));
                            }
                        });
                    input
                });
                if index == 0 {
                    for key in &sent {
                        input.update(key.clone(), Totals::click());
                    }
                }
            })
            .expect("the dataflow runs");
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), keys.len(), "every key's row, once");
            for (worker, key) in seen.iter() {
                assert_eq!(*worker, owner(key, peers), "{key:?} at {peers} workers");
            }
        }
    }
}
