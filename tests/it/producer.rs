//! The producer against a real broker (`scripts/test-all`): what the broker refuses is an error,
//! never a silent loss, and a generator running ahead of the clock is not refused.

use std::collections::BTreeMap;
use std::time::Duration;

use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
use shopflow::sources::kafka::{KafkaConfig, KafkaSourceError, PartitionReader};
use shopflow::writers;
use shopflow::writers::kafka::EventProducer;

use crate::support::services::{env, unique};

fn config(properties: &[(&str, &str)]) -> KafkaConfig {
    let topic = unique("shopflow-producer").replace('_', "-");
    KafkaConfig {
        max_future_skew_ms: 0,
        properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..crate::support::services::kafka_config(&env("SHOPFLOW_TEST_KAFKA_BROKERS"), &topic, 1)
    }
}

#[test]
#[ignore = "needs Kafka: run scripts/test-all"]
fn a_refused_message_fails_the_flush() {
    // librdkafka would refuse 2 MB itself; let it through so that the broker (1 MB) refuses it.
    let config = config(&[("message.max.bytes", "10000000")]);
    writers::kafka::ensure_topic(&config, &config.topic).expect("the topic");
    let mut producer = EventProducer::new(&config).expect("a producer");
    // Random bytes, so that compression does not shrink them below the limit.
    let payload: Vec<u8> = (0..2_000_000).map(|_| rand::random::<u8>()).collect();
    producer
        .send_raw(b"k", &payload, shopflow::runtime::now_ms())
        .expect("queued");
    match producer.flush(Duration::from_secs(30)) {
        Err(KafkaSourceError::Undelivered { failed, topic, .. }) => {
            assert_eq!((failed, topic), (1, config.topic.clone()));
        }
        other => panic!("expected an undelivered message, got {other:?}"),
    }
}

#[test]
#[ignore = "needs Kafka: run scripts/test-all"]
fn events_arriving_ahead_of_the_clock_are_delivered() {
    let config = config(&[]);
    writers::kafka::ensure_topic(&config, &config.topic).expect("the topic");
    let mut producer = EventProducer::new(&config).expect("a producer");
    let now = shopflow::runtime::now_ms();
    // A generator at full speed: simulated arrivals days ahead (brokers refuse an hour).
    let events: Vec<Event> = (0..100u64)
        .map(|n| Event {
            order_id: OrderId(n),
            tag: Tag::Click,
            user_id: UserId(n as u32),
            campaign_id: CampaignId(1),
            total: Cents(0),
            units: 0,
            event_time: EventTimeMs(now + n * 86_400_000),
        })
        .collect();
    for event in &events {
        producer.send(event, event.event_time.0).expect("queued");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every message delivered");
    let mut reader = PartitionReader::open(&config, 0, 1, None).expect("a reader");
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read.len() < events.len() && std::time::Instant::now() < deadline {
        reader.poll(now, |event| read.push(event)).expect("polled");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read, events);
}
