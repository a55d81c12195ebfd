//! The embedded Kafka: librdkafka's in-process mock cluster, so `demo` runs the production
//! producer, Avro encoding and consumer with no service to install.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

use crate::config::Config;
use crate::generators::events::EventGenerator;
use crate::runtime::{Status, Stop, now_ms};
use crate::sources::kafka::{
    EventProducer, KafkaConfig, KafkaSourceError, StartPosition, produce_generated,
};

/// A running in-process cluster with the events topic created.
pub struct EmbeddedKafka {
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    config: KafkaConfig,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster and creates the topic of `kafka` with its partitions.
    pub fn start(kafka: &KafkaConfig) -> Result<EmbeddedKafka, KafkaSourceError> {
        let cluster = MockCluster::new(1).map_err(|source| KafkaSourceError::Kafka {
            context: "cannot start the embedded cluster".into(),
            source,
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
        Ok(EmbeddedKafka {
            _cluster: cluster,
            config,
        })
    }

    /// The client configuration that reaches this cluster.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Produces the generated events on a thread of its own, until `stop` (events or time) or
    /// Ctrl-C; sets `done` when everything is sent and flushed.
    pub fn produce_in_background(
        &self,
        config: &Config,
        start_ms: Option<u64>,
        stop: Stop,
        status: Arc<Status>,
        done: Arc<AtomicBool>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
        let generator =
            EventGenerator::new(config.generator.clone(), start_ms.unwrap_or_else(now_ms))
                .map_err(anyhow::Error::msg)?;
        let mut producer = EventProducer::new(&self.config)?;
        let thread = std::thread::Builder::new()
            .name("shopflow-producer".into())
            .spawn(move || {
                let _span = tracing::info_span!("producer").entered();
                let sent = produce_generated(
                    &mut producer,
                    &generator,
                    stop.events,
                    stop.duration,
                    &status.stop,
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
