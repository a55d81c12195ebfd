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
    let mut reported: Option<Option<Tick>> = None;
    rows.inner
        .sink(Pipeline, "Output: batches", move |(input, frontier)| {
            input.for_each(|_capability, data| {
                for (row, time, diff) in data.drain(..) {
                    pending.entry(time).or_default().push((row, diff));
                }
            });
            let lower = frontier.frontier().first().copied();
            let mut batches = Vec::new();
            while let Some(entry) = pending.first_entry() {
                if lower.is_some_and(|l| *entry.key() >= l) {
                    break;
                }
                let (time, updates) = entry.remove_entry();
                let batch = changes_of(time, updates);
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
/// updates cancel did not change.
///
/// Updates are sorted by key alone, and each key's few updates (a retraction and an insertion)
/// summed per value in place: sorting the rows whole, values included, and consolidating them was
/// a noticeable share of the engine's time at thousands of keys per tick.
pub fn changes_of(time: Tick, mut updates: Vec<(OutputRow, isize)>) -> Batch {
    updates.sort_unstable_by(|((a, _), _), ((b, _), _)| a.cmp(b));
    let mut changes: Vec<Change> = Vec::new();
    let mut values: Vec<(OutputValue, isize)> = Vec::new();
    let mut updates = updates.into_iter().peekable();
    while let Some(((key, value), diff)) = updates.next() {
        values.clear();
        values.push((value, diff));
        while let Some(((_, value), diff)) = updates.next_if(|((next, _), _)| *next == key) {
            match values.iter_mut().find(|(v, _)| *v == value) {
                Some((_, count)) => *count += diff,
                None => values.push((value, diff)),
            }
        }
        values.retain(|(_, count)| *count != 0);
        if values.is_empty() {
            continue;
        }
        let value = values
            .iter()
            .find(|(_, count)| *count > 0)
            .map(|(value, _)| *value);
        changes.push(Change { key, value });
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
        let batch = changes_of(9, updates);
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
