//! Runs the analytics graph over recorded inputs on worker threads and collects what it emits.
//!
//! Used by the tests, the correctness experiments and anything else that wants the graph's answer
//! for a known input without sources or sinks. Events are spread over the workers round-robin;
//! demographics enter at worker 0, as a real source reads its table once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input as _;
use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::vec::Input as _;

use crate::model::{Counter, Demographic, Event, Tick};
use crate::output::{Batch, Change, Progress, emit_batches};
use crate::{Params, analytics};

/// One recorded input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An event delivery.
    Event(Event),
    /// A demographics change: `+1` inserts the row, `-1` deletes it; an update is both.
    Demographic(Demographic, isize),
    /// A source-side counter increment (a malformed message).
    Counter(Counter, isize),
}

/// Runs the graph with `workers` threads over `inputs`, each at its tick, and returns the batches
/// of all workers merged per timestamp, in time order.
pub fn run(inputs: &[(Tick, Input)], params: Params, workers: usize) -> Result<Vec<Batch>, String> {
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|(tick, _)| *tick);
    let inputs = Arc::new(inputs);
    let reports: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let collected = Arc::clone(&reports);

    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let reports = Arc::clone(&collected);
        let mut events_in = InputHandleVec::new();
        let (mut demographics_in, mut counters_in) = worker.dataflow::<Tick, _, _>(|scope| {
            let events = scope.input_from(&mut events_in);
            let (demographics_in, demographics) = scope.new_collection();
            let (counters_in, counters) = scope.new_collection();
            let rows = analytics(events, demographics, counters, params);
            emit_batches(rows, move |progress| {
                reports
                    .lock()
                    .expect("no reporter panicked while holding the lock")
                    .push(progress)
            });
            (demographics_in, counters_in)
        });
        let mut event_index = 0usize;
        for (tick, input) in inputs.iter() {
            if *tick > *events_in.time() {
                events_in.advance_to(*tick);
                demographics_in.advance_to(*tick);
                demographics_in.flush();
                counters_in.advance_to(*tick);
                counters_in.flush();
                worker.step();
            }
            match input {
                Input::Event(event) => {
                    if event_index % peers == index {
                        events_in.send(event.clone());
                    }
                    event_index += 1;
                }
                Input::Demographic(row, diff) if index == 0 => {
                    demographics_in.update(row.clone(), *diff)
                }
                Input::Counter(counter, n) if index == 0 => counters_in.update(*counter, *n),
                Input::Demographic(..) | Input::Counter(..) => {}
            }
        }
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;

    let reports = std::mem::take(&mut *reports.lock().map_err(|e| e.to_string())?);
    Ok(merge(reports))
}

/// Merges the batches of several workers into one batch per timestamp.
pub fn merge(reports: impl IntoIterator<Item = Progress>) -> Vec<Batch> {
    let mut by_time: BTreeMap<Tick, Vec<Change>> = BTreeMap::new();
    for progress in reports {
        for batch in progress.batches {
            by_time.entry(batch.time).or_default().extend(batch.changes);
        }
    }
    by_time
        .into_iter()
        .map(|(time, mut changes)| {
            changes.sort();
            Batch { time, changes }
        })
        .collect()
}

/// Applies batches in order to a table of current values: what a sink that upserts and deletes
/// would hold after each of them.
pub fn accumulate(
    table: &mut BTreeMap<crate::model::OutputKey, crate::model::OutputValue>,
    batch: &Batch,
) {
    for change in &batch.changes {
        match change.value {
            Some(value) => {
                table.insert(change.key.clone(), value);
            }
            None => {
                table.remove(&change.key);
            }
        }
    }
}
