//! The pipeline's Kafka reader against librdkafka's mock cluster, where the brokers' answers can be
//! scripted: a group coordinator that is not ready when the pipeline starts (as just after a broker
//! restart), and a broker that goes away while the reader polls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use shopflow::sources::kafka::{KafkaConfig, PartitionReader, StartPosition};

use crate::support::logs::logged;

/// A one-broker mock cluster with a two-partition `topic`, and a configuration that reads it from
/// the group's committed offsets.
fn cluster(topic: &str) -> (MockCluster<'static, DefaultProducerContext>, KafkaConfig) {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    cluster.create_topic(topic, 2, 1).expect("a topic");
    let mut config = crate::support::services::kafka_config(&cluster.bootstrap_servers(), topic, 2);
    config.start = StartPosition::Committed;
    (cluster, config)
}

/// The coordinator answers the committed-offsets request with each of the transient errors a
/// broker gives while it starts (`NotCoordinator` made `run` exit 1): the reader waits them out.
#[test]
fn a_coordinator_not_ready_at_start_is_waited_for() {
    let (cluster, config) = cluster("coordinator");
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        ],
    );
    let started = Instant::now();
    let reader = PartitionReader::open(&config, 0, 1, None)
        .unwrap_or_else(|e| panic!("opens once the coordinator is ready: {e}"));
    assert_eq!(reader.positions(), &BTreeMap::from([(0, 0), (1, 0)]));
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A coordinator that never gets ready within the patience fails the start with its error.
/// (librdkafka itself retries `CoordinatorLoadInProgress` within the request's timeout, so
/// `NotCoordinator`, which it returns at once, is the one to repeat.)
#[test]
fn a_coordinator_never_ready_fails_within_the_patience() {
    let (cluster, mut config) = cluster("coordinator-never");
    config
        .properties
        .insert("socket.connection.setup.timeout.ms".into(), "1500".into());
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 200],
    );
    let started = Instant::now();
    let error = PartitionReader::open(&config, 0, 1, None)
        .err()
        .expect("fails")
        .to_string();
    let took = started.elapsed();
    assert!(error.contains("NotCoordinator"), "{error}");
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

/// The broker goes down while the reader polls, and librdkafka tries to reconnect every 10 ms:
/// every failure is reported to the poller, but the log shows each kind at most once a second.
#[test]
fn a_broker_down_while_reading_logs_a_bounded_number_of_lines() {
    let (cluster, mut config) = cluster("broker-down");
    for key in ["reconnect.backoff.ms", "reconnect.backoff.max.ms"] {
        config.properties.insert(key.into(), "10".into());
    }
    let mut reader = PartitionReader::open(&config, 0, 1, None).expect("opens");
    cluster.broker_down(1).expect("the broker goes down");
    let seconds = 4;
    let text = logged(tracing::Level::WARN, || {
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            let _ = reader.poll(0, |_| {});
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let lines = text.lines().count();
    assert!(lines > 0, "the outage is reported");
    // A handful of kinds (connection failures, all brokers down, the reader's own warning), each
    // at most once a second: 10 lines in 4 s where, unlimited, there were 292.
    assert!(
        lines <= 6 * (seconds as usize + 1),
        "{lines} lines:\n{text}"
    );
}
