//! Kafka: the event producer (`shopflow produce`) and the per-worker partition reader.
//!
//! Like timely's old `kafkaesque` example, each worker owns a share of the partitions (partition
//! `p` goes to worker `p % peers`, counting every worker of every process), polls its consumer
//! with a zero timeout from the worker loop, and never blocks the dataflow. Offsets are committed
//! only for ticks the sink has acknowledged, so after a crash the pipeline re-reads what InfluxDB
//! may not hold yet; the sink writes absolute values, so a re-read counts nothing twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::model::{Counter, Event, EventTimeMs, Tick};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::sources::avro::{self, DecodeError, Decoder, SchemaError};
use crate::sources::registry::{self, RegistryClient, RegistryError, SchemaCache};

/// The `[kafka]` section: what the event topic is and how to reach it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Partitions of the topic when shopflow creates it (the embedded cluster, `produce`).
    pub partitions: i32,
    /// The consumer group whose committed offsets the pipeline resumes from.
    pub group_id: String,
    /// Where a pipeline starts reading.
    pub start: StartPosition,
    /// The schema id written in the Confluent header, and the id the bundled schema answers to
    /// when no schema registry is configured.
    pub schema_id: u32,
    /// A Confluent schema registry's URL (basic-auth credentials may be in it; they are never
    /// logged); empty for none. With one, the producer registers the bundled schema under
    /// `<topic>-value` and writes the id it is given instead of `schema_id`, and readers fetch
    /// the writer schema of each id they meet once.
    pub schema_registry_url: String,
    /// A topic that receives a copy of every malformed message (with its reason, topic, partition
    /// and offset as headers); empty for none.
    pub dead_letter_topic: String,
    /// At most this many messages per worker per poll round, so one busy partition cannot starve
    /// the worker's other duties.
    pub max_poll_messages: usize,
    /// A message with a larger payload is counted as `malformed_oversize` and not decoded.
    pub max_message_bytes: usize,
    /// An event whose time lies more than this many milliseconds before the moment it is read is
    /// rejected and counted as `rejected_too_old`; 0 for no bound.
    pub max_event_age_ms: u64,
    /// An event whose time lies more than this many milliseconds after the moment it is read is
    /// rejected and counted as `rejected_future`; 0 for no bound.
    pub max_future_skew_ms: u64,
    /// An event whose total exceeds this many cents is rejected as implausible and counted as
    /// `rejected_implausible`; 0 for no bound (the decoder's own limit, [`avro::MAX_CENTS`],
    /// still holds).
    pub max_order_cents: u64,
    /// An event with more units than this is rejected as implausible and counted as
    /// `rejected_implausible`; 0 for no bound.
    pub max_units: u64,
    /// librdkafka properties passed through unchanged (TLS, SASL, fetch tuning...).
    pub properties: BTreeMap<String, String>,
}

/// Where a pipeline starts reading its partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StartPosition {
    /// From the beginning of each partition.
    Earliest,
    /// From the end: only new events.
    Latest,
    /// From the beginning where the group has committed no offset; a group that has committed
    /// offsets is refused: with no checkpoint holding the state they cover, starting there would
    /// count only what follows them (positions come from the checkpoint when there is one).
    Committed,
}

/// A Kafka operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// librdkafka reported an error.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The bundled schema could not be loaded.
    #[error("avro schema: {0}")]
    Schema(String),
    /// The schema registry could not be reached, or refused a request.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The topic does not exist or has no partitions.
    #[error("kafka topic {0} has no partitions (does it exist?)")]
    NoPartitions(String),
    /// A partition's next offset to read is no longer in its log: messages were lost unread.
    #[error("kafka topic {topic}: {detail}; the run stops rather than skip them")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// Which partitions, where the reader was and what the log holds.
        detail: String,
    },
    /// `kafka.start = committed` with committed offsets but no checkpoint: the state they were
    /// committed for is gone.
    #[error(
        "kafka group {group} has committed offsets on {topic} but no checkpoint holds the state \
         they cover: set kafka.start to \"earliest\" to count the topic again from its start, or \
         \"latest\" to count only new events"
    )]
    CommittedWithoutState {
        /// The topic.
        topic: String,
        /// The consumer group.
        group: String,
    },
    /// The brokers could not be reached within the connect timeout when the reader started.
    #[error(
        "kafka brokers {brokers} not reachable within {waited:?} (engine.connect-timeout-ms); \
         the last attempt failed with: {last}"
    )]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long the reader tried.
        waited: Duration,
        /// The last attempt's error.
        last: Box<KafkaSourceError>,
    },
    /// Asked to stop while waiting for the brokers at start: nothing was read.
    #[error("stopped while waiting for the kafka brokers {0}; nothing was read")]
    StoppedWhileConnecting(String),
    /// An offset commit was not acknowledged in time (the group coordinator is unreachable).
    #[error("kafka: the offset commit was not acknowledged within {0:?}: {1}")]
    CommitTimedOut(Duration, String),
    /// The brokers refused or never acknowledged some messages.
    #[error("kafka: {failed} messages were not delivered to {topic}; the first because: {first}")]
    Undelivered {
        /// The topic.
        topic: String,
        /// How many.
        failed: u64,
        /// The first failure's reason.
        first: String,
    },
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaSourceError {
    let context = context.into();
    move |source| KafkaSourceError::Kafka { context, source }
}

impl KafkaConfig {
    /// Checks the values; names the first bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers: must name at least one host:port".into());
        }
        if self.topic.is_empty() || self.topic.len() > 249 || !self.topic.chars().all(topic_char) {
            return Err(format!(
                "kafka.topic: `{}` is not a valid topic name",
                self.topic
            ));
        }
        if !self.dead_letter_topic.is_empty() && !self.dead_letter_topic.chars().all(topic_char) {
            return Err(format!(
                "kafka.dead-letter-topic: `{}` is not a valid topic name",
                self.dead_letter_topic
            ));
        }
        if self.partitions < 1 {
            return Err("kafka.partitions: must be at least 1".into());
        }
        if self.group_id.is_empty() {
            return Err("kafka.group-id: must not be empty".into());
        }
        if !self.schema_registry_url.is_empty()
            && let Err(error) = RegistryClient::new(&self.schema_registry_url)
        {
            return Err(format!("kafka.schema-registry-url: {error}"));
        }
        if self.max_poll_messages == 0 {
            return Err("kafka.max-poll-messages: must be at least 1".into());
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(format!(
                "kafka.max-message-bytes: must be at least {MIN_MESSAGE_BYTES} (an event takes up to {} bytes)",
                avro::MAX_ENCODED_LEN
            ));
        }
        Ok(())
    }

    /// The event-time bounds of `max-event-age-ms` and `max-future-skew-ms`.
    pub fn time_bounds(&self) -> TimeBounds {
        TimeBounds {
            max_age_ms: self.max_event_age_ms,
            max_future_skew_ms: self.max_future_skew_ms,
        }
    }

    /// The plausibility bounds of `max-order-cents` and `max-units`.
    pub fn amount_bounds(&self) -> AmountBounds {
        AmountBounds {
            max_order_cents: self.max_order_cents,
            max_units: self.max_units,
        }
    }

    /// A client configuration: brokers, then the pass-through properties.
    fn client(&self) -> ClientConfig {
        self.client_tuned(&[])
    }

    /// A client configuration: brokers, then shopflow's `tuning` defaults, then the pass-through
    /// properties, which may override those defaults. What correctness depends on is set by the
    /// caller afterwards, so no property overrides it.
    fn client_tuned(&self, tuning: &[(&str, &str)]) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (key, value) in tuning {
            client.set(*key, *value);
        }
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }
}

/// The producer's librdkafka settings unless `kafka.properties` says otherwise: small batches
/// sent promptly, compressed.
const PRODUCER_TUNING: [(&str, &str); 3] = [
    ("linger.ms", "5"),
    ("queue.buffering.max.messages", "1000000"),
    ("compression.type", "lz4"),
];

/// The pipeline consumer's librdkafka settings unless `kafka.properties` says otherwise.
///
/// librdkafka's defaults wait for full fetches; the pipeline wants records promptly, so a fetch
/// returns whatever is there. Its default of at most 1 MiB per partition per fetch was the
/// end-to-end bottleneck: reading a backlog, the workers idled half the time waiting for
/// fetches (306,000 events/s against 763,000 with 8 MiB, measured in docs/benchmarks.md). The
/// pre-fetch queue stays bounded by `queued.max.messages.kbytes` (64 MiB per consumer).
const CONSUMER_TUNING: [(&str, &str); 4] = [
    ("fetch.wait.max.ms", "10"),
    ("fetch.min.bytes", "1"),
    ("fetch.message.max.bytes", "8388608"),
    ("queued.min.messages", "100000"),
];

/// The pipeline consumer's configuration: [`CONSUMER_TUNING`] under the user's properties, and
/// over both what the offset handling depends on (offsets are committed by the pipeline, only
/// for what the sink acknowledged). Every partition is assigned at an offset the reader chose, so
/// an offset out of range means messages vanished unread (retention deleted them, or the topic
/// was re-created): `auto.offset.reset = error` makes that an error
/// ([`KafkaSourceError::OffsetOutOfRange`]) instead of a silent jump to the log's start or end.
fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = config.client_tuned(&CONSUMER_TUNING);
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error");
    client
}

/// The smallest `max-message-bytes` accepted: room for every event the bundled schema encodes.
pub const MIN_MESSAGE_BYTES: usize = 64;

/// How far an event's time may lie from the moment it is read (its processing time) before the
/// source rejects it as implausible: a clock reset to 1970, a producer whose clock runs days ahead.
///
/// Late data within the bound is the dataflow's business (late for its window, counted in all-time
/// totals); data beyond it never enters the dataflow and is counted in `rejected_too_old` or
/// `rejected_future`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeBounds {
    /// The largest age, `now - event time`, accepted; 0 for no bound.
    pub max_age_ms: u64,
    /// The largest lead, `event time - now`, accepted; 0 for no bound.
    pub max_future_skew_ms: u64,
}

impl TimeBounds {
    /// The counter an event of time `event_time` read at `now_ms` is rejected under, if any.
    ///
    /// ```
    /// use dataflows::model::{Counter, EventTimeMs};
    /// use shopflow::sources::kafka::TimeBounds;
    ///
    /// let bounds = TimeBounds { max_age_ms: 1_000, max_future_skew_ms: 100 };
    /// let now = 1_700_000_000_000;
    /// assert_eq!(bounds.check(EventTimeMs(now - 1_000), now), None);
    /// assert_eq!(bounds.check(EventTimeMs(now - 1_001), now), Some(Counter::RejectedTooOld));
    /// assert_eq!(bounds.check(EventTimeMs(now + 101), now), Some(Counter::RejectedFuture));
    /// ```
    pub fn check(&self, event_time: EventTimeMs, now_ms: u64) -> Option<Counter> {
        let time = event_time.0;
        if self.max_age_ms > 0 && now_ms.saturating_sub(time) > self.max_age_ms {
            Some(Counter::RejectedTooOld)
        } else if self.max_future_skew_ms > 0
            && time.saturating_sub(now_ms) > self.max_future_skew_ms
        {
            Some(Counter::RejectedFuture)
        } else {
            None
        }
    }
}

/// How large an order's total and units may be before the source rejects the event as
/// implausible: a price typed in the wrong unit, a test value, a hostile producer.
///
/// An event beyond a bound never enters the dataflow and is counted in `rejected_implausible`.
/// Sums cannot wrap whatever the bounds ([`dataflows::model::Totals`] keeps them in 128 bits);
/// the bounds keep single absurd values out of every total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmountBounds {
    /// The largest total accepted, in cents; 0 for no bound.
    pub max_order_cents: u64,
    /// The most units accepted; 0 for no bound.
    pub max_units: u64,
}

impl AmountBounds {
    /// Whether `event` lies beyond a bound, and which: `Some("total_amount")` or
    /// `Some("units")`.
    ///
    /// ```
    /// use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
    /// use shopflow::sources::kafka::AmountBounds;
    ///
    /// let bounds = AmountBounds { max_order_cents: 1_000, max_units: 10 };
    /// let event = Event {
    ///     order_id: OrderId(1),
    ///     tag: Tag::Purchased,
    ///     user_id: UserId(1),
    ///     campaign_id: CampaignId(1),
    ///     total: Cents(1_000),
    ///     units: 10,
    ///     event_time: EventTimeMs(0),
    /// };
    /// assert_eq!(bounds.exceeded(&event), None);
    /// assert_eq!(bounds.exceeded(&Event { total: Cents(1_001), ..event.clone() }), Some("total_amount"));
    /// assert_eq!(bounds.exceeded(&Event { units: 11, ..event }), Some("units"));
    /// ```
    pub fn exceeded(&self, event: &Event) -> Option<&'static str> {
        let beyond = |value: u64, bound: u64| bound > 0 && value > bound;
        if beyond(event.total.0.unsigned_abs(), self.max_order_cents) {
            Some("total_amount")
        } else if beyond(u64::from(event.units), self.max_units) {
            Some("units")
        } else {
            None
        }
    }
}

fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Counts the messages the brokers did not take, and keeps the first reason.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_librdkafka(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((error, _)) = result {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| error.to_string());
        }
    }
}

/// Sends events to the topic, Avro-encoded with the Confluent framing, keyed by user id and
/// timestamped with their arrival time (never later than now: brokers refuse records from the
/// future). A message the brokers refuse fails [`EventProducer::flush`], never silently.
pub struct EventProducer {
    producer: BaseProducer<Deliveries>,
    topic: String,
    schema_id: u32,
    buffer: Vec<u8>,
    sent: u64,
}

impl EventProducer {
    /// Connects a producer. With a schema registry, first registers the bundled schema under
    /// `<topic>-value` and writes the id it is given in every message.
    pub fn new(config: &KafkaConfig) -> Result<EventProducer, KafkaSourceError> {
        let schema_id = if config.schema_registry_url.is_empty() {
            config.schema_id
        } else {
            let client = RegistryClient::new(&config.schema_registry_url)?;
            let subject = registry::value_subject(&config.topic);
            let id = client.register(&subject, avro::EVENT_SCHEMA)?;
            tracing::info!(registry = client.url(), %subject, id, "registered the event schema");
            id
        };
        let producer: BaseProducer<Deliveries> = config
            .client_tuned(&PRODUCER_TUNING)
            .create_with_context(Deliveries::default())
            .map_err(|e| kafka("cannot create the producer")(redact_error(config, e)))?;
        Ok(EventProducer {
            producer,
            topic: config.topic.clone(),
            schema_id,
            buffer: Vec::new(),
            sent: 0,
        })
    }

    /// Queues one event; waits for room while librdkafka's queue is full.
    pub fn send(&mut self, event: &Event, arrival_ms: u64) -> Result<(), KafkaSourceError> {
        self.buffer.clear();
        avro::encode_event(self.schema_id, event, &mut self.buffer);
        let key = event.user_id.0.to_be_bytes();
        // A generator run faster than realtime has arrivals ahead of the clock.
        let timestamp = arrival_ms.min(crate::runtime::now_ms()) as i64;
        loop {
            let record = BaseRecord::to(&self.topic)
                .key(&key[..])
                .payload(&self.buffer[..])
                .timestamp(timestamp);
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(kafka(format!("cannot send to {}", self.topic))(e)),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1_024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Sends raw bytes (tests use it for malformed messages).
    pub fn send_raw(
        &mut self,
        key: &[u8],
        payload: &[u8],
        arrival_ms: u64,
    ) -> Result<(), KafkaSourceError> {
        let record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .timestamp(arrival_ms as i64);
        self.producer
            .send(record)
            .map_err(|(e, _)| kafka(format!("cannot send to {}", self.topic))(e))
    }

    /// Serves delivery reports for up to `timeout`: what a producer that has nothing to send
    /// does while it waits, so that its queue drains.
    pub fn wait(&mut self, timeout: Duration) {
        self.producer.poll(timeout);
    }

    /// Events sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits until everything queued is acknowledged by the brokers; fails if any message sent
    /// so far was refused or lost.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), KafkaSourceError> {
        self.producer
            .flush(timeout)
            .map_err(kafka("cannot flush the producer"))?;
        let context = self.producer.context();
        let failed = context.failed.load(std::sync::atomic::Ordering::Relaxed);
        if failed > 0 {
            let first = context.first.lock().unwrap_or_else(|p| p.into_inner());
            return Err(KafkaSourceError::Undelivered {
                topic: self.topic.clone(),
                failed,
                first: first.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// Creates the topic on a broker if it does not exist (best effort: an existing topic is fine).
pub fn ensure_topic(config: &KafkaConfig, topic: &str) -> Result<(), KafkaSourceError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<LogContext> = create(config, &config.client(), "admin client")?;
    let topics = [NewTopic::new(
        topic,
        config.partitions,
        TopicReplication::Fixed(1),
    )];
    // Bounded on the client too: an unreachable broker fails in seconds, not a minute.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = futures_executor::block_on(admin.create_topics(&topics, &options))
        .map_err(kafka("cannot create topics"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaSourceError::Kafka {
                    context: format!("cannot create topic {name}"),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

/// How many messages the topic has ever held: the sum of its partitions' high watermarks (which
/// deletion by retention does not lower). `produce` resumes its generator there, so that a
/// restarted producer sends new events rather than the stream's beginning again.
pub fn topic_end(config: &KafkaConfig) -> Result<u64, KafkaSourceError> {
    let mut client = config.client();
    // Required by the client, never used: nothing is consumed or committed.
    client.set("group.id", format!("{}-produce", config.group_id));
    let consumer: BaseConsumer<LogContext> = create(config, &client, "consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), timeout)
        .map_err(kafka(format!("cannot read metadata of {}", config.topic)))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == config.topic)
        .map_or(0, |t| t.partitions().len());
    let mut end = 0u64;
    for partition in 0..partitions as i32 {
        let (_, high) = consumer
            .fetch_watermarks(&config.topic, partition, timeout)
            .map_err(kafka(format!(
                "cannot read the watermarks of {}/{partition}",
                config.topic
            )))?;
        end = end.saturating_add(u64::try_from(high).unwrap_or(0));
    }
    Ok(end)
}

/// What one poll round produced.
#[derive(Debug, Default)]
pub struct Polled {
    /// Messages read, malformed ones included.
    pub messages: usize,
    /// Malformed messages by counter.
    pub malformed: Vec<(Counter, isize)>,
}

/// The pipeline consumer's context: librdkafka's messages go to `tracing`.
///
/// It keeps no commit outcome: rust-rdkafka registers no `offset_commit_cb`, and librdkafka
/// propagates an asynchronous commit's result only to one (`rd_kafka_cgrp_propagate_commit_result`),
/// so `commit_callback` is never called for `CommitMode::Async`. [`PartitionReader::commit_all`]
/// asks the coordinator instead.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_librdkafka(&error, reason);
    }
}

impl ConsumerContext for ReaderContext {}

type ReaderConsumer = BaseConsumer<ReaderContext>;

/// The partitions' high watermarks, read on a thread of their own so that the worker never waits
/// for brokers that do not answer: [`PartitionReader::lag`] only looks at the latest answer.
struct Watermarks {
    /// The latest answer and when it was asked for.
    highs: Mutex<Option<(Instant, BTreeMap<i32, i64>)>>,
    /// Set when the reader is dropped: the thread ends.
    stop: AtomicBool,
}

/// The watermark thread's client context: it logs nothing, since the reader's own consumer
/// already reports what goes wrong with the brokers.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, _log_message: &str) {}

    fn error(&self, _error: KafkaError, _reason: &str) {}
}

impl ConsumerContext for Quiet {}

/// How long an answer of the watermark thread stands for the partitions' ends: older, the lag is
/// unknown.
const WATERMARKS_FRESH: Duration = Duration::from_secs(1);

impl Watermarks {
    /// Starts the thread asking for the high watermarks of `partitions` with a consumer of its
    /// own (no group): every 100 ms (every second while they fail), each request bounded by 5 s. A consumer that fails for
    /// [`STALL_AFTER`] is replaced, as a stuck reader's is.
    fn start(config: &KafkaConfig, partitions: &[i32]) -> Arc<Watermarks> {
        let shared = Arc::new(Watermarks {
            highs: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        if partitions.is_empty() {
            return shared;
        }
        let (watch, client, topic, partitions) = (
            Arc::clone(&shared),
            config.client(),
            config.topic.clone(),
            partitions.to_vec(),
        );
        let spawned = std::thread::Builder::new()
            .name("shopflow-watermarks".into())
            .spawn(move || {
                let mut consumer: Option<BaseConsumer<Quiet>> = None;
                let mut last_answer = Instant::now();
                while !watch.stop.load(Ordering::Relaxed) {
                    if consumer.is_none() || last_answer.elapsed() >= STALL_AFTER {
                        consumer = client.create_with_context(Quiet).ok();
                        last_answer = Instant::now();
                    }
                    let asked = Instant::now();
                    let highs: Option<BTreeMap<i32, i64>> = consumer.as_ref().and_then(|c| {
                        partitions
                            .iter()
                            .map(|&p| {
                                c.fetch_watermarks(&topic, p, Duration::from_secs(5))
                                    .ok()
                                    .map(|(_, high)| (p, high))
                            })
                            .collect()
                    });
                    let pause = if let Some(highs) = highs {
                        last_answer = Instant::now();
                        *watch.highs.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((asked, highs));
                        Duration::from_millis(100)
                    } else {
                        Duration::from_secs(1)
                    };
                    std::thread::sleep(pause);
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the watermark thread: the consumer lag is unknown");
        }
        shared
    }
}

/// How long the worker waits for an offset commit at a graceful stop, and for its consumer to
/// close, before it goes on without.
const COMMIT_WAIT: Duration = Duration::from_secs(5);
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One worker's share of the topic's partitions.
pub struct PartitionReader {
    /// Always `Some` but in `drop`, which closes it on another thread with a bound.
    consumer: Option<ReaderConsumer>,
    /// What a replacement consumer is created from.
    config: KafkaConfig,
    topic: String,
    messages: MessageReader,
    partitions: Vec<i32>,
    /// The next offset to read, per partition (from the start: the resolved start position).
    next_offsets: BTreeMap<i32, i64>,
    /// Offsets reached at the end of each tick, waiting for the sink to acknowledge the tick.
    uncommitted: VecDeque<(Tick, BTreeMap<i32, i64>)>,
    max_poll: usize,
    dead_letter: Option<(BaseProducer<LogContext>, String)>,
    watermarks: Arc<Watermarks>,
    /// When a message last arrived, or the watch below last looked.
    last_progress: Instant,
    /// Stalls in a row: the first is mended by a new assignment, the next by a new consumer.
    stalls: u32,
    /// Whether the partitions are paused (the sink is behind): no progress is expected.
    paused: bool,
}

/// A reader that has received nothing for this long while its partitions hold unread messages
/// re-assigns them at its positions: after a broker restart librdkafka's fetcher can stay stuck
/// (confluentinc/librdkafka#5153, fede1024/rust-rdkafka#597), which a new assignment mends;
/// when it does not (the consumer itself keeps reporting all brokers down while they are up), the
/// next stall replaces the consumer.
const STALL_AFTER: Duration = Duration::from_secs(10);

/// Whether an error opening the reader may be a broker not up yet: worth another attempt.
fn retryable(error: &KafkaSourceError) -> bool {
    matches!(error, KafkaSourceError::Kafka { .. })
}

impl PartitionReader {
    /// Assigns worker `index` of `peers` its partitions (`p % peers == index`), each at its offset
    /// in `resume` (a checkpoint's) or else at the configured start position. A worker may get
    /// none when there are more workers than partitions.
    pub fn open(
        config: &KafkaConfig,
        index: usize,
        peers: usize,
        resume: Option<&BTreeMap<i32, i64>>,
    ) -> Result<PartitionReader, KafkaSourceError> {
        Self::open_once(config, index, peers, resume, Duration::from_secs(10))
    }

    /// [`open`](Self::open), retried while the brokers cannot be reached (a run started while
    /// Kafka restarts) for up to `timeout`, each attempt logged; then fails naming the brokers
    /// and the last error. Gives up at once when `stop` is set.
    pub fn open_within(
        config: &KafkaConfig,
        index: usize,
        peers: usize,
        resume: Option<&BTreeMap<i32, i64>>,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Result<PartitionReader, KafkaSourceError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let bound = left.clamp(Duration::from_millis(100), Duration::from_secs(2));
            let error = match Self::open_once(config, index, peers, resume, bound) {
                Ok(reader) => return Ok(reader),
                Err(error) if retryable(&error) => error,
                Err(error) => return Err(error),
            };
            if started.elapsed() + pause >= timeout {
                return Err(KafkaSourceError::Unreachable {
                    brokers: config.brokers.clone(),
                    waited: started.elapsed(),
                    last: Box::new(error),
                });
            }
            tracing::warn!(%error, "kafka not reachable; retrying");
            let until = Instant::now() + pause;
            while Instant::now() < until {
                if stop.load(Ordering::Relaxed) {
                    return Err(KafkaSourceError::StoppedWhileConnecting(
                        config.brokers.clone(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// One attempt of [`open`](Self::open), each request to the brokers bounded by `bound`.
    fn open_once(
        config: &KafkaConfig,
        index: usize,
        peers: usize,
        resume: Option<&BTreeMap<i32, i64>>,
        bound: Duration,
    ) -> Result<PartitionReader, KafkaSourceError> {
        let consumer: ReaderConsumer =
            consumer_config(config)
                .create_with_context(ReaderContext)
                .map_err(|e| kafka("cannot create the consumer")(redact_error(config, e)))?;
        let metadata = consumer
            .fetch_metadata(Some(&config.topic), bound)
            .map_err(kafka(format!("cannot read metadata of {}", config.topic)))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == config.topic)
            .map_or(0, |t| t.partitions().len());
        if count == 0 {
            return Err(KafkaSourceError::NoPartitions(config.topic.clone()));
        }
        let partitions: Vec<i32> = (0..count as i32)
            .filter(|p| *p as usize % peers == index)
            .collect();
        // Every partition starts at an offset known now, so a checkpoint can record where each
        // one was, read or not: the checkpoint's where it has one, else the configured start.
        let mut next_offsets = BTreeMap::new();
        let committed = match config.start {
            StartPosition::Committed => {
                let mut wanted = TopicPartitionList::new();
                for &p in &partitions {
                    wanted.add_partition(&config.topic, p);
                }
                // Just after a broker (re)starts, the group's coordinator loads or moves for a
                // while: wait for it rather than fail the run.
                Some(
                    retry_coordinator(
                        "reading the committed offsets",
                        coordinator_patience(config),
                        || committed_offsets(&consumer, &wanted),
                        std::thread::sleep,
                    )
                    .map_err(kafka("cannot read the committed offsets"))?,
                )
            }
            _ => None,
        };
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let offset = match resume.and_then(|offsets| offsets.get(&p)) {
                Some(&offset) => offset,
                None => {
                    let (low, high) = consumer
                        .fetch_watermarks(&config.topic, p, bound)
                        .map_err(kafka(format!("cannot read the offsets of partition {p}")))?;
                    let stored = committed
                        .as_ref()
                        .and_then(|list| list.find_partition(&config.topic, p))
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                    match (config.start, stored) {
                        (StartPosition::Earliest, _) | (StartPosition::Committed, None) => low,
                        (StartPosition::Latest, _) => high,
                        (StartPosition::Committed, Some(_)) => {
                            return Err(KafkaSourceError::CommittedWithoutState {
                                topic: config.topic.clone(),
                                group: config.group_id.clone(),
                            });
                        }
                    }
                }
            };
            next_offsets.insert(p, offset);
            assignment
                .add_partition_offset(&config.topic, p, Offset::Offset(offset))
                .map_err(kafka("cannot build the assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka("cannot assign partitions"))?;
        let dead_letter = if config.dead_letter_topic.is_empty() {
            None
        } else {
            let producer: BaseProducer<LogContext> =
                create(config, &config.client(), "dead-letter producer")?;
            Some((producer, config.dead_letter_topic.clone()))
        };
        // With a registry, writer schemas are known by the ids it gives; without, the configured
        // id names the bundled schema.
        let schema = |e: SchemaError| KafkaSourceError::Schema(e.to_string());
        let (decoder, schemas) = if config.schema_registry_url.is_empty() {
            (
                Decoder::with_bundled(config.schema_id).map_err(schema)?,
                None,
            )
        } else {
            let client = RegistryClient::new(&config.schema_registry_url)?;
            (
                Decoder::empty().map_err(schema)?,
                Some(SchemaCache::new(client)),
            )
        };
        tracing::info!(topic = %config.topic, ?partitions, "assigned partitions");
        Ok(PartitionReader {
            consumer: Some(consumer),
            config: config.clone(),
            watermarks: Watermarks::start(config, &partitions),
            topic: config.topic.clone(),
            messages: MessageReader {
                decoder,
                schemas,
                max_message_bytes: config.max_message_bytes,
                amount_bounds: config.amount_bounds(),
                time_bounds: config.time_bounds(),
                warnings: Warnings::default(),
            },
            partitions,
            next_offsets,
            uncommitted: VecDeque::new(),
            max_poll: config.max_poll_messages,
            dead_letter,
            last_progress: Instant::now(),
            stalls: 0,
            paused: false,
        })
    }

    fn consumer(&self) -> &ReaderConsumer {
        self.consumer
            .as_ref()
            .expect("the consumer is taken only on drop")
    }

    /// The partitions this worker reads.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// The next offset to read in each of this worker's partitions.
    pub fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.next_offsets
    }

    /// Reads what is available now (up to the poll limit) without waiting; decodes each message
    /// and hands the events to `emit`. An event without an event time (0) gets `arrival`.
    ///
    /// What is not handed on is counted by reason in [`Polled::malformed`]: a payload over
    /// `max-message-bytes` (not decoded), a message that does not decode, an event with negative
    /// units or total, an event beyond the [`AmountBounds`], an event whose time lies outside the
    /// [`TimeBounds`] around the wall clock at this poll. Each is logged (at most once a second) and copied to the dead-letter topic.
    pub fn poll(
        &mut self,
        arrival: Tick,
        mut emit: impl FnMut(Event),
    ) -> Result<Polled, KafkaSourceError> {
        let mut polled = Polled::default();
        let mut malformed: BTreeMap<Counter, isize> = BTreeMap::new();
        if self.partitions.is_empty() {
            return Ok(polled);
        }
        let now = crate::runtime::now_ms();
        while polled.messages < self.max_poll {
            // The field, not `consumer()`: a message borrows the consumer, not the whole reader.
            let consumer = self.consumer.as_ref().expect("taken only on drop");
            let message = match consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    return Err(self.out_of_range());
                }
                Some(Err(e)) => {
                    // Transient broker errors are retried by librdkafka; report and go on.
                    self.messages
                        .warnings
                        .warn(format_args!("consumer error: {e}"));
                    break;
                }
                Some(Ok(message)) => message,
            };
            polled.messages += 1;
            let (partition, offset) = (message.partition(), message.offset());
            self.next_offsets.insert(partition, offset + 1);
            let payload = message.payload().unwrap_or(&[]);
            let rejected = match self.messages.read(payload, arrival, now) {
                Ok(event) => {
                    emit(event);
                    continue;
                }
                Err(rejected) => rejected,
            };
            *malformed.entry(rejected.counter).or_default() += 1;
            self.messages.warnings.warn(format_args!(
                "rejected message at {}/{partition}/{offset} ({}): {}",
                self.topic,
                rejected.counter.name(),
                rejected.detail
            ));
            if let Some((producer, topic)) = &self.dead_letter {
                let origin = (self.topic.as_str(), partition, offset);
                dead_letter(
                    producer,
                    topic,
                    message.payload(),
                    message.key(),
                    &rejected,
                    origin,
                );
            }
        }
        polled.malformed = malformed.into_iter().collect();
        if polled.messages > 0 || self.paused {
            self.last_progress = Instant::now();
            self.stalls = 0;
        } else if self.last_progress.elapsed() >= STALL_AFTER {
            self.last_progress = Instant::now();
            // The lag comes from a consumer of its own, so a stuck consumer here cannot hide it.
            match self.lag().filter(|lag| *lag > 0) {
                Some(lag) if self.stalls == 0 => {
                    self.stalls += 1;
                    tracing::warn!(
                        topic = %self.topic,
                        partitions = ?self.partitions,
                        lag,
                        "nothing received for {STALL_AFTER:?} though messages wait: re-assigning the partitions at their positions"
                    );
                    self.reassign()?;
                }
                Some(lag) => {
                    self.stalls += 1;
                    tracing::warn!(
                        topic = %self.topic,
                        partitions = ?self.partitions,
                        lag,
                        "still nothing received though messages wait: replacing the consumer, at the same positions"
                    );
                    self.recreate()?;
                }
                None => {}
            }
        }
        Ok(polled)
    }

    /// Stops fetching this worker's partitions, dropping what librdkafka has pre-fetched, so that
    /// unread messages wait in Kafka rather than in memory; [`resume`](Self::resume) goes on
    /// from the first message not yet polled.
    pub fn pause(&mut self) -> Result<(), KafkaSourceError> {
        self.paused = true;
        self.consumer()
            .pause(&self.assignment())
            .map_err(kafka("cannot pause the partitions"))
    }

    /// Fetches the partitions again after [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<(), KafkaSourceError> {
        self.paused = false;
        self.last_progress = Instant::now();
        self.consumer()
            .resume(&self.assignment())
            .map_err(kafka("cannot resume the partitions"))
    }

    /// Assigns the partitions afresh, each at the first message not yet polled (a partition not
    /// read yet at the configured start), so that nothing is skipped or read twice.
    /// [`poll`](Self::poll) does it when it has received nothing for 10 s while the partitions
    /// hold unread messages: after a broker restart librdkafka's fetcher can stay stuck.
    pub fn reassign(&mut self) -> Result<(), KafkaSourceError> {
        let mut list = TopicPartitionList::new();
        for &partition in &self.partitions {
            // Every partition has a position from the start (see `open`).
            let offset = self
                .next_offsets
                .get(&partition)
                .map_or(Offset::Beginning, |&next| Offset::Offset(next));
            list.add_partition_offset(&self.topic, partition, offset)
                .map_err(kafka("cannot build the assignment"))?;
        }
        self.consumer()
            .assign(&list)
            .map_err(kafka("cannot re-assign the partitions"))?;
        if self.paused {
            self.consumer()
                .pause(&self.assignment())
                .map_err(kafka("cannot pause the partitions"))?;
        }
        Ok(())
    }

    /// Replaces the consumer by a new one assigned at the same positions: what librdkafka had
    /// pre-fetched is dropped and read again by the new one, so nothing is skipped or read twice.
    /// The old one is closed on another thread (closing can wait for the brokers).
    pub fn recreate(&mut self) -> Result<(), KafkaSourceError> {
        let consumer: ReaderConsumer = consumer_config(&self.config)
            .create_with_context(ReaderContext)
            .map_err(|e| kafka("cannot create the consumer")(redact_error(&self.config, e)))?;
        let old = self.consumer.replace(consumer);
        close_in_background(old);
        self.reassign()
    }

    /// The error for an offset out of range: librdkafka's does not say which partition, so the
    /// watermarks do.
    fn out_of_range(&self) -> KafkaSourceError {
        let mut found = Vec::new();
        for (&partition, &next) in &self.next_offsets {
            match self
                .consumer()
                .fetch_watermarks(&self.topic, partition, Duration::from_secs(5))
            {
                Ok((low, _)) if next < low => found.push(format!(
                    "partition {partition} was to be read from offset {next}, but its log now \
                     starts at {low}: {} messages were deleted before they were read",
                    low - next
                )),
                Ok((low, high)) if next > high => found.push(format!(
                    "partition {partition} was to be read from offset {next}, beyond its log \
                     ({low}..{high}): was the topic re-created?"
                )),
                _ => {}
            }
        }
        let detail = if found.is_empty() {
            format!(
                "an offset of partitions {:?} is out of range: messages were deleted before \
                 they were read",
                self.partitions
            )
        } else {
            found.join("; ")
        };
        KafkaSourceError::OffsetOutOfRange {
            topic: self.topic.clone(),
            detail,
        }
    }

    fn assignment(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &partition in &self.partitions {
            list.add_partition(&self.topic, partition);
        }
        list
    }

    /// Records that everything read so far belongs to ticks before `tick_end`.
    pub fn end_tick(&mut self, tick_end: Tick) {
        if self.next_offsets.is_empty() {
            return;
        }
        if self
            .uncommitted
            .back()
            .is_some_and(|(_, offsets)| *offsets == self.next_offsets)
        {
            return;
        }
        self.uncommitted
            .push_back((tick_end, self.next_offsets.clone()));
    }

    /// Commits the offsets of every tick before `complete_below`: those the sink has written.
    pub fn commit_through(&mut self, complete_below: Tick) -> Result<(), KafkaSourceError> {
        let mut latest = None;
        while self
            .uncommitted
            .front()
            .is_some_and(|(tick_end, _)| *tick_end <= complete_below)
        {
            latest = self.uncommitted.pop_front().map(|(_, offsets)| offsets);
        }
        let Some(offsets) = latest else { return Ok(()) };
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(kafka("cannot build the commit"))?;
        }
        self.consumer()
            .commit(&list, CommitMode::Async)
            .map_err(kafka("cannot commit offsets"))
    }

    /// Commits `offsets` (a complete checkpoint's, for this worker's partitions), waiting for the
    /// acknowledgement (at most [`COMMIT_WAIT`]) when `sync` (a graceful stop), else in the
    /// background.
    pub fn commit(
        &mut self,
        offsets: &BTreeMap<i32, i64>,
        sync: bool,
    ) -> Result<(), KafkaSourceError> {
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in offsets {
            if self.partitions.contains(&partition) {
                list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                    .map_err(kafka("cannot build the commit"))?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        if sync {
            return self.commit_and_wait(&list);
        }
        self.consumer()
            .commit(&list, CommitMode::Async)
            .map_err(kafka("cannot commit offsets"))
    }

    /// Commits `list` and waits, at most [`COMMIT_WAIT`], until the group coordinator answers
    /// with these offsets committed. A synchronous commit would wait for an unreachable
    /// coordinator without end, and a stop with it. The partitions are paused first: what the
    /// polls meanwhile return is not read (positions stay as they are).
    fn commit_and_wait(&mut self, list: &TopicPartitionList) -> Result<(), KafkaSourceError> {
        let _ = self.consumer().pause(&self.assignment());
        self.paused = true;
        let consumer = self.consumer();
        consumer
            .commit(list, CommitMode::Async)
            .map_err(kafka("cannot commit offsets"))?;
        let wanted: BTreeMap<i32, i64> = list
            .elements()
            .iter()
            .filter_map(|e| e.offset().to_raw().map(|offset| (e.partition(), offset)))
            .collect();
        let deadline = Instant::now() + COMMIT_WAIT;
        let mut last_error = "no answer from the group coordinator".to_string();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KafkaSourceError::CommitTimedOut(COMMIT_WAIT, last_error));
            }
            // Serves librdkafka's queue; a message it returns is dropped, not read.
            let _ = consumer.poll(Duration::ZERO);
            match consumer.committed_offsets(list.clone(), left.min(Duration::from_secs(1))) {
                Ok(committed) => {
                    let done = committed.elements().iter().all(|e| {
                        e.offset().to_raw().unwrap_or(-1)
                            >= wanted.get(&e.partition()).copied().unwrap_or(0)
                    });
                    if done {
                        return Ok(());
                    }
                }
                Err(error) => last_error = error.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50).min(left));
        }
    }

    /// Commits every offset read, waiting for the acknowledgement (at most [`COMMIT_WAIT`]); for
    /// a graceful stop once the sink has flushed.
    pub fn commit_all(&mut self) -> Result<(), KafkaSourceError> {
        self.uncommitted.clear();
        if self.next_offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &self.next_offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(kafka("cannot build the commit"))?;
        }
        self.commit_and_wait(&list)
    }

    /// Messages between this worker's position and the partitions' ends, as the watermark
    /// thread last read them (every 100 ms); `None` while it has no answer younger than a second
    /// (the brokers do not answer). Never waits: it is called from the worker loop.
    pub fn lag(&mut self) -> Option<i64> {
        if self.partitions.is_empty() {
            return Some(0);
        }
        let latest = self
            .watermarks
            .highs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (_, highs) = latest
            .as_ref()
            .filter(|(asked, _)| asked.elapsed() < WATERMARKS_FRESH)?;
        Some(
            highs
                .iter()
                .map(|(p, high)| (high - self.next_offsets.get(p).copied().unwrap_or(0)).max(0))
                .sum(),
        )
    }
}

/// Turns payloads into events: the size limit, the decoder (with the registry's writer schemas),
/// the amount bounds and the event-time bounds.
struct MessageReader {
    decoder: Decoder,
    /// The schema registry's writer schemas, when there is one.
    schemas: Option<SchemaCache>,
    max_message_bytes: usize,
    amount_bounds: AmountBounds,
    time_bounds: TimeBounds,
    warnings: Warnings,
}

impl MessageReader {
    /// One message's event, or why it is rejected.
    fn read(&mut self, payload: &[u8], arrival: Tick, now: u64) -> Result<Event, Rejected> {
        if payload.len() > self.max_message_bytes {
            return Err(Rejected {
                counter: Counter::MalformedOversize,
                reason: "oversize",
                detail: format!(
                    "{} bytes, over max-message-bytes {}",
                    payload.len(),
                    self.max_message_bytes
                ),
            });
        }
        // An id the decoder does not know is fetched from the registry once; when that fails,
        // the message is counted as an unknown schema id.
        if let Some(schemas) = &mut self.schemas
            && let Some(id) = registry::header_schema_id(payload)
            && !self.decoder.knows(id)
            && let Err(error) = schemas.resolve(&mut self.decoder, id)
            && !matches!(error, RegistryError::RecentlyFailed { .. })
        {
            self.warnings
                .warn(format_args!("cannot fetch writer schema {id}: {error}"));
        }
        let event = match self.decoder.decode(payload) {
            Ok(decoded) => decoded.into_event(EventTimeMs(arrival)),
            Err(error) => {
                return Err(Rejected {
                    counter: counter_of(&error),
                    reason: error.reason(),
                    detail: error.to_string(),
                });
            }
        };
        if let Some(field) = self.amount_bounds.exceeded(&event) {
            return Err(Rejected {
                counter: Counter::RejectedImplausible,
                reason: Counter::RejectedImplausible.name(),
                detail: format!(
                    "{field} beyond the plausibility bound (total {} cents, {} units; {:?})",
                    event.total, event.units, self.amount_bounds
                ),
            });
        }
        match self.time_bounds.check(event.event_time, now) {
            None => Ok(event),
            Some(counter) => Err(Rejected {
                counter,
                reason: counter.name(),
                detail: format!(
                    "event time {} is {} ms from the wall clock at {now}, beyond the bounds {:?}",
                    event.event_time,
                    i128::from(event.event_time.0) - i128::from(now),
                    self.time_bounds
                ),
            }),
        }
    }
}

/// Why a message was not handed on.
#[derive(Debug)]
struct Rejected {
    /// The counter it is counted under.
    counter: Counter,
    /// A stable snake_case reason: [`DecodeError::reason`], `oversize`, or the counter's name.
    reason: &'static str,
    /// A message for the log and the dead-letter copy.
    detail: String,
}

/// Copies a rejected message to the dead-letter topic, saying why and where it came from.
/// The most payload bytes a dead letter copies: with its headers it stays under the 1 MB that
/// brokers and producers take by default (`message.max.bytes`); a larger payload is cut there,
/// and its headers say so.
pub const DEAD_LETTER_MAX_PAYLOAD: usize = 512 * 1024;

/// Copies a rejected message to the dead-letter topic, with why and where from in its headers:
/// a payload over [`DEAD_LETTER_MAX_PAYLOAD`] cut to it (`shopflow.truncated` = `true`,
/// `shopflow.payload-bytes` its whole size), a null payload marked (`shopflow.payload` = `null`).
fn dead_letter(
    producer: &BaseProducer<LogContext>,
    topic: &str,
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    rejected: &Rejected,
    (source, partition, offset): (&str, i32, i64),
) {
    let partition_text = partition.to_string();
    let offset_text = offset.to_string();
    let whole = payload.map_or(0, <[u8]>::len);
    let size_text = whole.to_string();
    let copied = payload.map(|p| &p[..p.len().min(DEAD_LETTER_MAX_PAYLOAD)]);
    let mut headers = OwnedHeaders::new();
    if payload.is_none() {
        headers = headers.insert(Header {
            key: "shopflow.payload",
            value: Some("null"),
        });
    }
    if whole > DEAD_LETTER_MAX_PAYLOAD {
        headers = headers
            .insert(Header {
                key: "shopflow.truncated",
                value: Some("true"),
            })
            .insert(Header {
                key: "shopflow.payload-bytes",
                value: Some(&size_text),
            });
    }
    let headers = headers
        .insert(Header {
            key: "shopflow.reason",
            value: Some(rejected.reason),
        })
        .insert(Header {
            key: "shopflow.counter",
            value: Some(rejected.counter.name()),
        })
        .insert(Header {
            key: "shopflow.error",
            value: Some(&rejected.detail),
        })
        .insert(Header {
            key: "shopflow.topic",
            value: Some(source),
        })
        .insert(Header {
            key: "shopflow.partition",
            value: Some(&partition_text),
        })
        .insert(Header {
            key: "shopflow.offset",
            value: Some(&offset_text),
        });
    let mut record = BaseRecord::to(topic)
        .key(key.unwrap_or(&[]))
        .headers(headers);
    if let Some(copied) = copied {
        record = record.payload(copied);
    }
    if let Err((e, _)) = producer.send(record) {
        tracing::warn!(topic = %topic, "cannot copy a rejected message to the dead-letter topic: {e}");
    }
    producer.poll(Duration::ZERO);
}

/// Logs at most one warning per second, counting the ones it held back.
#[derive(Debug, Default)]
struct Warnings {
    last: Option<Instant>,
    suppressed: u64,
}

impl Warnings {
    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if self
            .last
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(suppressed = self.suppressed, "{message}");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

impl Drop for PartitionReader {
    fn drop(&mut self) {
        self.watermarks.stop.store(true, Ordering::Relaxed);
        if let Some((producer, _)) = &self.dead_letter {
            let _ = producer.flush(Duration::from_secs(5));
        }
        // Closing a consumer of a group waits for the brokers for as long as they take: a stop
        // waits for it at most CLOSE_WAIT.
        let (closed, done) = std::sync::mpsc::channel();
        let consumer = self.consumer.take();
        let spawned = std::thread::Builder::new()
            .name("shopflow-consumer-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed.send(());
            });
        if spawned.is_ok() && done.recv_timeout(CLOSE_WAIT).is_err() {
            tracing::warn!(
                topic = %self.topic,
                "the kafka consumer did not close within {CLOSE_WAIT:?}; going on without"
            );
        }
    }
}

/// Closes a consumer on a thread of its own, without waiting: closing can wait for the brokers.
fn close_in_background(consumer: Option<ReaderConsumer>) {
    let spawned = std::thread::Builder::new()
        .name("shopflow-consumer-close".into())
        .spawn(move || drop(consumer));
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start a thread to close a consumer");
    }
}

/// The pipeline counter a decoding failure is counted under: framing, unknown schema, truncated
/// (or bytes left over), negative units or total, any other invalid value (wrong types included).
pub fn counter_of(error: &DecodeError) -> Counter {
    match error {
        DecodeError::BadMagic(_) | DecodeError::TooShort => Counter::MalformedFraming,
        DecodeError::UnknownSchemaId(_) => Counter::MalformedUnknownSchema,
        DecodeError::Truncated | DecodeError::TrailingBytes => Counter::MalformedTruncated,
        DecodeError::InvalidValue {
            field: "units" | "total_amount",
            reason: "negative",
        } => Counter::RejectedNegative,
        DecodeError::InvalidValue { .. } | DecodeError::Resolution(_) => {
            Counter::MalformedInvalidValue
        }
    }
}

/// How far an in-process producer may run ahead of the consumer that reads its events: a
/// broker whose retention is small (the embedded mock cluster's) would otherwise delete what the
/// consumer has not read yet. It also bounds what waits in memory.
#[derive(Clone, Copy, Debug)]
pub struct HoldBack<'a> {
    /// Messages the consumer has read so far (the runtime's `Status::consumed`).
    pub consumed: &'a std::sync::atomic::AtomicU64,
    /// The most events sent and not yet read.
    pub max_unread: u64,
}

/// How often [`produce_generated`] looks at its stop flag and its clock while it waits (for an
/// event's arrival time, or for the consumer): well within a tick.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// Sends generated events `0..limit` to Kafka, each when its simulated arrival time comes (with
/// `Pace::Realtime`) or as fast as the producer takes them; stops early on `stop` or after
/// `duration`, within [`STOP_CHECK`] of either whatever the rate. Returns how many were sent;
/// the producer is flushed.
pub fn produce_generated(
    producer: &mut EventProducer,
    generator: &crate::generators::events::EventGenerator,
    limit: Option<u64>,
    duration: Option<Duration>,
    stop: &std::sync::atomic::AtomicBool,
    progress: impl FnMut(u64),
) -> Result<u64, KafkaSourceError> {
    produce_generated_within(producer, generator, limit, duration, stop, None, progress)
}

/// [`produce_generated`], never more than `hold_back.max_unread` events ahead of what the
/// consumer has read.
pub fn produce_generated_within(
    producer: &mut EventProducer,
    generator: &crate::generators::events::EventGenerator,
    limit: Option<u64>,
    duration: Option<Duration>,
    stop: &std::sync::atomic::AtomicBool,
    hold_back: Option<HoldBack<'_>>,
    mut progress: impl FnMut(u64),
) -> Result<u64, KafkaSourceError> {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    let stopped =
        || stop.load(Ordering::Relaxed) || duration.is_some_and(|d| started.elapsed() >= d);
    let realtime = generator.knobs().pace == crate::generators::events::Pace::Realtime;
    let mut n = 0u64;
    while limit.is_none_or(|limit| n < limit) {
        // Checked every 256 events while sending, and before every wait below.
        if n.is_multiple_of(256) {
            if stopped() {
                break;
            }
            progress(n);
        }
        if let Some(hold) = hold_back
            && n.saturating_sub(hold.consumed.load(Ordering::Relaxed)) >= hold.max_unread
        {
            if stopped() {
                break;
            }
            progress(n);
            producer.wait(Duration::from_millis(1));
            continue;
        }
        let arrival = generator.arrival_ms(n);
        if realtime {
            let now = crate::runtime::now_ms();
            if arrival > now {
                if stopped() {
                    break;
                }
                progress(n);
                let wait = Duration::from_millis(arrival - now).min(STOP_CHECK);
                std::thread::sleep(wait);
                continue;
            }
        }
        producer.send(&generator.event(n), arrival)?;
        n += 1;
    }
    progress(n);
    producer.flush(Duration::from_secs(30))?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// librdkafka's own log lines and errors
// ---------------------------------------------------------------------------------------------

/// The context of every client shopflow creates: librdkafka's log lines and global errors go to
/// `tracing` (target `librdkafka`), each kind at most once a second with a count of the ones held
/// back. An unreachable broker makes librdkafka report the same failure for every connection
/// attempt of every client; unlimited, hundreds of identical lines drowned the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_librdkafka(&error, reason);
    }
}

impl ConsumerContext for LogContext {}

impl ProducerContext for LogContext {
    type DeliveryOpaque = ();

    /// The dead-letter copy is best effort: a failed delivery is librdkafka's to log.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// How often one kind of librdkafka message may be logged.
const LIBRDKAFKA_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// When each kind of librdkafka message was last logged, and how many were held back since:
/// shared by all clients, so that many workers' consumers do not multiply the lines.
static LIBRDKAFKA_LIMITER: std::sync::LazyLock<RateLimiter> =
    std::sync::LazyLock::new(|| RateLimiter::new(LIBRDKAFKA_LOG_INTERVAL));

/// At most one message per kind per interval.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    kinds: std::sync::Mutex<std::collections::HashMap<String, (Instant, u64)>>,
}

impl RateLimiter {
    fn new(interval: Duration) -> RateLimiter {
        RateLimiter {
            interval,
            kinds: Default::default(),
        }
    }

    /// Whether a message of `kind` seen at `now` is logged: `Some(n)` with the `n` messages of
    /// its kind held back since the last one logged, `None` when it is held back itself.
    fn admit(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.get_mut(kind) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                kinds.insert(kind.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// One librdkafka log line, through the limiter; its kind is its level and facility (`FAIL`,
/// `COMMITFAIL`...): the text differs between attempts by addresses and milliseconds.
fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    let Some(suppressed) =
        LIBRDKAFKA_LIMITER.admit(&format!("log {level:?} {fac}"), Instant::now())
    else {
        return;
    };
    let held = held_back(suppressed);
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "{fac}: {message}{held}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}{held}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{fac}: {message}{held}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}{held}"),
    }
}

/// One error librdkafka reports outside any request, through the limiter; its kind is its code.
/// The end of a partition is an event, not an error. A fatal error is an error; the others
/// librdkafka recovers from by itself (reconnecting, finding a new leader), so they are warnings.
fn error_librdkafka(error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if matches!(error, KafkaError::PartitionEOF(_)) || code == Some(RDKafkaErrorCode::PartitionEOF)
    {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        return;
    }
    let Some(suppressed) = LIBRDKAFKA_LIMITER.admit(&format!("error {code:?}"), Instant::now())
    else {
        return;
    };
    let held = held_back(suppressed);
    if code == Some(RDKafkaErrorCode::Fatal) {
        tracing::error!(target: "librdkafka", "{error}: {reason}{held}");
    } else {
        tracing::warn!(target: "librdkafka", "{error}: {reason}{held}");
    }
}

/// The note on a rate-limited line about the lines of its kind held back before it.
fn held_back(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like it in the last second(s) not shown)")
    }
}

/// `error` without the secrets of `config`: librdkafka echoes a property's value when it refuses
/// it, and may quote it in a client creation error.
fn redact_error(config: &KafkaConfig, error: KafkaError) -> KafkaError {
    let secrets: Vec<&str> = config
        .properties
        .iter()
        .filter(|(key, value)| crate::config::is_secret_property(key) && !value.is_empty())
        .map(|(_, value)| value.as_str())
        .collect();
    let mask = |text: String| {
        secrets
            .iter()
            .fold(text, |text, secret| text.replace(secret, "***"))
    };
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            let value = if crate::config::is_secret_property(&key) {
                "***".to_owned()
            } else {
                mask(value)
            };
            KafkaError::ClientConfig(code, mask(description), key, value)
        }
        KafkaError::ClientCreation(message) => KafkaError::ClientCreation(mask(message)),
        other => other,
    }
}

/// A client of `kind` made from `client`, with [`LogContext`]; an error names no secret of
/// `config`.
fn create<T: rdkafka::config::FromClientConfigAndContext<LogContext>>(
    config: &KafkaConfig,
    client: &ClientConfig,
    kind: &str,
) -> Result<T, KafkaSourceError> {
    client
        .create_with_context(LogContext)
        .map_err(|error| kafka(format!("cannot create the {kind}"))(redact_error(config, error)))
}

// ---------------------------------------------------------------------------------------------
// The group coordinator, while it moves or loads
// ---------------------------------------------------------------------------------------------

/// Whether librdkafka's `error` says the consumer group's coordinator is not ready yet: a broker
/// just (re)started loads the group's offsets (`CoordinatorLoadInProgress`), or the group's
/// coordinator is not elected or has moved (`CoordinatorNotAvailable`, `NotCoordinator`).
/// These pass once the coordinator is up; every other error is final.
fn is_coordinator_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
        )
    )
}

/// How long coordinator errors are retried: librdkafka's connect timeout,
/// `socket.connection.setup.timeout.ms` in `kafka.properties` (30 s unless set there).
fn coordinator_patience(config: &KafkaConfig) -> Duration {
    let ms = config
        .properties
        .get("socket.connection.setup.timeout.ms")
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .unwrap_or(30_000);
    Duration::from_millis(ms)
}

/// Runs `attempt` until it succeeds, fails with an error that is not
/// [coordinator-transient](is_coordinator_transient), or `patience` has passed since the first
/// attempt; between attempts it `sleep`s 100 ms, doubling up to 2 s. The one retry policy for
/// the group coordinator.
fn retry_coordinator<T>(
    what: &str,
    patience: Duration,
    mut attempt: impl FnMut() -> Result<T, KafkaError>,
    mut sleep: impl FnMut(Duration),
) -> Result<T, KafkaError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut retries = 0u32;
    loop {
        match attempt() {
            Err(error) if is_coordinator_transient(&error) && started.elapsed() < patience => {
                if retries == 0 {
                    tracing::info!(
                        "{what}: {error}; retrying for up to {patience:?} while the group coordinator starts"
                    );
                }
                retries += 1;
                sleep(backoff.min(patience.saturating_sub(started.elapsed())));
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(error) if retries > 0 => {
                tracing::warn!("{what}: {error} after {retries} retries");
                return Err(error);
            }
            result => return result,
        }
    }
}

/// The group's committed offsets of `wanted`: the first per-partition error fails the whole, so
/// that a partition the coordinator could not answer for is retried, not read from the start.
fn committed_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    wanted: &TopicPartitionList,
) -> Result<TopicPartitionList, KafkaError> {
    let list = consumer.committed_offsets(wanted.clone(), Duration::from_secs(10))?;
    for element in list.elements() {
        element.error()?;
    }
    Ok(list)
}

// ---------------------------------------------------------------------------------------------
// Reading a whole topic once (`shopflow verify`)
// ---------------------------------------------------------------------------------------------

/// One message read by [`scan_topic`].
#[derive(Debug)]
pub struct ScannedMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its timestamp (create or log-append time, as the topic keeps it), in ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Its payload's size in bytes (the pipeline does not decode one over `max-message-bytes`).
    pub size: usize,
    /// The event, or why it is malformed (decoded exactly as the pipeline decodes it).
    pub decoded: Result<avro::DecodedEvent, DecodeError>,
}

/// What [`scan_topic`] read of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionExtent {
    /// The partition.
    pub partition: i32,
    /// Its first offset when the scan started (above 0 once retention deleted messages).
    pub low: i64,
    /// Its high watermark when the scan started: the scan stops there.
    pub high: i64,
    /// Messages read (fewer than `high - low` when transaction markers take offsets).
    pub read: u64,
}

/// Reads every partition of the topic from its first offset up to the high watermark taken when
/// the scan starts, and hands each message to `each`, in offset order within a partition.
///
/// Messages are decoded with the same framing, bundled schema or schema registry as the
/// pipeline's reader. A schema id the registry says it does not know (4xx), or whose schema
/// cannot be read as an event, is an unknown schema id, as in the pipeline; a registry that cannot
/// be reached is an error, since then nobody can say what the message holds. No consumer group
/// is joined and no offset is committed. Fails when a partition makes no progress for
/// `idle_timeout`.
pub fn scan_topic(
    config: &KafkaConfig,
    idle_timeout: Duration,
    mut each: impl FnMut(ScannedMessage),
) -> Result<Vec<PartitionExtent>, KafkaSourceError> {
    let mut client = config.client();
    // Required by the client, never used: partitions are assigned, nothing is committed.
    client
        .set("group.id", format!("{}-verify", config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer<LogContext> = create(config, &client, "consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), timeout)
        .map_err(kafka(format!("cannot read metadata of {}", config.topic)))?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == config.topic)
        .map_or(0, |t| t.partitions().len());
    if count == 0 {
        return Err(KafkaSourceError::NoPartitions(config.topic.clone()));
    }
    let mut extents = Vec::with_capacity(count);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..count as i32 {
        let (low, high) = consumer
            .fetch_watermarks(&config.topic, partition, timeout)
            .map_err(kafka(format!(
                "cannot read the watermarks of {}/{partition}",
                config.topic
            )))?;
        extents.push(PartitionExtent {
            partition,
            low,
            high,
            read: 0,
        });
        if high > low {
            assignment
                .add_partition_offset(&config.topic, partition, Offset::Offset(low))
                .map_err(kafka("cannot build the assignment"))?;
        }
    }
    let mut pending: BTreeMap<i32, i64> = extents
        .iter()
        .filter(|e| e.high > e.low)
        .map(|e| (e.partition, e.high))
        .collect();
    if pending.is_empty() {
        return Ok(extents);
    }
    consumer
        .assign(&assignment)
        .map_err(kafka("cannot assign partitions"))?;

    let schema = |e: SchemaError| KafkaSourceError::Schema(e.to_string());
    let (mut decoder, registry) = if config.schema_registry_url.is_empty() {
        (
            Decoder::with_bundled(config.schema_id).map_err(schema)?,
            None,
        )
    } else {
        (
            Decoder::empty().map_err(schema)?,
            Some(RegistryClient::new(&config.schema_registry_url)?),
        )
    };
    let mut unknown_ids: std::collections::BTreeSet<u32> = Default::default();
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => {
                if last_progress.elapsed() > idle_timeout {
                    let (partition, high) = pending.iter().next().map_or((0, 0), |(p, h)| (*p, *h));
                    return Err(KafkaSourceError::Kafka {
                        context: format!(
                            "no progress reading {}/{partition} towards offset {high} for {:?}",
                            config.topic, idle_timeout
                        ),
                        source: KafkaError::NoMessageReceived,
                    });
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                // Everything readable is read (the rest, if any, are transaction markers).
                pending.remove(&partition);
                last_progress = Instant::now();
                continue;
            }
            Some(Err(e)) => {
                return Err(KafkaSourceError::Kafka {
                    context: format!("cannot read {}", config.topic),
                    source: e,
                });
            }
            Some(Ok(message)) => message,
        };
        last_progress = Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&high) = pending.get(&partition) else {
            continue;
        };
        if offset >= high {
            // Written after the scan started.
            pending.remove(&partition);
            continue;
        }
        if offset + 1 >= high {
            pending.remove(&partition);
        }
        if let Some(extent) = extents.iter_mut().find(|e| e.partition == partition) {
            extent.read += 1;
        }
        let payload = message.payload().unwrap_or(&[]);
        if let Some(client) = &registry
            && let Some(id) = registry::header_schema_id(payload)
            && !decoder.knows(id)
            && !unknown_ids.contains(&id)
        {
            match client.schema_by_id(id) {
                Ok(text) => {
                    if decoder.register(id, &text).is_err() {
                        unknown_ids.insert(id);
                    }
                }
                Err(RegistryError::Rejected { .. }) => {
                    unknown_ids.insert(id);
                }
                Err(error) => return Err(KafkaSourceError::Registry(error)),
            }
        }
        each(ScannedMessage {
            partition,
            offset,
            timestamp_ms: message.timestamp().to_millis(),
            size: payload.len(),
            decoded: decoder.decode(payload),
        });
    }
    if !unknown_ids.is_empty() {
        tracing::warn!(ids = ?unknown_ids, "schema ids the registry does not know");
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use dataflows::model::{CampaignId, Cents, OrderId, Tag, UserId};

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn event(event_time: u64) -> Event {
        Event {
            order_id: OrderId(7),
            tag: Tag::Purchased,
            user_id: UserId(3),
            campaign_id: CampaignId(2),
            total: Cents(1_999),
            units: 2,
            event_time: EventTimeMs(event_time),
        }
    }

    fn message(event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        avro::encode_event(avro::DEFAULT_SCHEMA_ID, event, &mut out);
        out
    }

    fn reader(max_message_bytes: usize, time_bounds: TimeBounds) -> MessageReader {
        MessageReader {
            decoder: Decoder::new().expect("the bundled schema"),
            schemas: None,
            max_message_bytes,
            amount_bounds: AmountBounds::default(),
            time_bounds,
            warnings: Warnings::default(),
        }
    }

    fn counter(reader: &mut MessageReader, payload: &[u8]) -> Option<Counter> {
        reader
            .read(payload, NOW - NOW % 1_000, NOW)
            .err()
            .map(|r| r.counter)
    }

    /// `kafka.properties` override shopflow's tuning, never what the offset handling needs.
    #[test]
    fn properties_override_tuning_but_not_the_offset_settings() {
        use crate::config::{Config, DEFAULT_TOML, no_env};
        let mut config = Config::from_layers(DEFAULT_TOML, no_env())
            .expect("the default configuration")
            .kafka;
        let consumer = consumer_config(&config);
        assert_eq!(consumer.get("fetch.message.max.bytes"), Some("8388608"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        config.properties = [
            ("fetch.message.max.bytes", "1048576"),
            ("security.protocol", "SASL_SSL"),
            ("group.id", "someone-else"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "true"),
            ("auto.offset.reset", "earliest"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let consumer = consumer_config(&config);
        assert_eq!(consumer.get("fetch.message.max.bytes"), Some("1048576"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(consumer.get("group.id"), Some(config.group_id.as_str()));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        // A position deleted unread is an error, never a jump (see `consumer_config`).
        assert_eq!(consumer.get("auto.offset.reset"), Some("error"));
        config.properties = [("compression.type", "zstd")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let producer = config.client_tuned(&PRODUCER_TUNING);
        assert_eq!(producer.get("compression.type"), Some("zstd"));
        assert_eq!(producer.get("linger.ms"), Some("5"));
    }

    /// A fake coordinator that is not ready for three attempts: the policy retries it, with the
    /// backoff doubling; a final error is not retried; a coordinator that never gets ready is
    /// given up on once the patience is spent, with its error.
    #[test]
    fn coordinator_errors_are_retried_within_the_patience_and_no_others() {
        use RDKafkaErrorCode::{
            CoordinatorLoadInProgress, CoordinatorNotAvailable, NotCoordinator,
            UnknownTopicOrPartition,
        };
        let mut answers = vec![
            Err(KafkaError::MetadataFetch(NotCoordinator)),
            Err(KafkaError::OffsetFetch(CoordinatorLoadInProgress)),
            Err(KafkaError::ConsumerCommit(CoordinatorNotAvailable)),
            Ok(7),
        ]
        .into_iter();
        let mut slept = Vec::new();
        let result = retry_coordinator(
            "test",
            Duration::from_secs(60),
            || answers.next().expect("no attempt after success"),
            |pause| slept.push(pause),
        );
        assert_eq!(result.ok(), Some(7));
        assert_eq!(
            slept,
            [100, 200, 400].map(Duration::from_millis),
            "backoff doubles"
        );

        let mut attempts = 0;
        let result: Result<(), _> = retry_coordinator(
            "test",
            Duration::from_secs(60),
            || {
                attempts += 1;
                Err(KafkaError::MetadataFetch(UnknownTopicOrPartition))
            },
            |_| panic!("a final error is not retried"),
        );
        assert_eq!(attempts, 1);
        assert!(
            matches!(
                result,
                Err(KafkaError::MetadataFetch(UnknownTopicOrPartition))
            ),
            "{result:?}"
        );

        let started = Instant::now();
        let mut attempts = 0;
        let result: Result<(), _> = retry_coordinator(
            "test",
            Duration::from_millis(300),
            || {
                attempts += 1;
                Err(KafkaError::MetadataFetch(NotCoordinator))
            },
            std::thread::sleep,
        );
        let took = started.elapsed();
        assert!(
            matches!(result, Err(KafkaError::MetadataFetch(NotCoordinator))),
            "{result:?}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(attempts >= 3, "{attempts}");
    }

    /// The patience is librdkafka's connect timeout, from the properties or its default.
    #[test]
    fn coordinator_patience_is_the_connect_timeout() {
        use crate::config::{Config, DEFAULT_TOML, no_env};
        let mut config = Config::from_layers(DEFAULT_TOML, no_env())
            .expect("the default configuration")
            .kafka;
        assert_eq!(coordinator_patience(&config), Duration::from_secs(30));
        config
            .properties
            .insert("socket.connection.setup.timeout.ms".into(), "45000".into());
        assert_eq!(coordinator_patience(&config), Duration::from_secs(45));
    }

    /// What `tracing` printed while `f` ran on this thread.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .expect("not poisoned")
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = capture.0.lock().expect("not poisoned").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// librdkafka's lines and errors reach the log through the limiter: a thousand identical
    /// failures in a burst are one line; the end of a partition is no error at all.
    #[test]
    fn librdkafka_reports_are_rate_limited_and_partition_eof_is_no_error() {
        let context = LogContext;
        let text = logged(|| {
            for attempt in 0..1_000 {
                context.log(
                    RDKafkaLogLevel::Error,
                    "TESTFAIL",
                    &format!("Connect failed (after {attempt}ms in state CONNECT)"),
                );
                context.error(
                    KafkaError::Global(RDKafkaErrorCode::NetworkException),
                    "connection refused",
                );
            }
            context.error(
                KafkaError::Global(RDKafkaErrorCode::PartitionEOF),
                "Fetch reached the end of the partition",
            );
        });
        assert_eq!(text.matches("TESTFAIL").count(), 1, "{text}");
        assert_eq!(text.matches("NetworkException").count(), 1, "{text}");
        assert!(!text.contains("PartitionEOF"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn the_limiter_logs_one_per_kind_per_interval_and_counts_the_rest() {
        let limiter = RateLimiter::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(limiter.admit("a", at(0)), Some(0));
        for ms in 1..=100 {
            assert_eq!(limiter.admit("a", at(ms * 9)), None);
        }
        assert_eq!(limiter.admit("b", at(500)), Some(0), "kinds are apart");
        assert_eq!(limiter.admit("a", at(1_000)), Some(100));
        assert_eq!(limiter.admit("a", at(1_500)), None);
        assert_eq!(limiter.admit("a", at(2_000)), Some(1));
        assert_eq!(limiter.admit("a", at(60_000)), Some(0));
    }

    /// librdkafka quotes a value it refuses, and may quote values when it cannot create a client:
    /// a secret property's value never reaches the message.
    #[test]
    fn client_errors_never_show_a_secret_property() {
        use crate::config::{Config, DEFAULT_TOML, no_env};
        use rdkafka::types::RDKafkaConfRes;
        let mut config = Config::from_layers(DEFAULT_TOML, no_env())
            .expect("the default configuration")
            .kafka;
        for (key, value) in [
            ("sasl.password", "S3CRET-one"),
            ("ssl.key.password", "S3CRET-two"),
            ("sasl.mechanisms", "S3CRET-three"),
            ("linger.ms", "fast"),
        ] {
            config.properties.insert(key.into(), value.into());
        }
        let refused = |key: &str, value: &str| {
            KafkaError::ClientConfig(
                RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                format!("Invalid value \"{value}\" for configuration property \"{key}\""),
                key.into(),
                value.into(),
            )
        };
        for error in [
            refused("sasl.password", "S3CRET-one"),
            refused("ssl.key.password", "S3CRET-two"),
            KafkaError::ClientCreation("Unsupported SASL mechanism: S3CRET-three".into()),
        ] {
            let shown = redact_error(&config, error).to_string();
            assert!(!shown.contains("S3CRET"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        let shown = redact_error(&config, refused("linger.ms", "fast")).to_string();
        assert!(shown.contains("fast"), "not a secret: {shown}");
        // A real refusal, from librdkafka itself.
        let mut client = consumer_config(&config);
        client.remove("linger.ms");
        client.set("security.protocol", "SASL_PLAINTEXT");
        let error = create::<BaseConsumer<LogContext>>(&config, &client, "consumer")
            .err()
            .expect("an unknown SASL mechanism is refused");
        let shown = error.to_string();
        assert!(!shown.contains("S3CRET"), "{shown}");
    }

    #[test]
    fn every_decoding_failure_has_its_counter() {
        let invalid = |field, reason| DecodeError::InvalidValue { field, reason };
        let cases = [
            (DecodeError::BadMagic(7), Counter::MalformedFraming),
            (DecodeError::TooShort, Counter::MalformedFraming),
            (
                DecodeError::UnknownSchemaId(9),
                Counter::MalformedUnknownSchema,
            ),
            (DecodeError::Truncated, Counter::MalformedTruncated),
            (DecodeError::TrailingBytes, Counter::MalformedTruncated),
            (invalid("units", "negative"), Counter::RejectedNegative),
            (
                invalid("total_amount", "negative"),
                Counter::RejectedNegative,
            ),
            (invalid("id", "negative"), Counter::MalformedInvalidValue),
            (
                invalid("event_time", "negative"),
                Counter::MalformedInvalidValue,
            ),
            (
                invalid("total_amount", "not a finite number"),
                Counter::MalformedInvalidValue,
            ),
            (
                invalid("tag", "enum index out of range"),
                Counter::MalformedInvalidValue,
            ),
            (
                DecodeError::Resolution("x".into()),
                Counter::MalformedInvalidValue,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(counter_of(&error), expected, "{error:?}");
        }
    }

    #[test]
    fn time_bounds_reject_beyond_them_and_zero_disables_them() {
        let bounds = TimeBounds {
            max_age_ms: 60_000,
            max_future_skew_ms: 5_000,
        };
        assert_eq!(bounds.check(EventTimeMs(NOW), NOW), None);
        assert_eq!(bounds.check(EventTimeMs(NOW - 60_000), NOW), None);
        assert_eq!(
            bounds.check(EventTimeMs(NOW - 60_001), NOW),
            Some(Counter::RejectedTooOld)
        );
        assert_eq!(
            bounds.check(EventTimeMs(1), NOW),
            Some(Counter::RejectedTooOld)
        );
        assert_eq!(bounds.check(EventTimeMs(NOW + 5_000), NOW), None);
        assert_eq!(
            bounds.check(EventTimeMs(NOW + 5_001), NOW),
            Some(Counter::RejectedFuture)
        );
        assert_eq!(
            bounds.check(EventTimeMs(u64::MAX), NOW),
            Some(Counter::RejectedFuture)
        );
        let off = TimeBounds::default();
        assert_eq!(off.check(EventTimeMs(1), NOW), None);
        assert_eq!(off.check(EventTimeMs(u64::MAX), NOW), None);
    }

    #[test]
    fn a_message_is_read_or_rejected_under_one_counter() {
        let bounds = TimeBounds {
            max_age_ms: 86_400_000,
            max_future_skew_ms: 300_000,
        };
        let mut reader = reader(64, bounds);
        let good = event(NOW - 30_000);
        assert_eq!(reader.read(&message(&good), NOW, NOW).ok(), Some(good));
        // No event time: it gets the arrival tick, which is within the bounds.
        let untimed = event(0);
        assert_eq!(
            reader.read(&message(&untimed), NOW - 500, NOW).ok(),
            Some(event(NOW - 500))
        );
        let mut padded = message(&event(NOW));
        padded.resize(65, 0);
        assert_eq!(
            counter(&mut reader, &padded),
            Some(Counter::MalformedOversize)
        );
        padded.truncate(64);
        assert_eq!(
            counter(&mut reader, &padded),
            Some(Counter::MalformedTruncated),
            "at the limit it is decoded: bytes left over"
        );
        let negative_units = Event {
            units: u32::MAX,
            ..event(NOW)
        };
        let negative_total = Event {
            total: Cents(-1),
            ..event(NOW)
        };
        for bad in [negative_units, negative_total] {
            assert_eq!(
                counter(&mut reader, &message(&bad)),
                Some(Counter::RejectedNegative)
            );
        }
        assert_eq!(
            counter(&mut reader, &message(&event(1))),
            Some(Counter::RejectedTooOld)
        );
        assert_eq!(
            counter(&mut reader, &message(&event(NOW + 3_600_000))),
            Some(Counter::RejectedFuture)
        );
        assert_eq!(
            counter(&mut reader, b"\x07junk"),
            Some(Counter::MalformedFraming)
        );
        assert_eq!(counter(&mut reader, b""), Some(Counter::MalformedFraming));
    }

    /// Totals and units beyond the bounds are rejected as implausible, at the bound they are
    /// read, and 0 disables a bound (the decoder's own limit still holds).
    #[test]
    fn amounts_beyond_the_plausibility_bounds_are_rejected() {
        let mut reader = reader(64, TimeBounds::default());
        reader.amount_bounds = AmountBounds {
            max_order_cents: 1_000_000,
            max_units: 500,
        };
        let at_bounds = Event {
            total: Cents(1_000_000),
            units: 500,
            ..event(NOW)
        };
        assert_eq!(
            reader.read(&message(&at_bounds), NOW, NOW).ok(),
            Some(at_bounds.clone())
        );
        let huge = Event {
            // The issue's purchase: 2.2e13 currency units.
            total: Cents(2_200_000_000_000_000),
            ..at_bounds.clone()
        };
        for bad in [
            Event {
                total: Cents(1_000_001),
                ..at_bounds.clone()
            },
            Event {
                units: 501,
                ..at_bounds.clone()
            },
            huge.clone(),
        ] {
            let rejected = reader
                .read(&message(&bad), NOW, NOW)
                .expect_err("implausible");
            assert_eq!(rejected.counter, Counter::RejectedImplausible, "{bad:?}");
            assert_eq!(rejected.reason, "rejected_implausible");
        }
        // A negative total is counted as negative, whatever the bounds.
        let negative = Event {
            total: Cents(-5_000_000),
            ..at_bounds.clone()
        };
        assert_eq!(
            counter(&mut reader, &message(&negative)),
            Some(Counter::RejectedNegative)
        );
        // No bound: the decoder's limit is the only one.
        reader.amount_bounds = AmountBounds::default();
        assert_eq!(reader.read(&message(&huge), NOW, NOW).ok(), Some(huge));
        let beyond_decoding = Event {
            total: Cents(avro::MAX_CENTS + 1_000),
            ..at_bounds
        };
        assert_eq!(
            counter(&mut reader, &message(&beyond_decoding)),
            Some(Counter::MalformedInvalidValue)
        );
    }

    /// The shipped bounds admit every event the generator makes and reject the issue's totals.
    #[test]
    fn the_shipped_bounds_are_on() {
        use crate::config::{Config, DEFAULT_TOML, no_env};
        let config =
            Config::from_layers(DEFAULT_TOML, no_env()).expect("the default configuration");
        let bounds = config.kafka.amount_bounds();
        assert!(
            bounds.max_order_cents > 0 && bounds.max_units > 0,
            "{bounds:?}"
        );
        let generator =
            crate::generators::events::EventGenerator::new(config.generator.clone(), NOW)
                .expect("the default generator");
        for n in 0..200_000 {
            let event = generator.event(n);
            assert_eq!(bounds.exceeded(&event), None, "{event:?}");
        }
        let huge = Event {
            total: Cents(2_200_000_000_000_000),
            ..event(NOW)
        };
        assert_eq!(bounds.exceeded(&huge), Some("total_amount"));
    }

    #[test]
    fn the_message_size_limit_leaves_room_for_every_event() {
        const { assert!(MIN_MESSAGE_BYTES >= avro::MAX_ENCODED_LEN) };
        let widest = Event {
            order_id: OrderId(u64::MAX >> 1),
            user_id: UserId(i32::MAX as u32),
            campaign_id: CampaignId(i32::MAX as u32),
            units: i32::MAX as u32,
            total: Cents(avro::MAX_CENTS),
            event_time: EventTimeMs(u64::MAX >> 1),
            ..event(NOW)
        };
        assert!(message(&widest).len() <= avro::MAX_ENCODED_LEN);
    }
}
