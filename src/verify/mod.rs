//! `shopflow verify`: every aggregate recomputed in one batch pass from the sources of record,
//! and compared with what InfluxDB holds.
//!
//! 1. [`scan::scan_topic`] reads the topic from the start of every partition to
//!    the high watermarks taken when verify starts, decoding as the pipeline does (messages it
//!    rejects counted by reason, as the pipeline counts them: malformed, oversize, negative,
//!    implausible amounts, implausible times).
//! 2. [`crate::sources::mysql::read_table_counting`] reads the demographics table as it is now,
//!    counting the rows that do not convert (`demographics_skipped`).
//! 3. [`recompute::recompute`] replays the events through the pipeline's order ledger and
//!    attributes them to the table: the rows and counters the sources determine, and the ones
//!    they do not (with the reason).
//! 4. [`influx::read`] reads the last value of every series, and every window point.
//! 5. [`compare::compare`] compares key by key: missing rows, wrong values, rows that should be
//!    zero or absent.
//!
//! The exit code is 0 when every compared key is equal, 1 when one differs, and 2 when verify
//! could not decide (configuration, a service unreachable, an unreadable answer).

pub mod compare;
pub mod influx;
pub mod recompute;
pub mod scan;
pub mod series;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use dataflows::model::Counter;

use crate::clock;
use crate::config::{Config, ConfigError};
use crate::sinks::influx::Api;
use crate::sinks::line_protocol::Encoder;
use crate::sources::kafka::{self, KafkaSourceError};
use crate::sources::mysql::{self, MysqlError};
use scan::PartitionExtent;

use compare::Comparison;
use recompute::{Arrival, Expected, Settings};

/// Verify could not reach a verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An option or setting verify cannot work with.
    #[error("{0}")]
    Unsupported(String),
    /// Reading the topic failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSourceError),
    /// Reading the demographics table failed.
    #[error("mysql: {0}")]
    Mysql(#[from] MysqlError),
    /// Querying InfluxDB failed, or its answer was unreadable.
    #[error("influxdb: {0}")]
    Influx(String),
}

/// How verify runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// How far from its Kafka timestamp the pipeline may have read a message.
    pub arrival_tolerance: Duration,
    /// How long the topic scan may make no progress before it fails.
    pub idle_timeout: Duration,
    /// How long one InfluxDB query may take, reading its answer included.
    pub query_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            arrival_tolerance: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            query_timeout: Duration::from_secs(300),
        }
    }
}

/// What verify read, computed and found.
#[derive(Debug)]
pub struct Outcome {
    /// The topic.
    pub topic: String,
    /// Each partition's extent and what was read of it.
    pub partitions: Vec<PartitionExtent>,
    /// Messages the source rejects, by counter.
    pub malformed: BTreeMap<Counter, i64>,
    /// The demographics table's name.
    pub table: String,
    /// What the sources determine.
    pub expected: Expected,
    /// Aggregate rows InfluxDB holds (window points counted one each).
    pub found_rows: usize,
    /// Window points of other window sizes, by `window` tag.
    pub foreign_windows: BTreeMap<String, u64>,
    /// The comparison.
    pub comparison: Comparison,
    /// The `window` tag of window rows in this configuration.
    pub window_label: String,
    /// How long each step took: scan, table, recompute, InfluxDB, compare.
    pub timings: [(&'static str, Duration); 5],
}

/// Runs verify with `config`, the configuration `run` uses.
pub fn verify(config: &Config, options: &Options) -> Result<Outcome, VerifyError> {
    config.validate()?;
    if config.influx.api != Api::V1 {
        return Err(VerifyError::Unsupported(
            "verify reads InfluxDB with the 1.x query API (GET /query): influx.api must be \"v1\""
                .into(),
        ));
    }
    let now_ms = clock::now_ms();
    let window_label = Encoder::new(config.engine.window_ms)
        .window_label()
        .to_owned();

    let clock = Instant::now();
    let mut arrivals = Vec::new();
    let mut malformed: BTreeMap<Counter, i64> = BTreeMap::new();
    // The pipeline's reader rejects oversize payloads unread, events with implausible amounts,
    // and events whose time is implausible when it reads them: the same here, in the same
    // order, taking the message's timestamp for that moment.
    let amounts = config.kafka.amount_bounds();
    let bounds = config.kafka.time_bounds();
    let tolerance_ms = options.arrival_tolerance.as_millis() as u64;
    let mut near_bounds = 0u64;
    let partitions = scan::scan_topic(&config.kafka, options.idle_timeout, |message| {
        if message.size > config.kafka.max_message_bytes {
            *malformed.entry(Counter::MalformedOversize).or_default() += 1;
            return;
        }
        match message.decoded {
            Ok(decoded) => {
                if amounts.exceeded(&decoded.event).is_some() {
                    *malformed.entry(Counter::RejectedImplausible).or_default() += 1;
                    return;
                }
                let timestamp_ms = message.timestamp_ms.and_then(|t| u64::try_from(t).ok());
                // An event without a time takes its arrival's: always plausible.
                if let Some(read_at) = timestamp_ms
                    && decoded.event.event_time.0 != 0
                {
                    let rejected = bounds.check(decoded.event.event_time, read_at);
                    if rejected != bounds.check(decoded.event.event_time, read_at + tolerance_ms) {
                        near_bounds += 1;
                    }
                    if let Some(counter) = rejected {
                        *malformed.entry(counter).or_default() += 1;
                        return;
                    }
                }
                arrivals.push(Arrival {
                    event: decoded.event,
                    partition: message.partition,
                    offset: message.offset,
                    timestamp_ms,
                })
            }
            Err(error) => *malformed.entry(kafka::counter_of(&error)).or_default() += 1,
        }
    })?;
    if near_bounds > 0 {
        tracing::warn!(
            events = near_bounds,
            "events whose time is within the arrival tolerance of kafka.max-event-age-ms or \
             max-future-skew-ms: the pipeline may have judged them otherwise"
        );
    }
    let scanned = clock.elapsed();

    let clock = Instant::now();
    let (demographics, skipped) = mysql::read_table_counting(&config.mysql)?;
    let table_read = clock.elapsed();
    let mut sources = malformed.clone();
    sources.insert(Counter::DemographicsSkipped, skipped as i64);

    let clock = Instant::now();
    let settings = Settings {
        params: config.params(),
        tick_ms: config.engine.tick_ms,
        tolerance_ms: options.arrival_tolerance.as_millis() as u64,
        now_ms,
    };
    let expected = recompute::recompute(arrivals, &sources, &demographics, settings);
    drop(demographics);
    let recomputed = clock.elapsed();

    let clock = Instant::now();
    let found = influx::read(&config.influx, &window_label, options.query_timeout)?;
    let influx_read = clock.elapsed();

    let clock = Instant::now();
    let comparison = compare::compare(&expected, &found);
    let compared = clock.elapsed();

    Ok(Outcome {
        topic: config.kafka.topic.clone(),
        partitions,
        malformed,
        table: config.mysql.table.clone(),
        expected,
        found_rows: found.rows.len(),
        foreign_windows: found.foreign_windows,
        comparison,
        window_label,
        timings: [
            ("topic", scanned),
            ("table", table_read),
            ("recompute", recomputed),
            ("influxdb", influx_read),
            ("compare", compared),
        ],
    })
}

impl Outcome {
    /// Whether every compared key is equal.
    pub fn is_match(&self) -> bool {
        self.comparison.is_match()
    }

    /// The report: what was read and assumed, the table of families, the reasons for skipping,
    /// the mismatching keys (at most `list`), and the verdict.
    pub fn render(&self, list: usize) -> String {
        let mut out = String::new();
        let stats = &self.expected.stats;
        let settings = &self.expected.settings;
        let messages: u64 = self.partitions.iter().map(|p| p.read).sum();
        let malformed: i64 = self.malformed.values().sum();
        let _ = writeln!(
            out,
            "topic {}: {} partitions, {messages} messages up to the high watermarks taken at {} \
             ({} events, {malformed} malformed)",
            self.topic,
            self.partitions.len(),
            time(settings.now_ms),
            stats.events
        );
        for p in self.partitions.iter().filter(|p| p.low > 0) {
            let _ = writeln!(
                out,
                "warning: partition {} starts at offset {}: earlier messages are gone \
                 (retention or deletion); the pipeline counted them, verify cannot",
                p.partition, p.low
            );
        }
        let _ = writeln!(out, "table {}: {} rows", self.table, stats.users);
        let _ = writeln!(
            out,
            "influxdb: {} aggregate rows (window points counted one each)",
            self.found_rows
        );
        for (label, points) in &self.foreign_windows {
            let _ = writeln!(
                out,
                "note: {points} window points tagged window={label:?}, not this configuration's \
                 {}: not compared",
                self.window_label
            );
        }
        let _ = writeln!(
            out,
            "arrival: each message's Kafka timestamp (made monotone per partition), assumed \
             within {} of when the pipeline read it (--arrival-tolerance)",
            humantime::format_duration(Duration::from_millis(settings.tolerance_ms))
        );
        if stats.missing_timestamps > 0 {
            let _ = writeln!(
                out,
                "warning: {} messages have no timestamp: their arrival is unknown",
                stats.missing_timestamps
            );
        }
        if stats.future_timestamps > 0 {
            let _ = writeln!(
                out,
                "warning: {} messages are timestamped after verify started: the pipeline did \
                 not read them at their timestamp, so the arrival assumption does not hold \
                 (their producer's clock, or simulated times?)",
                stats.future_timestamps
            );
        }
        let spec = settings.params.windows;
        let _ = writeln!(
            out,
            "windows: campaign window rows compared for every window; segment window rows for \
             windows closing after {} (open when verify started)",
            time(settings.now_ms.saturating_add(settings.tolerance_ms))
        );
        let _ = writeln!(
            out,
            "semantics: window {} ms, allowed lateness {} ms, order horizon {} ms, tick {} ms; \
             {} orders, {} with an undetermined outcome",
            spec.size_ms,
            spec.allowed_lateness_ms,
            settings.params.order_horizon_ms,
            settings.tick_ms,
            stats.orders,
            stats.undetermined_orders.values().sum::<u64>()
        );
        let _ = writeln!(out);
        out.push_str(&self.comparison.render(&self.window_label, list));
        let timings: Vec<String> = self
            .timings
            .iter()
            .map(|(step, d)| format!("{step} {:.2}s", d.as_secs_f64()))
            .collect();
        let _ = writeln!(out, "timing: {}", timings.join(", "));
        let compared = self.comparison.compared();
        if self.is_match() {
            let _ = writeln!(out, "verify: OK: {compared} keys compared, none differ");
        } else {
            let _ = writeln!(
                out,
                "verify: MISMATCH: {} of {compared} keys compared differ",
                self.comparison.mismatches.len()
            );
        }
        out
    }
}

/// A time in ms since the epoch, as RFC 3339.
fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Runs `shopflow verify` and prints its report: exit code 0 when InfluxDB matches, 1 when a key
/// differs, 2 when verify could not decide (the error printed on standard error).
pub fn command(config: Config, options: &Options, list: usize) -> ExitCode {
    let _span = tracing::info_span!("verify").entered();
    match verify(&config, options) {
        Ok(outcome) => {
            print!("{}", outcome.render(list));
            if outcome.is_match() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            crate::logging::report(tracing::Level::ERROR, &format!("error: {error}"));
            ExitCode::from(2)
        }
    }
}
