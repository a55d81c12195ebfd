//! What each subcommand does, wired from the library's parts, and [`main`], which parses the
//! command line (`cli`) and dispatches.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::Context as _;
use clap::Parser as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{
    ChangeArgs, Cli, Command, DemoArgs, DemoSource, DemographicsFrom, LoadArgs, ProduceArgs,
    RunArgs,
};
use crate::config::{Config, SinkKind};
use crate::generators::demographics;
use crate::generators::events::{EventGenerator, Pace};
use crate::logging;
use crate::plan::{DemographicSource, EventSource, Plan, Stop, Workers};
use crate::runtime::{self, Status};
use crate::sinks::influx::{self, InfluxSink};
use crate::sinks::{Discard, LineProtocolWriter, Sink};
use crate::view;
use crate::writers::kafka::{self, EventProducer};
use crate::writers::mysql;
use embedded::EmbeddedKafka;

pub mod bench;
pub mod embedded;

/// `shopflow demo`: everything embedded, no services.
///
/// Through the embedded Kafka, the producer keeps time (`--duration`) and count (`--events`), and
/// Ctrl-C stops it: the pipeline then reads everything it sent and ends. A second Ctrl-C stops the
/// pipeline too. At the end every event produced must have gone through the dataflow (counted in
/// `events_in` or under a rejection counter): anything else is an error.
pub fn demo(mut config: Config, args: DemoArgs) -> anyhow::Result<()> {
    apply_demo_flags(&mut config, &args);
    config.validate()?;
    let workers = args.workers.workers(&config);
    workers.timely_config()?;
    let through_kafka = args.source == DemoSource::EmbeddedKafka;
    if workers.processes > 1 && through_kafka {
        anyhow::bail!(
            "the embedded Kafka lives in one process: use --source generator with --processes, \
             or `shopflow run` with a real Kafka"
        );
    }
    let output = process_output(&config.output.line_protocol, &workers);
    let sink = LineProtocolWriter::create(&output, config.engine.window_ms)?;
    let reader_gone = sink.reader_gone();

    let status = Arc::new(Status::default());
    // First, before the live view: the URL to open.
    let _server = crate::http::start(
        args.http.listen(&config),
        &status,
        &config.http,
        !args.quiet,
    )?;
    let interrupt = Arc::new(AtomicBool::new(false));
    let on_interrupt = (Arc::clone(&status), Arc::clone(&interrupt));
    ctrlc::set_handler(move || {
        let (status, interrupt) = &on_interrupt;
        if interrupt.swap(true, Ordering::Relaxed) || !through_kafka {
            status.stop.store(true, Ordering::Relaxed);
        }
    })
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
    let (events, producer) = demo_events(&config, &args, stop, &interrupt, &status)?;
    // With Kafka in between, the producer counts events and keeps time; the pipeline reads until
    // it has read everything the producer sent.
    let stop = match events {
        EventSource::Kafka { .. } => Stop {
            events: None,
            duration: None,
        },
        EventSource::Generator { .. } => stop,
    };
    let plan = Plan {
        config,
        workers: workers.clone(),
        stop,
        events,
        demographics: DemographicSource::Generator,
        checkpoints: None,
    };
    let result = runtime::run(plan, Box::new(sink), Arc::clone(&status));
    if let Some(live) = live {
        live.finish();
    }
    if result.is_err() {
        // The pipeline is gone: whatever the producer still sends would go nowhere.
        interrupt.store(true, Ordering::Relaxed);
        status.stop.store(true, Ordering::Relaxed);
    }
    let produced = match producer {
        Some((_embedded, producer)) => {
            let sent = producer
                .join()
                .map_err(|_| anyhow::anyhow!("the producer thread panicked"))?;
            Some(sent)
        }
        None => None,
    };
    // A reader of standard output that has gone (`| head`) ends the demo, quietly. The flag,
    // not the run's error: a failed run whose threads do not end within the watchdog's grace
    // reports the failure as text.
    if result.is_err()
        && reader_gone.load(Ordering::Relaxed)
        && LineProtocolWriter::is_stdout(&output)
    {
        return Ok(());
    }
    let report = result?;
    let produced = produced.transpose()?.unwrap_or(report.events);
    conclude_demo(&report, produced, &status, &workers, &output)
}

/// The demo's flags over `config`: rate, pace, seed, output and workers.
fn apply_demo_flags(config: &mut Config, args: &DemoArgs) {
    config.generator.events_per_second = args.rate;
    if let Some(pace) = args.pace {
        config.generator.pace = pace;
    }
    if let Some(seed) = args.seed {
        config.generator.seed = seed;
    }
    if let Some(output) = args.output.clone() {
        config.output.line_protocol = output;
    }
    args.workers.apply(config);
    // Simulated time leaves the wall clock with --start-ms or an unbounded pace; the embedded
    // Kafka's reader would then reject its events as implausibly old or early.
    if args.start_ms.is_some() || config.generator.pace == Pace::Unbounded {
        config.kafka.max_event_age_ms = 0;
        config.kafka.max_future_skew_ms = 0;
    }
}

/// The embedded Kafka, kept alive as long as the demo reads it, and its producer thread.
type EmbeddedProducer = (EmbeddedKafka, JoinHandle<anyhow::Result<u64>>);

/// Where the demo's events come from: the generator in process, or the embedded Kafka, which a
/// producer thread fills until `stop` or `interrupt`.
fn demo_events(
    config: &Config,
    args: &DemoArgs,
    stop: Stop,
    interrupt: &Arc<AtomicBool>,
    status: &Arc<Status>,
) -> anyhow::Result<(EventSource, Option<EmbeddedProducer>)> {
    Ok(match args.source {
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
                config,
                args.start_ms,
                stop,
                Arc::clone(interrupt),
                Arc::clone(status),
                Arc::clone(&done),
            )?;
            let source = EventSource::Kafka {
                config: embedded.config().clone(),
                until_caught_up: true,
                producer_done: Some(done),
            };
            (source, Some((embedded, producer)))
        }
    })
}

/// Fails unless every one of the `produced` events went through the dataflow (in a single
/// process, which sees every worker's counters), then prints the summary: on standard error when
/// the line protocol goes to standard output.
fn conclude_demo(
    report: &runtime::Report,
    produced: u64,
    status: &Status,
    workers: &Workers,
    output: &Path,
) -> anyhow::Result<()> {
    let table = status
        .table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // Each process sees only its own workers' counters.
    let processed = view::events_processed(&table);
    if workers.processes == 1 && processed != produced {
        let why = if status.stop.load(Ordering::Relaxed) {
            "stopped before every event was processed"
        } else {
            "events were lost"
        };
        anyhow::bail!(
            "{why}: {processed} of {produced} events produced went through the dataflow \
             (events_in and the rejection counters)"
        );
    }
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
    let printed = if LineProtocolWriter::is_stdout(output) {
        std::io::stderr().lock().write_all(summary.as_bytes())
    } else {
        std::io::stdout().lock().write_all(summary.as_bytes())
    };
    // A closed standard output is the reader's choice, not the demo's failure.
    match printed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot print the summary")
        }
        _ => Ok(()),
    }
}

/// Runs the dataflow engine with a discarding sink, for `bench`.
pub fn bench_dataflow(
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
        demographics: DemographicSource::Generator,
        checkpoints: None,
    };
    runtime::run(plan, Box::new(Discard::default()), status)?;
    Ok(())
}

/// What a stop signal does to a command: said when the first arrives (`graceful`), and when a
/// second ends the process at once (`forced`, what that leaves).
struct OnStop {
    graceful: &'static str,
    forced: &'static str,
}

/// Installs the Ctrl-C and SIGTERM handler. The first signal stops `status` cleanly and says so;
/// a graceful stop may wait for a service that is down, so a second signal ends the process at
/// once, exit status 1 (as Vector's second SIGINT does).
fn stop_on_interrupt(status: &Arc<Status>, on_stop: OnStop) -> anyhow::Result<()> {
    let on_interrupt = Arc::clone(status);
    let mut signalled = false;
    ctrlc::set_handler(move || {
        // Said whatever the log filter, as the server's address and the summary are.
        if std::mem::replace(&mut signalled, true) {
            logging::report(
                tracing::Level::WARN,
                &format!("a second stop signal: ending at once; {}", on_stop.forced),
            );
            std::process::exit(1);
        }
        on_interrupt.stop.store(true, Ordering::Relaxed);
        logging::report(
            tracing::Level::INFO,
            &format!(
                "stopping: {}; a second Ctrl-C or SIGTERM ends the process at once",
                on_stop.graceful
            ),
        );
    })
    .context("cannot install the Ctrl-C handler")
}

/// A progress bar on standard error when it is a terminal, hidden otherwise.
fn progress_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let template = match total {
        Some(_) => format!("{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})"),
        None => format!("{{spinner}} {{pos}} {what} ({{per_sec}})"),
    };
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// `shopflow run`: Kafka events and MySQL demographics through the dataflow into InfluxDB.
pub fn run(mut config: Config, args: RunArgs) -> anyhow::Result<()> {
    if let Some(start) = args.start {
        config.kafka.start = start;
    }
    if let Some(sink) = args.sink {
        config.output.sink = sink;
    }
    if let Some(output) = args.output.clone() {
        config.output.line_protocol = output;
    }
    args.workers.apply(&mut config);
    config.validate()?;
    let workers = args.workers.workers(&config);
    workers.timely_config()?;
    // Before anything waits for a service, so that Ctrl-C or SIGTERM stops the run cleanly.
    let status = Arc::new(Status::default());
    let on_stop = if checkpoints_off(&config) {
        OnStop {
            graceful: "what was read is written and its offsets committed, then the run ends",
            forced: "a restart reads again from the last committed offsets",
        }
    } else {
        OnStop {
            graceful: "the sources stop at the next checkpoint boundary; the run ends once \
                       InfluxDB has every row before it and its checkpoint is written",
            forced: "a restart resumes from the last checkpoint written",
        }
    };
    stop_on_interrupt(&status, on_stop)?;
    // Before waiting for InfluxDB, so that /health and /ready answer (not ready) meanwhile; said
    // once InfluxDB answered, so that a start that fails says only why.
    let server = crate::http::start(args.http.listen(&config), &status, &config.http, false)?;
    let sink: Box<dyn Sink> = match config.output.sink {
        SinkKind::Influxdb => {
            if influx::check_at_start(&config.influx, &status.stop)? == influx::Checked::Stopped {
                crate::logging::report(
                    tracing::Level::INFO,
                    "stopped while waiting for InfluxDB; nothing was read",
                );
                return Ok(());
            }
            // The check created the database, if asked to.
            let influx = influx::InfluxConfig {
                create_database: false,
                ..config.influx.clone()
            };
            Box::new(InfluxSink::start(&influx, config.engine.window_ms)?)
        }
        SinkKind::LineProtocol => Box::new(LineProtocolWriter::create(
            &process_output(&config.output.line_protocol, &workers),
            config.engine.window_ms,
        )?),
    };
    if let Some(server) = &server {
        logging::report(tracing::Level::INFO, &server.announcement());
    }
    let plan = Plan {
        events: EventSource::Kafka {
            config: config.kafka.clone(),
            until_caught_up: args.until_caught_up,
            producer_done: None,
        },
        demographics: match args.demographics {
            DemographicsFrom::Mysql => DemographicSource::mysql(config.mysql.clone()),
            DemographicsFrom::Generator => DemographicSource::Generator,
        },
        checkpoints: checkpoint_dir(&config),
        stop: Stop {
            events: None,
            duration: args.duration,
        },
        workers,
        config,
    };
    // On a terminal, the demo's live view, and its summary at the end.
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| view::LiveView::start(Arc::clone(&status), None, true));
    let result = runtime::run(plan, sink, Arc::clone(&status));
    let shown = live.map(view::LiveView::finish).is_some();
    let report = result?;
    if shown {
        let table = status
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        print!("{}", view::summary(&table));
    }
    crate::logging::report(
        tracing::Level::INFO,
        &format!(
            "{} events in {:.1}s; {} batches; {} lines written",
            report.events,
            report.elapsed.as_secs_f64(),
            report.batches,
            report.written
        ),
    );
    Ok(())
}

/// With several processes, each writes the rows of its own workers to a file of its own.
fn process_output(path: &Path, workers: &Workers) -> PathBuf {
    let mut output = path.to_path_buf();
    if workers.processes > 1 && !LineProtocolWriter::is_stdout(&output) {
        output
            .as_mut_os_string()
            .push(format!(".{}", workers.process));
    }
    output
}

/// `shopflow produce`: generated events to the Kafka topic.
pub fn produce(mut config: Config, args: ProduceArgs) -> anyhow::Result<()> {
    if let Some(rate) = args.rate {
        config.generator.events_per_second = rate;
    }
    if let Some(pace) = args.pace {
        config.generator.pace = pace;
    }
    if let Some(seed) = args.seed {
        config.generator.seed = seed;
    }
    config.validate()?;
    kafka::ensure_topic(&config.kafka, &config.kafka.topic)?;
    let generator = resumed_generator(&config, args.start_ms.unwrap_or_else(crate::clock::now_ms))?;
    let mut producer = EventProducer::new(&config.kafka)?;
    let stop = AtomicBool::new(false);
    let status = Arc::new(Status::default());
    stop_on_interrupt(
        &status,
        OnStop {
            graceful: "the events sent wait for the brokers' acknowledgements (at most 30 s)",
            forced: "events the brokers had not acknowledged may not have been sent",
        },
    )?;
    let bar = progress_bar(args.events, "events");
    let sent = kafka::produce_generated(
        &mut producer,
        &generator,
        args.events,
        args.duration,
        &stop,
        |n| {
            bar.set_position(n);
            if status.stop.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
            }
        },
    )?;
    bar.finish_and_clear();
    logging::report(
        tracing::Level::INFO,
        &format!("{sent} events sent to {} (flushed)", config.kafka.topic),
    );
    Ok(())
}

/// The generator `produce` sends from, its first event arriving at `start_ms`: the configured
/// stream, going on where the topic ends ([`topic_end`](crate::verify::scan::topic_end)). Started from the beginning, a
/// restarted producer would send the order ids it sent before, which the pipeline drops as
/// duplicates for the order horizon.
pub fn resumed_generator(config: &Config, start_ms: u64) -> anyhow::Result<EventGenerator> {
    let resume_at = crate::verify::scan::topic_end(&config.kafka)?;
    if resume_at > 0 {
        tracing::info!(
            topic = %config.kafka.topic,
            resume_at,
            "the topic holds messages: the generator goes on from there"
        );
    }
    EventGenerator::resuming(config.generator.clone(), start_ms, resume_at)
        .map_err(anyhow::Error::msg)
}

/// `shopflow load-demographics`: the generated users into MySQL.
pub fn load_demographics(config: Config, args: LoadArgs) -> anyhow::Result<()> {
    let users = args.users.unwrap_or(config.generator.users);
    let seed = args.seed.unwrap_or(config.generator.seed);
    let report = mysql::load_demographics(
        &config.mysql,
        demographics::table(seed, users),
        u64::from(users),
    )?;
    logging::report(
        tracing::Level::INFO,
        &format!(
            "{} rows loaded into {} in {:.2}s ({:.0} rows/s)",
            report.rows,
            config.mysql.table,
            report.elapsed.as_secs_f64(),
            report.rows as f64 / report.elapsed.as_secs_f64().max(1e-9)
        ),
    );
    Ok(())
}

/// `shopflow change-demographics`: random moves, birthdays, deletions and new users, at a rate.
pub fn change_demographics(config: Config, args: ChangeArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or(config.generator.seed);
    let rate = args
        .rate
        .unwrap_or(config.generator.demographic_changes_per_second);
    let mut changes =
        demographics::Changes::new(seed, config.generator.users, config.generator.new_users);
    let report = mysql::apply_changes(
        &config.mysql,
        &mut changes,
        rate,
        args.duration,
        args.changes,
    )?;
    logging::report(
        tracing::Level::INFO,
        &format!(
            "{} changes: {} inserts, {} updates, {} deletes",
            report.changes, report.inserts, report.updates, report.deletes
        ),
    );
    Ok(())
}

/// Whether `engine.checkpoint-dir` turns checkpoints off (`off`, or empty).
fn checkpoints_off(config: &Config) -> bool {
    let root = config.engine.checkpoint_dir.as_os_str();
    root.is_empty() || root == "off"
}

/// The pipeline's checkpoint directory under `engine.checkpoint-dir`, or `None` when it is
/// `off` (or empty), which is said once: a restart then counts the topic again.
fn checkpoint_dir(config: &Config) -> Option<PathBuf> {
    let root = &config.engine.checkpoint_dir;
    if checkpoints_off(config) {
        tracing::warn!(
            start = ?config.kafka.start,
            "checkpoints are off (engine.checkpoint-dir): a restart starts from empty state and counts the topic again from kafka.start"
        );
        return None;
    }
    Some(crate::checkpoint::pipeline_dir(
        root,
        &config.kafka.group_id,
    ))
}

/// An error and its causes on one line, each cause once: many errors here already say their
/// cause in their own message, and would otherwise print it twice.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Parses the command line, runs it, and turns errors into one line and an exit code:
/// 2 for usage and configuration errors, 1 for failures while running.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The configuration may choose the log format, so logging starts once it is read.
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            logging::init(cli.log_format.unwrap_or_default());
            logging::report(tracing::Level::ERROR, &format!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    logging::init(cli.log_format.unwrap_or(config.log.format));
    let result = match cli.command {
        Command::Demo(args) => demo(config, args),
        Command::Run(args) => run(config, args),
        Command::Produce(args) => produce(config, args),
        Command::LoadDemographics(args) => load_demographics(config, args),
        Command::ChangeDemographics(args) => change_demographics(config, args),
        Command::Bench(args) => bench::run(config, args),
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            Ok(())
        }
        // Verify has exit codes of its own: 1 means a mismatch, not a failure to run.
        Command::Verify(args) => {
            let options = crate::verify::Options {
                arrival_tolerance: args.arrival_tolerance,
                ..crate::verify::Options::default()
            };
            return crate::verify::command(config, &options, args.list);
        }
        Command::Experiment(args) => crate::experiments::run(args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::report(
                tracing::Level::ERROR,
                &format!("error: {}", error_chain(&e)),
            );
            if e.downcast_ref::<runtime::RunError>().is_some_and(|e| {
                matches!(
                    e,
                    runtime::RunError::Workers(_)
                        | runtime::RunError::Cluster(_)
                        | runtime::RunError::Checkpoint(_)
                )
            }) || e
                .downcast_ref::<crate::experiments::ExperimentError>()
                .is_some_and(crate::experiments::ExperimentError::is_usage)
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
