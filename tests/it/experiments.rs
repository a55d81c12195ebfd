//! The correctness experiments: small seeded configurations through the library and the built
//! binary, their figures recomputed here from the generated inputs, independently of the code that
//! computed them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use dataflows::harness::{self, Input};
use dataflows::model::{AggregateKey, EventTimeMs, OutputKey, OutputValue, Tag, Tick};
use dataflows::output::Batch;
use dataflows::reference;
use shopflow::experiments::{Workers, chart, churn, late, retractions, runner};

use crate::support::process::{shopflow, text};

fn workers(n: u16) -> Workers {
    Workers { workers: n }
}

/// A CSV file's header and its records as maps from column to cell.
fn read_csv(path: &Path) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let mut reader = csv::Reader::from_path(path).expect("the CSV file opens");
    let header: Vec<String> = reader
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_owned)
        .collect();
    let records = reader
        .records()
        .map(|record| {
            let record = record.expect("a well-formed record");
            assert_eq!(record.len(), header.len(), "a cell per column");
            header
                .iter()
                .cloned()
                .zip(record.iter().map(str::to_owned))
                .collect()
        })
        .collect();
    (header, records)
}

/// Decodes the PNG file whole; checks its size and that something was drawn on it.
fn check_png(path: &Path) {
    let file = std::fs::File::open(path).expect("the PNG file opens");
    let mut reader = png::Decoder::new(file).read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).expect("a whole PNG image");
    assert_eq!(
        (frame.width, frame.height),
        (chart::WIDTH, chart::HEIGHT),
        "{}",
        path.display()
    );
    let drawn = pixels[..frame.buffer_size()]
        .iter()
        .filter(|&&byte| byte < 128)
        .count();
    assert!(
        drawn > 10_000,
        "{}: lines and text were drawn ({drawn} dark bytes)",
        path.display()
    );
}

fn number<T: std::str::FromStr>(record: &HashMap<String, String>, column: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    record[column]
        .parse()
        .unwrap_or_else(|e| panic!("{column} = {:?}: {e:?}", record[column]))
}

fn small_retractions() -> retractions::Settings {
    retractions::Settings {
        seed: 7,
        workers: workers(2),
        events: 2_400,
        rate: 200.0,
        users: 150,
        refund_share: 0.3,
        changes_per_second: 12.0,
        late_share: 0.1,
        max_delay: Duration::from_secs(12),
        window: Duration::from_secs(4),
        allowed_lateness: Duration::from_secs(4),
    }
}

/// Every timestamp's output equals the reference, and every figure of every row is recomputed
/// here from the reference alone: the changes of a timestamp are the rows on which the reference
/// after it differs from the reference after the one before.
#[test]
fn retractions_equal_the_reference_and_their_figures_are_right() {
    let settings = small_retractions();
    let report = retractions::run(&settings).expect("the experiment runs");
    report
        .check()
        .expect("every timestamp equals the reference");
    assert!(report.rows.iter().all(|r| r.equal));
    assert_eq!(report.no_op_changes, 0);

    let inputs = retractions::inputs(&settings).expect("valid settings");
    let params = settings.params();
    let first_tick = inputs.iter().map(|(t, _)| *t).min().expect("inputs");
    let last_tick = inputs.iter().map(|(t, _)| *t).max().expect("inputs");
    let ticks: Vec<Tick> = (first_tick..=last_tick).step_by(1_000).collect();
    assert_eq!(
        report.rows.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
        ticks,
        "a row for every tick of the run"
    );
    let mut before: BTreeMap<OutputKey, OutputValue> = BTreeMap::new();
    for row in &report.rows {
        let now = reference::evaluate(&inputs, params, row.time_ms);
        let (mut inserted, mut replaced, mut removed, mut decreased) = (0, 0, 0, 0);
        let keys: BTreeSet<&OutputKey> = before.keys().chain(now.keys()).collect();
        for key in keys {
            match (before.get(key), now.get(key)) {
                (None, Some(_)) => inserted += 1,
                (Some(_), None) => {
                    removed += 1;
                    decreased += 1;
                }
                (Some(old), Some(new)) if old != new => {
                    replaced += 1;
                    decreased += u64::from(lower(old, new));
                }
                _ => {}
            }
        }
        let at_tick = |f: &dyn Fn(&Input) -> bool| {
            inputs
                .iter()
                .filter(|(t, input)| *t == row.time_ms && f(input))
                .count() as u64
        };
        let expected = (
            at_tick(&|i| matches!(i, Input::Event(_))),
            at_tick(&|i| matches!(i, Input::Event(e) if e.tag == Tag::Refunded)),
            at_tick(&|i| matches!(i, Input::Demographic(..))),
            inserted,
            replaced,
            removed,
            decreased,
            now.len() as u64,
        );
        let got = (
            row.events,
            row.refunds,
            row.demographic_updates,
            row.inserted,
            row.replaced,
            row.removed,
            row.decreased,
            row.rows,
        );
        assert_eq!(got, expected, "second {}", row.second);
        assert_eq!(row.changed, inserted + replaced + removed);
        assert_eq!(row.retractions, replaced + removed);
        before = now;
    }
    // The scenario exercised what it is about.
    let total = |f: fn(&retractions::Row) -> u64| report.rows.iter().map(f).sum::<u64>();
    assert!(total(|r| r.refunds) > 20, "refunds");
    assert!(total(|r| r.removed) > 0, "removals");
    assert!(total(|r| r.decreased) > 50, "rows going down");
}

/// A timestamp that differs fails the experiment, saying how many and where the first was.
#[test]
fn a_differing_timestamp_fails_the_retractions_experiment() {
    let mut report = retractions::run(&retractions::Settings {
        events: 600,
        ..small_retractions()
    })
    .expect("the experiment runs");
    assert!(report.check().is_ok());
    report.rows[2].equal = false;
    report.first_difference = Some("at second 2: somewhere".into());
    let error = report.check().expect_err("a difference fails").to_string();
    assert_eq!(
        error,
        format!(
            "the incremental output differs from the from-scratch reference at 1 of {} \
             timestamps; the first at second 2: somewhere",
            report.rows.len()
        )
    );
}

/// Whether some field of `new` is below the same field of `old`.
fn lower(old: &OutputValue, new: &OutputValue) -> bool {
    match (old, new) {
        (OutputValue::Totals(old), OutputValue::Totals(new)) => {
            new.clicks < old.clicks
                || new.purchases < old.purchases
                || new.units < old.units
                || new.revenue_cents < old.revenue_cents
        }
        (OutputValue::Count(old), OutputValue::Count(new)) => new < old,
        _ => panic!("a row changed kind: {old:?} -> {new:?}"),
    }
}

/// The measured runner (tick by tick, with logging) emits exactly what the harness emits.
#[test]
fn the_measured_runner_emits_what_the_harness_emits() {
    let settings = small_retractions();
    let inputs = retractions::inputs(&settings).expect("valid settings");
    for workers in [1, 2] {
        let measured =
            runner::run(&inputs, settings.params(), workers, 1_000).expect("the runner runs");
        let batches = harness::run(&inputs, settings.params(), workers).expect("the harness runs");
        assert_eq!(measured.batches, batches, "{workers} workers");
        let ticks = measured.tick_latency.len();
        assert!(ticks >= 12, "a latency per tick: {ticks}");
        assert_eq!(measured.held.len(), ticks, "a state size per tick");
        assert!(measured.peak_held() > 0);
    }
}

fn small_late() -> late::Settings {
    late::Settings {
        seed: 3,
        workers: workers(1),
        lateness: [0, 10, 30, 60, 120].map(Duration::from_secs).to_vec(),
        late_share: 0.25,
        max_delay: Duration::from_secs(60),
        duration: Duration::from_secs(300),
        rate: 25.0,
        users: 200,
        window: Duration::from_secs(60),
    }
}

/// Every figure of the sweep but the state sizes, recomputed by summing the events per window
/// directly: the ground truth is every event in its window, and a run with allowed lateness `L`
/// holds in window `w` exactly the events that arrived before `w + size + L`.
#[test]
fn late_sweep_against_a_direct_sum_of_the_events() {
    let settings = small_late();
    let report = late::run(&settings).expect("the experiment runs");
    let inputs = late::inputs(&settings).expect("valid settings");
    let size = 60_000;
    let (start, end) = (1_700_000_040_000u64, 1_700_000_040_000u64 + 300_000);
    let events: Vec<(Tick, &dataflows::model::Event)> = inputs
        .iter()
        .filter_map(|(t, input)| match input {
            Input::Event(e) => Some((*t, e)),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 7_500);
    let window = |e: &dataflows::model::Event| e.event_time.0 - e.event_time.0 % size;
    let late_events = events
        .iter()
        .filter(|(t, e)| *t >= window(e) + size)
        .count() as u64;
    assert!(late_events > 200, "late events: {late_events}");

    assert_eq!(
        report
            .rows
            .iter()
            .map(|r| r.lateness_ms)
            .collect::<Vec<_>>(),
        vec![0, 10_000, 30_000, 60_000, 120_000]
    );
    for row in &report.rows {
        let lateness = row.lateness_ms;
        // Per full window: (events, revenue) in truth and as held.
        let mut truth: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
        let mut held: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
        for (tick, event) in &events {
            let w = window(event);
            if w < start || w + size + 60_000 > end {
                continue;
            }
            let revenue = if event.tag == Tag::Purchased {
                event.total.0
            } else {
                0
            };
            let t = truth.entry(w).or_default();
            *t = (t.0 + 1, t.1 + revenue);
            let h = held.entry(w).or_default();
            if *tick < w + size + lateness {
                *h = (h.0 + 1, h.1 + revenue);
            }
        }
        let absorbed = events
            .iter()
            .filter(|(t, e)| *t >= window(e) + size && *t < window(e) + size + lateness)
            .count() as u64;
        let missing: Vec<u64> = truth.keys().map(|w| truth[w].0 - held[w].0).collect();
        let errors: Vec<f64> = truth
            .keys()
            .map(|w| 100.0 * (truth[w].0 - held[w].0) as f64 / truth[w].0 as f64)
            .collect();
        assert_eq!(row.events, events.len() as u64);
        assert_eq!(row.late_events, late_events);
        assert_eq!(row.absorbed, absorbed, "absorbed at {lateness} ms");
        assert_eq!(row.windows, truth.len() as u64);
        assert_eq!(
            row.windows, 4,
            "the windows starting at minutes 0 to 3 are full"
        );
        assert_eq!(
            row.windows_exact,
            missing.iter().filter(|m| **m == 0).count() as u64
        );
        assert_eq!(row.missing_events, missing.iter().sum::<u64>());
        assert_eq!(
            row.missing_revenue_cents,
            truth
                .keys()
                .map(|w| i128::from(truth[w].1 - held[w].1))
                .sum::<i128>()
        );
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        let max = errors.iter().copied().fold(0.0, f64::max);
        assert!((row.mean_window_error_pct - mean).abs() < 1e-9, "{row:?}");
        assert!((row.max_window_error_pct - max).abs() < 1e-9, "{row:?}");
        assert!(row.peak_held > 0 && row.peak_window_keys > 0);
    }

    // What the experiment is for.
    for pair in report.rows.windows(2) {
        assert!(pair[0].absorbed_pct <= pair[1].absorbed_pct, "{pair:?}");
        assert!(pair[0].corrections <= pair[1].corrections, "{pair:?}");
        assert!(pair[0].peak_window_keys <= pair[1].peak_window_keys);
    }
    let at_zero = &report.rows[0];
    assert!(at_zero.missing_events > 0 && at_zero.rows_wrong > 0);
    assert!(at_zero.mean_window_error_pct > 0.0);
    assert_eq!(
        at_zero.corrections, 0,
        "nothing changes a window after it ends"
    );
    for row in report.rows.iter().filter(|r| r.lateness_ms >= 60_000) {
        assert_eq!(
            (
                row.rows_wrong,
                row.missing_events,
                row.missing_revenue_cents
            ),
            (0, 0, 0),
            "lateness covering the largest delay: exact"
        );
        assert_eq!(row.windows_exact, row.windows);
        assert_eq!(
            (row.mean_window_error_pct, row.max_window_error_pct),
            (0.0, 0.0)
        );
        assert_eq!(row.absorbed, row.late_events);
    }
    assert!(
        report.rows[1].corrections > 0,
        "late events correct ended windows"
    );
}

fn small_churn() -> churn::Settings {
    churn::Settings {
        seed: 5,
        workers: workers(1),
        users: 500,
        churn_percent: 2.0,
        duration: Duration::from_secs(6),
        rate: 100.0,
        window: Duration::from_secs(2),
        allowed_lateness: Duration::from_secs(3),
    }
}

/// Changes enter at the configured rate; the output volume per tick is what the harness (a
/// different driver) emits for the same inputs; every change shows in its own tick's batch.
#[test]
fn churn_changes_at_the_configured_rate_and_shows_at_once() {
    let settings = small_churn();
    let report = churn::run(&settings).expect("the experiment runs");
    assert_eq!(report.rows.len(), 6);
    assert!(
        report.rows.iter().all(|r| r.changes == 10),
        "2% of 500 users per second, every second"
    );
    assert_eq!(
        report.rows.iter().map(|r| r.changes).sum::<u64>(),
        500 * 2 * 6 / 100
    );
    assert!(report.rows.iter().all(|r| r.moves <= r.changes));
    assert!(report.rows.iter().map(|r| r.moves).sum::<u64>() > 20);
    assert!(report.rows.iter().map(|r| r.affected_rows).sum::<u64>() > 50);
    for row in &report.rows {
        if row.affected_rows > 0 {
            assert_eq!(row.latency_ticks, Some(0), "second {}", row.second);
        } else {
            assert_eq!(row.latency_ticks, None);
        }
        assert!(row.latency_ms > 0.0 && row.baseline_ms > 0.0);
    }
    assert_eq!(report.never_reflected, 0);

    let inputs = churn::inputs(&settings).expect("valid settings");
    let changes: usize = inputs.changes.values().map(|(n, _)| *n as usize).sum();
    assert_eq!(changes, 60);
    // A change is an update (a deletion and an insertion), an insertion or a deletion.
    let updates = inputs.churn.len();
    assert!((60..=120).contains(&updates), "{updates} row updates");

    let per_tick = |batches: Vec<Batch>| -> BTreeMap<Tick, (u64, u64)> {
        batches
            .into_iter()
            .map(|b| {
                let corrections = b
                    .changes
                    .iter()
                    .filter(|c| match &c.key {
                        OutputKey::Aggregate(AggregateKey {
                            window: Some(EventTimeMs(start)),
                            ..
                        }) => b.time >= start + 2_000,
                        _ => false,
                    })
                    .count() as u64;
                (b.time, (b.changes.len() as u64, corrections))
            })
            .collect()
    };
    let params = settings.params();
    let with = per_tick(harness::run(&inputs.all(), params, 2).expect("runs"));
    let without = per_tick(harness::run(&inputs.base, params, 2).expect("runs"));
    for row in &report.rows {
        let (rows, corrections) = with.get(&row.time_ms).copied().unwrap_or_default();
        assert_eq!((row.changed_rows, row.corrections), (rows, corrections));
        let (rows, corrections) = without.get(&row.time_ms).copied().unwrap_or_default();
        assert_eq!(
            (row.baseline_rows, row.baseline_corrections),
            (rows, corrections)
        );
    }
    assert!(report.rows.iter().map(|r| r.corrections).sum::<u64>() > 0);
}

const RETRACTIONS_COLUMNS: &str = "second,time_ms,events,refunds,demographic_updates,changed,\
    inserted,replaced,removed,retractions,decreased,rows,equal";
const LATE_COLUMNS: &str = "lateness_ms,events,late_events,absorbed,absorbed_pct,corrections,\
    windows,windows_exact,rows_wrong,missing_events,missing_revenue_cents,mean_window_error_pct,\
    max_window_error_pct,peak_window_keys,peak_held,mean_held,run_ms";
const CHURN_COLUMNS: &str = "second,time_ms,changes,moves,affected_rows,changed_rows,\
    baseline_rows,corrections,baseline_corrections,latency_ticks,latency_ms,baseline_ms";

fn columns(list: &str) -> Vec<String> {
    list.split(',').map(str::to_owned).collect()
}

/// The three experiments through the binary: a table on standard output, the CSV with the
/// documented columns, and a PNG chart.
#[test]
fn experiments_through_the_binary_write_their_files() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("results");
    let out = out.to_str().expect("a UTF-8 path");

    let run = shopflow(
        &[
            "experiment",
            "retractions",
            "--events",
            "1500",
            "--rate",
            "150",
            "--users",
            "100",
            "--window",
            "3s",
            "--allowed-lateness",
            "3s",
            "--seed",
            "9",
            "-w",
            "2",
            "--out",
            out,
        ],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("| second | events | refunds |"), "{stdout}");
    assert!(
        stdout.contains("every one equal to the from-scratch reference"),
        "{stdout}"
    );
    let (header, records) = read_csv(&Path::new(out).join("retractions.csv"));
    assert_eq!(header, columns(RETRACTIONS_COLUMNS));
    assert_eq!(records.len(), 10, "one row per tick of the ten seconds");
    for record in &records {
        assert_eq!(record["equal"], "true");
        let changed: u64 = number(record, "changed");
        let parts: u64 = ["inserted", "replaced", "removed"]
            .iter()
            .map(|c| number::<u64>(record, c))
            .sum();
        assert_eq!(changed, parts);
    }
    check_png(&Path::new(out).join("retractions.png"));

    let run = shopflow(
        &[
            "experiment",
            "late",
            "--lateness",
            "0,20s,1m",
            "--duration",
            "3m",
            "--rate",
            "10",
            "--users",
            "100",
            "--max-delay",
            "40s",
            "--seed",
            "9",
            "-w",
            "1",
            "--out",
            out,
        ],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("| lateness | late events |"));
    let (header, records) = read_csv(&Path::new(out).join("late.csv"));
    assert_eq!(header, columns(LATE_COLUMNS));
    let lateness: Vec<u64> = records.iter().map(|r| number(r, "lateness_ms")).collect();
    assert_eq!(lateness, vec![0, 20_000, 60_000]);
    assert_eq!(number::<u64>(&records[2], "rows_wrong"), 0);
    check_png(&Path::new(out).join("late.png"));

    let run = shopflow(
        &[
            "experiment",
            "churn",
            "--users",
            "300",
            "--churn-percent",
            "1",
            "--duration",
            "4s",
            "--rate",
            "50",
            "--seed",
            "9",
            "-w",
            "1",
            "--out",
            out,
        ],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("| second | changes | moves |"));
    let (header, records) = read_csv(&Path::new(out).join("churn.csv"));
    assert_eq!(header, columns(CHURN_COLUMNS));
    let changes: Vec<u64> = records.iter().map(|r| number(r, "changes")).collect();
    assert_eq!(changes, vec![3, 3, 3, 3], "1% of 300 users per second");
    check_png(&Path::new(out).join("churn.png"));
}

/// Bad flags: one line naming the problem (clap adds its usual hint after its own errors) and
/// exit code 2, before any work is done.
#[test]
fn hostile_experiment_flags_give_one_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("a file");
    let under_file = file.join("results");
    let under_file = under_file.to_str().expect("a UTF-8 path");

    let run = shopflow(&["experiment", "nonsense"], &[]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).starts_with("error: unrecognized subcommand 'nonsense'"),
        "{}",
        text(&run.stderr)
    );

    let run = shopflow(&["experiment", "late", "--lateness", "0,soon,1m"], &[]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = text(&run.stderr);
    assert!(
        stderr.starts_with(
            "error: invalid value 'soon' for '--lateness <LIST>': expected number at 0 \
             (a duration such as 0, 500ms, 10s, 1m or 5m)"
        ),
        "{stderr}"
    );

    let run = shopflow(&["experiment", "retractions", "-w", "0"], &[]);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).starts_with("error: invalid value '0' for '--workers <WORKERS>'"));

    // Errors found by the experiment itself: exactly one line.
    let one_line = |args: &[&str], expected: &str| {
        let run = shopflow(args, &[]);
        assert_eq!(
            run.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&run.stderr)
        );
        let stderr = text(&run.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
        assert!(run.stdout.is_empty(), "no work done: {}", text(&run.stdout));
    };
    one_line(
        &["experiment", "churn", "--out", under_file],
        &format!("error: cannot write to --out {under_file}: Not a directory (os error 20)\n"),
    );
    one_line(
        &[
            "experiment",
            "churn",
            "--churn-percent",
            "150",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        "error: --churn-percent must be within 0 and 100",
    );
    one_line(
        &[
            "experiment",
            "retractions",
            "--refund-share",
            "2",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        "error: invalid setting: refund-share must be within 0 and 1, not 2",
    );
    one_line(
        &[
            "experiment",
            "churn",
            "--duration",
            "1500ms",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        "error: --duration must be a whole number of seconds",
    );
    assert!(!Path::new(under_file).exists());
}
