//! The command line: clap definitions and dispatch, nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::generators::events::Pace;
use crate::runtime::{self, EventSource, Plan, Status, Stop, Workers};
use crate::sinks::{Discard, LineProtocolWriter};
use crate::sources::embedded::EmbeddedKafka;
use crate::{bench, view};

/// Real-time e-commerce analytics on timely and differential dataflow.
#[derive(Debug, Parser)]
#[command(name = "shopflow", version, about, propagate_version = true)]
pub struct Cli {
    /// A configuration file to use instead of the built-in config/shopflow.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything embedded, no services: generators -> dataflow -> line protocol, with a live view.
    Demo(DemoArgs),
    /// Measure the engine alone (generator -> dataflow -> discarding sink) and print JSON.
    Bench(BenchArgs),
    /// Validate the configuration (file + environment) and print it.
    CheckConfig,
}

/// Timely's worker flags.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Worker threads per process (default: engine.workers; 0 = one per core).
    #[arg(short = 'w', long)]
    pub workers: Option<usize>,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub processes: u32,
    /// This process's index, from 0.
    #[arg(short = 'p', long, default_value_t = 0)]
    pub process: u32,
    /// A file listing one host:port per process.
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
}

impl WorkerArgs {
    fn workers(&self, config: &Config) -> Workers {
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
    /// Events per second. The demo's own preset; the configuration's generator.events-per-second
    /// (the seed project's one per second) applies when this is 0.
    #[arg(long, default_value_t = 1_000.0)]
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
}

/// The demo's event paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoSource {
    /// Generator -> Kafka producer -> in-process mock cluster -> the pipeline's consumer.
    EmbeddedKafka,
    /// Generator -> dataflow, each worker generating its share (no Kafka).
    Generator,
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
    /// Worker threads (the dataflow engine only).
    #[arg(short = 'w', long, default_value_t = 1)]
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

/// Parses the command line, runs it, and turns errors into one line and an exit code:
/// 2 for usage and configuration errors, 1 for failures while running.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Demo(args) => demo(config, args),
        Command::Bench(args) => bench::run(config, args),
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<runtime::RunError>()
                .is_some_and(|e| matches!(e, runtime::RunError::Workers(_)))
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn demo(mut config: Config, args: DemoArgs) -> anyhow::Result<()> {
    if args.rate > 0.0 {
        config.generator.events_per_second = args.rate;
    }
    if let Some(pace) = args.pace {
        config.generator.pace = pace;
    }
    if let Some(seed) = args.seed {
        config.generator.seed = seed;
    }
    if let Some(output) = args.output.clone() {
        config.output.line_protocol = output;
    }
    config.validate()?;
    let workers = args.workers.workers(&config);
    workers.timely_config()?;
    let mut output = config.output.line_protocol.clone();
    if workers.processes > 1 && !LineProtocolWriter::is_stdout(&output) {
        // Each process writes the keys of its own workers.
        output
            .as_mut_os_string()
            .push(format!(".{}", workers.process));
    }
    let sink = LineProtocolWriter::create(&output, config.engine.window_ms)?;

    let status = Arc::new(Status::default());
    let on_interrupt = Arc::clone(&status);
    ctrlc::set_handler(move || on_interrupt.stop.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;
    let live = (!args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        view::LiveView::start(
            Arc::clone(&status),
            args.events,
            config.generator.pace == Pace::Realtime,
        )
    });

    let stop = Stop {
        events: args.events,
        duration: args.duration,
    };
    let (events, producer) = match args.source {
        DemoSource::Generator => (
            EventSource::Generator {
                start_ms: args.start_ms,
            },
            None,
        ),
        DemoSource::EmbeddedKafka => {
            let embedded = EmbeddedKafka::start(&config.kafka)?;
            let done = Arc::new(AtomicBool::new(false));
            let producer = embedded.produce_in_background(
                &config,
                args.start_ms,
                stop,
                Arc::clone(&status),
                Arc::clone(&done),
            )?;
            let source = EventSource::Kafka {
                config: embedded.config().clone(),
                until_caught_up: args.events.is_some(),
                producer_done: Some(done),
            };
            (source, Some((embedded, producer)))
        }
    };
    // With Kafka in between, the producer counts events and the pipeline runs until caught up.
    let stop = match events {
        EventSource::Kafka { .. } => Stop {
            events: None,
            ..stop
        },
        EventSource::Generator { .. } => stop,
    };
    let plan = Plan {
        config,
        workers,
        stop,
        events,
    };
    let result = runtime::run(plan, Box::new(sink), Arc::clone(&status));
    if let Some(live) = live {
        live.finish();
    }
    if result.is_err() {
        // The pipeline is gone: whatever the producer still sends would go nowhere.
        status.stop.store(true, Ordering::Relaxed);
    }
    if let Some((_embedded, producer)) = producer {
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    }
    let report = result?;
    let table = status
        .table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let summary = format!(
        "{} events in {:.1}s ({:.0}/s); {} batches, {} lines of line protocol to {}\n{}",
        report.events,
        report.elapsed.as_secs_f64(),
        report.events as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.batches,
        report.written,
        output.display(),
        view::summary(&table)
    );
    if LineProtocolWriter::is_stdout(&output) {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// Runs the dataflow engine with a discarding sink, for `bench`.
pub(crate) fn bench_dataflow(
    config: Config,
    workers: usize,
    events: u64,
    status: Arc<Status>,
) -> anyhow::Result<()> {
    let plan = Plan {
        config,
        workers: Workers {
            threads: workers,
            processes: 1,
            process: 0,
            hostfile: None,
        },
        stop: Stop {
            events: Some(events),
            duration: None,
        },
        events: EventSource::Generator {
            start_ms: Some(1_700_000_000_000),
        },
    };
    runtime::run(plan, Box::new(Discard::default()), status)?;
    Ok(())
}
