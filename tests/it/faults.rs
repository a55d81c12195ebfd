//! Faults and bad input: nothing lost, nothing counted twice, clear errors.
//!
//! Every test here that needs the real services (`scripts/test-all`) runs the built `shopflow run`
//! against MariaDB, Kafka and InfluxDB, injects a fault — bad messages, InfluxDB stopped for 30 s,
//! the Kafka broker restarted, the binlog connection killed and MariaDB restarted, MySQL
//! unreachable at start — and then compares everything InfluxDB holds with an independent oracle:
//! [`dataflows::reference::evaluate`] over the events produced and the final demographics table.
//! A steady run checks that memory stays flat and no error counter moves (`scripts/soak` runs it
//! for longer).
//!
//! Windows are 10 s; the allowed lateness and the order horizon are processing-time bounds, so the
//! fault tests set both to an hour: no window closes and no order is forgotten while they run, and
//! the final values depend only on what was delivered, not on when. The steady run lets windows
//! close and orders expire, and times its demographic changes away from the moments windows close.
//!
//! The tests stop and start services with `scripts/services.sh`, so they need services started by
//! it, with the same environment (`SHOPFLOW_SERVICES_DIR`, ports). They hold one lock, so they run
//! one at a time, and `scripts/test-all` runs them after the rest of the suite, alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataflows::Params;
use dataflows::harness::Input;
use dataflows::model::{
    CampaignId, Cents, Counter, Demographic, Event, EventTimeMs, OrderId, OutputKey, OutputValue,
    Tag, Tick, UserId,
};
use dataflows::windows::WindowSpec;
use mysql::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use shopflow::generators::demographics;
use shopflow::generators::events::{EventGenerator, GeneratorKnobs, Pace};
use shopflow::sinks::line_protocol::{Encoder, escape_tag_value, measurement_and_tags};
use shopflow::sources::avro;
use shopflow::sources::embedded::EmbeddedKafka;
use shopflow::sources::kafka::{self, EventProducer, KafkaConfig, PartitionReader, StartPosition};
use shopflow::sources::mysql::{self as source, MysqlConfig};

use crate::services::{Cleanup, env, unique};

/// The fault tests stop and restart the shared services: one at a time.
static SERVICES: Mutex<()> = Mutex::new(());

pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
    SERVICES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const WINDOW_MS: u64 = 10_000;
const HOUR_MS: u64 = 3_600_000;

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

fn encoded(schema_id: u32, event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    avro::encode_event(schema_id, event, &mut out);
    out
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

/// Appends `n` as Avro's zig-zag varint.
fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
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
// The real services: set-up, the pipeline process, InfluxDB's contents and the oracle
// ---------------------------------------------------------------------------------------------

/// A test's own MariaDB and InfluxDB database and Kafka topic, dropped at the end.
pub(crate) struct Scenario {
    pub(crate) mysql_url: String,
    pub(crate) influx_url: String,
    pub(crate) database: String,
    pub(crate) mysql: MysqlConfig,
    pub(crate) kafka: KafkaConfig,
    _cleanup: Cleanup,
}

impl Scenario {
    /// Creates the database and topic and loads `users` generated demographics rows.
    pub(crate) fn new(name: &str, seed: u64, users: u32) -> Scenario {
        let (mysql_url, influx_url, brokers) = (
            env("SHOPFLOW_TEST_MYSQL_URL"),
            env("SHOPFLOW_TEST_INFLUX_URL"),
            env("SHOPFLOW_TEST_KAFKA_BROKERS"),
        );
        let database = unique(&format!("shopflow_{name}"));
        let cleanup = Cleanup {
            mysql_admin: mysql_url.clone(),
            database: database.clone(),
            influx: influx_url.clone(),
        };
        mysql::Pool::new(mysql_url.as_str())
            .and_then(|pool| pool.get_conn())
            .and_then(|mut conn| conn.query_drop(format!("CREATE DATABASE `{database}`")))
            .expect("a MariaDB database");
        let mysql = MysqlConfig::new(format!("{mysql_url}/{database}"));
        source::load_demographics(&mysql, demographics::table(seed, users), u64::from(users))
            .expect("demographics loaded");
        let topic = database.replace('_', "-");
        let kafka = KafkaConfig {
            brokers,
            topic: topic.clone(),
            partitions: 4,
            group_id: topic.clone(),
            start: StartPosition::Earliest,
            schema_id: avro::DEFAULT_SCHEMA_ID,
            schema_registry_url: String::new(),
            dead_letter_topic: String::new(),
            max_poll_messages: 10_000,
            max_message_bytes: 65_536,
            max_event_age_ms: 30 * 86_400_000,
            max_future_skew_ms: 300_000,
            max_order_cents: 1_000_000_000,
            max_units: 1_000_000,
            // No duplicates from producer retries when a broker goes away.
            properties: BTreeMap::from([("enable.idempotence".into(), "true".into())]),
        };
        kafka::ensure_topic(&kafka, &topic).expect("the topic");
        Scenario {
            mysql_url,
            influx_url,
            database,
            mysql,
            kafka,
            _cleanup: cleanup,
        }
    }

    /// The environment of a `shopflow run` on this scenario, with `params`' windows and horizon
    /// and `extra` settings on top.
    pub(crate) fn pipeline_env(
        &self,
        params: Params,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("SHOPFLOW__KAFKA__BROKERS", self.kafka.brokers.as_str()),
            ("SHOPFLOW__KAFKA__TOPIC", &self.kafka.topic),
            ("SHOPFLOW__KAFKA__GROUP_ID", &self.kafka.group_id),
            ("SHOPFLOW__MYSQL__URL", &self.mysql.url),
            ("SHOPFLOW__INFLUX__URL", &self.influx_url),
            ("SHOPFLOW__INFLUX__DATABASE", &self.database),
            ("RUST_LOG", "warn"),
            ("NO_COLOR", "1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (key, value) in [
            ("SHOPFLOW__ENGINE__WINDOW_MS", params.windows.size_ms),
            (
                "SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS",
                params.windows.allowed_lateness_ms,
            ),
            (
                "SHOPFLOW__ENGINE__ORDER_HORIZON_MS",
                params.order_horizon_ms,
            ),
        ] {
            env.push((key.to_owned(), value.to_string()));
        }
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), (*value).to_owned()));
        }
        env
    }

    fn mysql_conn(&self) -> mysql::PooledConn {
        mysql::Pool::new(format!("{}/{}", self.mysql_url, self.database).as_str())
            .and_then(|pool| pool.get_conn())
            .expect("a MariaDB connection")
    }
}

/// Parameters under which the final values do not depend on processing times: no window closes
/// and no order is forgotten during a test.
pub(crate) fn timeless() -> Params {
    Params {
        windows: WindowSpec {
            size_ms: WINDOW_MS,
            allowed_lateness_ms: HOUR_MS,
        },
        order_horizon_ms: HOUR_MS,
    }
}

/// Generator knobs for a test: the usual mix of late, duplicate, refunded and unknown-user events.
pub(crate) fn knobs(seed: u64, users: u32, rate: f64) -> GeneratorKnobs {
    GeneratorKnobs {
        seed,
        events_per_second: rate,
        users,
        new_users: 300,
        campaigns: 20,
        campaign_zipf_exponent: 1.1,
        conversion_share: 0.3,
        funnel_span: 20,
        median_order_cents: 4_000,
        late_share: 0.1,
        max_lateness_ms: 120_000,
        refund_share: 0.1,
        duplicate_share: 0.03,
        unknown_user_share: 0.05,
        demographic_changes_per_second: 0.0,
        pace: Pace::Realtime,
    }
}

/// `shopflow run -w 2 --start earliest`, its standard error going to a file that can be read
/// while it runs. Killed if the test ends first.
struct Pipeline {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    started: Instant,
}

impl Pipeline {
    fn start(env: &[(String, String)]) -> Pipeline {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("stderr.log");
        let stderr = File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command
            .args(["run", "-w", "2", "--start", "earliest"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("shopflow runs");
        Pipeline {
            child,
            log,
            _dir: dir,
            started: Instant::now(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the log, if the pipeline has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the pipeline exited with {status} after {:?}:\n{}",
                self.started.elapsed(),
                self.log()
            );
        }
    }

    /// Waits for the pipeline to exit by itself within `within`.
    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the pipeline's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the pipeline did not exit within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash: nothing is flushed or committed.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ctrl-C, as a user stops it, then waits: it writes everything it read, and exits 0.
    fn interrupt(&mut self) {
        let sent = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGINT delivered");
        let status = self.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "a stopped pipeline exits 0, not {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The process's resident set in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples a process's RSS every `every` on a thread of its own, with the time of each sample.
struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32, every: Duration) -> RssSampler {
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        lock(&samples).push((Instant::now(), kib));
                    }
                    std::thread::sleep(every);
                }
            })
        };
        RssSampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The samples so far.
    fn samples(&self) -> Vec<(Instant, u64)> {
        lock(&self.samples).clone()
    }

    /// The samples taken from `from` to `to`, in KiB.
    fn between(&self, from: Instant, to: Instant) -> Vec<u64> {
        self.samples()
            .into_iter()
            .filter(|(at, _)| (from..=to).contains(at))
            .map(|(_, kib)| kib)
            .collect()
    }

    fn stop(&mut self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.samples()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `scripts/services.sh` with the test's environment (the same state dir and ports).
pub(crate) fn services(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let output = Command::new(&script)
        .args(args)
        .output()
        .expect("scripts/services.sh runs");
    assert!(
        output.status.success(),
        "scripts/services.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A service the test stopped: started again when the test is done with it, or when it fails
/// first, so that a failing test leaves the services as it found them.
struct Stopped {
    service: &'static str,
    started: bool,
}

impl Stopped {
    fn stop(service: &'static str) -> Stopped {
        services(&["stop", service]);
        Stopped {
            service,
            started: false,
        }
    }

    fn start(mut self) {
        self.started = true;
        services(&["start", self.service]);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
            let _ = Command::new(script).args(["start", self.service]).status();
        }
    }
}

/// Polls `condition` every 200 ms until it holds; fails the test with `what` after `within`.
fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs an InfluxQL query against the test's database; `None` while InfluxDB does not answer.
pub(crate) fn influx_query(url: &str, database: &str, q: &str) -> Option<serde_json::Value> {
    let params = [("db", database), ("q", q), ("epoch", "ms")];
    let url = reqwest::Url::parse_with_params(&format!("{url}/query"), &params).ok()?;
    let body = reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .ok()?
        .text()
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// What InfluxDB holds, or should: every non-zero aggregate row (`measurement,tags,window=…`, and
/// ` @start` for windows) with its clicks, purchases, units and cents, and the counters.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) rows: BTreeMap<String, [i64; 4]>,
    pub(crate) counters: BTreeMap<String, i64>,
}

impl State {
    /// The counters with the two refund counters summed: whether a refund met its purchase
    /// already counted depends on which tick each arrived in, the sum and every aggregate do not.
    pub(crate) fn counters_with_refunds_summed(&self) -> BTreeMap<String, i64> {
        let mut counters = self.counters.clone();
        let refunds = counters.remove("refunds_applied").unwrap_or(0)
            + counters.remove("refunds_unmatched").unwrap_or(0);
        if refunds != 0 {
            counters.insert("refunds".into(), refunds);
        }
        counters
    }

    pub(crate) fn counter(&self, counter: Counter) -> i64 {
        self.counters.get(counter.name()).copied().unwrap_or(0)
    }

    /// The rows that differ from `want`, described, at most `limit`.
    fn differences(&self, want: &State, limit: usize) -> Vec<String> {
        let keys: BTreeSet<&String> = self.rows.keys().chain(want.rows.keys()).collect();
        let mut differing: Vec<String> = keys
            .into_iter()
            .filter(|k| self.rows.get(*k) != want.rows.get(*k))
            .map(|k| {
                format!(
                    "{k}: influx {:?}, oracle {:?}",
                    self.rows.get(k),
                    want.rows.get(k)
                )
            })
            .collect();
        let (got, expected) = (
            self.counters_with_refunds_summed(),
            want.counters_with_refunds_summed(),
        );
        if got != expected {
            differing.push(format!("counters: influx {got:?}, oracle {expected:?}"));
        }
        differing.truncate(limit);
        differing
    }

    pub(crate) fn matches(&self, want: &State) -> bool {
        self.rows == want.rows
            && self.counters_with_refunds_summed() == want.counters_with_refunds_summed()
    }
}

const MEASUREMENTS: [&str; 6] = [
    "campaign",
    "age_gender",
    "state",
    "country",
    "campaign_country",
    "campaign_age_gender",
];

/// A row's key from its measurement, tags (raw values) and window.
fn row_key<'a>(
    measurement: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    window: Option<(&str, u64)>,
) -> String {
    let mut key = measurement.to_owned();
    for (name, value) in tags {
        key.push(',');
        key.push_str(name);
        key.push('=');
        escape_tag_value(value, &mut key);
    }
    match window {
        Some((label, start)) => key.push_str(&format!(",window={label} @{start}")),
        None => key.push_str(",window=all"),
    }
    key
}

/// InfluxDB's contents: the last point of each all-time series, every window point, the newest
/// value of each counter. `None` while InfluxDB does not answer.
pub(crate) fn influx_state(url: &str, database: &str) -> Option<State> {
    let label = Encoder::new(WINDOW_MS).window_label().to_owned();
    let mut state = State::default();
    for measurement in MEASUREMENTS {
        for windowed in [false, true] {
            let q = if windowed {
                format!(
                    "SELECT clicks, purchases, units, revenue_cents FROM \"{measurement}\" \
                     WHERE \"window\" = '{label}' GROUP BY *"
                )
            } else {
                format!(
                    "SELECT last(clicks), last(purchases), last(units), last(revenue_cents) \
                     FROM \"{measurement}\" WHERE \"window\" = 'all' GROUP BY *"
                )
            };
            let answer = influx_query(url, database, &q)?;
            let result = &answer["results"][0];
            if result.get("error").is_some() {
                return None;
            }
            let Some(series) = result["series"].as_array() else {
                continue;
            };
            for s in series {
                let tags: Vec<(&str, &str)> = s["tags"]
                    .as_object()?
                    .iter()
                    .filter(|(name, _)| *name != "window")
                    .map(|(name, value)| (name.as_str(), value.as_str().unwrap_or("")))
                    .collect();
                for point in s["values"].as_array()? {
                    let point = point.as_array()?;
                    let mut values = [0i64; 4];
                    for (value, field) in values.iter_mut().zip(&point[1..]) {
                        *value = field.as_i64()?;
                    }
                    if values == [0; 4] {
                        continue;
                    }
                    let window = windowed.then(|| (label.as_str(), point[0].as_u64().unwrap_or(0)));
                    state
                        .rows
                        .insert(row_key(measurement, tags.iter().copied(), window), values);
                }
            }
        }
    }
    let answer = influx_query(url, database, "SELECT last(*) FROM pipeline")?;
    if let Some(series) = answer["results"][0]["series"].as_array() {
        for s in series {
            let columns = s["columns"].as_array()?;
            let values = s["values"][0].as_array()?;
            for (column, value) in columns.iter().zip(values).skip(1) {
                if let (Some(name), Some(n)) = (column.as_str(), value.as_i64()) {
                    let name = name.strip_prefix("last_").unwrap_or(name);
                    if n != 0 {
                        state.counters.insert(name.to_owned(), n);
                    }
                }
            }
        }
    }
    Some(state)
}

/// The oracle: the reference implementation's final values over `inputs`.
pub(crate) fn oracle(inputs: &[(Tick, Input)], params: Params) -> State {
    let label = Encoder::new(params.windows.size_ms)
        .window_label()
        .to_owned();
    let mut state = State::default();
    for (key, value) in dataflows::reference::evaluate(inputs, params, u64::MAX) {
        match (key, value) {
            (OutputKey::Aggregate(key), OutputValue::Totals(t)) => {
                let (measurement, tags) = measurement_and_tags(&key.dimension);
                let window = key.window.map(|start| (label.as_str(), start.0));
                let tags = tags.iter().map(|(name, value)| (*name, value.as_str()));
                let (units, revenue_cents, _) = t.clamped();
                let values = [t.clicks, t.purchases, units, revenue_cents];
                if values != [0; 4] {
                    state
                        .rows
                        .insert(row_key(measurement, tags, window), values);
                }
            }
            (OutputKey::Counter(counter), OutputValue::Count(n)) => {
                state.counters.insert(counter.name().to_owned(), n);
            }
            _ => {}
        }
    }
    state
}

/// The oracle's inputs for a timeless scenario: the final table, the generator's events `0..n` at
/// their arrival times, and source-side counters.
pub(crate) fn timeless_inputs(
    table: &[Demographic],
    generator: &EventGenerator,
    events: u64,
    counters: &BTreeMap<Counter, isize>,
) -> Vec<(Tick, Input)> {
    let mut inputs: Vec<(Tick, Input)> = table
        .iter()
        .map(|row| (0, Input::Demographic(row.clone(), 1)))
        .collect();
    inputs.extend(
        counters
            .iter()
            .map(|(counter, n)| (0, Input::Counter(*counter, *n))),
    );
    // Whole seconds: the reference replays tick by tick, and nothing here depends on the tick.
    inputs.extend((0..events).map(|n| {
        let arrival = generator.arrival_ms(n);
        (arrival - arrival % 1_000, Input::Event(generator.event(n)))
    }));
    inputs
}

/// Waits until InfluxDB holds exactly the oracle's values (the pipeline has read and written
/// everything), then stops the pipeline as a user would and checks again: equal, exactly.
fn settle_and_compare(
    scenario: &Scenario,
    pipeline: &mut Pipeline,
    want: &State,
    within: Duration,
) -> State {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        pipeline.assert_running();
        if let Some(got) = influx_state(&scenario.influx_url, &scenario.database) {
            if got.matches(want) {
                break;
            }
            last = Some(got);
        }
        if Instant::now() >= deadline {
            let differences = last.map(|got| got.differences(want, 15));
            panic!(
                "InfluxDB did not reach the oracle's values within {within:?}: {differences:#?}\n{}",
                pipeline.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    pipeline.interrupt();
    let got = influx_state(&scenario.influx_url, &scenario.database)
        .expect("InfluxDB answers at the end");
    let differences = got.differences(want, 15);
    assert!(
        differences.is_empty(),
        "{} of {} rows differ after the stop: {differences:#?}",
        differences.len(),
        want.rows.len()
    );
    got
}

/// Sends generated events `0..events` to Kafka on a thread, each at its arrival time.
fn produce_in_background(
    config: &KafkaConfig,
    generator: &EventGenerator,
    events: u64,
) -> std::thread::JoinHandle<u64> {
    let (config, generator) = (config.clone(), generator.clone());
    std::thread::spawn(move || {
        let mut producer = EventProducer::new(&config).expect("a producer");
        let never = AtomicBool::new(false);
        kafka::produce_generated(
            &mut producer,
            &generator,
            Some(events),
            None,
            &never,
            |_| {},
        )
        .expect("produced")
    })
}

/// Messages in the topic: the sum of its partitions' high watermarks.
pub(crate) fn topic_messages(config: &KafkaConfig) -> i64 {
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
pub(crate) fn committed_lag(config: &KafkaConfig) -> Option<i64> {
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

/// Waits until the pipeline has written something: its first `runtime` point.
fn wait_until_running(scenario: &Scenario, pipeline: &mut Pipeline) {
    wait_for(
        "the pipeline's first runtime point",
        Duration::from_secs(60),
        || {
            pipeline.assert_running();
            influx_query(
                &scenario.influx_url,
                &scenario.database,
                "SELECT count(consumer_lag) FROM runtime",
            )
            .and_then(|a| a["results"][0]["series"][0]["values"][0][1].as_i64())
            .is_some_and(|n| n > 0)
        },
    );
}

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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

// ---------------------------------------------------------------------------------------------
// Faults of the services
// ---------------------------------------------------------------------------------------------

/// InfluxDB stopped for 30 s mid-run: the sink retries with backoff, its full queue holds the
/// sources back (they poll nothing, so unread events wait in Kafka and memory stays put), and once
/// InfluxDB is back every point arrives: InfluxDB equals the oracle.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn influxdb_down_for_30s_holds_back_the_sources_and_loses_nothing() {
    let _services = exclusive();
    let started = Instant::now();
    let (seed, users) = (71, 5_000);
    let scenario = Scenario::new("faults_influx", seed, users);
    let env = scenario.pipeline_env(
        timeless(),
        &[
            // The shipped retry settings ride the outage out.
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
        ],
    );
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let rate = 1_000.0;
    let events = 50_000u64;
    let generator =
        EventGenerator::new(knobs(seed, users, rate), shopflow::runtime::now_ms() + 500)
            .expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    let mut rss = RssSampler::start(pipeline.pid(), Duration::from_millis(250));

    // Running and writing, then InfluxDB goes away.
    wait_for("5,000 events written", Duration::from_secs(60), || {
        influx_state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) >= 5_000)
    });
    let lag_before = committed_lag(&scenario.kafka).expect("the group's lag");
    let influxdb = Stopped::stop("influxdb");
    let stopped = Instant::now();
    wait_for("the sources held back", Duration::from_secs(20), || {
        pipeline.assert_running();
        pipeline
            .log()
            .contains("the sink is behind; the sources wait")
    });
    let held = Instant::now();
    while stopped.elapsed() < Duration::from_secs(30) {
        pipeline.assert_running();
        std::thread::sleep(Duration::from_millis(200));
    }
    let lag_during = committed_lag(&scenario.kafka).expect("the group's lag");
    let back = Instant::now();
    let before_stop = rss.between(stopped - Duration::from_secs(5), stopped);
    let while_held = rss.between(held, back);
    eprintln!(
        "RSS (MiB) from 5 s before the stop to the restart, each second: {:?}",
        rss.between(stopped - Duration::from_secs(5), back)
            .iter()
            .step_by(4)
            .map(|kib| (mib(*kib) * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    influxdb.start();
    let outage = stopped.elapsed();

    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    let produced = started.elapsed();
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &BTreeMap::new()),
        timeless(),
    );
    let oracle_done = started.elapsed();
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(120));
    let settled = started.elapsed();
    let samples = rss.stop();
    assert_eq!(got.counter(Counter::EventsIn), events as i64);

    // Held back: the sink retried, the sources waited, and resumed with the events that had
    // piled up in Kafka meanwhile.
    let log = pipeline.log();
    assert!(
        occurrences(&log, "InfluxDB write failed; retrying") >= 3,
        "retried with backoff:\n{log}"
    );
    // Each worker logs how many of its partitions' events waited unread when it resumed.
    let resumed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the sink caught up; the sources resume"))
        .collect();
    assert_eq!(resumed.len(), 2, "both workers resumed:\n{log}");
    let waiting_lag: i64 = resumed
        .iter()
        .map(|line| {
            line.split("consumer_lag=")
                .nth(1)
                .and_then(|rest| rest.split([' ', ',']).next())
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("a consumer lag in: {line}"))
        })
        .sum();
    // About 30 s of events at 1,000/s were left unread; polling on would have left none.
    assert!(
        waiting_lag > 20_000,
        "unread events waited in Kafka: {resumed:?}"
    );
    assert!(
        lag_during > lag_before + 15_000,
        "the group's committed lag grew from {lag_before} to {lag_during}"
    );
    let at_stop = before_stop.iter().copied().max().unwrap_or(0);
    let third = while_held.len() / 3;
    let peak_of = |samples: &[u64]| samples.iter().copied().max().unwrap_or(0);
    let (held_first, held_last, held_peak) = (
        peak_of(&while_held[..third]),
        peak_of(&while_held[while_held.len() - third..]),
        peak_of(&while_held),
    );
    eprintln!(
        "influx outage: held back {:?} after the stop; outage {outage:?}; unread on resume \
         {waiting_lag}; committed lag {lag_before} -> {lag_during}; RSS before the stop {:.1} MiB, \
         in the first third held back {:.1} MiB, peak while held back {:.1} MiB, peak overall {:.1} MiB; {} \
         rows equal the oracle; produced by {produced:?}, oracle by {oracle_done:?}, settled by \
         {settled:?}; {:.1}s",
        held - stopped,
        mib(at_stop),
        mib(held_first),
        mib(held_peak),
        mib(samples.iter().map(|s| s.1).max().unwrap_or(0)),
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
    // Held back, the process reads nothing: its memory does not grow with the events piling up
    // in Kafka. When librdkafka kept pre-fetching them it grew by about 1 MiB/s, some 18 MiB
    // between the thirds; held back, single allocator steps of up to 6.5 MiB were seen.
    assert!(
        held_last <= held_first + 12 * 1024,
        "RSS flat while held back: {:.1} MiB at most in the first third, {:.1} MiB in the last",
        mib(held_first),
        mib(held_last)
    );
    assert!(
        held_peak <= at_stop + 32 * 1024,
        "RSS bounded while waiting: {:.1} MiB before the stop, {:.1} MiB at its peak",
        mib(at_stop),
        mib(held_peak)
    );
}

/// The Kafka broker restarted mid-run: the reader reconnects and resumes where it was, so no
/// event is lost or counted twice (the producer is idempotent, so the topic holds each once).
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn kafka_restart_loses_nothing_and_counts_nothing_twice() {
    let _services = exclusive();
    let started = Instant::now();
    let (seed, users) = (83, 5_000);
    let scenario = Scenario::new("faults_kafka", seed, users);
    let env = scenario.pipeline_env(timeless(), &[("SHOPFLOW__ENGINE__TICK_MS", "250")]);
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let events = 40_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 1_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    wait_for("5,000 events written", Duration::from_secs(60), || {
        influx_state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) >= 5_000)
    });
    let restart = Instant::now();
    let broker = Stopped::stop("kafka");
    let stopped = restart.elapsed();
    broker.start();
    let restarted = restart.elapsed();
    pipeline.assert_running();

    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    assert_eq!(
        topic_messages(&scenario.kafka),
        events as i64,
        "the topic holds every event once"
    );
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &BTreeMap::new()),
        timeless(),
    );
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(120));
    assert_eq!(got.counter(Counter::EventsIn), events as i64, "none twice");
    let reassigned = occurrences(&pipeline.log(), "re-assigning the partitions");
    eprintln!(
        "kafka restart: stopped in {stopped:?}, up again after {restarted:?}; stalled \
         partitions re-assigned {reassigned} time(s); {} rows equal the oracle; {:.1}s",
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
}

/// MySQL unreachable at start: the connection is retried `connect-retries` times with backoff,
/// each attempt logged, then the run exits 1 with one line naming the server and the attempts.
#[test]
#[ignore = "needs Kafka and InfluxDB: run scripts/test-all"]
fn mysql_unreachable_at_start_is_a_clear_error_after_a_bounded_wait() {
    let _services = exclusive();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (influx_url, brokers) = (
        env("SHOPFLOW_TEST_INFLUX_URL"),
        env("SHOPFLOW_TEST_KAFKA_BROKERS"),
    );
    let database = unique("shopflow_faults_nomysql");
    let _cleanup = Cleanup {
        mysql_admin: env("SHOPFLOW_TEST_MYSQL_URL"),
        database: database.clone(),
        influx: influx_url.clone(),
    };
    let topic = database.replace('_', "-");
    let kafka = KafkaConfig {
        brokers: brokers.clone(),
        topic: topic.clone(),
        partitions: 4,
        group_id: topic.clone(),
        start: StartPosition::Earliest,
        schema_id: 1,
        schema_registry_url: String::new(),
        dead_letter_topic: String::new(),
        max_poll_messages: 10_000,
        max_message_bytes: 65_536,
        max_event_age_ms: 0,
        max_future_skew_ms: 0,
        max_order_cents: 1_000_000_000,
        max_units: 1_000_000,
        properties: BTreeMap::new(),
    };
    kafka::ensure_topic(&kafka, &topic).expect("the topic");
    let address = format!("127.0.0.1:{closed}");
    let env: Vec<(String, String)> = [
        ("SHOPFLOW__KAFKA__BROKERS", brokers.as_str()),
        ("SHOPFLOW__KAFKA__TOPIC", &topic),
        ("SHOPFLOW__KAFKA__GROUP_ID", &topic),
        (
            "SHOPFLOW__MYSQL__URL",
            &format!("mysql://shopflow:shopflow@{address}/shop"),
        ),
        ("SHOPFLOW__INFLUX__URL", &influx_url),
        ("SHOPFLOW__INFLUX__DATABASE", &database),
        ("RUST_LOG", "warn"),
        ("NO_COLOR", "1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let started = Instant::now();
    let mut pipeline = Pipeline::start(&env);
    let status = pipeline.wait(Duration::from_secs(60));
    let elapsed = started.elapsed();
    let log = pipeline.log();
    assert_eq!(status.code(), Some(1), "exit code 1:\n{log}");
    // The default connect-retries = 5: six attempts, 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s apart.
    assert_eq!(
        occurrences(&log, "MySQL connection failed; retrying"),
        5,
        "each retry logged:\n{log}"
    );
    let error = log
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line:\n{log}"));
    assert!(
        error.contains(&format!(
            "cannot connect to MySQL at {address} after 6 attempt(s)"
        )),
        "{error}"
    );
    assert!(
        elapsed >= Duration::from_millis(3_100) && elapsed < Duration::from_secs(30),
        "a bounded wait: {elapsed:?}"
    );
    eprintln!("mysql unreachable at start: exit 1 after {elapsed:?}: {error}");
}

/// The binlog connection killed, then MariaDB restarted, while demographics change and events
/// flow: the follower reconnects each time and resumes at its position, so no change is missed
/// or applied twice — InfluxDB equals the oracle over the final table.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn mysql_lost_mid_run_resumes_without_missing_a_change() {
    let _services = exclusive();
    let started = Instant::now();
    let (seed, users) = (97, 2_000);
    let scenario = Scenario::new("faults_mysql", seed, users);
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            // Reconnection outlasts a restart: about a minute of backoff.
            ("SHOPFLOW__MYSQL__CONNECT_RETRIES", "15"),
            // Reconnections are logged at info.
            ("RUST_LOG", "warn,shopflow::sources::mysql=info"),
        ],
    );
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let events = 30_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 1_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    let initial = source::read_table(&scenario.mysql).expect("the table");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    let mut changes = demographics::Changes::new(seed, users, 300);
    let mut churn = |n: u64| {
        let report = source::apply_changes(
            &scenario.mysql,
            &mut changes,
            20.0,
            Duration::from_secs(60),
            n,
        )
        .expect("changes applied");
        assert_eq!(report.mismatches, 0, "{report:?}");
        report.changes
    };
    let mut applied = churn(100);

    // The binlog connection killed: changes go on while the follower reconnects.
    let mut conn = scenario.mysql_conn();
    let ids: Vec<u64> = conn
        .query("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump'")
        .expect("the process list");
    assert_eq!(ids.len(), 1, "one binlog follower: {ids:?}");
    conn.query_drop(format!("KILL {}", ids[0])).expect("killed");
    drop(conn);
    applied += churn(100);

    // MariaDB restarted: the follower's connection is lost again, and comes back.
    let mariadb = Stopped::stop("mariadb");
    pipeline.assert_running();
    mariadb.start();
    applied += churn(100);

    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &BTreeMap::new()),
        timeless(),
    );
    // The changes matter: without them, many rows would differ.
    let unchanged = oracle(
        &timeless_inputs(&initial, &generator, events, &BTreeMap::new()),
        timeless(),
    );
    let moved = unchanged.differences(&want, usize::MAX).len();
    assert!(moved > 100, "the changes move {moved} rows");
    settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(120));
    let log = pipeline.log();
    assert!(
        occurrences(&log, "lost the binlog connection") >= 2,
        "both losses logged:\n{log}"
    );
    assert!(
        occurrences(&log, "binlog follower reconnected") >= 2,
        "both reconnections logged:\n{log}"
    );
    eprintln!(
        "mysql lost mid-run: {applied} changes ({moved} rows depend on them), killed and \
         restarted; {} rows equal the oracle; {:.1}s",
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// A steady run: memory flat, no error counter moving, the oracle's values at the end
// ---------------------------------------------------------------------------------------------

/// How long the steady run produces events: `SHOPFLOW_SOAK_SECONDS` (`scripts/soak` sets it),
/// else 60 s.
fn soak_duration() -> Duration {
    let seconds = std::env::var("SHOPFLOW_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("SHOPFLOW_SOAK_SECONDS={s} is not whole seconds"))
        })
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// RSS may not grow by more than this share between the first and the last third of a steady
/// run after its warm-up (see the steady run's test).
const RSS_GROWTH_ALLOWED: f64 = 0.15;

/// After this long, every state the steady run keeps is at its steady size: windows close 20 s
/// after they start, orders are forgotten 15 s after they open, and (in runs of up to 3 minutes)
/// most of the (user, campaign) pairs whose all-time totals the dataflow keeps have been met.
/// Longer runs warm up for a sixth of their duration (5 minutes of a 30-minute soak), by which
/// time the 1,300 users have met nearly all of the 10 campaigns.
fn warm_up(duration: Duration) -> Duration {
    (duration / 6).max(Duration::from_secs(30))
}

/// The updates that turn table `from` into table `to`, at `tick`.
fn table_changes(from: &[Demographic], to: &[Demographic], tick: Tick) -> Vec<(Tick, Input)> {
    let (from, to): (BTreeSet<&Demographic>, BTreeSet<&Demographic>) =
        (from.iter().collect(), to.iter().collect());
    let deleted = from
        .difference(&to)
        .map(|row| (tick, Input::Demographic((*row).clone(), -1)));
    let inserted = to
        .difference(&from)
        .map(|row| (tick, Input::Demographic((*row).clone(), 1)));
    deleted.chain(inserted).collect()
}

/// A steady stream of events with demographic churn, windows closing and orders expiring, for
/// `soak_duration()` (60 s under `scripts/test-all`): the pipeline's memory stays flat, no error
/// counter moves, nothing is logged as a warning, and at the end InfluxDB equals the oracle.
///
/// Windows of 10 s close 10 s after their end and orders are forgotten after 15 s, so every state
/// the dataflow keeps reaches its steady size after [`warm_up`]. The oracle replays events at
/// their arrival second and the demographic changes at the second they were made; for it to know
/// what the pipeline did, changes are made in bursts 5 s away from the moments windows close
/// (every 10 s), and events are at most 2 s late, so a window closes 8 s after its last event
/// arrived at the latest: the pipeline keeping up within seconds suffices.
///
/// Memory is *flat* when the peak RSS of the last third of the run after the warm-up is within
/// [`RSS_GROWTH_ALLOWED`] (15%) of the peak of the first third. Measured on the development
/// machine (2 cores shared, debug build, 1,000 events/s, sampled every 500 ms): RSS rises to
/// about 115 MiB in the first minute, then stays in a band of 105 to 136 MiB for six minutes
/// (allocator steps and single-sample spikes of up to +12%); the peaks of the thirds differed by
/// -1% to +3% in 60 s runs, +3% in a 6-minute run. With the state never retired instead (lateness
/// and horizon of an hour) RSS grew by about 30 MiB a minute, and a 2-minute run failed at +16%.
/// So in the 60 s of `scripts/test-all` the check catches gross growth only (some 20 MiB in the
/// 20 s between the thirds, such as events buffered while a source outruns the sink); slower
/// leaks are what `scripts/soak` is for: over 30 minutes its thirds are 20 minutes apart, and
/// about 1 MiB a minute fails it.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn steady_run_keeps_memory_flat_and_equals_the_oracle() {
    let _services = exclusive();
    let started = Instant::now();
    let duration = soak_duration();
    // A key space that saturates during the warm-up: 1,000 users (and 300 new ones) and 10
    // campaigns. The all-time totals per (user, campaign) are state the semantics keep (bounded
    // by users × campaigns, not by events), so in a key space still filling up RSS rises for
    // that reason alone; here, growth after the warm-up is a leak.
    let (seed, users, rate) = (131, 1_000, 1_000.0);
    let tick_ms = 1_000;
    let params = Params {
        windows: WindowSpec {
            size_ms: WINDOW_MS,
            allowed_lateness_ms: 10_000,
        },
        order_horizon_ms: 15_000,
    };
    let scenario = Scenario::new("faults_steady", seed, users);
    let mut pipeline = Pipeline::start(&scenario.pipeline_env(params, &[]));
    wait_until_running(&scenario, &mut pipeline);
    let mut rss = RssSampler::start(pipeline.pid(), Duration::from_millis(500));
    let mut knobs = knobs(seed, users, rate);
    knobs.max_lateness_ms = 2_000;
    knobs.refund_share = 0.05;
    knobs.campaigns = 10;
    let events = (rate * duration.as_secs_f64()) as u64;
    let start_ms = shopflow::runtime::now_ms() + 500;
    let generator = EventGenerator::new(knobs, start_ms).expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    let production_end = start_ms + duration.as_millis() as u64;

    // Demographic churn, ten changes every 10 s, 5 s after each moment windows close.
    let mut table = source::read_table(&scenario.mysql).expect("the table");
    let mut inputs: Vec<(Tick, Input)> = table
        .iter()
        .map(|row| (0, Input::Demographic(row.clone(), 1)))
        .collect();
    let mut changes = demographics::Changes::new(seed, users, 300);
    let mut report_at = Instant::now();
    loop {
        let now = shopflow::runtime::now_ms();
        let burst = now - now % WINDOW_MS
            + WINDOW_MS / 2
            + if now % WINDOW_MS < WINDOW_MS / 2 {
                0
            } else {
                WINDOW_MS
            };
        if burst + WINDOW_MS / 2 > production_end {
            break;
        }
        // Pacing by the wall clock, not synchronisation: the scenario's changes happen then.
        std::thread::sleep(Duration::from_millis(burst - now));
        pipeline.assert_running();
        let tick = burst - burst % tick_ms;
        let report = source::apply_changes(
            &scenario.mysql,
            &mut changes,
            200.0,
            Duration::from_secs(5),
            10,
        )
        .expect("changes applied");
        assert_eq!(report.mismatches, 0, "{report:?}");
        let after = source::read_table(&scenario.mysql).expect("the table");
        inputs.extend(table_changes(&table, &after, tick));
        table = after;
        let made = shopflow::runtime::now_ms();
        assert!(
            made < burst + WINDOW_MS / 2 - 2 * tick_ms,
            "the burst took until {made}, close to a window's close"
        );
        if report_at.elapsed()
            >= Duration::from_secs(if duration > Duration::from_secs(300) {
                60
            } else {
                10
            })
        {
            report_at = Instant::now();
            let counters = influx_state(&scenario.influx_url, &scenario.database)
                .map(|s| s.counters)
                .unwrap_or_default();
            eprintln!(
                "steady run at {:>5.0}s: RSS {:.1} MiB, counters {counters:?}",
                started.elapsed().as_secs_f64(),
                mib(rss_kib(pipeline.pid()).unwrap_or(0))
            );
        }
    }
    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    let production_done = Instant::now();
    inputs.extend((0..events).map(|n| {
        let arrival = generator.arrival_ms(n);
        (
            arrival - arrival % tick_ms,
            Input::Event(generator.event(n)),
        )
    }));
    // The (user, campaign) pairs met by the end of the warm-up and by the end: the key space
    // the all-time state grows with.
    let warm_until = start_ms + warm_up(duration).as_millis() as u64;
    let pairs = |until: u64| {
        (0..events)
            .filter(|&n| generator.arrival_ms(n) < until)
            .map(|n| {
                let event = generator.event(n);
                (event.user_id, event.campaign_id)
            })
            .collect::<BTreeSet<_>>()
            .len()
    };
    let (pairs_warm, pairs_end) = (pairs(warm_until), pairs(u64::MAX));
    let want = oracle(&inputs, params);
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(120));
    let samples = rss.stop();

    // No error counter moved: nothing malformed, rejected or late, no write retried, no warning.
    for counter in Counter::ALL {
        let expected_zero = !matches!(
            counter,
            Counter::EventsIn
                | Counter::Duplicates
                | Counter::RefundsApplied
                | Counter::RefundsUnmatched
        );
        if expected_zero {
            assert_eq!(got.counter(counter), 0, "{}", counter.name());
        }
    }
    assert_eq!(got.counter(Counter::EventsIn), events as i64);
    let retries = influx_query(
        &scenario.influx_url,
        &scenario.database,
        "SELECT max(sink_retries) FROM runtime",
    )
    .and_then(|a| a["results"][0]["series"][0]["values"][0][1].as_i64());
    assert_eq!(retries, Some(0), "no InfluxDB write retried");
    let log = pipeline.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "warnings: {warnings:#?}");

    // Memory: flat after the warm-up.
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| {
            *at >= production_done - duration + warm_up(duration) && *at <= production_done
        })
        .map(|(_, kib)| *kib)
        .collect();
    let third = steady.len() / 3;
    assert!(third >= 5, "{} steady samples", steady.len());
    let first = steady[..third].iter().copied().max().unwrap_or(0);
    let last = steady[steady.len() - third..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let growth = last as f64 / first as f64 - 1.0;
    // Every 5 s, or at most about 60 of the samples (taken every 500 ms) on a long run.
    let every = (samples.len() / 60).max(10);
    eprintln!(
        "steady run: {events} events in {duration:?}, {} demographic updates; RSS every {:?} \
         (MiB): {:?}; peak of the first third after warm-up {:.1} MiB, of the last {:.1} MiB \
         ({:+.1}%); (user, campaign) pairs met {pairs_warm} by the end of the warm-up, \
         {pairs_end} in all; counters {:?}; {} rows equal the oracle; {:.1}s",
        inputs
            .iter()
            .filter(|(tick, input)| *tick > 0 && matches!(input, Input::Demographic(..)))
            .count(),
        Duration::from_millis(500 * every as u64),
        samples
            .iter()
            .step_by(every)
            .map(|(_, kib)| (mib(*kib) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        mib(first),
        mib(last),
        growth * 100.0,
        got.counters,
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        growth <= RSS_GROWTH_ALLOWED,
        "RSS grew by {:.1}% from {:.1} MiB to {:.1} MiB",
        growth * 100.0,
        mib(first),
        mib(last)
    );
}

/// The group's committed offsets, summed over the topic's partitions (0 where none).
fn committed_total(config: &KafkaConfig) -> i64 {
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

/// The offsets recorded in the newest complete checkpoint of `dir`, summed (0 without one).
fn checkpointed_total(dir: &Path, kafka: &KafkaConfig, params: &Params) -> i64 {
    let Some(found) = shopflow::checkpoint::latest(dir).expect("the directory is readable") else {
        return 0;
    };
    let pipeline = shopflow::checkpoint::fingerprint(&kafka.topic, &kafka.group_id, params);
    // As one worker of one, every old worker's offsets.
    let (_, offsets) =
        shopflow::checkpoint::load(&found, &pipeline, 0, 1).expect("a valid checkpoint");
    offsets.values().sum()
}

/// InfluxDB stopped mid-run, then the pipeline killed during the outage: neither the group's
/// committed offsets nor the newest complete checkpoint may cover an event whose effects
/// InfluxDB has not acknowledged (they ran ahead by the sink's queue before the acknowledgement
/// watermark). Restarted, the pipeline then ends exactly equal to the oracle.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn an_influxdb_outage_then_a_kill_never_commits_or_checkpoints_ahead_of_influxdb() {
    let _services = exclusive();
    let (seed, users) = (73, 3_000);
    let scenario = Scenario::new("faults_ack", seed, users);
    let checkpoints = tempfile::tempdir().expect("a checkpoint directory");
    let root = checkpoints.path().display().to_string();
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            ("SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS", "500"),
            ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", &root),
        ],
    );
    let dir = shopflow::checkpoint::pipeline_dir(checkpoints.path(), &scenario.kafka.group_id);
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let (rate, events) = (1_000.0, 30_000u64);
    let generator =
        EventGenerator::new(knobs(seed, users, rate), shopflow::runtime::now_ms() + 500)
            .expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    wait_for("4,000 events written", Duration::from_secs(60), || {
        influx_state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) >= 4_000)
    });
    let influxdb = Stopped::stop("influxdb");
    // Long enough for the sink's queue to fill and for boundaries to pass meanwhile.
    for _ in 0..40 {
        pipeline.assert_running();
        std::thread::sleep(Duration::from_millis(200));
    }
    let committed = committed_total(&scenario.kafka);
    let checkpointed = checkpointed_total(&dir, &scenario.kafka, &timeless());
    pipeline.kill();
    influxdb.start();
    let acknowledged = influx_state(&scenario.influx_url, &scenario.database)
        .expect("InfluxDB answers")
        .counter(Counter::EventsIn);
    eprintln!(
        "killed during the outage: InfluxDB holds events_in {acknowledged}; committed \
         {committed}; the newest complete checkpoint covers {checkpointed}"
    );
    assert!(
        committed <= acknowledged,
        "offsets committed for {committed} events, InfluxDB acknowledged {acknowledged}"
    );
    assert!(
        checkpointed <= acknowledged,
        "a checkpoint covers {checkpointed} events, InfluxDB acknowledged {acknowledged}"
    );

    let mut pipeline = Pipeline::start(&env);
    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    settle_on_the_oracle(&scenario, &mut pipeline, &generator, events);
}

/// Killed before its first checkpoint: the restart has no state, and must count the topic from
/// its start rather than resume at offsets committed for state that is gone (they were committed
/// every tick). Every event counts once.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn a_kill_before_the_first_checkpoint_loses_nothing() {
    let _services = exclusive();
    let (seed, users) = (79, 3_000);
    let scenario = Scenario::new("faults_early_kill", seed, users);
    let checkpoints = tempfile::tempdir().expect("a checkpoint directory");
    let root = checkpoints.path().display().to_string();
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            // The first checkpoint is never reached before the kill.
            ("SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS", "3600000"),
            ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", &root),
        ],
    );
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let (rate, events) = (2_000.0, 20_000u64);
    let generator =
        EventGenerator::new(knobs(seed, users, rate), shopflow::runtime::now_ms() + 500)
            .expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    wait_for("3,000 events written", Duration::from_secs(60), || {
        influx_state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) >= 3_000)
    });
    pipeline.kill();
    let committed = committed_total(&scenario.kafka);
    assert_eq!(
        committed, 0,
        "no offset is committed before a checkpoint holds the state it covers"
    );

    let mut pipeline = Pipeline::start(&env);
    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    settle_on_the_oracle(&scenario, &mut pipeline, &generator, events);
}

/// Users moved to a segment of their own after a checkpoint (the pipeline writes its rows), the
/// pipeline killed before the next checkpoint, the users deleted while it is down: the restored
/// state never held that segment, and the re-read table no longer has it, so no later output
/// touches its rows. They must still end as removals, not keep the values the killed run wrote.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn rows_written_after_the_restored_checkpoint_and_no_longer_supported_are_removed() {
    let _services = exclusive();
    let (seed, users) = (83, 2_000);
    let scenario = Scenario::new("faults_stale", seed, users);
    let checkpoints = tempfile::tempdir().expect("a checkpoint directory");
    let root = checkpoints.path().display().to_string();
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            ("SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS", "20000"),
            ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", &root),
        ],
    );
    let dir = shopflow::checkpoint::pipeline_dir(checkpoints.path(), &scenario.kafka.group_id);
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let events = 6_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 2_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    produce_in_background(&scenario.kafka, &generator, events)
        .join()
        .expect("the producer");
    wait_for("every event written", Duration::from_secs(60), || {
        influx_state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) == events as i64)
    });
    // Right after a checkpoint, the users of ids below 200 move to a country of their own.
    let boundary = {
        let started = Instant::now();
        loop {
            let found = shopflow::checkpoint::latest(&dir).expect("readable");
            if let Some(found) = found
                && shopflow::runtime::now_ms() < found.tick + 2_000
            {
                break found.tick;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "a checkpoint");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    scenario
        .mysql_conn()
        .query_drop("UPDATE demographics SET country = 'Atlantis', state = 'Deep' WHERE id < 200")
        .expect("moved");
    wait_for(
        "the moved users' rows written",
        Duration::from_secs(10),
        || {
            influx_state(&scenario.influx_url, &scenario.database).is_some_and(|s| {
                s.rows
                    .keys()
                    .any(|k| k.starts_with("country,country=Atlantis,window=all"))
            })
        },
    );
    pipeline.kill();
    let newest = shopflow::checkpoint::latest(&dir)
        .expect("readable")
        .map(|f| f.tick);
    assert_eq!(newest, Some(boundary), "killed before the next checkpoint");
    scenario
        .mysql_conn()
        .query_drop("DELETE FROM demographics WHERE id < 200")
        .expect("deleted");

    let mut pipeline = Pipeline::start(&env);
    let got = settle_on_the_oracle(&scenario, &mut pipeline, &generator, events);
    assert!(
        !got.rows.keys().any(|k| k.contains("Atlantis")),
        "no row of the deleted users' country is left"
    );
}

/// Once every event produced is in the topic, waits until InfluxDB equals the oracle over them
/// and the table as it is now, then stops the pipeline and compares again (see
/// [`settle_and_compare`]); every event counted once.
fn settle_on_the_oracle(
    scenario: &Scenario,
    pipeline: &mut Pipeline,
    generator: &EventGenerator,
    events: u64,
) -> State {
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, generator, events, &BTreeMap::new()),
        timeless(),
    );
    let got = settle_and_compare(scenario, pipeline, &want, Duration::from_secs(120));
    assert_eq!(got.counter(Counter::EventsIn), events as i64);
    got
}

/// Kafka down again and again, as the fault campaign saw it break the reader for good: a run
/// started while the broker is down waits for it (instead of exiting at once); after several
/// outages of 10 to 16 s the readers go on (a stuck consumer is re-assigned, then replaced) and
/// every event is counted exactly once against the oracle; and a SIGTERM during an outage ends
/// the process within seconds (it used to hang in a synchronous commit or the consumer's close).
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn repeated_kafka_outages_stall_nothing_and_sigterm_ends_the_run() {
    let _services = exclusive();
    let started = Instant::now();
    let (seed, users) = (89, 5_000);
    let scenario = Scenario::new("faults_outages", seed, users);
    // The run starts with the broker down and waits for it; Kafka's start takes 10 to 40 s here,
    // over a minute when the machine is loaded: the wait must outlast it.
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            ("SHOPFLOW__ENGINE__CONNECT_TIMEOUT_MS", "300000"),
        ],
    );
    let broker = Stopped::stop("kafka");
    let mut pipeline = Pipeline::start(&env);
    std::thread::sleep(Duration::from_secs(4));
    pipeline.assert_running();
    broker.start();
    wait_until_running(&scenario, &mut pipeline);
    let events = 50_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 1_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    // Sent through the outages, at each event's arrival time; the flush waits out the last one
    // (`produce_generated`'s 30 s may not).
    let producer = {
        let (config, generator) = (scenario.kafka.clone(), generator.clone());
        std::thread::spawn(move || {
            let mut producer = EventProducer::new(&config).expect("a producer");
            for n in 0..events {
                let arrival = generator.arrival_ms(n);
                let now = shopflow::runtime::now_ms();
                if arrival > now {
                    std::thread::sleep(Duration::from_millis(arrival - now));
                }
                producer.send(&generator.event(n), arrival).expect("sent");
            }
            producer.flush(Duration::from_secs(180)).expect("flushed");
            producer.sent()
        })
    };
    for outage in [12, 16, 10, 14] {
        std::thread::sleep(Duration::from_secs(4));
        let broker = Stopped::stop("kafka");
        std::thread::sleep(Duration::from_secs(outage));
        broker.start();
        pipeline.assert_running();
    }
    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    assert_eq!(
        topic_messages(&scenario.kafka),
        events as i64,
        "the topic holds every event once"
    );
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &BTreeMap::new()),
        timeless(),
    );
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(90));
    assert_eq!(got.counter(Counter::EventsIn), events as i64, "none twice");
    let log = pipeline.log();
    let (reassigned, replaced) = (
        occurrences(&log, "re-assigning the partitions"),
        occurrences(&log, "replacing the consumer"),
    );

    // Running again (writing runtime points of its own), then SIGTERM while the broker is down.
    let points = || {
        influx_query(
            &scenario.influx_url,
            &scenario.database,
            "SELECT count(consumer_lag) FROM runtime",
        )
        .and_then(|a| a["results"][0]["series"][0]["values"][0][1].as_i64())
        .unwrap_or(0)
    };
    let before = points();
    let mut pipeline = Pipeline::start(&env);
    wait_for("the second run's points", Duration::from_secs(60), || {
        pipeline.assert_running();
        points() > before + 4
    });
    let broker = Stopped::stop("kafka");
    std::thread::sleep(Duration::from_secs(3));
    let term = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &pipeline.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM delivered");
    let status = pipeline.wait(Duration::from_secs(15));
    let stopped_in = term.elapsed();
    broker.start();
    let log = pipeline.log();
    assert!(
        status.success()
            || (status.code() == Some(1) && log.lines().any(|l| l.starts_with("error: "))),
        "a stop during an outage exits 0, or 1 with an error line, not {status}:\n{log}"
    );
    let error = log.lines().find(|l| l.starts_with("error: ")).unwrap_or("");
    eprintln!(
        "kafka outages: re-assigned {reassigned}, replaced {replaced} time(s); {} rows equal the \
         oracle; SIGTERM in an outage ended the run in {stopped_in:?} ({status}) {error}; {:.1}s",
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The HTTP server of `run` through a Kafka broker stop and start: `/metrics`, parsed with a
/// Prometheus parser, counts what the pipeline wrote to InfluxDB; `/ready` answers 503 naming
/// Kafka while the broker is down and 200 again once it is back, while `/health` stays 200 all
/// along (the workers step). Stops the broker: run it only against services of its own.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn http_ready_and_health_through_a_broker_stop_and_start() {
    let _services = exclusive();
    let (seed, users) = (97, 2_000);
    let scenario = Scenario::new("faults_http", seed, users);
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            ("SHOPFLOW__HTTP__LISTEN", "127.0.0.1:0"),
            ("SHOPFLOW__HTTP__READY_STALL_MS", "3000"),
        ],
    );
    let mut pipeline = Pipeline::start(&env);
    let mut url = String::new();
    wait_for("the server's URL", Duration::from_secs(30), || {
        pipeline.assert_running();
        let log = pipeline.log();
        let first = log.lines().next().unwrap_or("");
        match first.split_whitespace().find(|w| w.starts_with("http://")) {
            Some(found) => {
                url = found.trim_end_matches('/').to_owned();
                true
            }
            None => false,
        }
    });
    let get = |path: &str| -> (u16, String) {
        match reqwest::blocking::Client::new()
            .get(format!("{url}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
        {
            Ok(response) => (
                response.status().as_u16(),
                response.text().unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        }
    };
    wait_for("ready", Duration::from_secs(60), || get("/ready").0 == 200);

    let events = 3_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 1_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    let sent = produce_in_background(&scenario.kafka, &generator, events)
        .join()
        .expect("the producer");
    assert_eq!(sent, events);
    wait_for("every event written", Duration::from_secs(60), || {
        influx_state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) == events as i64)
    });
    // Every counter, as InfluxDB holds it and as /metrics says.
    let influx = influx_state(&scenario.influx_url, &scenario.database).expect("InfluxDB");
    let (status, body) = get("/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    for counter in Counter::ALL {
        let name = match counter.origin() {
            dataflows::model::CounterOrigin::DemographicsTable => {
                format!("shopflow_pipeline_{}_rows", counter.name())
            }
            _ => format!("shopflow_pipeline_{}_total", counter.name()),
        };
        let value = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => panic!("{name}: not a counter or gauge"),
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"));
        assert_eq!(value, influx.counter(counter) as f64, "{name}");
    }

    let broker = Stopped::stop("kafka");
    wait_for("not ready, naming Kafka", Duration::from_secs(30), || {
        let (status, body) = get("/ready");
        status == 503 && body.contains("Kafka")
    });
    let (status, body) = get("/health");
    assert_eq!(status, 200, "alive while the broker is down: {body}");
    std::thread::sleep(Duration::from_secs(5));
    let (status, body) = get("/health");
    assert_eq!(status, 200, "still alive: {body}");
    broker.start();
    wait_for("ready again", Duration::from_secs(90), || {
        pipeline.assert_running();
        get("/ready").0 == 200
    });
    assert_eq!(get("/health").0, 200);
    pipeline.interrupt();
}
