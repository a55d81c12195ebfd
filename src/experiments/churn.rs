//! Demographic churn: a share of the users changes every second; how fast and how much the output
//! corrects.
//!
//! The same seeded events go through the real dataflow twice, tick by tick ([`super::runner`]):
//! once with the demographic changes and once without (the baseline). Changes come from the
//! demographics generator (moves, birthdays, deletions, new users' rows), exactly
//! `users × percent / 100` per second, each one changing a row.
//!
//! - **Affected rows** of a tick: the rows whose value after the tick depends on that tick's
//!   changes: the reference implementation at the tick, against the reference at the tick with
//!   that tick's changes withheld. They are what the changes must correct.
//! - **Correction latency in ticks**: how many ticks after the one a change entered the output
//!   first agrees with the reference on every row the tick's changes affected. The output of a
//!   timestamp is a function of every input up to it, so 0 is expected; it is measured, not
//!   assumed.
//! - **Correction latency in milliseconds**: a harness run has no wall clock to be late against;
//!   what it measures is the processing time of each tick, from closing the tick's input to the
//!   output frontier passing it, with churn and without. In a realtime run a change also waits
//!   for its tick to close (up to a tick, half on average) before that processing starts.
//! - **Output volume**: the rows of each tick's batch with churn and without, and the corrections
//!   among them (window rows changed after their window's end).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use dataflows::harness::{Input, accumulate};
use dataflows::model::{AggregateKey, Demographic, OutputKey, OutputValue, Tick};
use dataflows::output::Batch;
use dataflows::windows::WindowSpec;
use dataflows::{Params, reference};
use serde::{Deserialize, Serialize};

use super::chart::{self, Panel, Series};
use super::{ExperimentError, Report, START_MS, TICK_MS, Workers, input_ticks, millis, runner};
use crate::generators::demographics::Changes;
use crate::generators::events::{GeneratorKnobs, Pace};
use crate::generators::recorded_run;

/// The churn experiment's knobs (`shopflow experiment churn --help`).
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Settings {
    /// The seed of every generated event and demographic change.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Worker threads.
    #[command(flatten)]
    pub workers: Workers,
    /// Users with a demographics row at the start; a tenth as many more appear later.
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// The percentage of the (initial) users whose row changes every second.
    #[arg(long, default_value_t = 1.0)]
    pub churn_percent: f64,
    /// Simulated time covered, in whole seconds.
    #[arg(long, default_value = "60s", value_parser = super::duration)]
    pub duration: Duration,
    /// Events per second of simulated time.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// The event-time window size (short, so that a one-minute run has ended windows still open
    /// to corrections).
    #[arg(long, default_value = "10s", value_parser = super::duration)]
    pub window: Duration,
    /// How long after its end a window takes corrections.
    #[arg(long, default_value = "30s", value_parser = super::duration)]
    pub allowed_lateness: Duration,
}

impl Default for Settings {
    /// The command line's defaults.
    fn default() -> Settings {
        super::defaults()
    }
}

impl Settings {
    /// The events' generator knobs: no late events, refunds or duplicates, so that every
    /// correction is the churn's; 1% of the clicks by users who have no row yet.
    pub fn knobs(&self) -> GeneratorKnobs {
        GeneratorKnobs {
            seed: self.seed,
            events_per_second: self.rate,
            users: self.users,
            new_users: (self.users / 10).max(1),
            campaigns: 20,
            campaign_zipf_exponent: 1.1,
            conversion_share: 0.3,
            funnel_span: 20,
            median_order_cents: 4_000,
            late_share: 0.0,
            max_lateness_ms: 0,
            refund_share: 0.0,
            duplicate_share: 0.0,
            unknown_user_share: 0.01,
            demographic_changes_per_second: 0.0,
            pace: Pace::Unbounded,
        }
    }

    /// Demographic changes per second.
    pub fn changes_per_second(&self) -> f64 {
        f64::from(self.users) * self.churn_percent / 100.0
    }

    /// The dataflow's parameters.
    pub fn params(&self) -> Params {
        Params {
            windows: WindowSpec {
                size_ms: millis(self.window),
                allowed_lateness_ms: millis(self.allowed_lateness),
            },
            order_horizon_ms: 600_000,
        }
    }

    fn validate(&self) -> Result<(), ExperimentError> {
        let fail = |m: &str| Err(ExperimentError::Settings(m.to_owned()));
        if !(0.0..=100.0).contains(&self.churn_percent) {
            return fail("--churn-percent must be within 0 and 100");
        }
        let duration = millis(self.duration);
        if duration == 0 || !duration.is_multiple_of(1_000) {
            return fail("--duration must be a whole number of seconds, at least 1s");
        }
        if millis(self.window) == 0 {
            return fail("--window must be at least 1ms");
        }
        self.knobs()
            .validate()
            .map_err(|e| ExperimentError::Settings(format!("invalid setting: {e}")))?;
        if self.events() == 0 {
            return fail("--rate times --duration gives no events");
        }
        Ok(())
    }

    fn events(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }
}

/// The experiment's inputs.
#[derive(Clone, Debug, Default)]
pub struct ChurnInputs {
    /// The initial table and the events: the baseline's whole input.
    pub base: Vec<(Tick, Input)>,
    /// The demographic changes, as row insertions and deletions at their ticks.
    pub churn: Vec<(Tick, Input)>,
    /// Per tick: the changes that entered, and how many of them moved a user to another segment
    /// (new rows and deletions included).
    pub changes: BTreeMap<Tick, (u64, u64)>,
}

impl ChurnInputs {
    /// The churn run's input: the base and the changes.
    pub fn all(&self) -> Vec<(Tick, Input)> {
        let mut all = self.base.clone();
        all.extend(self.churn.iter().cloned());
        all.sort_by_key(|(tick, _)| *tick);
        all
    }
}

/// Generates the inputs: the base run, and `floor(users × percent / 100 × seconds)` changes
/// spread evenly over the ticks (tick `i` brings the total to the floor of the rate times `i + 1`
/// ticks), each one a change of a row (the generator's draws that change nothing are skipped).
pub fn inputs(settings: &Settings) -> Result<ChurnInputs, ExperimentError> {
    settings.validate()?;
    let knobs = settings.knobs();
    let base = recorded_run(&knobs, START_MS, TICK_MS, settings.events())
        .map_err(ExperimentError::Settings)?;
    let per_tick = settings.changes_per_second() * TICK_MS as f64 / 1_000.0;
    let mut generator = Changes::new(knobs.seed, knobs.users, knobs.new_users);
    let mut churn = Vec::new();
    let mut changes = BTreeMap::new();
    let mut made = 0u64;
    for (i, tick) in input_ticks(&base).into_iter().enumerate() {
        // A hair above the float so that, say, 0.29 × 100 ticks is 29 and not 28.999...
        let target = (per_tick * (i + 1) as f64 + 1e-9).floor() as u64;
        let (mut count, mut moves) = (0, 0);
        while made < target {
            let updates = next_real_change(&mut generator)?;
            moves += u64::from(moves_segment(&updates));
            churn.extend(
                updates
                    .into_iter()
                    .map(|(row, diff)| (tick, Input::Demographic(row, diff))),
            );
            made += 1;
            count += 1;
        }
        changes.insert(tick, (count, moves));
    }
    Ok(ChurnInputs {
        base,
        churn,
        changes,
    })
}

/// The generator's next change that changes a row.
fn next_real_change(generator: &mut Changes) -> Result<Vec<(Demographic, isize)>, ExperimentError> {
    for _ in 0..100_000 {
        let updates = generator.next_change();
        if !updates.is_empty() {
            return Ok(updates);
        }
    }
    Err(ExperimentError::Failed(
        "the demographics generator found no row left to change".into(),
    ))
}

/// Whether a change moves the user's contributions: a new row, a deletion, or an update to a row
/// of another segment (not, say, a birthday within an age band).
fn moves_segment(updates: &[(Demographic, isize)]) -> bool {
    let old = updates.iter().find(|(_, diff)| *diff < 0);
    let new = updates.iter().find(|(_, diff)| *diff > 0);
    match (old, new) {
        (Some((old, _)), Some((new, _))) => old.segment() != new.segment(),
        _ => true,
    }
}

/// One tick. The CSV's columns are these fields, in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Seconds of processing time since the first tick.
    pub second: u64,
    /// The tick: processing time in ms since the epoch.
    pub time_ms: Tick,
    /// Demographic changes that entered at this tick.
    pub changes: u64,
    /// Of which moved a user to another segment (new rows and deletions included).
    pub moves: u64,
    /// Output rows whose value after this tick depends on this tick's changes.
    pub affected_rows: u64,
    /// Rows in this tick's batch, with churn.
    pub changed_rows: u64,
    /// Rows in this tick's batch, same events without churn.
    pub baseline_rows: u64,
    /// Window rows in this tick's batch whose window had ended, with churn.
    pub corrections: u64,
    /// The same without churn.
    pub baseline_corrections: u64,
    /// Ticks until the output agreed with the reference on every affected row (empty when the
    /// tick's changes affected no row; empty too if it never did).
    pub latency_ticks: Option<u64>,
    /// Processing time of this tick with churn, in milliseconds.
    pub latency_ms: f64,
    /// Processing time of this tick without churn, in milliseconds.
    pub baseline_ms: f64,
}

/// The experiment's outcome.
#[derive(Clone, Debug)]
pub struct ChurnReport {
    /// The settings it ran with.
    pub settings: Settings,
    /// One row per tick.
    pub rows: Vec<Row>,
    /// Ticks whose changes affected rows that the output never agreed on with the reference.
    pub never_reflected: u64,
    /// Wall-clock time of the two dataflow runs and of the reference, in milliseconds.
    pub run_ms: (u64, u64, u64),
}

/// Runs the experiment.
pub fn run(settings: &Settings) -> Result<ChurnReport, ExperimentError> {
    let inputs = inputs(settings)?;
    let params = settings.params();
    let all = inputs.all();
    let workers = settings.workers.get();
    let timed = |inputs: &[(Tick, Input)]| {
        let started = Instant::now();
        runner::run(inputs, params, workers, TICK_MS)
            .map(|measured| (measured, elapsed_ms(started)))
            .map_err(ExperimentError::Dataflow)
    };
    let (churned, churn_ms) = timed(&all)?;
    let (baseline, baseline_ms) = timed(&inputs.base)?;

    let started = Instant::now();
    let ticks = input_ticks(&inputs.base);
    let first = ticks.first().copied().unwrap_or(START_MS);
    let churned_batches: BTreeMap<Tick, &Batch> =
        churned.batches.iter().map(|b| (b.time, b)).collect();
    let baseline_batches: BTreeMap<Tick, &Batch> =
        baseline.batches.iter().map(|b| (b.time, b)).collect();

    // Per tick: the rows the tick's changes affect, and the rows on which the output disagrees
    // with the reference after the tick.
    let mut table = BTreeMap::new();
    let mut affected: Vec<BTreeSet<OutputKey>> = Vec::with_capacity(ticks.len());
    let mut disagree: Vec<BTreeSet<OutputKey>> = Vec::with_capacity(ticks.len());
    for &tick in &ticks {
        if let Some(batch) = churned_batches.get(&tick) {
            accumulate(&mut table, batch);
        }
        let expected = reference::evaluate(&all, params, tick);
        disagree.push(differing(&table, &expected));
        let has_changes = inputs.changes.get(&tick).is_some_and(|(n, _)| *n > 0);
        affected.push(if has_changes {
            let withheld: Vec<(Tick, Input)> = inputs
                .base
                .iter()
                .filter(|(t, _)| *t <= tick)
                .chain(inputs.churn.iter().filter(|(t, _)| *t < tick))
                .cloned()
                .collect();
            differing(&expected, &reference::evaluate(&withheld, params, tick))
        } else {
            BTreeSet::new()
        });
    }
    let reference_ms = elapsed_ms(started);

    let window_end = |key: &OutputKey| match key {
        OutputKey::Aggregate(AggregateKey {
            window: Some(start),
            ..
        }) => Some(start.0 + params.windows.size_ms),
        _ => None,
    };
    let batch_figures = |batch: Option<&&Batch>, tick: Tick| {
        batch.map_or((0, 0), |batch| {
            let corrections = batch
                .changes
                .iter()
                .filter(|c| window_end(&c.key).is_some_and(|end| tick >= end))
                .count();
            (batch.changes.len() as u64, corrections as u64)
        })
    };
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1_000.0);
    let mut rows = Vec::with_capacity(ticks.len());
    let mut never_reflected = 0;
    for (i, &tick) in ticks.iter().enumerate() {
        let (changes, moves) = inputs.changes.get(&tick).copied().unwrap_or_default();
        let (changed_rows, corrections) = batch_figures(churned_batches.get(&tick), tick);
        let (baseline_rows, baseline_corrections) =
            batch_figures(baseline_batches.get(&tick), tick);
        let latency_ticks = if affected[i].is_empty() {
            None
        } else {
            let found = disagree[i..]
                .iter()
                .position(|wrong| wrong.is_disjoint(&affected[i]))
                .map(|k| k as u64);
            never_reflected += u64::from(found.is_none());
            found
        };
        rows.push(Row {
            second: (tick - first) / 1_000,
            time_ms: tick,
            changes,
            moves,
            affected_rows: affected[i].len() as u64,
            changed_rows,
            baseline_rows,
            corrections,
            baseline_corrections,
            latency_ticks,
            latency_ms: ms(churned.tick_latency.get(&tick)),
            baseline_ms: ms(baseline.tick_latency.get(&tick)),
        });
    }
    Ok(ChurnReport {
        settings: settings.clone(),
        rows,
        never_reflected,
        run_ms: (churn_ms, baseline_ms, reference_ms),
    })
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The keys on which two tables differ.
fn differing(
    a: &BTreeMap<OutputKey, OutputValue>,
    b: &BTreeMap<OutputKey, OutputValue>,
) -> BTreeSet<OutputKey> {
    a.keys()
        .chain(b.keys())
        .filter(|key| a.get(*key) != b.get(*key))
        .cloned()
        .collect()
}

/// The `q` quantile (0 to 1) of `values`, by the nearest-rank method; 0 for none.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl ChurnReport {
    /// The ticks after the first, which loads the table and starts every row: the steady state.
    pub fn steady(&self) -> &[Row] {
        self.rows.get(1..).unwrap_or_default()
    }
}

impl Report for ChurnReport {
    const NAME: &'static str = "churn";
    type Row = Row;

    fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "second",
            "changes",
            "moves",
            "affected rows",
            "changed rows",
            "baseline rows",
            "corrections",
            "baseline corrections",
            "latency ticks",
            "latency ms",
            "baseline ms",
        ];
        let rows = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.second.to_string(),
                    r.changes.to_string(),
                    r.moves.to_string(),
                    r.affected_rows.to_string(),
                    r.changed_rows.to_string(),
                    r.baseline_rows.to_string(),
                    r.corrections.to_string(),
                    r.baseline_corrections.to_string(),
                    r.latency_ticks.map_or("-".into(), |t| t.to_string()),
                    format!("{:.1}", r.latency_ms),
                    format!("{:.1}", r.baseline_ms),
                ]
            })
            .collect();
        (header, rows)
    }

    fn summary(&self) -> String {
        let s = &self.settings;
        let steady = self.steady();
        let sum = |f: fn(&Row) -> u64| steady.iter().map(f).sum::<u64>();
        let seconds = steady.len().max(1) as f64;
        let changes = sum(|r| r.changes);
        let per_change = |rows: u64| rows as f64 / changes.max(1) as f64;
        let extra = sum(|r| r.changed_rows) as i64 - sum(|r| r.baseline_rows) as i64;
        let reflected = steady.iter().filter(|r| r.latency_ticks == Some(0)).count();
        let measured = steady.iter().filter(|r| r.latency_ticks.is_some()).count();
        let latencies: Vec<f64> = steady.iter().map(|r| r.latency_ms).collect();
        let baselines: Vec<f64> = steady.iter().map(|r| r.baseline_ms).collect();
        format!(
            "{} demographic changes in {}s ({}% of {} users per second; {} moved a user's \
             segment), with {}/s events.\n\
             After the first tick (the initial load): {:.0} rows/s changed with churn against {:.0} \
             without ({:+.2} rows per change); {:.2} distinct rows affected per change; {:.0} corrections/s \
             (window rows after their window's end) against {:.0} without.\n\
             Correction latency: the changes of {reflected} of {measured} ticks were reflected in \
             their own tick's batch (0 ticks){}; processing per tick p50 {:.1} ms, max {:.1} ms \
             (without churn {:.1} / {:.1} ms). In a realtime run a change waits for its tick to \
             close first: up to {} ms more.\n\
             Runs: {} ms with churn, {} ms without, {} ms for the reference.",
            self.rows.iter().map(|r| r.changes).sum::<u64>(),
            self.rows.len(),
            s.churn_percent,
            s.users,
            self.rows.iter().map(|r| r.moves).sum::<u64>(),
            s.rate,
            sum(|r| r.changed_rows) as f64 / seconds,
            sum(|r| r.baseline_rows) as f64 / seconds,
            extra as f64 / changes.max(1) as f64,
            per_change(sum(|r| r.affected_rows)),
            sum(|r| r.corrections) as f64 / seconds,
            sum(|r| r.baseline_corrections) as f64 / seconds,
            if self.never_reflected > 0 {
                format!("; {} ticks NEVER reflected", self.never_reflected)
            } else {
                String::new()
            },
            quantile(&latencies, 0.5),
            quantile(&latencies, 1.0),
            quantile(&baselines, 0.5),
            quantile(&baselines, 1.0),
            TICK_MS,
            self.run_ms.0,
            self.run_ms.1,
            self.run_ms.2,
        )
    }

    fn chart(&self, path: &Path) -> Result<(), ExperimentError> {
        let steady = self.steady();
        let line = |label: &str, field: fn(&Row) -> f64| {
            Series::line(
                label,
                steady.iter().map(|r| (r.second as f64, field(r))).collect(),
            )
        };
        let x_label = "processing time (s)".to_owned();
        let panels = [
            Panel {
                title: "output volume per tick".into(),
                x_label: x_label.clone(),
                y_label: "rows".into(),
                series: vec![
                    line("changed rows, with churn", |r| r.changed_rows as f64),
                    line("changed rows, without churn", |r| r.baseline_rows as f64),
                    line("rows the tick's changes affect", |r| r.affected_rows as f64),
                    line("corrections, with churn", |r| r.corrections as f64),
                ],
            },
            Panel {
                title: "processing time per tick (input closed -> output complete)".into(),
                x_label,
                y_label: "ms".into(),
                series: vec![
                    line("with churn", |r| r.latency_ms),
                    line("without churn", |r| r.baseline_ms),
                ],
            },
        ];
        let s = &self.settings;
        let title = format!(
            "churn: {}% of {} users change per second, {}/s events (seed {}, {} workers)",
            s.churn_percent,
            s.users,
            s.rate,
            s.seed,
            s.workers.get()
        );
        chart::draw(path, &title, (2, 1), &panels)
    }
}
