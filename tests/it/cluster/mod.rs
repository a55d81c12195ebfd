//! Several processes on loopback as one cluster (`-n`, `-p`, `--hostfile`): together they write
//! what one process writes, each key from exactly one of them; and processes that cannot form a
//! cluster fail at once, or within the connect timeout, with one line saying why and exit code 2.
//!
//! Every process runs under a time limit, so a cluster that hangs fails its test.
//!
//! By what they test: processes that cannot form a cluster (`forming`), a cluster's output against
//! one process's (`output`), and a process lost while the others run (`losses`).

mod forming;
mod losses;
mod output;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use shopflow::cluster::Handshake;
use shopflow::generators::events::{EventGenerator, Pace};
use shopflow::sources::kafka::KafkaConfig;
use shopflow::writers::kafka::EventProducer;

use crate::cli::{assert_same_state, final_state, reference_lines_from, temp_env_config};
use crate::support::influx;
use crate::support::process::{Finished, Running, free_ports, hostfile, start};
use crate::support::services::unique;

/// Words to owned arguments.
fn args(words: &str) -> Vec<String> {
    words.split_whitespace().map(str::to_owned).collect()
}

/// The flags of process `process` of `processes` with `workers` threads each.
fn member(process: usize, processes: usize, workers: usize, hosts: &str) -> Vec<String> {
    args(&format!(
        "-w {workers} -n {processes} -p {process} --hostfile {hosts}"
    ))
}

/// A short generator demo writing to `output` in `dir`.
fn small_demo(dir: &Path, output: &str) -> Vec<String> {
    let mut words = args("demo --source generator --pace unbounded --events 2000 --quiet");
    words.extend(["--output".into(), dir.join(output).display().to_string()]);
    words
}

/// The generator's settings for the Kafka runs, as environment variables. The scenario's final
/// values do not depend on when each event arrived, since arrival ticks follow the wall clock:
/// no window closes and no order is forgotten during a run, demographics stay put, and a refund
/// always comes after its purchase's first delivery (its lag, 4 × the funnel span, is at least the
/// 1,000 events a duplicate reaches back), so every refund finds its purchase whatever the ticks.
const KAFKA_SCENARIO: [(&str, &str); 14] = [
    ("SHOPFLOW__GENERATOR__SEED", "17"),
    ("SHOPFLOW__GENERATOR__EVENTS_PER_SECOND", "1000"),
    ("SHOPFLOW__GENERATOR__USERS", "500"),
    ("SHOPFLOW__GENERATOR__NEW_USERS", "30"),
    ("SHOPFLOW__GENERATOR__CAMPAIGNS", "9"),
    ("SHOPFLOW__GENERATOR__UNKNOWN_USER_SHARE", "0.1"),
    ("SHOPFLOW__GENERATOR__DEMOGRAPHIC_CHANGES_PER_SECOND", "0"),
    ("SHOPFLOW__GENERATOR__REFUND_SHARE", "0.2"),
    ("SHOPFLOW__GENERATOR__DUPLICATE_SHARE", "0.05"),
    ("SHOPFLOW__GENERATOR__FUNNEL_SPAN", "250"),
    ("SHOPFLOW__ENGINE__WINDOW_MS", "2000"),
    ("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "86400000"),
    ("SHOPFLOW__ENGINE__ORDER_HORIZON_MS", "86400000"),
    ("SHOPFLOW__ENGINE__TICK_MS", "100"),
];

/// Produces the scenario's first `events` events, from `start_ms`, and the four malformed
/// messages the service tests share, to the topic of `kafka`.
fn produce_scenario(kafka: &KafkaConfig, start_ms: u64, events: u64) {
    let mut knobs = temp_env_config(&KAFKA_SCENARIO).generator;
    knobs.pace = Pace::Unbounded;
    let generator = EventGenerator::new(knobs, start_ms).expect("valid knobs");
    let mut producer = EventProducer::new(kafka).expect("a producer");
    let sent = crate::support::kafka::produce(&mut producer, &generator, events);
    assert_eq!(sent, events);
    assert_eq!(crate::support::services::send_malformed(&mut producer), 4);
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// Starts a `run` process with the scenario's environment plus `env`.
fn start_run(words: &[String], env: &[(String, String)]) -> Running {
    let mut all: Vec<(&str, &str)> = KAFKA_SCENARIO.to_vec();
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    start(words, &all)
}
