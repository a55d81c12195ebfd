//! Kafka: the per-worker partition reader, and the clients' settings, logs and errors it shares
//! with the event producer ([`crate::writers::kafka`]).
//!
//! Like timely's old `kafkaesque` example, each worker owns a share of the partitions (partition
//! `p` goes to worker `p % peers`, counting every worker of every process), polls its consumer
//! with a zero timeout from the worker loop, and never blocks the dataflow. Offsets are committed
//! only for ticks the sink has acknowledged, so after a crash the pipeline re-reads what InfluxDB
//! may not hold yet; the sink writes absolute values, so a re-read counts nothing twice.

mod client;
mod coordinator;
mod dead_letter;
mod error;
mod reader;

pub use crate::config::kafka::{
    AmountBounds, KafkaConfig, MIN_MESSAGE_BYTES, StartPosition, TimeBounds,
};
pub use client::LogContext;
// What `writers::kafka` (the producer) shares with the reader.
pub(crate) use client::{
    PRODUCER_TUNING, create, error_librdkafka, log_librdkafka, partition_count, redact_error,
};
pub use dead_letter::DEAD_LETTER_MAX_PAYLOAD;
pub use error::KafkaSourceError;
pub(crate) use error::kafka;
pub(crate) use reader::check_credentials;
pub use reader::{PartitionReader, Polled, counter_of};
