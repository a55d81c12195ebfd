//! The partitions' high watermarks, asked for on a thread of their own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use super::STALL_AFTER;
use crate::config::kafka::KafkaConfig;

/// The partitions' high watermarks, read on a thread of their own so that the worker never waits
/// for brokers that do not answer: [`PartitionReader::lag`] only looks at the latest answer.
pub(super) struct Watermarks {
    /// The latest answer and when it was asked for.
    pub(super) highs: Mutex<Option<(Instant, BTreeMap<i32, i64>)>>,
    /// Set when the reader is dropped: the thread ends.
    pub(super) stop: AtomicBool,
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
pub(super) const WATERMARKS_FRESH: Duration = Duration::from_secs(1);

impl Watermarks {
    /// Starts the thread asking for the high watermarks of `partitions` with a consumer of its
    /// own (no group): every 100 ms (every second while they fail), each request bounded by 5 s. A consumer that fails for
    /// [`STALL_AFTER`] is replaced, as a stuck reader's is.
    pub(super) fn start(config: &KafkaConfig, partitions: &[i32]) -> Arc<Watermarks> {
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
