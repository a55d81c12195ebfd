//! The analytics graph over recorded inputs, one tick at a time, measured.
//!
//! [`dataflows::harness::run`] feeds every tick without waiting, which is the quickest way to get
//! the graph's answer. The experiments also want to know how long each tick took and how much
//! state the graph held, so this runner drives the same graph as timely's own loop does
//! (`advance_to(next)`, then step while the probe is behind `next`) and counts the contributions
//! the join holds after each tick. The batches are the same; a test checks it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::Params;
use dataflows::harness::{Input, merge};
use dataflows::inputs::{Inputs, RoundRobin};
use dataflows::model::Tick;
use dataflows::output::{Batch, Progress, emit_batches};

/// What a measured run produced.
#[derive(Debug, Default)]
pub struct Measured {
    /// The output: one batch per completed timestamp with changes, in time order.
    pub batches: Vec<Batch>,
    /// For every tick from the first input's to the last input's: the wall-clock time from
    /// closing the tick's input (`advance_to` the next tick) until the output frontier passed it,
    /// as worker 0 saw it.
    pub tick_latency: BTreeMap<Tick, Duration>,
    /// For the same ticks: the contributions the join held once the tick was complete — one per
    /// (user, campaign) all-time remainder and per (user, campaign, window) not yet folded into
    /// it — summed over the workers.
    pub held: BTreeMap<Tick, u64>,
}

impl Measured {
    /// The most contributions the join held after any tick.
    pub fn peak_held(&self) -> u64 {
        self.held.values().copied().max().unwrap_or(0)
    }

    /// The mean over ticks of the contributions the join held.
    pub fn mean_held(&self) -> u64 {
        let total: u64 = self.held.values().sum();
        total / (self.held.len() as u64).max(1)
    }
}

/// Runs the analytics graph on `workers` threads over `inputs` (each at its tick, ticks
/// `tick_ms` apart), tick by tick, and returns its batches, per-tick latency and state size.
pub fn run(
    inputs: &[(Tick, Input)],
    params: Params,
    workers: usize,
    tick_ms: u64,
) -> Result<Measured, String> {
    if workers == 0 || tick_ms == 0 {
        return Err("workers and the tick length must be at least 1".into());
    }
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|(tick, _)| *tick);
    let inputs = Arc::new(inputs);
    let reports: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let latencies: Arc<Mutex<BTreeMap<Tick, Duration>>> = Arc::default();
    let held: Arc<Mutex<BTreeMap<Tick, u64>>> = Arc::default();
    let (shared_reports, shared_latencies, shared_held) = (
        Arc::clone(&reports),
        Arc::clone(&latencies),
        Arc::clone(&held),
    );

    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let mut spread = RoundRobin::new(index, worker.peers());

        let reports = Arc::clone(&shared_reports);
        let (mut graph, probe, handles) = worker.dataflow::<Tick, _, _>(|scope| {
            let (graph, rows, handles) = Inputs::analytics(scope, params);
            let (probe, rows) = rows.probe();
            emit_batches(rows, move |progress| {
                reports
                    .lock()
                    .expect("no reporter panicked while holding the lock")
                    .push(progress)
            });
            (graph, probe, handles)
        });

        let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
            return;
        };
        let (first, last) = (first.0 - first.0 % tick_ms, last.0);
        let mut next_input = 0usize;
        let mut tick = first;
        while tick <= last {
            graph.advance_to(tick);
            while let Some((time, input)) =
                inputs.get(next_input).filter(|(t, _)| *t < tick + tick_ms)
            {
                debug_assert!(*time >= tick, "inputs are sorted by tick");
                graph.replay(input, &mut spread);
                next_input += 1;
            }
            let next = tick + tick_ms;
            graph.advance_to(next);
            let started = Instant::now();
            worker.step_while(|| probe.less_than(&next));
            let elapsed = started.elapsed();
            if index == 0 {
                shared_latencies
                    .lock()
                    .expect("no worker panicked while holding the lock")
                    .insert(tick, elapsed);
            }
            let now_held = handles.held() as u64;
            *shared_held
                .lock()
                .expect("no worker panicked while holding the lock")
                .entry(tick)
                .or_default() += now_held;
            tick = next;
        }
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;

    // Every worker has finished: a poisoned lock only means one of them panicked, and `join`
    // reported that above.
    let reports = std::mem::take(&mut *reports.lock().map_err(|e| e.to_string())?);
    let tick_latency = std::mem::take(&mut *latencies.lock().map_err(|e| e.to_string())?);
    let held = std::mem::take(&mut *held.lock().map_err(|e| e.to_string())?);
    Ok(Measured {
        batches: merge(reports),
        tick_latency,
        held,
    })
}
