//! Kafka as the tests see it from outside the pipeline: what a topic holds, what a group has
//! committed, and generated events produced in the background.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use shopflow::generators::events::EventGenerator;
use shopflow::sources::kafka::{KafkaConfig, KafkaSourceError};
use shopflow::writers;
use shopflow::writers::kafka::EventProducer;

/// Messages in the topic: the sum of its partitions' high watermarks.
pub fn topic_messages(config: &KafkaConfig) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .expect("a consumer");
    // Just after a broker restart the partitions may have no leader yet (NotLeaderForPartition):
    // asked again until they have one.
    let deadline = Instant::now() + Duration::from_secs(90);
    (0..config.partitions)
        .map(|p| {
            loop {
                match consumer.fetch_watermarks(&config.topic, p, Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(error) if Instant::now() < deadline => {
                        eprintln!("watermarks of partition {p}: {error}; asking again");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(error) => panic!("watermarks of partition {p}: {error}"),
                }
            }
        })
        .sum()
}

/// The consumer group's lag as Kafka tools show it: high watermarks minus committed offsets.
pub fn committed_lag(config: &KafkaConfig) -> Option<i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .ok()?;
    let mut list = TopicPartitionList::new();
    for p in 0..config.partitions {
        list.add_partition(&config.topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(5))
        .ok()?;
    let mut lag = 0;
    for element in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(&config.topic, element.partition(), Duration::from_secs(5))
            .ok()?;
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        };
        lag += high - position;
    }
    Some(lag)
}

/// Sends generated events `0..events` to Kafka on a thread, each at its arrival time.
pub fn produce_in_background(
    config: &KafkaConfig,
    generator: &EventGenerator,
    events: u64,
) -> std::thread::JoinHandle<u64> {
    let (config, generator) = (config.clone(), generator.clone());
    std::thread::spawn(move || {
        let mut producer = EventProducer::new(&config).expect("a producer");
        produce(&mut producer, &generator, events)
    })
}

/// Sends generated events `0..events` through `producer`, each at its arrival time (at once when
/// the generator's pace is unbounded); how many it sent.
///
/// A broker restarted by a fault test can take over a minute to come back on a loaded machine,
/// longer than `produce_generated`'s final flush waits (30 s): then what is still queued is
/// waited for as long again, up to [`BROKER_RESTART`]. A message refused or lost still fails.
pub fn produce(producer: &mut EventProducer, generator: &EventGenerator, events: u64) -> u64 {
    let never = AtomicBool::new(false);
    match writers::kafka::produce_generated(producer, generator, Some(events), None, &never, |_| {})
    {
        Ok(sent) => sent,
        Err(KafkaSourceError::Kafka {
            source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
            ..
        }) => {
            producer
                .flush(BROKER_RESTART)
                .expect("every event delivered");
            producer.sent()
        }
        Err(error) => panic!("produced: {error:?}"),
    }
}

/// How long a producer waits for a broker to come back after its final flush timed out.
const BROKER_RESTART: Duration = Duration::from_secs(180);

/// The group's committed offsets, summed over the topic's partitions (0 where none).
pub fn committed_total(config: &KafkaConfig) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..config.partitions {
        list.add_partition(&config.topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("the group's committed offsets");
    committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum()
}
