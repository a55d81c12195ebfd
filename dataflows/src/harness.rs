//! Runs the analytics graph over recorded inputs on worker threads and collects what it emits.
//!
//! Used by the tests, the correctness experiments and anything else that wants the graph's answer
//! for a known input without sources or sinks. Events are spread over the workers round-robin;
//! demographics enter at worker 0, as a real source reads its table once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::Params;
pub use crate::inputs::Input;
use crate::inputs::{Inputs, RoundRobin};
use crate::model::{Demographic, Tick};
use crate::output::{Batch, Change, Progress, emit_batches};
use crate::state::State;

/// The batches the workers emit, collected.
type Reports = Arc<Mutex<Vec<Progress>>>;

/// Each worker's state captured at a boundary, with the worker's index.
type States = Vec<(usize, State)>;

/// Keeps what a worker emits in `reports`.
fn collect_into(reports: &Reports) -> impl FnMut(Progress) + 'static {
    let reports = Arc::clone(reports);
    move |progress| {
        reports
            .lock()
            .expect("no reporter panicked while holding the lock")
            .push(progress)
    }
}

/// Everything the workers emitted, merged per timestamp: once they have all finished, a
/// poisoned lock only means one of them panicked, which `join` has reported.
fn merged(reports: &Reports) -> Result<Vec<Batch>, String> {
    Ok(merge(std::mem::take(
        &mut *reports.lock().map_err(|e| e.to_string())?,
    )))
}

/// Replays `inputs` (sorted by tick) from the inputs' current time on: each tick's inputs once
/// every earlier tick is closed and stepped.
fn replay(
    worker: &mut timely::worker::Worker,
    inputs: &mut Inputs,
    recorded: &[(Tick, Input)],
    spread: &mut RoundRobin,
) {
    for (tick, input) in recorded {
        if *tick > inputs.time() {
            inputs.advance_to(*tick);
            worker.step();
        }
        inputs.replay(input, spread);
    }
}

/// Runs the graph with `workers` threads over `inputs`, each at its tick, and returns the batches
/// of all workers merged per timestamp, in time order.
pub fn run(inputs: &[(Tick, Input)], params: Params, workers: usize) -> Result<Vec<Batch>, String> {
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|(tick, _)| *tick);
    let inputs = Arc::new(inputs);
    let reports: Reports = Arc::default();
    let collected = Arc::clone(&reports);

    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let mut spread = RoundRobin::new(worker.index(), worker.peers());
        let mut graph = worker.dataflow::<Tick, _, _>(|scope| {
            let (graph, rows, _handles) = Inputs::analytics(scope, params);
            emit_batches(rows, collect_into(&collected));
            graph
        });
        replay(worker, &mut graph, &inputs, &mut spread);
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    merged(&reports)
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

    // The demographics table at the boundary, as the source re-reads it.
    let mut table: BTreeMap<Demographic, isize> = BTreeMap::new();
    for (_, input) in first.iter() {
        if let Input::Demographic(row, diff) = input {
            *table.entry(row.clone()).or_default() += diff;
        }
    }
    table.retain(|_, n| *n != 0);

    let (mut batches, states) = run_until(first, params, before, boundary)?;
    batches.retain(|b| b.time < boundary);
    batches.extend(run_restored(rest, params, after, boundary, states, table)?);
    Ok(batches)
}

/// The first run of [`run_restarted`]: the inputs before `boundary`, and each worker's state
/// captured there, in worker order.
fn run_until(
    first: Vec<(Tick, Input)>,
    params: Params,
    workers: usize,
    boundary: Tick,
) -> Result<(Vec<Batch>, States), String> {
    let first = Arc::new(first);
    let reports: Reports = Arc::default();
    let states: Arc<Mutex<States>> = Arc::default();
    let (collected, captured) = (Arc::clone(&reports), Arc::clone(&states));
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let mut spread = RoundRobin::new(index, worker.peers());
        let (mut graph, probe, mut handles) = worker.dataflow::<Tick, _, _>(|scope| {
            let (graph, rows, handles) = Inputs::analytics(scope, params);
            let (probe, rows) = rows.probe();
            emit_batches(rows, collect_into(&collected));
            (graph, probe, handles)
        });
        replay(worker, &mut graph, &first, &mut spread);
        graph.advance_to(boundary);
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
    let batches = merged(&reports)?;
    let mut states = std::mem::take(&mut *states.lock().map_err(|e| e.to_string())?);
    states.sort_by_key(|(index, _)| *index);
    Ok((batches, states))
}

/// The second run of [`run_restarted`]: `states` restored at `boundary` on `workers` workers,
/// the demographics `table` re-read, then the `rest` of the inputs.
fn run_restored(
    rest: Vec<(Tick, Input)>,
    params: Params,
    workers: usize,
    boundary: Tick,
    states: States,
    table: BTreeMap<Demographic, isize>,
) -> Result<Vec<Batch>, String> {
    let rest = Arc::new(rest);
    let states = Arc::new(states);
    let table = Arc::new(table);
    let reports: Reports = Arc::default();
    let collected = Arc::clone(&reports);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut graph = worker.dataflow::<Tick, _, _>(|scope| {
            let (graph, rows, _handles) = Inputs::analytics(scope, params);
            emit_batches(rows, collect_into(&collected));
            graph
        });
        // The state enters two ticks before the boundary, with the segments it held; one tick
        // later the segments make way for the demographics as their source holds them. (The
        // state holds a window closed before the boundary in its all-time remainder, so no window
        // may close in those two milliseconds: the test scenarios close theirs on multiples of
        // 500 ms.)
        let (restore_at, reread_at) = (boundary.saturating_sub(2), boundary.saturating_sub(1));
        graph.advance_to(restore_at);
        let mine = || states.iter().filter(|(old, _)| old % peers == index);
        for (_, state) in mine() {
            graph.restore(state);
        }
        graph.advance_to(reread_at);
        for (_, state) in mine() {
            graph.retract_segments(&state.segments);
        }
        if index == 0 {
            for (row, n) in table.iter() {
                graph.demographic(row.clone(), *n);
            }
        }
        graph.advance_to(boundary);
        replay(
            worker,
            &mut graph,
            &rest,
            &mut RoundRobin::new(index, peers),
        );
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    merged(&reports)
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
