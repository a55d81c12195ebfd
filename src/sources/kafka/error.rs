//! What can go wrong talking to Kafka, as one typed error.

use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::sources::registry::RegistryError;

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
        "kafka brokers {brokers} not reachable within {waited:?} (engine.connect-timeout-ms, or \
         the run's --duration if shorter); the last attempt failed with: {last}"
    )]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long the reader tried.
        waited: Duration,
        /// The last attempt's error.
        last: Box<KafkaSourceError>,
    },
    /// The brokers refused the client's credentials (SASL): waiting would not help.
    #[error(
        "kafka brokers {brokers} refused the credentials (authentication failed: check \
         sasl.username and sasl.password in kafka.properties): {reason}"
    )]
    Authentication {
        /// The bootstrap servers.
        brokers: String,
        /// What librdkafka reported (it names the broker and the mechanism, never a password).
        reason: String,
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

pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaSourceError {
    let context = context.into();
    move |source| KafkaSourceError::Kafka { context, source }
}
