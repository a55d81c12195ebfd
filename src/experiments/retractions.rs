//! Retractions: refunds and demographic changes, incremental output vs from-scratch recomputation.
//!
//! A seeded generated run with many refunds and demographic changes (and some late, duplicate and
//! unknown-user events) goes through the real dataflow ([`dataflows::harness::run`]). The batches
//! are applied in order to a table, as an upserting sink would hold them, and after every
//! completed timestamp that table is compared with [`dataflows::reference::evaluate`] at that
//! timestamp: the naive implementation replaying every input from scratch. They must be equal at
//! every timestamp.
//!
//! Each change of a batch is classified against the table before it: an *insertion* (a row that
//! had no value), a *replacement* (a row whose value changed; the dataflow emitted it as the old
//! row retracted and the new one inserted) or a *removal* (a row that no longer has a value: a
//! retraction alone). *Retractions* are replacements plus removals. A row *decreased* when a
//! removal took it away or a replacement lowered one of its fields: only refunds and demographic
//! changes (a user's contributions leaving a segment) can do that, since events only add.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use clap::Args;
use dataflows::harness::{self, Input, accumulate};
use dataflows::model::{Counter, OutputKey, OutputValue, Tag, Tick};
use dataflows::output::Batch;
use dataflows::windows::WindowSpec;
use dataflows::{Params, reference};
use serde::{Deserialize, Serialize};

use super::chart::{self, Panel, Series};
use super::{ExperimentError, Report, START_MS, TICK_MS, Workers, describe, input_ticks, millis};
use crate::generators::events::{GeneratorKnobs, Pace};
use crate::generators::recorded_run;

/// The retractions experiment's knobs (`shopflow experiment retractions --help`).
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Settings {
    /// The seed of every generated event and demographic change.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Worker threads.
    #[command(flatten)]
    pub workers: Workers,
    /// Events to generate.
    #[arg(long, default_value_t = 30_000)]
    pub events: u64,
    /// Events per second of simulated time.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Users with a demographics row at the start; a tenth as many more appear in events first
    /// and get their row later.
    #[arg(long, default_value_t = 2_000)]
    pub users: u32,
    /// The share of purchases refunded (two seconds' worth of events after the purchase at 500/s).
    #[arg(long, default_value_t = 0.2)]
    pub refund_share: f64,
    /// Demographic changes per second: moves, birthdays, deletions, new users' rows.
    #[arg(long, default_value_t = 20.0)]
    pub changes_per_second: f64,
    /// The share of events arriving late, each by a uniform delay up to --max-delay.
    #[arg(long, default_value_t = 0.05)]
    pub late_share: f64,
    /// The longest delay of a late event.
    #[arg(long, default_value = "1m", value_parser = super::duration)]
    pub max_delay: Duration,
    /// The event-time window size.
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
    /// The generator's knobs for these settings.
    pub fn knobs(&self) -> GeneratorKnobs {
        GeneratorKnobs {
            seed: self.seed,
            events_per_second: self.rate,
            users: self.users,
            new_users: (self.users / 10).max(1),
            campaigns: 20,
            campaign_zipf_exponent: 1.1,
            conversion_share: 0.3,
            // Purchases arrive 250 events after their click and refunds 1,000 after the purchase:
            // in a later tick, so a refund retracts what an earlier batch showed.
            funnel_span: 250,
            median_order_cents: 4_000,
            late_share: self.late_share,
            max_lateness_ms: millis(self.max_delay),
            refund_share: self.refund_share,
            duplicate_share: 0.01,
            unknown_user_share: 0.02,
            demographic_changes_per_second: self.changes_per_second,
            pace: Pace::Unbounded,
        }
    }

    /// The dataflow's parameters for these settings (orders remembered for ten minutes).
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
        if self.events == 0 {
            return Err(ExperimentError::Settings(
                "--events must be at least 1".into(),
            ));
        }
        if millis(self.window) == 0 {
            return Err(ExperimentError::Settings(
                "--window must be at least 1ms".into(),
            ));
        }
        self.knobs()
            .validate()
            .map_err(|e| ExperimentError::Settings(format!("invalid setting: {e}")))
    }
}

/// One completed timestamp. The CSV's columns are these fields, in this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Seconds of processing time since the first tick.
    pub second: u64,
    /// The completed timestamp: processing time in ms since the epoch.
    pub time_ms: Tick,
    /// Event deliveries that entered at this tick.
    pub events: u64,
    /// Of which refunds.
    pub refunds: u64,
    /// Demographics updates that entered at this tick: row insertions plus deletions (an update
    /// of a row is one of each; the first tick holds the initial table).
    pub demographic_updates: u64,
    /// Rows in this timestamp's batch: insertions + replacements + removals.
    pub changed: u64,
    /// Rows that had no value before.
    pub inserted: u64,
    /// Rows whose value was replaced (a retraction and an insertion).
    pub replaced: u64,
    /// Rows removed (a retraction alone).
    pub removed: u64,
    /// Replacements plus removals.
    pub retractions: u64,
    /// Rows removed, or replaced with a lower value in some field.
    pub decreased: u64,
    /// Rows in the table after this timestamp.
    pub rows: u64,
    /// Whether the table after this timestamp equals the reference computed from scratch at it.
    pub equal: bool,
}

/// The experiment's outcome.
#[derive(Clone, Debug)]
pub struct RetractionsReport {
    /// The settings it ran with.
    pub settings: Settings,
    /// One row per completed timestamp, in time order.
    pub rows: Vec<Row>,
    /// Changes that changed nothing (a removal of an absent row, or the same value again); the
    /// output contract says there are none.
    pub no_op_changes: u64,
    /// The first difference from the reference, if any: where and what.
    pub first_difference: Option<String>,
    /// The engine's counters at the end (refunds applied, duplicates, ...).
    pub counters: BTreeMap<Counter, i64>,
}

/// The inputs the experiment feeds the dataflow: the generated run of these settings.
pub fn inputs(settings: &Settings) -> Result<Vec<(Tick, Input)>, ExperimentError> {
    settings.validate()?;
    recorded_run(&settings.knobs(), START_MS, TICK_MS, settings.events)
        .map_err(ExperimentError::Settings)
}

/// Runs the experiment.
pub fn run(settings: &Settings) -> Result<RetractionsReport, ExperimentError> {
    let inputs = inputs(settings)?;
    let params = settings.params();
    let batches =
        harness::run(&inputs, params, settings.workers.get()).map_err(ExperimentError::Dataflow)?;
    let batches: BTreeMap<Tick, &Batch> = batches.iter().map(|b| (b.time, b)).collect();

    let mut per_tick: BTreeMap<Tick, (u64, u64, u64)> = BTreeMap::new();
    for (tick, input) in &inputs {
        let (events, refunds, demographics) = per_tick.entry(*tick).or_default();
        match input {
            Input::Event(event) => {
                *events += 1;
                *refunds += u64::from(event.tag == Tag::Refunded);
            }
            Input::Demographic(..) => *demographics += 1,
            Input::Counter(..) => {}
        }
    }
    let ticks = input_ticks(&inputs);
    let first = ticks.first().copied().unwrap_or(START_MS);
    let times: BTreeSet<Tick> = ticks.into_iter().chain(batches.keys().copied()).collect();

    let mut table: BTreeMap<OutputKey, OutputValue> = BTreeMap::new();
    let mut rows = Vec::with_capacity(times.len());
    let mut no_op_changes = 0;
    let mut first_difference = None;
    for time in times {
        let (events, refunds, demographic_updates) =
            per_tick.get(&time).copied().unwrap_or_default();
        let mut row = Row {
            second: (time - first) / 1_000,
            time_ms: time,
            events,
            refunds,
            demographic_updates,
            changed: 0,
            inserted: 0,
            replaced: 0,
            removed: 0,
            retractions: 0,
            decreased: 0,
            rows: 0,
            equal: false,
        };
        if let Some(batch) = batches.get(&time) {
            for change in &batch.changes {
                match (table.get(&change.key), change.value.as_ref()) {
                    (None, Some(_)) => row.inserted += 1,
                    (Some(old), Some(new)) if old != new => {
                        row.replaced += 1;
                        row.decreased += u64::from(decreased(old, new));
                    }
                    (Some(_), None) => {
                        row.removed += 1;
                        row.decreased += 1;
                    }
                    (Some(_), Some(_)) | (None, None) => no_op_changes += 1,
                }
            }
            accumulate(&mut table, batch);
        }
        row.changed = row.inserted + row.replaced + row.removed;
        row.retractions = row.replaced + row.removed;
        row.rows = table.len() as u64;
        let expected = reference::evaluate(&inputs, params, time);
        row.equal = table == expected;
        if !row.equal && first_difference.is_none() {
            first_difference = first_mismatch(&table, &expected)
                .map(|(key, got, want)| {
                    format!(
                        "at second {}: output {}, reference {}",
                        row.second,
                        describe(&key, got.as_ref()),
                        describe(&key, want.as_ref())
                    )
                })
                .or_else(|| Some(format!("at second {}", row.second)));
        }
        rows.push(row);
    }
    let counters = table
        .iter()
        .filter_map(|(key, value)| match (key, value) {
            (OutputKey::Counter(counter), OutputValue::Count(n)) => Some((*counter, *n)),
            _ => None,
        })
        .collect();
    Ok(RetractionsReport {
        settings: settings.clone(),
        rows,
        no_op_changes,
        first_difference,
        counters,
    })
}

/// Whether `new` is lower than `old` in some field.
fn decreased(old: &OutputValue, new: &OutputValue) -> bool {
    match (old, new) {
        (OutputValue::Totals(old), OutputValue::Totals(new)) => {
            new.clicks < old.clicks
                || new.purchases < old.purchases
                || new.units < old.units
                || new.revenue_cents < old.revenue_cents
        }
        (OutputValue::Count(old), OutputValue::Count(new)) => new < old,
        _ => false,
    }
}

type Mismatch = (OutputKey, Option<OutputValue>, Option<OutputValue>);

/// The first key (in key order) on which two tables differ.
fn first_mismatch(
    got: &BTreeMap<OutputKey, OutputValue>,
    want: &BTreeMap<OutputKey, OutputValue>,
) -> Option<Mismatch> {
    let keys: BTreeSet<&OutputKey> = got.keys().chain(want.keys()).collect();
    keys.into_iter()
        .find(|key| got.get(*key) != want.get(*key))
        .map(|key| (key.clone(), got.get(key).copied(), want.get(key).copied()))
}

impl RetractionsReport {
    /// Timestamps whose output equals the reference.
    pub fn equal(&self) -> usize {
        self.rows.iter().filter(|r| r.equal).count()
    }

    /// `Ok` when every timestamp equals the reference and no change was a no-op; otherwise the
    /// failure, saying where.
    pub fn check(&self) -> Result<(), ExperimentError> {
        let differ = self.rows.len() - self.equal();
        if differ > 0 {
            return Err(ExperimentError::Failed(format!(
                "the incremental output differs from the from-scratch reference at {differ} of {} \
                 timestamps; the first {}",
                self.rows.len(),
                self.first_difference.as_deref().unwrap_or("is unknown")
            )));
        }
        if self.no_op_changes > 0 {
            return Err(ExperimentError::Failed(format!(
                "{} changes in the output changed nothing",
                self.no_op_changes
            )));
        }
        Ok(())
    }

    fn total(&self, field: impl Fn(&Row) -> u64) -> u64 {
        self.rows.iter().map(field).sum()
    }
}

impl Report for RetractionsReport {
    const NAME: &'static str = "retractions";
    type Row = Row;

    fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "second",
            "events",
            "refunds",
            "demographic updates",
            "changed",
            "inserted",
            "replaced",
            "removed",
            "retractions",
            "decreased",
            "rows",
            "equal",
        ];
        let rows = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.second.to_string(),
                    r.events.to_string(),
                    r.refunds.to_string(),
                    r.demographic_updates.to_string(),
                    r.changed.to_string(),
                    r.inserted.to_string(),
                    r.replaced.to_string(),
                    r.removed.to_string(),
                    r.retractions.to_string(),
                    r.decreased.to_string(),
                    r.rows.to_string(),
                    r.equal.to_string(),
                ]
            })
            .collect();
        (header, rows)
    }

    fn summary(&self) -> String {
        let changed = self.total(|r| r.changed);
        let retractions = self.total(|r| r.retractions);
        let counter = |c: Counter| self.counters.get(&c).copied().unwrap_or(0);
        let verdict = if self.equal() == self.rows.len() {
            "every one equal to the from-scratch reference".to_owned()
        } else {
            format!(
                "{} DIFFERENT from the from-scratch reference (first {})",
                self.rows.len() - self.equal(),
                self.first_difference.as_deref().unwrap_or("unknown")
            )
        };
        format!(
            "{} completed timestamps, {verdict}.\n\
             {changed} changed rows: {} insertions, {retractions} retractions ({:.1}%: {} values \
             replaced, {} rows removed); {} rows went down.\n\
             Inputs: {} events ({} refunds: {} applied, {} before their purchase), {} demographics \
             updates besides the initial table's rows; {} late for their window, {} duplicates.",
            self.rows.len(),
            self.total(|r| r.inserted),
            super::percent(retractions, changed),
            self.total(|r| r.replaced),
            self.total(|r| r.removed),
            self.total(|r| r.decreased),
            self.total(|r| r.events),
            self.total(|r| r.refunds),
            counter(Counter::RefundsApplied),
            counter(Counter::RefundsUnmatched),
            self.total(|r| r.demographic_updates)
                .saturating_sub(u64::from(self.settings.users)),
            counter(Counter::LateForWindow),
            counter(Counter::Duplicates),
        )
    }

    fn chart(&self, path: &Path) -> Result<(), ExperimentError> {
        // The first timestamp loads the table and inserts every row: it would flatten the rest.
        let steady = self.rows.get(1..).unwrap_or_default();
        let line = |label: &str, field: fn(&Row) -> u64| {
            Series::line(
                label,
                steady
                    .iter()
                    .map(|r| (r.second as f64, field(r) as f64))
                    .collect(),
            )
        };
        let mut outputs = vec![
            line("inserted", |r| r.inserted),
            line("replaced", |r| r.replaced),
            line("removed", |r| r.removed),
            line("decreased (refund or move)", |r| r.decreased),
        ];
        let differing: Vec<(f64, f64)> = steady
            .iter()
            .filter(|r| !r.equal)
            .map(|r| (r.second as f64, 0.0))
            .collect();
        if !differing.is_empty() {
            outputs.push(Series::marked("DIFFERENT from the reference", differing));
        }
        let panels = [
            Panel {
                title: "output changes per completed timestamp (the first, the initial load, not shown)"
                    .into(),
                x_label: "processing time (s)".into(),
                y_label: "rows".into(),
                series: outputs,
            },
            Panel {
                title: "what caused the retractions, per tick".into(),
                x_label: "processing time (s)".into(),
                y_label: "inputs".into(),
                series: vec![
                    line("refunds", |r| r.refunds),
                    line("demographics updates (+/- rows)", |r| r.demographic_updates),
                ],
            },
        ];
        let title = format!(
            "retractions: {}/{} timestamps equal to the from-scratch reference (seed {}, {} workers)",
            self.equal(),
            self.rows.len(),
            self.settings.seed,
            self.settings.workers.get()
        );
        chart::draw(path, &title, (2, 1), &panels)
    }
}
