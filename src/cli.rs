//! The command line: clap definitions, nothing else; [`commands::main`](crate::commands::main)
//! parses them and dispatches.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, SinkKind};
use crate::generators::events::Pace;
use crate::logging::LogFormat;
use crate::plan::Workers;
use crate::sources::kafka::StartPosition;

/// Real-time e-commerce analytics on timely and differential dataflow.
#[derive(Debug, Parser)]
#[command(name = "shopflow", version, about, propagate_version = true)]
pub struct Cli {
    /// A configuration file layered over the built-in config/shopflow.toml: any subset of its keys.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log lines as text (coloured on a terminal only) or as one JSON object per line
    /// (default: log.format).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything embedded, no services: generators -> dataflow -> line protocol, with a live view.
    Demo(DemoArgs),
    /// Run the pipeline on real services: Kafka events + MySQL demographics -> InfluxDB.
    Run(RunArgs),
    /// Send generated events to the Kafka topic (Avro, keyed by user).
    Produce(ProduceArgs),
    /// Create the demographics table in MySQL and load generated users into it.
    LoadDemographics(LoadArgs),
    /// Apply random generated changes to the MySQL demographics table at a given rate.
    ChangeDemographics(ChangeArgs),
    /// Measure the engine alone (generator -> dataflow -> discarding sink) and print JSON.
    Bench(BenchArgs),
    /// Validate the configuration (file + environment) and print it.
    CheckConfig,
    /// Recompute every aggregate from Kafka and MySQL and compare with InfluxDB (exit 1 on a
    /// mismatch, 2 when it cannot decide).
    Verify(VerifyArgs),
    /// Run a correctness experiment: print a table, write <out>/<name>.csv and <out>/<name>.png.
    Experiment(crate::experiments::ExperimentArgs),
}

/// `-w`: bounded like `engine.workers`, so that a typo is a usage error rather than an allocation
/// failure.
fn workers_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(0..=crate::config::MAX_WORKERS as u64)
}

/// `-p`: an index, or `auto` for the ordinal ending the host name (a StatefulSet pod's name).
fn process_index(text: &str) -> Result<u32, String> {
    if text == "auto" {
        return crate::cluster::pod::ordinal_from_env().map_err(|e| e.to_string());
    }
    text.parse::<u32>()
        .map_err(|e| format!("{e} (a process index from 0, or `auto`)"))
}

/// Timely's worker flags. Each may come from the environment too (containers set their
/// command once and their environment per deployment).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Worker threads per process, at most 1024 (default: engine.workers; 0 = one per core).
    #[arg(short = 'w', long, env = "SHOPFLOW_WORKERS", value_parser = workers_parser())]
    pub workers: Option<usize>,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long, env = "SHOPFLOW_PROCESSES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub processes: u32,
    /// This process's index, from 0; `auto`: the number ending the host name (`HOSTNAME`), as a
    /// Kubernetes StatefulSet names its pods (`shopflow-2` is process 2).
    #[arg(short = 'p', long, env = "SHOPFLOW_PROCESS", default_value = "0", value_parser = process_index)]
    pub process: u32,
    /// A file listing one host:port per process.
    #[arg(long, env = "SHOPFLOW_HOSTFILE", value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// With several processes: give up connecting to the others after this long, e.g. 30s
    /// (default: engine.connect-timeout-ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
}

impl WorkerArgs {
    /// Puts the flags that are configuration keys into `config` (`--connect-timeout`).
    pub fn apply(&self, config: &mut Config) {
        if let Some(timeout) = self.connect_timeout {
            config.engine.connect_timeout_ms =
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        }
    }

    /// The workers these flags ask for, `engine.workers` filling in `-w`.
    pub fn workers(&self, config: &Config) -> Workers {
        Workers {
            threads: self.workers.unwrap_or(config.engine.workers),
            processes: self.processes as usize,
            process: self.process as usize,
            hostfile: self.hostfile.clone(),
        }
    }
}

/// `shopflow demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Events per second, above 0 (the demo's own preset, not generator.events-per-second).
    #[arg(long, default_value_t = 1_000.0, value_parser = positive_rate)]
    pub rate: f64,
    /// Realtime, or as fast as the engine goes.
    #[arg(long, value_enum)]
    pub pace: Option<Pace>,
    /// Stop after this many events.
    #[arg(long)]
    pub events: Option<u64>,
    /// Stop after this long (e.g. 10s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Where line protocol goes: a file, or - for standard output (default: output.line-protocol).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// The generator's seed (default: generator.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No live view; print only the final summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The simulated time of the first event, in ms since the epoch (default: now). With
    /// `--source generator`, `--pace unbounded` and `--events`, a run is fully reproducible.
    #[arg(long)]
    pub start_ms: Option<u64>,
    /// Where events come from: through an in-process Kafka cluster (the production consumer,
    /// Avro and all), or straight from the generator into the dataflow.
    #[arg(long, value_enum, default_value = "embedded-kafka")]
    pub source: DemoSource,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// The HTTP server's flag.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Serve the dashboard, /metrics, /health, /ready and the API on this address, e.g.
    /// 127.0.0.1:8080 or 0.0.0.0:8080, or `off` (default: http.listen).
    #[arg(long, value_name = "ADDR|off", value_parser = crate::config::http::Listen::parse)]
    pub http: Option<crate::config::http::Listen>,
}

impl HttpArgs {
    /// What to listen on: the flag, else `http.listen` (validated with the configuration).
    pub fn listen(&self, config: &Config) -> crate::config::http::Listen {
        self.http.unwrap_or_else(|| {
            crate::config::http::Listen::parse(&config.http.listen)
                .unwrap_or(crate::config::http::Listen::Off)
        })
    }
}

/// A rate for `--rate`: a finite number of events per second above 0.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        Ok(_) => Err("must be a number of events per second above 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The demo's event paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoSource {
    /// Generator -> Kafka producer -> in-process mock cluster -> the pipeline's consumer.
    EmbeddedKafka,
    /// Generator -> dataflow, each worker generating its share (no Kafka).
    Generator,
}

/// `shopflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Where results go (default: output.sink).
    #[arg(long, value_enum)]
    pub sink: Option<SinkKind>,
    /// The line protocol file with `--sink line-protocol` (default: output.line-protocol).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Where to start reading the topic (default: kafka.start).
    #[arg(long, value_enum)]
    pub start: Option<StartPosition>,
    /// Stop once every partition is read to its end and the results are written (each worker
    /// stops reading when its own partitions are; the run ends when all have).
    #[arg(long)]
    pub until_caught_up: bool,
    /// Where demographics come from: the MySQL table (snapshot, then binlog), or the generator's
    /// table and changes (generator.users, generator.seed, generator.demographic-changes-per-second).
    #[arg(long, value_enum, default_value = "mysql")]
    pub demographics: DemographicsFrom,
    /// Stop after this long (e.g. 10s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Where `run` takes demographics from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemographicsFrom {
    /// The `[mysql]` table: a consistent snapshot, then its binlog.
    Mysql,
    /// The generator, in process (no MySQL).
    Generator,
}

/// `shopflow produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Events per second, above 0 (default: generator.events-per-second).
    #[arg(long, value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Realtime, or as fast as the broker takes them (default: generator.pace).
    #[arg(long, value_enum)]
    pub pace: Option<Pace>,
    /// Stop after this many events.
    #[arg(long)]
    pub events: Option<u64>,
    /// Stop after this long (e.g. 10s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// The generator's seed (default: generator.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The simulated time of the first event, in ms since the epoch (default: now).
    #[arg(long)]
    pub start_ms: Option<u64>,
}

/// `shopflow load-demographics`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// How many users (default: generator.users).
    #[arg(long)]
    pub users: Option<u32>,
    /// The generator's seed (default: generator.seed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `shopflow change-demographics`.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Changes per second (default: generator.demographic-changes-per-second).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Stop after this many changes.
    #[arg(long, default_value_t = u64::MAX)]
    pub changes: u64,
    /// The generator's seed (default: generator.seed); the same seed replays the same changes.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The engines `bench` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// The differential dataflow.
    Dataflow,
    /// The single-threaded hand-written HashMap implementation of the same aggregates.
    Hashmap,
    /// Only generate the events, on one thread: what the input costs.
    Generate,
}

/// `shopflow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which engine.
    #[arg(long, value_enum, default_value = "dataflow")]
    pub engine: Engine,
    /// Worker threads (the dataflow engine only), at most 1024.
    #[arg(short = 'w', long, default_value_t = 1, value_parser = workers_parser())]
    pub workers: usize,
    /// Events to process.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Report the peak RSS after this many events too (e.g. to show RSS does not grow).
    #[arg(long)]
    pub rss_at: Option<u64>,
    /// Events per second of simulated time: the shop's rate being replayed.
    #[arg(long, default_value_t = 10_000.0)]
    pub sim_rate: f64,
}

/// `shopflow verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// How far from its Kafka timestamp the pipeline may have read a message (e.g. 10s, 500ms);
    /// outcomes that would change within it are skipped, not guessed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub arrival_tolerance: Duration,
    /// List at most this many mismatching keys.
    #[arg(long, default_value_t = 20)]
    pub list: usize,
}
