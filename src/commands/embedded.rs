//! The embedded Kafka: librdkafka's in-process mock cluster, so `demo` runs the production
//! producer, Avro encoding and consumer with no service to install.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{Producer as _, ThreadedProducer};

use crate::clock::now_ms;
use crate::config::Config;
use crate::generators::events::EventGenerator;
use crate::plan::Stop;
use crate::runtime::Status;
use crate::sources::kafka::{KafkaConfig, KafkaSourceError, LogContext, StartPosition, create};
use crate::writers::kafka::{EventProducer, HoldBack, produce_generated_within};

/// What librdkafka's mock cluster keeps of a partition: it deletes the oldest message sets once
/// a partition holds more than 5 MiB of them (or 100,000 sets), and has no setting for it
/// (`rd_kafka_mock_partition_init` in rdkafka_mock.c). A consumer that falls further behind has
/// its position deleted: the demo's producer is held back long before that.
const MOCK_RETAINED_BYTES: u64 = 5 << 20;

/// More than any message set of one event takes (a 61-byte header, the key, an event of at most
/// 64 bytes, lz4's frame): a bound on what an unread event costs the mock cluster's retention,
/// however the producer batched it.
const MAX_BYTES_PER_EVENT: u64 = 256;

/// How many events the demo's producer may send beyond what the pipeline has read, per
/// partition: half of what the mock cluster is sure to keep, since the keys spread events over
/// the partitions only about evenly. (Batched at full speed, it kept about 204,000 generated
/// events per partition, 26 bytes each: a producer held to this bound is far from it.)
pub const UNREAD_PER_PARTITION: u64 = MOCK_RETAINED_BYTES / MAX_BYTES_PER_EVENT / 2;

/// A running in-process cluster with the events topic created.
pub struct EmbeddedKafka {
    /// The client that owns the cluster (`test.mock.num.brokers`): the cluster lives as long as
    /// it and logs through it. librdkafka queues a client's log lines until the client is
    /// polled; this one's thread polls it, so the cluster's lines reach [`LogContext`],
    /// rate-limited like every other client's. (`MockCluster::new`'s client is never polled:
    /// its lines were never shown, and piled up in its queue.)
    _owner: ThreadedProducer<LogContext>,
    config: KafkaConfig,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster and creates the topic of `kafka` with its partitions.
    pub fn start(kafka: &KafkaConfig) -> Result<EmbeddedKafka, KafkaSourceError> {
        let mut client = ClientConfig::new();
        client.set("test.mock.num.brokers", "1");
        let owner: ThreadedProducer<LogContext> = create(kafka, &client, "embedded cluster")?;
        let cluster = owner
            .client()
            .mock_cluster()
            .ok_or_else(|| KafkaSourceError::Kafka {
                context: "cannot start the embedded cluster".into(),
                source: rdkafka::error::KafkaError::MockCluster(
                    rdkafka::types::RDKafkaErrorCode::Fail,
                ),
            })?;
        cluster
            .create_topic(&kafka.topic, kafka.partitions, 1)
            .map_err(|source| KafkaSourceError::Kafka {
                context: format!("cannot create topic {}", kafka.topic),
                source,
            })?;
        let config = KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            start: StartPosition::Earliest,
            ..kafka.clone()
        };
        drop(cluster);
        Ok(EmbeddedKafka {
            _owner: owner,
            config,
        })
    }

    /// The client configuration that reaches this cluster.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Produces the generated events on a thread of its own, until `stop` (events or time) or
    /// `interrupt`, never more than [`UNREAD_PER_PARTITION`] per partition ahead of what the
    /// pipeline has read (`status.consumed`); counts them in `status.produced` and sets `done`
    /// when everything is sent and flushed.
    pub fn produce_in_background(
        &self,
        config: &Config,
        start_ms: Option<u64>,
        stop: Stop,
        interrupt: Arc<AtomicBool>,
        status: Arc<Status>,
        done: Arc<AtomicBool>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
        let generator =
            EventGenerator::new(config.generator.clone(), start_ms.unwrap_or_else(now_ms))
                .map_err(anyhow::Error::msg)?;
        let mut producer = EventProducer::new(&self.config)?;
        let max_unread = UNREAD_PER_PARTITION * self.config.partitions.max(1) as u64;
        let thread = std::thread::Builder::new()
            .name("shopflow-producer".into())
            .spawn(move || {
                let _span = tracing::info_span!("producer").entered();
                let sent = produce_generated_within(
                    &mut producer,
                    &generator,
                    stop.events,
                    stop.duration,
                    &interrupt,
                    Some(HoldBack {
                        consumed: &status.consumed,
                        max_unread,
                    }),
                    |n| {
                        status.produced.store(n, Ordering::Relaxed);
                    },
                );
                done.store(true, Ordering::Relaxed);
                Ok(sent?)
            })?;
        Ok(thread)
    }
}
