//! The event producer (`shopflow produce`, and the demo's producer thread): generated events,
//! Avro-encoded, sent to the topic.

use std::time::{Duration, Instant};

use dataflows::model::Event;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::sources::avro;
use crate::sources::kafka::{
    KafkaSourceError, LogContext, PRODUCER_TUNING, check_credentials, create, error_librdkafka,
    kafka, log_librdkafka, redact_error,
};
use crate::sources::registry::{self, RegistryClient};

use crate::config::kafka::KafkaConfig;

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
        let timestamp = arrival_ms.min(crate::clock::now_ms()) as i64;
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
    // The admin client would report refused credentials only as its request's timeout.
    check_credentials(config, Duration::from_secs(10))?;
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
    // The controller has made the topic; for a moment the brokers may not list its partitions
    // yet, and a reader started then finds none (seen in the fault campaign on a loaded machine).
    let started = Instant::now();
    loop {
        let listed = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .is_ok_and(|metadata| {
                metadata.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            });
        if listed {
            return Ok(());
        }
        if started.elapsed() >= TOPIC_LISTED_WITHIN {
            return Err(KafkaSourceError::NoPartitions(topic.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long [`ensure_topic`] waits for the brokers to list a topic's partitions with leaders.
const TOPIC_LISTED_WITHIN: Duration = Duration::from_secs(15);

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
            let now = crate::clock::now_ms();
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
