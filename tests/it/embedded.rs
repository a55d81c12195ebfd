//! The embedded Kafka (librdkafka's in-process mock cluster), which `demo` runs through: its small
//! retention must never cost an event silently.

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
