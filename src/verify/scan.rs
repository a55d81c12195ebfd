//! Reading a whole topic once, from the start of every partition to its end (`shopflow verify`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::sources::avro::{self, DecodeError, Decoder, SchemaError};
use crate::sources::registry::{self, RegistryClient, RegistryError};

use crate::config::kafka::KafkaConfig;
use crate::sources::kafka::{KafkaSourceError, LogContext, create, kafka, partition_count};

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
    let count = partition_count(&consumer, &config.topic, timeout)?;
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

/// How many messages the topic has ever held: the sum of its partitions' high watermarks (which
/// deletion by retention does not lower). `produce` resumes its generator there, so that a
/// restarted producer sends new events rather than the stream's beginning again.
pub fn topic_end(config: &KafkaConfig) -> Result<u64, KafkaSourceError> {
    let mut client = config.client();
    // Required by the client, never used: nothing is consumed or committed.
    client.set("group.id", format!("{}-produce", config.group_id));
    let consumer: BaseConsumer<LogContext> = create(config, &client, "consumer")?;
    let timeout = Duration::from_secs(10);
    let partitions = partition_count(&consumer, &config.topic, timeout)?;
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
