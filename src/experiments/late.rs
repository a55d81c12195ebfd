//! Late data: the allowed lateness swept against a late-event distribution.
//!
//! One seeded input, in which a share of the events arrives late by a delay drawn uniformly up to
//! a maximum, goes through the real dataflow once per allowed lateness. Nothing else corrects a
//! window here (no refunds, duplicates, demographic changes or unknown users), so every difference
//! between the runs is the lateness'. For each allowed lateness:
//!
//! - **late events**: events arriving (at their tick) at or after the end of their event-time
//!   window, counted from the inputs; the same for every run. **Absorbed**: those the run still
//!   counted in their window, that is the late events less the engine's own `late_for_window`.
//! - **corrections**: window rows in the output changed at a timestamp at or after the window's
//!   end: changes to a window whose on-time result had already been emitted.
//! - **error**: the final window rows against ground truth, every event in its event-time window
//!   (the reference implementation at infinite lateness): rows that differ (all six aggregate
//!   families), windows all of whose rows are exact, and per window the share of its events
//!   missing from it (from the campaign rows, in which each event counts once). Only *full*
//!   windows count here: those all of whose events the run generated, starting at or after the
//!   first arrival and ending at least `--max-delay` before the last. (The window before the
//!   start holds only late arrivals, and the last ones lack the arrivals after the end.)
//! - **state**: the most `(user, campaign, window)` keys with a contribution in a window not yet
//!   closed, at any tick (computed from the inputs: what the window state must hold), and the most
//!   contributions the join held after any tick (measured: [`super::runner`]), which adds the
//!   all-time remainders and closed windows not yet folded into them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use dataflows::harness::{Input, accumulate};
use dataflows::model::{
    AggregateKey, CampaignId, Counter, Dimension, EventTimeMs, OutputKey, OutputValue, Tick,
    Totals, UserId,
};
use dataflows::windows::WindowSpec;
use dataflows::{Params, reference};
use serde::{Deserialize, Serialize};

use super::chart::{self, Panel, Series};
use super::{ExperimentError, Report, START_MS, TICK_MS, Workers, millis, percent, runner};
use crate::generators::events::{GeneratorKnobs, Pace};
use crate::generators::recorded_run;

/// The late-data experiment's knobs (`shopflow experiment late --help`).
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Settings {
    /// The seed of every generated event.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Worker threads.
    #[command(flatten)]
    pub workers: Workers,
    /// The allowed latenesses to sweep, comma-separated (e.g. 0,10s,1m,5m); run in increasing order.
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          default_values = ["0", "10s", "1m", "5m"], value_parser = super::duration)]
    pub lateness: Vec<Duration>,
    /// The share of events arriving late.
    #[arg(long, default_value_t = 0.2)]
    pub late_share: f64,
    /// The longest delay of a late event; delays are uniform between 0 and this.
    #[arg(long, default_value = "4m", value_parser = super::duration)]
    pub max_delay: Duration,
    /// Simulated time covered by the events.
    #[arg(long, default_value = "10m", value_parser = super::duration)]
    pub duration: Duration,
    /// Events per second of simulated time.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Users (all with a demographics row).
    #[arg(long, default_value_t = 5_000)]
    pub users: u32,
    /// The event-time window size.
    #[arg(long, default_value = "1m", value_parser = super::duration)]
    pub window: Duration,
}

impl Default for Settings {
    /// The command line's defaults.
    fn default() -> Settings {
        super::defaults()
    }
}

impl Settings {
    /// The generator's knobs: late events, and nothing else that corrects a window.
    pub fn knobs(&self) -> GeneratorKnobs {
        GeneratorKnobs {
            seed: self.seed,
            events_per_second: self.rate,
            users: self.users,
            new_users: 0,
            campaigns: 20,
            campaign_zipf_exponent: 1.1,
            conversion_share: 0.3,
            funnel_span: 20,
            median_order_cents: 4_000,
            late_share: self.late_share,
            max_lateness_ms: millis(self.max_delay),
            refund_share: 0.0,
            duplicate_share: 0.0,
            unknown_user_share: 0.0,
            demographic_changes_per_second: 0.0,
            pace: Pace::Unbounded,
        }
    }

    /// The events generated: the rate times the duration.
    pub fn events(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }

    /// The allowed latenesses swept, in milliseconds, increasing, without repeats.
    pub fn sweep(&self) -> Vec<u64> {
        let set: BTreeSet<u64> = self.lateness.iter().map(|d| millis(*d)).collect();
        set.into_iter().collect()
    }

    /// The dataflow's parameters at allowed lateness `lateness_ms` (orders remembered for an hour;
    /// with no duplicates or refunds, the horizon changes nothing).
    pub fn params(&self, lateness_ms: u64) -> Params {
        Params {
            windows: WindowSpec {
                size_ms: millis(self.window),
                allowed_lateness_ms: lateness_ms,
            },
            order_horizon_ms: 3_600_000,
        }
    }

    fn validate(&self) -> Result<(), ExperimentError> {
        let fail = |m: &str| Err(ExperimentError::Settings(m.to_owned()));
        if self.lateness.is_empty() {
            return fail("--lateness needs at least one value");
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
}

/// One allowed lateness. The CSV's columns are these fields, in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The allowed lateness, in milliseconds.
    pub lateness_ms: u64,
    /// Events generated (each counted once: there are no duplicates or refunds).
    pub events: u64,
    /// Events arriving at or after the end of their window.
    pub late_events: u64,
    /// Late events counted in their window all the same.
    pub absorbed: u64,
    /// `absorbed` as a percentage of `late_events`.
    pub absorbed_pct: f64,
    /// Window rows changed at a timestamp at or after their window's end.
    pub corrections: u64,
    /// Full windows (all of whose events the run generated) holding events, in ground truth.
    pub windows: u64,
    /// Full windows all of whose rows equal ground truth in the end.
    pub windows_exact: u64,
    /// Rows of full windows (all families) whose final value differs from ground truth.
    pub rows_wrong: u64,
    /// Events missing from their window: the sum over full windows of |truth - final| of the window's
    /// clicks plus its purchases (window totals, from the campaign rows, where each event counts
    /// once).
    pub missing_events: u64,
    /// The same for revenue, in cents.
    pub missing_revenue_cents: i128,
    /// The mean over full windows of the share of the window's events missing from it, in percent.
    pub mean_window_error_pct: f64,
    /// The largest such share, in percent.
    pub max_window_error_pct: f64,
    /// The most `(user, campaign, window)` keys with a contribution in an open window at any tick.
    pub peak_window_keys: u64,
    /// The most contributions the join held after any tick (all workers).
    pub peak_held: u64,
    /// The mean over ticks of the contributions the join held (all workers).
    pub mean_held: u64,
    /// Wall-clock time of the dataflow run, in milliseconds.
    pub run_ms: u64,
}

/// The experiment's outcome.
#[derive(Clone, Debug)]
pub struct LateReport {
    /// The settings it ran with.
    pub settings: Settings,
    /// One row per allowed lateness, increasing.
    pub rows: Vec<Row>,
}

/// The inputs every run of the sweep is fed: the generated run of these settings.
pub fn inputs(settings: &Settings) -> Result<Vec<(Tick, Input)>, ExperimentError> {
    settings.validate()?;
    recorded_run(&settings.knobs(), START_MS, TICK_MS, settings.events())
        .map_err(ExperimentError::Settings)
}

/// Runs the experiment: the dataflow once per allowed lateness, on the same input.
pub fn run(settings: &Settings) -> Result<LateReport, ExperimentError> {
    let inputs = inputs(settings)?;
    let spec = settings.params(0).windows;
    let events: Vec<(Tick, &dataflows::model::Event)> = inputs
        .iter()
        .filter_map(|(tick, input)| match input {
            Input::Event(event) => Some((*tick, event)),
            _ => None,
        })
        .collect();
    let window_end = |time: EventTimeMs| spec.window_of(time).0 + spec.size_ms;
    let late_events = events
        .iter()
        .filter(|(tick, event)| *tick >= window_end(event.event_time))
        .count() as u64;

    // Ground truth: every event in its window, whenever it arrived; for the windows all of whose
    // events were generated (the run has no late arrivals of windows before its start, nor those
    // that would arrive after its end).
    let full = |start: EventTimeMs| {
        start.0 >= START_MS
            && start.0 + spec.size_ms + millis(settings.max_delay)
                <= START_MS + millis(settings.duration)
    };
    let mut truth = window_rows(&reference::evaluate(
        &inputs,
        settings.params(u64::MAX),
        u64::MAX,
    ));
    truth.retain(|key, _| key.window.is_some_and(full));
    let truth_windows = per_window(&truth);

    let mut rows = Vec::new();
    for lateness_ms in settings.sweep() {
        let params = settings.params(lateness_ms);
        let started = Instant::now();
        let measured = runner::run(&inputs, params, settings.workers.get(), TICK_MS)
            .map_err(ExperimentError::Dataflow)?;
        let run_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

        let mut table = BTreeMap::new();
        let mut corrections = 0;
        for batch in &measured.batches {
            corrections += batch
                .changes
                .iter()
                .filter(|change| match &change.key {
                    OutputKey::Aggregate(AggregateKey {
                        window: Some(start),
                        ..
                    }) => batch.time >= start.0 + spec.size_ms,
                    _ => false,
                })
                .count() as u64;
            accumulate(&mut table, batch);
        }
        let missed = match table.get(&OutputKey::Counter(Counter::LateForWindow)) {
            Some(OutputValue::Count(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let absorbed = late_events.checked_sub(missed).ok_or_else(|| {
            ExperimentError::Failed(format!(
                "the engine counted {missed} events late for their window, more than the \
                 {late_events} that arrived after their window ended"
            ))
        })?;

        let mut held = window_rows(&table);
        held.retain(|key, _| key.window.is_some_and(full));
        let keys: BTreeSet<&AggregateKey> = truth.keys().chain(held.keys()).collect();
        let wrong: Vec<&AggregateKey> = keys
            .into_iter()
            .filter(|key| truth.get(*key) != held.get(*key))
            .collect();
        let wrong_windows: BTreeSet<EventTimeMs> =
            wrong.iter().filter_map(|key| key.window).collect();
        let held_windows = per_window(&held);
        let mut missing_events = 0;
        let mut missing_revenue_cents = 0;
        let mut window_errors = Vec::new();
        for (window, want) in &truth_windows {
            let got = held_windows.get(window).copied().unwrap_or_default();
            let missing = (want.clicks - got.clicks).unsigned_abs()
                + (want.purchases - got.purchases).unsigned_abs();
            missing_events += missing;
            missing_revenue_cents += (want.revenue_cents - got.revenue_cents).abs();
            window_errors.push(percent(
                missing,
                (want.clicks + want.purchases).unsigned_abs(),
            ));
        }
        let windows = truth_windows.len() as u64;
        rows.push(Row {
            lateness_ms,
            events: events.len() as u64,
            late_events,
            absorbed,
            absorbed_pct: percent(absorbed, late_events),
            corrections,
            windows,
            windows_exact: truth_windows
                .keys()
                .filter(|w| !wrong_windows.contains(w))
                .count() as u64,
            rows_wrong: wrong.len() as u64,
            missing_events,
            missing_revenue_cents,
            mean_window_error_pct: if window_errors.is_empty() {
                0.0
            } else {
                window_errors.iter().sum::<f64>() / window_errors.len() as f64
            },
            max_window_error_pct: window_errors.iter().copied().fold(0.0, f64::max),
            peak_window_keys: peak_window_keys(&events, spec.size_ms, lateness_ms),
            peak_held: measured.peak_held(),
            mean_held: measured.mean_held(),
            run_ms,
        });
    }
    Ok(LateReport {
        settings: settings.clone(),
        rows,
    })
}

/// The window rows of an output table.
fn window_rows(table: &BTreeMap<OutputKey, OutputValue>) -> BTreeMap<AggregateKey, Totals> {
    table
        .iter()
        .filter_map(|(key, value)| match (key, value) {
            (OutputKey::Aggregate(key), OutputValue::Totals(totals)) if key.window.is_some() => {
                Some((key.clone(), *totals))
            }
            _ => None,
        })
        .collect()
}

/// Each window's totals, from its campaign rows: every event counts in exactly one of them.
fn per_window(rows: &BTreeMap<AggregateKey, Totals>) -> BTreeMap<EventTimeMs, Totals> {
    let mut windows: BTreeMap<EventTimeMs, Totals> = BTreeMap::new();
    for (key, totals) in rows {
        if let (Dimension::Campaign(_), Some(window)) = (&key.dimension, key.window) {
            windows.entry(window).or_default().add(totals);
        }
    }
    windows
}

/// The most `(user, campaign, window)` keys live at once: a key is live from the first tick one of
/// its events arrives while its window is open until the window closes.
fn peak_window_keys(
    events: &[(Tick, &dataflows::model::Event)],
    size_ms: u64,
    lateness_ms: u64,
) -> u64 {
    let spec = WindowSpec {
        size_ms,
        allowed_lateness_ms: lateness_ms,
    };
    let mut first_seen: HashMap<(UserId, CampaignId, EventTimeMs), Tick> = HashMap::new();
    for (tick, event) in events {
        let window = spec.window_of(event.event_time);
        if !spec.is_closed(window, *tick) {
            let seen = first_seen
                .entry((event.user_id, event.campaign_id, window))
                .or_insert(*tick);
            *seen = (*seen).min(*tick);
        }
    }
    // +1 when a key becomes live, -1 when its window closes; at one instant, closings first.
    let mut steps: Vec<(Tick, i64)> = Vec::with_capacity(first_seen.len() * 2);
    for ((_, _, window), seen) in first_seen {
        steps.push((seen, 1));
        steps.push((spec.closes_at(window), -1));
    }
    steps.sort();
    let (mut live, mut peak) = (0i64, 0i64);
    for (_, step) in steps {
        live += step;
        peak = peak.max(live);
    }
    u64::try_from(peak).unwrap_or(0)
}

fn seconds(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

impl Report for LateReport {
    const NAME: &'static str = "late";
    type Row = Row;

    fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "lateness",
            "late events",
            "absorbed",
            "absorbed %",
            "corrections",
            "windows exact",
            "rows wrong",
            "missing events",
            "mean window error %",
            "max window error %",
            "peak window keys",
            "peak held",
            "mean held",
            "run ms",
        ];
        let rows = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    seconds(r.lateness_ms),
                    r.late_events.to_string(),
                    r.absorbed.to_string(),
                    format!("{:.1}", r.absorbed_pct),
                    r.corrections.to_string(),
                    format!("{}/{}", r.windows_exact, r.windows),
                    r.rows_wrong.to_string(),
                    r.missing_events.to_string(),
                    format!("{:.2}", r.mean_window_error_pct),
                    format!("{:.2}", r.max_window_error_pct),
                    r.peak_window_keys.to_string(),
                    r.peak_held.to_string(),
                    r.mean_held.to_string(),
                    r.run_ms.to_string(),
                ]
            })
            .collect();
        (header, rows)
    }

    fn summary(&self) -> String {
        let s = &self.settings;
        let (events, late) = self
            .rows
            .first()
            .map_or((0, 0), |r| (r.events, r.late_events));
        let exact_from = self
            .rows
            .iter()
            .find(|r| r.rows_wrong == 0)
            .map_or("no lateness swept".to_owned(), |r| seconds(r.lateness_ms));
        format!(
            "{events} events over {} of simulated time ({}/s), {:.0}% of them delayed uniformly up \
             to {}; {late} ({:.1}%) arrived after their {} window had ended.\n\
             Ground truth is the reference implementation at infinite lateness; errors are over the \
             {} full windows (all of whose events the run generated). Every one is exact from an \
             allowed lateness of {exact_from}.",
            seconds(millis(s.duration)),
            s.rate,
            100.0 * s.late_share,
            seconds(millis(s.max_delay)),
            percent(late, events),
            seconds(millis(s.window)),
            self.rows.first().map_or(0, |r| r.windows),
        )
    }

    fn chart(&self, path: &Path) -> Result<(), ExperimentError> {
        let line = |label: &str, field: fn(&Row) -> f64| {
            Series::marked(
                label,
                self.rows
                    .iter()
                    .map(|r| (r.lateness_ms as f64 / 1_000.0, field(r)))
                    .collect(),
            )
        };
        let x_label = "allowed lateness (s)".to_owned();
        let panels = [
            Panel {
                title: "late events absorbed into their window".into(),
                x_label: x_label.clone(),
                y_label: "% of late events".into(),
                series: vec![line("absorbed", |r| r.absorbed_pct)],
            },
            Panel {
                title: "final per-window error against ground truth".into(),
                x_label: x_label.clone(),
                y_label: "% of the window's events missing".into(),
                series: vec![
                    line("mean over windows", |r| r.mean_window_error_pct),
                    line("worst window", |r| r.max_window_error_pct),
                ],
            },
            Panel {
                title: "corrections emitted (window rows changed after the window's end)".into(),
                x_label: x_label.clone(),
                y_label: "rows".into(),
                series: vec![line("corrections", |r| r.corrections as f64)],
            },
            Panel {
                title: "state".into(),
                x_label,
                y_label: "count".into(),
                series: vec![
                    line("contributions held, peak (measured)", |r| {
                        r.peak_held as f64
                    }),
                    line("contributions held, mean (measured)", |r| {
                        r.mean_held as f64
                    }),
                    line("(user, campaign, window) keys open", |r| {
                        r.peak_window_keys as f64
                    }),
                ],
            },
        ];
        let s = &self.settings;
        let title = format!(
            "late data: {:.0}% of events delayed up to {}, {} windows (seed {})",
            100.0 * s.late_share,
            seconds(millis(s.max_delay)),
            seconds(millis(s.window)),
            s.seed
        );
        chart::draw(path, &title, (2, 2), &panels)
    }
}
