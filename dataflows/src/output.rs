//! The output contract: for every completed timestamp, one batch of changed rows.
//!
//! A batch holds, for each key whose value changed at that timestamp, the new absolute value, or an
//! explicit removal when the key has no value any more. Nothing of a timestamp is emitted before
//! the timestamp is complete, and a timestamp's changes are never split across batches (per worker;
//! every key lives on exactly one worker, so the batches of a timestamp from all workers are
//! disjoint, and a sink that waits for every worker's frontier sees whole timestamps).

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
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

/// The changes of one timestamp from its consolidated updates: an insertion is the key's new value;
/// a key with only a retraction was removed.
pub fn changes_of(time: Tick, mut updates: Vec<(OutputRow, isize)>) -> Batch {
    consolidate(&mut updates);
    let mut changes: Vec<Change> = Vec::new();
    for ((key, value), diff) in updates {
        // Updates are sorted by key, so a key's retraction and insertion are adjacent.
        let same_key = changes.last().is_some_and(|c| c.key == key);
        match (diff > 0, same_key) {
            (true, true) => {
                changes
                    .last_mut()
                    .expect("same_key implies a last change")
                    .value = Some(value)
            }
            (true, false) => changes.push(Change {
                key,
                value: Some(value),
            }),
            (false, true) => {}
            (false, false) => changes.push(Change { key, value: None }),
        }
    }
    Batch { time, changes }
}
