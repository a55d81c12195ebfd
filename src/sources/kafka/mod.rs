//! Kafka: the event producer (`shopflow produce`) and the per-worker partition reader.
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
mod producer;
mod reader;

pub use crate::config::kafka::{
    AmountBounds, KafkaConfig, MIN_MESSAGE_BYTES, StartPosition, TimeBounds,
};
pub use client::LogContext;
pub(crate) use client::{create, partition_count};
pub use dead_letter::DEAD_LETTER_MAX_PAYLOAD;
pub use error::KafkaSourceError;
pub(crate) use error::kafka;
pub use producer::{
    EventProducer, HoldBack, ensure_topic, produce_generated, produce_generated_within,
};
pub use reader::{PartitionReader, Polled, counter_of};
