//! The embedded Kafka (librdkafka's in-process mock cluster), which `demo` runs through: its small
//! retention must never cost an event silently, and its log is rate-limited like every client's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shopflow::commands::embedded::EmbeddedKafka;
use shopflow::config::{Config, DEFAULT_TOML};
use shopflow::generators::events::{EventGenerator, Pace};
use shopflow::sources::kafka::{KafkaConfig, KafkaSourceError, PartitionReader};
use shopflow::writers;
use shopflow::writers::kafka::{EventProducer, HoldBack};

fn defaults() -> Config {
    toml::from_str(DEFAULT_TOML).expect("the shipped configuration")
}

fn cluster(partitions: i32) -> EmbeddedKafka {
    let kafka = KafkaConfig {
        partitions,
        ..defaults().kafka
    };
    EmbeddedKafka::start(&kafka).expect("an embedded cluster")
}

/// A reader whose position retention has deleted fails with an error that says so, instead of
/// jumping silently to what the log still holds.
#[test]
fn a_position_deleted_by_retention_is_an_error_not_a_skip() {
    let embedded = cluster(1);
    let config = embedded.config().clone();
    let mut producer = EventProducer::new(&config).expect("a producer");
    // Random bytes, so that compression keeps them large: 8 MiB, more than the mock cluster keeps
    // of a partition (5 MiB).
    let mut payload = vec![0u8; 1024];
    for n in 0..8 * 1024 {
        payload.iter_mut().for_each(|b| *b = rand::random());
        producer
            .send_raw(&u64::to_be_bytes(n), &payload, shopflow::runtime::now_ms())
            .expect("queued");
        if n % 1024 == 0 {
            producer.flush(Duration::from_secs(10)).expect("delivered");
        }
    }
    producer.flush(Duration::from_secs(10)).expect("delivered");

    let from_the_start = BTreeMap::from([(0, 0)]);
    let mut reader =
        PartitionReader::open(&config, 0, 1, Some(&from_the_start)).expect("a reader at 0");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut read = 0usize;
    let error = loop {
        assert!(Instant::now() < deadline, "no error after reading {read}");
        match reader.poll(0, |_| {}) {
            Ok(polled) => read += polled.messages,
            Err(error) => break error,
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(read, 0, "nothing after the gap is read");
    assert!(
        matches!(error, KafkaSourceError::OffsetOutOfRange { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("partition 0 was to be read from offset 0, but its log now starts at")
            && message.contains("deleted before they were read"),
        "{message}"
    );
}

/// The producer never runs further ahead of the consumer than asked: with nobody reading, it
/// sends exactly the bound and waits, and a stop still ends the wait promptly.
#[test]
fn the_producer_waits_for_the_consumer() {
    let embedded = cluster(4);
    let mut knobs = defaults().generator;
    knobs.pace = Pace::Unbounded;
    let generator = EventGenerator::new(knobs, 1_700_000_000_000).expect("valid knobs");
    let mut producer = EventProducer::new(embedded.config()).expect("a producer");
    let consumed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let sent = std::thread::scope(|scope| {
        let producing = scope.spawn(|| {
            writers::kafka::produce_generated_within(
                &mut producer,
                &generator,
                Some(1_000_000),
                None,
                &stop,
                Some(HoldBack {
                    consumed: &consumed,
                    max_unread: 3_000,
                }),
                |_| {},
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        // The consumer reads 1,000: the producer may send 1,000 more.
        consumed.store(1_000, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        let asked = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let sent = producing.join().expect("no panic").expect("sent");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        sent
    });
    assert_eq!(sent, 4_000);
}

/// Set in the environment of [`mock_cluster_flood_child`] when the parent test runs it.
const FLOOD_CHILD: &str = "SHOPFLOW_TEST_MOCK_FLOOD";
/// Malformed requests the child sends.
const FLOOD_REQUESTS: usize = 300;

/// The child half of [`a_flood_of_mock_cluster_messages_is_rate_limited`], in a process of its
/// own: with the global log of a command (`logging::init`: standard error), it starts an embedded
/// cluster and sends its broker [`FLOOD_REQUESTS`] requests it cannot parse, each of which the
/// mock broker reports, in two bursts a second apart. Does nothing unless the parent runs it.
#[test]
#[ignore = "the child half of a_flood_of_mock_cluster_messages_is_rate_limited"]
fn mock_cluster_flood_child() {
    use std::io::{Read as _, Write as _};
    if std::env::var_os(FLOOD_CHILD).is_none() {
        return;
    }
    shopflow::logging::init(shopflow::logging::LogFormat::Text);
    let embedded = cluster(1);
    let broker = embedded
        .config()
        .brokers
        .split(',')
        .next()
        .expect("a broker")
        .to_owned();
    for n in 0..FLOOD_REQUESTS {
        if n == FLOOD_REQUESTS / 2 {
            // Past the limiter's second: the next line says how many were held back.
            std::thread::sleep(Duration::from_millis(1_100));
        }
        let mut stream = std::net::TcpStream::connect(&broker).expect("the mock broker");
        // A request header with an ApiKey no Kafka has: size 8, key 32767, version 0, id 1.
        stream
            .write_all(&[0, 0, 0, 8, 0x7f, 0xff, 0, 0, 0, 0, 0, 1])
            .expect("sent");
        // The broker closes the connection once it has reported the request.
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a timeout");
        let _ = stream.read(&mut [0; 64]);
    }
    // The owner's thread polls every 100 ms: the last lines are handed over.
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("flood sent");
}

/// The mock cluster logs through the same rate limit as every client: a flood of
/// [`FLOOD_REQUESTS`] malformed requests, each reported by the mock broker, reaches the log as a
/// few lines (at most one per kind per second, with a count of those held back), through
/// `tracing` (target `librdkafka`), not hundreds.
#[test]
fn a_flood_of_mock_cluster_messages_is_rate_limited() {
    let started = Instant::now();
    let child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "embedded::mock_cluster_flood_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FLOOD_CHILD, "1")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("the test binary runs");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "{stderr}");
    assert!(stderr.contains("flood sent"), "the child ran:\n{stderr}");
    let seconds = started.elapsed().as_secs() + 1;
    let reports: Vec<&str> = stderr.lines().filter(|l| l.contains("PROTOERR")).collect();
    assert!(
        !reports.is_empty() && reports.iter().all(|l| l.contains("librdkafka")),
        "the mock broker's reports reach the log, as librdkafka's:\n{stderr}"
    );
    assert!(
        reports.len() as u64 <= 2 * seconds,
        "{} lines for {FLOOD_REQUESTS} requests in {seconds} s:\n{stderr}",
        reports.len()
    );
    assert!(
        reports.iter().any(|l| l.contains("more like it")),
        "the lines held back are counted:\n{stderr}"
    );
}
