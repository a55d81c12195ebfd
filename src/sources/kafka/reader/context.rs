//! The pipeline consumer's context: librdkafka's messages to `tracing`, and refused credentials
//! named at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::kafka::KafkaConfig;
use crate::sources::kafka::client::{
    consumer_config, error_librdkafka, log_librdkafka, redact_error,
};
use crate::sources::kafka::error::{KafkaSourceError, kafka};

/// The pipeline consumer's context: librdkafka's messages go to `tracing`.
///
/// It keeps no commit outcome: rust-rdkafka registers no `offset_commit_cb`, and librdkafka
/// propagates an asynchronous commit's result only to one (`rd_kafka_cgrp_propagate_commit_result`),
/// so `commit_callback` is never called for `CommitMode::Async`. [`PartitionReader::commit_all`]
/// asks the coordinator instead.
///
/// It also keeps the first authentication failure the brokers reported: credentials they refuse
/// will not start working by waiting, so the reader stops at once, naming it
/// ([`KafkaSourceError::Authentication`]), instead of waiting out the connect timeout.
#[derive(Default)]
pub(super) struct ReaderContext {
    authentication: Mutex<Option<String>>,
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            self.authentication_failed(reason);
        }
        error_librdkafka(&error, reason);
    }
}

impl ReaderContext {
    /// Keeps the first authentication failure reported.
    fn authentication_failed(&self, reason: &str) {
        self.authentication
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| reason.to_owned());
    }

    /// The authentication failure `consumer` has reported, if any. librdkafka queues its errors
    /// until the consumer is polled, and may queue this one just after the request it failed
    /// returned: the queue is served for up to [`AUTHENTICATION_GRACE`].
    pub(super) fn authentication_failure(consumer: &ReaderConsumer) -> Option<String> {
        let deadline = Instant::now() + AUTHENTICATION_GRACE;
        loop {
            let context = consumer.context();
            if let Some(reason) = context
                .authentication
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Some(reason);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Nothing is assigned yet: a poll serves events and returns no message.
            match consumer.poll(left) {
                Some(Err(error))
                    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) =>
                {
                    context.authentication_failed(&error.to_string());
                }
                _ if left.is_zero() => return None,
                _ => {}
            }
        }
    }
}

/// How long a reader that could not read the topic's metadata looks for an authentication
/// failure behind it.
const AUTHENTICATION_GRACE: Duration = Duration::from_millis(300);

impl ConsumerContext for ReaderContext {}

/// The pipeline's consumer.
pub(super) type ReaderConsumer = BaseConsumer<ReaderContext>;

/// Asks the brokers for their metadata through a consumer, whose error events are served (an
/// admin client's wait in a queue nothing polls), for up to `bound`: refused credentials are
/// named as such within a second or two, rather than left to time out the request that follows.
/// The writers call it before they create a topic.
pub(crate) fn check_credentials(
    config: &KafkaConfig,
    bound: Duration,
) -> Result<(), KafkaSourceError> {
    let consumer: ReaderConsumer = consumer_config(config)
        .create_with_context(ReaderContext::default())
        .map_err(|e| kafka("cannot create the consumer")(redact_error(config, e)))?;
    let deadline = Instant::now() + bound;
    loop {
        // librdkafka retries a refused login until the request times out: ask in short attempts,
        // looking for the refusal between them.
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match consumer.fetch_metadata(None, left.min(Duration::from_secs(1))) {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if let Some(reason) = ReaderContext::authentication_failure(&consumer) {
            return Err(KafkaSourceError::Authentication {
                brokers: config.brokers.clone(),
                reason,
            });
        }
        if Instant::now() >= deadline {
            let context = format!("cannot read the metadata of the brokers {}", config.brokers);
            return Err(kafka(context)(error));
        }
    }
}
