//! Runs the analytics graph over recorded inputs on worker threads and collects what it emits.
//!
//! Used by the tests, the correctness experiments and anything else that wants the graph's answer
//! for a known input without sources or sinks. Events are spread over the workers round-robin;
//! demographics enter at worker 0, as a real source reads its table once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::AsCollection;
use differential_dataflow::input::Input as _;
use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::generic::operator::empty;
use timely::dataflow::operators::vec::Input as _;

use crate::model::{Counter, Demographic, Event, Tick};
use crate::output::{Batch, Change, Progress, emit_batches};
use crate::state::State;
use crate::{Params, Restored, analytics, analytics_with_state};

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

/// Runs the graph as a crash and restart would: `before` workers take the inputs before
/// `boundary`, each captures its state there; then a new graph on `after` workers restores those
/// states at `boundary`, re-reads the demographics as they were then (a source re-reads its
/// table), and takes the rest of the inputs. Returns the first run's batches before the boundary
/// and then the second run's, as a sink would have received them.
pub fn run_restarted(
    inputs: &[(Tick, Input)],
    params: Params,
    before: usize,
    after: usize,
    boundary: Tick,
) -> Result<Vec<Batch>, String> {
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|(tick, _)| *tick);
    let (first, rest): (Vec<_>, Vec<_>) = inputs.into_iter().partition(|(t, _)| *t < boundary);

    // The first run, up to the boundary.
    let first = Arc::new(first);
    let first_inputs = Arc::clone(&first);
    let reports: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let states: Arc<Mutex<Vec<(usize, State)>>> = Arc::default();
    let (collected, captured) = (Arc::clone(&reports), Arc::clone(&states));
    let guards = timely::execute(timely::Config::process(before), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let reports = Arc::clone(&collected);
        let mut events_in = InputHandleVec::new();
        let (mut demographics_in, mut counters_in, probe, mut handles) = worker
            .dataflow::<Tick, _, _>(|scope| {
                let events = scope.input_from(&mut events_in);
                let (demographics_in, demographics) = scope.new_collection();
                let (counters_in, counters) = scope.new_collection();
                let restored = Restored {
                    contributions: empty(scope).as_collection(),
                    segments: empty(scope).as_collection(),
                    orders: empty(scope),
                };
                let (rows, handles) =
                    analytics_with_state(events, demographics, counters, restored, params);
                let (probe, rows) = rows.probe();
                emit_batches(rows, move |progress| {
                    reports
                        .lock()
                        .expect("no reporter panicked while holding the lock")
                        .push(progress)
                });
                (demographics_in, counters_in, probe, handles)
            });
        let mut event_index = 0usize;
        for (tick, input) in first_inputs.iter() {
            if *tick > *events_in.time() {
                events_in.advance_to(*tick);
                demographics_in.advance_to(*tick);
                demographics_in.flush();
                counters_in.advance_to(*tick);
                counters_in.flush();
                worker.step();
            }
            send(
                input,
                index,
                peers,
                &mut event_index,
                &mut events_in,
                &mut demographics_in,
                &mut counters_in,
            );
        }
        events_in.advance_to(boundary);
        demographics_in.advance_to(boundary);
        demographics_in.flush();
        counters_in.advance_to(boundary);
        counters_in.flush();
        while probe.less_than(&boundary) {
            worker.step();
        }
        let state = handles.capture(boundary);
        captured
            .lock()
            .expect("no worker panicked while holding the lock")
            .push((index, state.expect("the boundary is a clean cut")));
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    let mut batches: Vec<Batch> = merge(std::mem::take(
        &mut *reports.lock().map_err(|e| e.to_string())?,
    ))
    .into_iter()
    .filter(|b| b.time < boundary)
    .collect();
    let mut states = std::mem::take(&mut *states.lock().map_err(|e| e.to_string())?);
    states.sort_by_key(|(index, _)| *index);

    // The demographics table at the boundary, as the source re-reads it.
    let mut table: BTreeMap<Demographic, isize> = BTreeMap::new();
    for (_, input) in first.iter() {
        if let Input::Demographic(row, diff) = input {
            *table.entry(row.clone()).or_default() += diff;
        }
    }
    table.retain(|_, n| *n != 0);

    // The second run, restored at the boundary.
    let rest = Arc::new(rest);
    let states = Arc::new(states);
    let table = Arc::new(table);
    let collected = Arc::clone(&reports);
    let guards = timely::execute(timely::Config::process(after), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let reports = Arc::clone(&collected);
        let mut events_in = InputHandleVec::new();
        let mut orders_in = InputHandleVec::new();
        let (mut demographics_in, mut counters_in, mut restored_in, mut segments_in) = worker
            .dataflow::<Tick, _, _>(|scope| {
                let events = scope.input_from(&mut events_in);
                let (demographics_in, demographics) = scope.new_collection();
                let (counters_in, counters) = scope.new_collection();
                let (restored_in, contributions) = scope.new_collection();
                let (segments_in, segments) = scope.new_collection();
                let restored = Restored {
                    contributions,
                    segments,
                    orders: scope.input_from(&mut orders_in),
                };
                let (rows, _handles) =
                    analytics_with_state(events, demographics, counters, restored, params);
                emit_batches(rows, move |progress| {
                    reports
                        .lock()
                        .expect("no reporter panicked while holding the lock")
                        .push(progress)
                });
                (demographics_in, counters_in, restored_in, segments_in)
            });
        // The state enters two ticks before the boundary, with the segments it held; one tick
        // later the segments make way for the demographics as their source holds them. (The
        // state holds a window closed before the boundary in its all-time remainder, so no window
        // may close in those two milliseconds: the test scenarios close theirs on multiples of
        // 500 ms.)
        let (restore_at, reread_at) = (boundary.saturating_sub(2), boundary.saturating_sub(1));
        events_in.advance_to(restore_at);
        orders_in.advance_to(restore_at);
        demographics_in.advance_to(restore_at);
        counters_in.advance_to(restore_at);
        restored_in.advance_to(restore_at);
        segments_in.advance_to(restore_at);
        let mine = || states.iter().filter(|(old, _)| old % peers == index);
        for (_, state) in mine() {
            for (contribution, totals) in &state.contributions {
                restored_in.update(*contribution, *totals);
            }
            for (segment, n) in &state.segments {
                segments_in.update(segment.clone(), *n);
            }
            for (counter, n) in &state.counters {
                counters_in.update(*counter, *n as isize);
            }
            for order in &state.orders {
                orders_in.send(order.clone());
            }
        }
        segments_in.advance_to(reread_at);
        demographics_in.advance_to(reread_at);
        for (_, state) in mine() {
            for (segment, n) in &state.segments {
                segments_in.update(segment.clone(), -*n);
            }
        }
        if index == 0 {
            for (row, n) in table.iter() {
                demographics_in.update(row.clone(), *n);
            }
        }
        segments_in.advance_to(boundary);
        segments_in.flush();
        let mut event_index = 0usize;
        for (tick, input) in rest.iter() {
            if *tick > *events_in.time() {
                events_in.advance_to(*tick);
                orders_in.advance_to(*tick);
                restored_in.advance_to(*tick);
                restored_in.flush();
                demographics_in.advance_to(*tick);
                demographics_in.flush();
                counters_in.advance_to(*tick);
                counters_in.flush();
                worker.step();
            }
            send(
                input,
                index,
                peers,
                &mut event_index,
                &mut events_in,
                &mut demographics_in,
                &mut counters_in,
            );
        }
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    batches.extend(merge(std::mem::take(
        &mut *reports.lock().map_err(|e| e.to_string())?,
    )));
    Ok(batches)
}

/// Sends one recorded input at this worker: events round-robin, the rest at worker 0.
fn send(
    input: &Input,
    index: usize,
    peers: usize,
    event_index: &mut usize,
    events_in: &mut InputHandleVec<Tick, Event>,
    demographics_in: &mut differential_dataflow::input::InputSession<Tick, Demographic, isize>,
    counters_in: &mut differential_dataflow::input::InputSession<Tick, Counter, isize>,
) {
    match input {
        Input::Event(event) => {
            if *event_index % peers == index {
                events_in.send(event.clone());
            }
            *event_index += 1;
        }
        Input::Demographic(row, diff) if index == 0 => demographics_in.update(row.clone(), *diff),
        Input::Counter(counter, n) if index == 0 => counters_in.update(*counter, *n),
        Input::Demographic(..) | Input::Counter(..) => {}
    }
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
