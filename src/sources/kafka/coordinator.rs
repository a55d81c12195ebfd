//! The group coordinator, while it moves or loads: what it cannot answer yet is retried.

use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::KafkaConfig;

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
pub(super) fn coordinator_patience(config: &KafkaConfig) -> Duration {
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
pub(super) fn retry_coordinator<T>(
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
pub(super) fn committed_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    wanted: &TopicPartitionList,
) -> Result<TopicPartitionList, KafkaError> {
    let list = consumer.committed_offsets(wanted.clone(), Duration::from_secs(10))?;
    for element in list.elements() {
        element.error()?;
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
