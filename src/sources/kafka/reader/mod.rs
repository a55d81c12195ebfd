//! The per-worker partition reader: polls its share of the partitions, turns each message into an
//! event or a counted rejection, and commits what the sink acknowledged. Its consumer's context
//! ([`context`]), the watermark thread ([`watermarks`]) and the decoding of a message
//! ([`messages`]) are modules of their own.

mod context;
mod messages;
mod watermarks;

pub(crate) use context::check_credentials;
pub(super) use messages::Rejected;
pub use messages::counter_of;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dataflows::model::{Counter, Event, Tick};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::retry::{RetryPolicy, sleep_unless};
use crate::sources::avro::{Decoder, SchemaError};
use crate::sources::registry::{RegistryClient, SchemaCache};

use super::{
    client::{LogContext, consumer_config, create, partition_count, redact_error},
    coordinator::{committed_offsets, coordinator_patience, retry_coordinator},
    dead_letter::dead_letter,
    error::{KafkaSourceError, kafka},
};
use crate::config::kafka::{KafkaConfig, StartPosition};
use context::{ReaderConsumer, ReaderContext};
use messages::{MessageReader, Warnings};
use watermarks::{WATERMARKS_FRESH, Watermarks};

/// What one poll round produced.
#[derive(Debug, Default)]
pub struct Polled {
    /// Messages read, malformed ones included.
    pub messages: usize,
    /// Malformed messages by counter.
    pub malformed: Vec<(Counter, isize)>,
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
        // 100 ms doubling up to 1 s; `timeout` bounds the retries.
        let mut pauses =
            RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1)).delays();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let bound = left.clamp(Duration::from_millis(100), Duration::from_secs(2));
            let error = match Self::open_once(config, index, peers, resume, bound) {
                Ok(reader) => return Ok(reader),
                Err(error) if retryable(&error) => error,
                Err(error) => return Err(error),
            };
            let pause = pauses.next().unwrap_or(Duration::from_secs(1));
            if started.elapsed() + pause >= timeout {
                return Err(KafkaSourceError::Unreachable {
                    brokers: config.brokers.clone(),
                    waited: started.elapsed(),
                    last: Box::new(error),
                });
            }
            tracing::warn!(%error, "kafka not reachable; retrying");
            if !sleep_unless(pause, stop) {
                return Err(KafkaSourceError::StoppedWhileConnecting(
                    config.brokers.clone(),
                ));
            }
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
        let consumer: ReaderConsumer = consumer_config(config)
            .create_with_context(ReaderContext::default())
            .map_err(|e| kafka("cannot create the consumer")(redact_error(config, e)))?;
        let count = partition_count(&consumer, &config.topic, bound).map_err(|error| {
            match ReaderContext::authentication_failure(&consumer) {
                Some(reason) => KafkaSourceError::Authentication {
                    brokers: config.brokers.clone(),
                    reason,
                },
                None => error,
            }
        })?;
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
        let now = crate::clock::now_ms();
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
            .create_with_context(ReaderContext::default())
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
