//! Bad input: every kind of bad message counted apart and dead-lettered on the embedded
//! (mock) Kafka cluster, where no services are needed, and counted by reason on the real
//! services, where it changes nothing else.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dataflows::model::{CampaignId, Cents, Counter, Event, EventTimeMs, OrderId, Tag, UserId};
use rdkafka::consumer::{BaseConsumer, Consumer};
use shopflow::commands::embedded::EmbeddedKafka;
use shopflow::generators::events::{EventGenerator, Pace};
use shopflow::sources::avro;
use shopflow::sources::kafka::{KafkaConfig, PartitionReader, StartPosition};
use shopflow::sources::mysql as source;
use shopflow::writers::kafka::EventProducer;

use super::settle_and_compare;
use crate::support::avro::{encoded, put_long};
use crate::support::kafka::topic_messages;
use crate::support::process::{Pipeline, wait_for};
use crate::support::scenario::{Scenario, knobs, oracle, timeless, timeless_inputs};
use crate::support::services::exclusive;

// ---------------------------------------------------------------------------------------------
// Bad input on the embedded (mock) Kafka cluster: no services needed
// ---------------------------------------------------------------------------------------------

/// A good event, as the shop sends it.
fn good_event(order: u64, event_time: u64) -> Event {
    Event {
        order_id: OrderId(order),
        tag: Tag::Purchased,
        user_id: UserId(11),
        campaign_id: CampaignId(3),
        total: Cents(4_250),
        units: 2,
        event_time: EventTimeMs(event_time),
    }
}

/// One message of every kind the source rejects, with the counter it must land in. `now` is the
/// wall clock around the time they are read; `max_message_bytes` the configured limit.
fn bad_messages(now: u64, max_message_bytes: usize) -> Vec<(&'static str, Vec<u8>, Counter)> {
    let id = avro::DEFAULT_SCHEMA_ID;
    let good = encoded(id, &good_event(1, now));
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut trailing = good.clone();
    trailing.push(0);
    let mut oversize = good.clone();
    oversize.resize(max_message_bytes + 1, 0);
    // A JSON body behind a valid header: its bytes read as Avro give a negative id.
    let mut json = good[..avro::HEADER_LEN].to_vec();
    json.extend_from_slice(br#"{"id": 1, "tag": "click"}"#);
    // The fields in schema order, the tag's enum index 9 naming no symbol.
    let mut enum_out_of_range = good[..avro::HEADER_LEN].to_vec();
    for long in [11i64, 3, 1] {
        put_long(&mut enum_out_of_range, long);
    }
    enum_out_of_range.extend_from_slice(&42.5f64.to_le_bytes());
    for long in [2, 9, now as i64] {
        put_long(&mut enum_out_of_range, long);
    }
    vec![
        (
            "wrong magic byte",
            b"\x07junk".to_vec(),
            Counter::MalformedFraming,
        ),
        ("empty", Vec::new(), Counter::MalformedFraming),
        (
            "unknown schema id",
            encoded(id + 998, &good_event(1, now)),
            Counter::MalformedUnknownSchema,
        ),
        ("truncated", truncated, Counter::MalformedTruncated),
        ("bytes left over", trailing, Counter::MalformedTruncated),
        ("JSON body", json, Counter::MalformedInvalidValue),
        (
            "enum index out of range",
            enum_out_of_range,
            Counter::MalformedInvalidValue,
        ),
        ("oversize", oversize, Counter::MalformedOversize),
        (
            "negative units",
            encoded(
                id,
                &Event {
                    units: u32::MAX,
                    ..good_event(2, now)
                },
            ),
            Counter::RejectedNegative,
        ),
        (
            "negative total",
            encoded(
                id,
                &Event {
                    total: Cents(-4_250),
                    ..good_event(3, now)
                },
            ),
            Counter::RejectedNegative,
        ),
        (
            "event time in 1970",
            encoded(id, &good_event(4, 1)),
            Counter::RejectedTooOld,
        ),
        (
            "event time a day ahead",
            encoded(id, &good_event(5, now + 86_400_000)),
            Counter::RejectedFuture,
        ),
    ]
}

/// The counts `bad_messages` must produce, by counter.
fn expected_rejections(bad: &[(&str, Vec<u8>, Counter)]) -> BTreeMap<Counter, isize> {
    let mut counts = BTreeMap::new();
    for (_, _, counter) in bad {
        *counts.entry(*counter).or_default() += 1;
    }
    counts
}

/// Through librdkafka's mock cluster, the production reader: each bad message among good ones is
/// counted under its own counter, copied to the dead-letter topic with that counter in a header,
/// and every good event around them comes through unchanged.
#[test]
fn each_kind_of_bad_message_is_counted_apart_and_dead_lettered() {
    let config = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        topic: "faults-bad-input".into(),
        partitions: 1,
        group_id: "faults-bad-input".into(),
        start: StartPosition::Earliest,
        schema_id: avro::DEFAULT_SCHEMA_ID,
        schema_registry_url: String::new(),
        dead_letter_topic: "faults-dead-letters".into(),
        max_poll_messages: 1_000,
        max_message_bytes: 1_024,
        max_event_age_ms: 30 * 86_400_000,
        max_future_skew_ms: 300_000,
        max_order_cents: 1_000_000_000,
        max_units: 1_000_000,
        properties: BTreeMap::new(),
    };
    assert_eq!(config.validate(), Ok(()));
    let embedded = EmbeddedKafka::start(&config).expect("the mock cluster");
    let config = embedded.config().clone();
    let now = shopflow::runtime::now_ms();
    let bad = bad_messages(now, config.max_message_bytes);
    let mut producer = EventProducer::new(&config).expect("a producer");
    let mut good = Vec::new();
    for (i, (_, payload, _)) in bad.iter().enumerate() {
        let before = good_event(100 + i as u64, now - 1_000);
        producer.send(&before, now).expect("sent");
        producer.send_raw(b"k", payload, now).expect("sent");
        good.push(before);
    }
    let last = good_event(999, 0);
    producer.send(&last, now).expect("sent");
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let mut reader = PartitionReader::open(&config, 0, 1, None).expect("a reader");
    let arrival = now - now % 1_000;
    let mut events = Vec::new();
    let mut counted: BTreeMap<Counter, isize> = BTreeMap::new();
    let mut messages = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while messages < 2 * bad.len() + 1 {
        assert!(Instant::now() < deadline, "read {messages} messages");
        let polled = reader
            .poll(arrival, |event| events.push(event))
            .expect("polled");
        messages += polled.messages;
        for (counter, n) in polled.malformed {
            *counted.entry(counter).or_default() += n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    good.push(Event {
        event_time: EventTimeMs(arrival),
        ..last
    });
    assert_eq!(events, good, "every good event, unchanged, in order");
    assert_eq!(counted, expected_rejections(&bad));
    drop(reader);

    // The dead letters: each bad message, with its counter.
    let dead = KafkaConfig {
        topic: config.dead_letter_topic.clone(),
        group_id: "faults-dead-letter-reader".into(),
        ..config.clone()
    };
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &dead.brokers)
        .set("group.id", &dead.group_id)
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[&dead.topic]).expect("subscribed");
    let mut letters: Vec<(Vec<u8>, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while letters.len() < bad.len() {
        assert!(Instant::now() < deadline, "{} dead letters", letters.len());
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::message::{Headers, Message};
            let counter = message
                .headers()
                .and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == "shopflow.counter")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .expect("a shopflow.counter header");
            letters.push((message.payload().unwrap_or(&[]).to_vec(), counter));
        }
    }
    let expected: Vec<(Vec<u8>, String)> = bad
        .iter()
        .map(|(_, payload, counter)| (payload.clone(), counter.name().to_owned()))
        .collect();
    assert_eq!(letters, expected);
}

/// A message too large for the dead-letter topic (3 MB, over the 1 MB brokers and producers
/// take by default) is copied cut to what fits, its headers saying so and how large it was; a
/// null payload is copied marked as null, apart from an empty one.
#[test]
fn an_oversize_message_is_dead_lettered_cut_and_a_null_payload_marked() {
    use rdkafka::message::{Headers, Message};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let config = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        topic: "faults-large-input".into(),
        partitions: 1,
        group_id: "faults-large-input".into(),
        start: StartPosition::Earliest,
        schema_id: avro::DEFAULT_SCHEMA_ID,
        schema_registry_url: String::new(),
        dead_letter_topic: "faults-large-dead-letters".into(),
        max_poll_messages: 1_000,
        max_message_bytes: 1_024,
        max_event_age_ms: 30 * 86_400_000,
        max_future_skew_ms: 300_000,
        max_order_cents: 1_000_000_000,
        max_units: 1_000_000,
        properties: BTreeMap::new(),
    };
    let embedded = EmbeddedKafka::start(&config).expect("the mock cluster");
    let config = embedded.config().clone();
    let large: Vec<u8> = (0..3 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("message.max.bytes", "20000000")
        .create()
        .expect("a producer");
    for record in [
        BaseRecord::to(&config.topic)
            .key("big")
            .payload(large.as_slice()),
        BaseRecord::to(&config.topic).key("null"),
        BaseRecord::to(&config.topic).key("empty").payload(&[][..]),
    ] {
        producer.send(record).map_err(|(e, _)| e).expect("sent");
    }
    producer.flush(Duration::from_secs(20)).expect("flushed");

    let mut reader = PartitionReader::open(&config, 0, 1, None).expect("a reader");
    let mut counted: BTreeMap<Counter, isize> = BTreeMap::new();
    let mut messages = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages < 3 {
        assert!(Instant::now() < deadline, "read {messages} messages");
        let polled = reader.poll(1_000, |_| panic!("no event")).expect("polled");
        messages += polled.messages;
        for (counter, n) in polled.malformed {
            *counted.entry(counter).or_default() += n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        counted,
        BTreeMap::from([
            (Counter::MalformedOversize, 1),
            (Counter::MalformedFraming, 2)
        ])
    );
    drop(reader);

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", "faults-large-dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    consumer
        .subscribe(&[&config.dead_letter_topic])
        .expect("subscribed");
    // Per letter: its key, its payload (None for null), and its shopflow.payload, .truncated and
    // .payload-bytes headers.
    type Letter = (String, Option<Vec<u8>>, [Option<String>; 3]);
    let mut letters: Vec<Letter> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while letters.len() < 3 {
        assert!(Instant::now() < deadline, "{} dead letters", letters.len());
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let header = |name: &str| {
                message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            letters.push((
                String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                message.payload().map(<[u8]>::to_vec),
                [
                    header("shopflow.payload"),
                    header("shopflow.truncated"),
                    header("shopflow.payload-bytes"),
                ],
            ));
        }
    }
    let cut = shopflow::sources::kafka::DEAD_LETTER_MAX_PAYLOAD;
    // By key (the producer may send them in any order); payloads compared, not printed.
    letters.sort_by(|a, b| a.0.cmp(&b.0));
    // Per letter: its key, its payload's length, whether the payload is the one expected, and
    // its headers.
    type Summary = (String, Option<usize>, bool, [Option<String>; 3]);
    let summary: Vec<Summary> = letters
        .into_iter()
        .map(|(key, payload, headers)| {
            let expected: Option<&[u8]> = match key.as_str() {
                "big" => Some(&large[..cut]),
                "empty" => Some(&[]),
                _ => None,
            };
            let equal = payload.as_deref() == expected;
            (key, payload.map(|p| p.len()), equal, headers)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "big".to_owned(),
                Some(cut),
                true,
                [None, Some("true".into()), Some(large.len().to_string())],
            ),
            ("empty".to_owned(), Some(0), true, [None, None, None]),
            (
                "null".to_owned(),
                None,
                true,
                [Some("null".into()), None, None]
            ),
        ]
    );
}

/// A re-assignment, which the reader makes when its partitions stall after a broker restart,
/// resumes at the first message not yet polled: nothing is skipped and nothing read twice.
#[test]
fn a_reassignment_resumes_where_the_reader_was() {
    let config = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        topic: "faults-reassign".into(),
        partitions: 2,
        group_id: "faults-reassign".into(),
        start: StartPosition::Earliest,
        schema_id: avro::DEFAULT_SCHEMA_ID,
        schema_registry_url: String::new(),
        dead_letter_topic: String::new(),
        max_poll_messages: 7,
        max_message_bytes: 1_024,
        max_event_age_ms: 0,
        max_future_skew_ms: 0,
        max_order_cents: 1_000_000_000,
        max_units: 1_000_000,
        properties: BTreeMap::new(),
    };
    let embedded = EmbeddedKafka::start(&config).expect("the mock cluster");
    let config = embedded.config().clone();
    let mut producer = EventProducer::new(&config).expect("a producer");
    let sent: Vec<Event> = (0..200)
        .map(|n| Event {
            user_id: UserId(n as u32 % 13),
            ..good_event(n, 1_000 + n)
        })
        .collect();
    for event in &sent {
        producer.send(event, 1_000).expect("sent");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let mut reader = PartitionReader::open(&config, 0, 1, None).expect("a reader");
    assert_eq!(reader.partitions(), [0, 1]);
    let mut read = Vec::new();
    let mut read_until = |reader: &mut PartitionReader, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while read.len() < n {
            assert!(Instant::now() < deadline, "read {} of {n}", read.len());
            reader
                .poll(1_000, |event| read.push(event))
                .expect("polled");
            std::thread::sleep(Duration::from_millis(5));
        }
        read.clone()
    };
    read_until(&mut reader, 50);
    reader.reassign().expect("re-assigned");
    let mut all = read_until(&mut reader, sent.len());
    wait_for("the reader at the end", Duration::from_secs(20), || {
        reader.lag() == Some(0)
    });
    let polled = reader.poll(1_000, |event| all.push(event)).expect("polled");
    assert_eq!(polled.messages, 0, "nothing after the end");
    all.sort();
    let mut expected = sent;
    expected.sort();
    assert_eq!(all, expected, "every event once");
}

// ---------------------------------------------------------------------------------------------
// Bad input on the real services
// ---------------------------------------------------------------------------------------------

/// One message of each bad kind among good events on a real Kafka: each counted under its own
/// counter, the run goes on, and every aggregate equals the oracle over the good events alone.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn bad_messages_are_counted_by_reason_and_change_nothing_else() {
    let _services = exclusive();
    let started = Instant::now();
    let (seed, users) = (61, 3_000);
    let scenario = Scenario::new("faults_bad_input", seed, users);
    let mut knobs = knobs(seed, users, 1_000.0);
    knobs.pace = Pace::Unbounded;
    let generator = EventGenerator::new(knobs, shopflow::runtime::now_ms()).expect("valid knobs");
    let events = 10_000u64;
    let mut producer = EventProducer::new(&scenario.kafka).expect("a producer");
    let now = shopflow::runtime::now_ms();
    let bad = bad_messages(now, scenario.kafka.max_message_bytes);
    for n in 0..events {
        producer
            .send(&generator.event(n), generator.arrival_ms(n))
            .expect("sent");
        if n == events / 2 {
            for (_, payload, _) in &bad {
                producer.send_raw(b"bad", payload, now).expect("sent");
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    assert_eq!(
        topic_messages(&scenario.kafka),
        (events as usize + bad.len()) as i64
    );

    let mut pipeline = Pipeline::start(&scenario.pipeline_env(timeless(), &[]));
    let table = source::read_table(&scenario.mysql).expect("the table");
    let rejected = expected_rejections(&bad);
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &rejected),
        timeless(),
    );
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(90));
    for (counter, n) in &rejected {
        assert_eq!(got.counter(*counter), *n as i64, "{}", counter.name());
    }
    assert_eq!(got.counter(Counter::EventsIn), events as i64);
    let log = pipeline.log();
    assert!(log.contains("rejected message at"), "logged:\n{log}");
    eprintln!(
        "bad input: {} rejected among {events} events, {} rows equal the oracle, {:.1}s",
        bad.len(),
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
}
