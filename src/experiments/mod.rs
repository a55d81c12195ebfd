//! Correctness experiments: seeded, reproducible runs of the real dataflow next to answers computed
//! independently of it. Each prints a table, and writes `<out>/<name>.csv` and `<out>/<name>.png`.
//!
//! - [`retractions`]: refunds and demographic changes; at every completed timestamp the
//!   incremental output next to the from-scratch reference (always equal), and how many of its
//!   changes were retractions.
//! - [`late`]: a sweep of the allowed lateness against late events: the share absorbed into their
//!   window, the corrections emitted, the final per-window error against ground truth, state size.
//! - [`churn`]: a share of the users changes every second: how fast the output reflects it, and
//!   how much output it causes.
//!
//! The semantics measured are docs/semantics.md's; `shopflow experiment <name> --help` lists the knobs.

pub mod chart;
pub mod churn;
pub mod late;
pub mod retractions;
pub mod runner;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, FromArgMatches, Subcommand};
use dataflows::harness::Input;
use dataflows::model::{OutputKey, OutputValue, Tick};
use serde::Serialize;

/// The simulated time of every experiment's first event: a minute boundary, so the first window
/// starts with the run.
pub const START_MS: u64 = 1_700_000_040_000;

/// The processing-time tick of every experiment: the engine's default, one second.
pub const TICK_MS: u64 = 1_000;

/// `shopflow experiment`.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// Which experiment.
    #[command(subcommand)]
    pub experiment: ExperimentCommand,
}

/// The experiments.
#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Refunds and demographic changes: incremental output vs from-scratch recomputation at every
    /// completed timestamp, and the retractions emitted. Fails if any timestamp differs.
    Retractions {
        #[command(flatten)]
        settings: retractions::Settings,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Allowed lateness swept against late events: share absorbed, corrections, final per-window
    /// error against ground truth, state size.
    Late {
        #[command(flatten)]
        settings: late::Settings,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Demographic churn (a share of the users changing every second): correction latency and
    /// output volume, against the same events without churn.
    Churn {
        #[command(flatten)]
        settings: churn::Settings,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Where an experiment writes its CSV and chart.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// The directory for `<name>.csv` and `<name>.png`; created if missing.
    #[arg(long, value_name = "DIR", default_value = "target/experiments")]
    pub out: PathBuf,
}

/// Why an experiment did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A setting makes no sense (a usage error: exit code 2).
    #[error("{0}")]
    Settings(String),
    /// The output directory cannot be created or written to (a usage error: exit code 2).
    #[error("cannot write to --out {}: {reason}", path.display())]
    OutputDirectory {
        /// The directory.
        path: PathBuf,
        /// Why (in the message, so not also a source printed after it).
        reason: std::io::Error,
    },
    /// Writing a result file failed.
    #[error("cannot write {}: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The dataflow failed to run.
    #[error("the dataflow failed: {0}")]
    Dataflow(String),
    /// The experiment found the engine wrong: what it checks did not hold.
    #[error("{0}")]
    Failed(String),
}

impl ExperimentError {
    /// Whether this is the user's mistake (exit code 2) rather than a failure while running.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ExperimentError::Settings(_) | ExperimentError::OutputDirectory { .. }
        )
    }
}

/// What every experiment produces: rows for the table and the CSV, a summary, and a chart.
pub trait Report {
    /// The experiment's name: the files are `<name>.csv` and `<name>.png`.
    const NAME: &'static str;
    /// One row of the table and the CSV; the CSV's header is its field names.
    type Row: Serialize;

    /// The rows, in order.
    fn rows(&self) -> &[Self::Row];
    /// The table's header and each row's cells, formatted for reading.
    fn table(&self) -> (Vec<&'static str>, Vec<Vec<String>>);
    /// What the rows show, in a few lines.
    fn summary(&self) -> String;
    /// Draws the chart into `path` (a PNG of [`chart::WIDTH`] × [`chart::HEIGHT`] pixels).
    fn chart(&self, path: &Path) -> Result<(), ExperimentError>;
}

/// Creates `dir` if needed and checks that files can be written in it, before any work is done.
pub fn prepare_output(dir: &Path) -> Result<(), ExperimentError> {
    let fail = |reason| ExperimentError::OutputDirectory {
        path: dir.to_path_buf(),
        reason,
    };
    fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".shopflow-write-test");
    fs::write(&probe, b"").map_err(fail)?;
    fs::remove_file(&probe).map_err(fail)?;
    Ok(())
}

/// Writes `<dir>/<name>.csv` and `<dir>/<name>.png`; returns their paths.
pub fn write_files<R: Report>(
    report: &R,
    dir: &Path,
) -> Result<(PathBuf, PathBuf), ExperimentError> {
    let csv_path = dir.join(format!("{}.csv", R::NAME));
    let write_error = |message: String| ExperimentError::Write {
        path: csv_path.clone(),
        message,
    };
    let mut writer = csv::Writer::from_path(&csv_path).map_err(|e| write_error(e.to_string()))?;
    for row in report.rows() {
        writer
            .serialize(row)
            .map_err(|e| write_error(e.to_string()))?;
    }
    writer.flush().map_err(|e| write_error(e.to_string()))?;
    let png_path = dir.join(format!("{}.png", R::NAME));
    report.chart(&png_path)?;
    Ok((csv_path, png_path))
}

/// The report's table, columns aligned (a Markdown table, so it can be pasted into documents).
pub fn render_table<R: Report>(report: &R) -> String {
    let (header, rows) = report.table();
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(header);
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut().skip(1) {
        column.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    table.to_string()
}

/// `shopflow experiment ...`: runs one experiment, prints its table and summary, writes its files.
/// The retractions experiment fails (after writing its files) when any timestamp differs.
pub fn run(args: ExperimentArgs) -> Result<(), ExperimentError> {
    match args.experiment {
        ExperimentCommand::Retractions { settings, output } => {
            prepare_output(&output.out)?;
            let report = retractions::run(&settings)?;
            publish(&report, &output.out)?;
            report.check()
        }
        ExperimentCommand::Late { settings, output } => {
            prepare_output(&output.out)?;
            publish(&late::run(&settings)?, &output.out)
        }
        ExperimentCommand::Churn { settings, output } => {
            prepare_output(&output.out)?;
            publish(&churn::run(&settings)?, &output.out)
        }
    }
}

fn publish<R: Report>(report: &R, dir: &Path) -> Result<(), ExperimentError> {
    let (csv, png) = write_files(report, dir)?;
    println!("{}", render_table(report));
    println!("{}", report.summary());
    println!("wrote {} and {}", csv.display(), png.display());
    Ok(())
}

/// Settings with every flag at its default, as `shopflow experiment <name>` alone would run.
pub(crate) fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every experiment setting has a default");
    T::from_arg_matches(&matches).expect("the defaults parse as the settings")
}

/// The worker count flag of every experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct Workers {
    /// Worker threads (the results are identical for any number; timings are not).
    #[arg(short = 'w', long = "workers", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
}

impl Workers {
    /// The number of worker threads.
    pub fn get(self) -> usize {
        usize::from(self.workers)
    }
}

/// Parses a duration flag (`0`, `500ms`, `10s`, `1m`, `2h 5m`): humantime's format.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (a duration such as 0, 500ms, 10s, 1m or 5m)"))
}

/// A duration in milliseconds, for the settings that take one.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The ticks from the first input's to the last input's, `TICK_MS` apart.
pub(crate) fn input_ticks(inputs: &[(Tick, Input)]) -> Vec<Tick> {
    let first = inputs.iter().map(|(t, _)| *t).min();
    let last = inputs.iter().map(|(t, _)| *t).max();
    match (first, last) {
        (Some(first), Some(last)) => (first - first % TICK_MS..=last)
            .step_by(TICK_MS as usize)
            .collect(),
        _ => Vec::new(),
    }
}

/// A value as the sink shows it, for messages.
pub(crate) fn describe(key: &OutputKey, value: Option<&OutputValue>) -> String {
    format!("{key:?} = {value:?}")
}

/// `part` of `whole` in percent (0 when `whole` is 0).
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
