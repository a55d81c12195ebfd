//! The output contract: for every completed timestamp, one batch of changed rows.
//!
//! A batch holds, for each key whose value changed at that timestamp, the new absolute value, or an
//! explicit removal when the key has no value any more. Nothing of a timestamp is emitted before
//! the timestamp is complete, and a timestamp's changes are never split across batches (per worker;
//! every key lives on exactly one worker, so the batches of a timestamp from all workers are
//! disjoint, and a sink that waits for every worker's frontier sees whole timestamps).

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

use crate::model::{OutputKey, OutputRow, OutputValue, Tick};

/// One key's change at a timestamp.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The row's key.
    pub key: OutputKey,
    /// The new value, or `None` when the row was removed.
    pub value: Option<OutputValue>,
}

/// Every change of one completed timestamp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The completed timestamp.
    pub time: Tick,
    /// The changes, sorted by key; at most one per key.
    pub changes: Vec<Change>,
}

/// What a worker's output operator reports each time its input frontier moves.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// Batches of the timestamps completed since the last report, in time order (non-empty ones).
    pub batches: Vec<Batch>,
    /// The frontier: every later batch is at or after it; `None` when the input is exhausted.
    pub frontier: Option<Tick>,
}

/// Turns a collection of output rows into per-timestamp batches of changes, handed to `report`
/// whenever the frontier advances.
pub fn emit_batches<'scope, F>(rows: VecCollection<'scope, Tick, OutputRow>, mut report: F)
where
    F: FnMut(Progress) + 'static,
{
    let mut pending: BTreeMap<Tick, Vec<(OutputRow, isize)>> = BTreeMap::new();
    // Emptied lists of reported timestamps, reused rather than grown afresh each tick.
    let mut spare: Vec<Vec<(OutputRow, isize)>> = Vec::new();
    let mut reported: Option<Option<Tick>> = None;
    rows.inner
        .sink(Pipeline, "Output: batches", move |(input, frontier)| {
            input.for_each(|_capability, data| {
                for (row, time, diff) in data.drain(..) {
                    pending
                        .entry(time)
                        .or_insert_with(|| spare.pop().unwrap_or_default())
                        .push((row, diff));
                }
            });
            let lower = frontier.frontier().first().copied();
            let mut batches = Vec::new();
            while let Some(entry) = pending.first_entry() {
                if lower.is_some_and(|l| *entry.key() >= l) {
                    break;
                }
                let (time, mut updates) = entry.remove_entry();
                let batch = changes_of(time, &updates);
                updates.clear();
                spare.push(updates);
                if !batch.changes.is_empty() {
                    batches.push(batch);
                }
            }
            if !batches.is_empty() || reported != Some(lower) {
                reported = Some(lower);
                report(Progress {
                    batches,
                    frontier: lower,
                });
            }
        });
}

/// The changes of one timestamp from its updates: a key's new value is the value left with a
/// positive count once its updates are summed; a key left with none was removed, and a key whose
/// updates cancel did not change. The changes are sorted by key.
///
/// A key's updates mostly arrive in a run (the totals emit a key's retraction and its insertion
/// in turn), so the runs are found first and sorted by their key, rather than the rows: half as
/// many items, moved as pairs of indices. Runs of one key that arrived apart meet in the sort.
/// Sorting the rows whole, values included, and consolidating them was a noticeable share of the
/// engine's time at thousands of keys per tick.
pub fn changes_of(time: Tick, updates: &[(OutputRow, isize)]) -> Batch {
    let key_at = |at: usize| &updates[at].0.0;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for at in 1..=updates.len() {
        if at == updates.len() || key_at(at) != key_at(start) {
            runs.push((start, at));
            start = at;
        }
    }
    runs.sort_unstable_by(|(a, _), (b, _)| key_at(*a).cmp(key_at(*b)));
    let mut changes: Vec<Change> = Vec::with_capacity(runs.len());
    let mut values: Vec<(OutputValue, isize)> = Vec::new();
    let mut runs = runs.into_iter().peekable();
    while let Some((start, end)) = runs.next() {
        let key = key_at(start);
        values.clear();
        let mut add = |rows: &[(OutputRow, isize)]| {
            for ((_, value), diff) in rows {
                match values.iter_mut().find(|(v, _)| v == value) {
                    Some((_, count)) => *count += diff,
                    None => values.push((*value, *diff)),
                }
            }
        };
        add(&updates[start..end]);
        while let Some((start, end)) = runs.next_if(|(next, _)| key_at(*next) == key) {
            add(&updates[start..end]);
        }
        values.retain(|(_, count)| *count != 0);
        if values.is_empty() {
            continue;
        }
        let value = values
            .iter()
            .find(|(_, count)| *count > 0)
            .map(|(value, _)| *value);
        changes.push(Change {
            key: key.clone(),
            value,
        });
    }
    Batch { time, changes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Counter;

    #[test]
    fn changes_are_new_values_removals_and_nothing_for_cancelled_updates() {
        let key = |c: Counter| OutputKey::Counter(c);
        let n = OutputValue::Count;
        let updates = vec![
            // Changed: 1 -> 2, retraction after insertion.
            ((key(Counter::Duplicates), n(2)), 1),
            // Removed.
            ((key(Counter::EventsIn), n(7)), -1),
            // Inserted and retracted in the same timestamp: no change.
            ((key(Counter::LateForWindow), n(3)), 1),
            ((key(Counter::Duplicates), n(1)), -1),
            ((key(Counter::LateForWindow), n(3)), -1),
            // New.
            ((key(Counter::RefundsApplied), n(5)), 1),
        ];
        let batch = changes_of(9, &updates);
        assert_eq!(batch.time, 9);
        let mut want = vec![
            Change {
                key: key(Counter::Duplicates),
                value: Some(n(2)),
            },
            Change {
                key: key(Counter::EventsIn),
                value: None,
            },
            Change {
                key: key(Counter::RefundsApplied),
                value: Some(n(5)),
            },
        ];
        want.sort();
        assert_eq!(batch.changes, want);
    }
}
