//! librdkafka clients: their configuration from `[kafka]`, and their log lines and errors,
//! rate-limited and without secrets.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};

use super::error::{KafkaSourceError, kafka};
use crate::config::kafka::KafkaConfig;

impl KafkaConfig {
    /// A client configuration: brokers, then the pass-through properties.
    pub(crate) fn client(&self) -> ClientConfig {
        self.client_tuned(&[])
    }

    /// A client configuration: brokers, then shopflow's `tuning` defaults, then the pass-through
    /// properties, which may override those defaults. What correctness depends on is set by the
    /// caller afterwards, so no property overrides it.
    pub(crate) fn client_tuned(&self, tuning: &[(&str, &str)]) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (key, value) in tuning {
            client.set(*key, *value);
        }
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }
}

/// The producer's librdkafka settings unless `kafka.properties` says otherwise: small batches
/// sent promptly, compressed.
pub(crate) const PRODUCER_TUNING: [(&str, &str); 3] = [
    ("linger.ms", "5"),
    ("queue.buffering.max.messages", "1000000"),
    ("compression.type", "lz4"),
];

/// The pipeline consumer's librdkafka settings unless `kafka.properties` says otherwise.
///
/// librdkafka's defaults wait for full fetches; the pipeline wants records promptly, so a fetch
/// returns whatever is there. Its default of at most 1 MiB per partition per fetch was the
/// end-to-end bottleneck: reading a backlog, the workers idled half the time waiting for
/// fetches (306,000 events/s against 763,000 with 8 MiB, measured in docs/benchmarks.md). The
/// pre-fetch queue stays bounded by `queued.max.messages.kbytes` (64 MiB per consumer).
const CONSUMER_TUNING: [(&str, &str); 4] = [
    ("fetch.wait.max.ms", "10"),
    ("fetch.min.bytes", "1"),
    ("fetch.message.max.bytes", "8388608"),
    ("queued.min.messages", "100000"),
];

/// The pipeline consumer's configuration: [`CONSUMER_TUNING`] under the user's properties, and
/// over both what the offset handling depends on (offsets are committed by the pipeline, only
/// for what the sink acknowledged). Every partition is assigned at an offset the reader chose, so
/// an offset out of range means messages vanished unread (retention deleted them, or the topic
/// was re-created): `auto.offset.reset = error` makes that an error
/// ([`KafkaSourceError::OffsetOutOfRange`]) instead of a silent jump to the log's start or end.
pub(super) fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = config.client_tuned(&CONSUMER_TUNING);
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error");
    client
}

/// The context of every client shopflow creates: librdkafka's log lines and global errors go to
/// `tracing` (target `librdkafka`), each kind at most once a second with a count of the ones held
/// back. An unreachable broker makes librdkafka report the same failure for every connection
/// attempt of every client; unlimited, hundreds of identical lines drowned the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_librdkafka(&error, reason);
    }
}

impl ConsumerContext for LogContext {}

impl ProducerContext for LogContext {
    type DeliveryOpaque = ();

    /// The dead-letter copy is best effort: a failed delivery is librdkafka's to log.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// How often one kind of librdkafka message may be logged.
const LIBRDKAFKA_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// When each kind of librdkafka message was last logged, and how many were held back since:
/// shared by all clients, so that many workers' consumers do not multiply the lines.
static LIBRDKAFKA_LIMITER: std::sync::LazyLock<RateLimiter> =
    std::sync::LazyLock::new(|| RateLimiter::new(LIBRDKAFKA_LOG_INTERVAL));

/// At most one message per kind per interval.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    kinds: std::sync::Mutex<std::collections::HashMap<String, (Instant, u64)>>,
}

impl RateLimiter {
    fn new(interval: Duration) -> RateLimiter {
        RateLimiter {
            interval,
            kinds: Default::default(),
        }
    }

    /// Whether a message of `kind` seen at `now` is logged: `Some(n)` with the `n` messages of
    /// its kind held back since the last one logged, `None` when it is held back itself.
    fn admit(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.get_mut(kind) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                kinds.insert(kind.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// One librdkafka log line, through the limiter; its kind is its level and facility (`FAIL`,
/// `COMMITFAIL`...): the text differs between attempts by addresses and milliseconds.
pub(crate) fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    let Some(suppressed) =
        LIBRDKAFKA_LIMITER.admit(&format!("log {level:?} {fac}"), Instant::now())
    else {
        return;
    };
    let held = held_back(suppressed);
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "{fac}: {message}{held}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}{held}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{fac}: {message}{held}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}{held}"),
    }
}

/// One error librdkafka reports outside any request, through the limiter; its kind is its code.
/// The end of a partition is an event, not an error. A fatal error is an error; the others
/// librdkafka recovers from by itself (reconnecting, finding a new leader), so they are warnings.
pub(crate) fn error_librdkafka(error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if matches!(error, KafkaError::PartitionEOF(_)) || code == Some(RDKafkaErrorCode::PartitionEOF)
    {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        return;
    }
    let Some(suppressed) = LIBRDKAFKA_LIMITER.admit(&format!("error {code:?}"), Instant::now())
    else {
        return;
    };
    let held = held_back(suppressed);
    if code == Some(RDKafkaErrorCode::Fatal) {
        tracing::error!(target: "librdkafka", "{error}: {reason}{held}");
    } else {
        tracing::warn!(target: "librdkafka", "{error}: {reason}{held}");
    }
}

/// The note on a rate-limited line about the lines of its kind held back before it.
fn held_back(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like it in the last second(s) not shown)")
    }
}

/// `error` without the secrets of `config`: librdkafka echoes a property's value when it refuses
/// it, and may quote it in a client creation error.
pub(crate) fn redact_error(config: &KafkaConfig, error: KafkaError) -> KafkaError {
    let secrets: Vec<&str> = config
        .properties
        .iter()
        .filter(|(key, value)| crate::config::is_secret_property(key) && !value.is_empty())
        .map(|(_, value)| value.as_str())
        .collect();
    let mask = |text: String| {
        secrets
            .iter()
            .fold(text, |text, secret| text.replace(secret, "***"))
    };
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            let value = if crate::config::is_secret_property(&key) {
                "***".to_owned()
            } else {
                mask(value)
            };
            KafkaError::ClientConfig(code, mask(description), key, value)
        }
        KafkaError::ClientCreation(message) => KafkaError::ClientCreation(mask(message)),
        other => other,
    }
}

/// How many partitions `topic` has, as the brokers' metadata says (0 for a topic they do not
/// know), the request bounded by `timeout`.
pub(crate) fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaSourceError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka(format!("cannot read metadata of {topic}")))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()))
}

/// A client of `kind` made from `client`, with [`LogContext`]; an error names no secret of
/// `config`.
pub(crate) fn create<T: rdkafka::config::FromClientConfigAndContext<LogContext>>(
    config: &KafkaConfig,
    client: &ClientConfig,
    kind: &str,
) -> Result<T, KafkaSourceError> {
    client
        .create_with_context(LogContext)
        .map_err(|error| kafka(format!("cannot create the {kind}"))(redact_error(config, error)))
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;

    use super::*;

    /// `kafka.properties` override shopflow's tuning, never what the offset handling needs.
    #[test]
    fn properties_override_tuning_but_not_the_offset_settings() {
        use crate::config::{Config, DEFAULT_TOML, no_env};
        let mut config = Config::from_layers(DEFAULT_TOML, no_env())
            .expect("the default configuration")
            .kafka;
        let consumer = consumer_config(&config);
        assert_eq!(consumer.get("fetch.message.max.bytes"), Some("8388608"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        config.properties = [
            ("fetch.message.max.bytes", "1048576"),
            ("security.protocol", "SASL_SSL"),
            ("group.id", "someone-else"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "true"),
            ("auto.offset.reset", "earliest"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let consumer = consumer_config(&config);
        assert_eq!(consumer.get("fetch.message.max.bytes"), Some("1048576"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(consumer.get("group.id"), Some(config.group_id.as_str()));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        // A position deleted unread is an error, never a jump (see `consumer_config`).
        assert_eq!(consumer.get("auto.offset.reset"), Some("error"));
        config.properties = [("compression.type", "zstd")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let producer = config.client_tuned(&PRODUCER_TUNING);
        assert_eq!(producer.get("compression.type"), Some("zstd"));
        assert_eq!(producer.get("linger.ms"), Some("5"));
    }

    /// What `tracing` printed while `f` ran on this thread.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .expect("not poisoned")
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = capture.0.lock().expect("not poisoned").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// librdkafka's lines and errors reach the log through the limiter: a thousand identical
    /// failures in a burst are one line; the end of a partition is no error at all.
    #[test]
    fn librdkafka_reports_are_rate_limited_and_partition_eof_is_no_error() {
        let context = LogContext;
        let text = logged(|| {
            for attempt in 0..1_000 {
                context.log(
                    RDKafkaLogLevel::Error,
                    "TESTFAIL",
                    &format!("Connect failed (after {attempt}ms in state CONNECT)"),
                );
                context.error(
                    KafkaError::Global(RDKafkaErrorCode::NetworkException),
                    "connection refused",
                );
            }
            context.error(
                KafkaError::Global(RDKafkaErrorCode::PartitionEOF),
                "Fetch reached the end of the partition",
            );
        });
        assert_eq!(text.matches("TESTFAIL").count(), 1, "{text}");
        assert_eq!(text.matches("NetworkException").count(), 1, "{text}");
        assert!(!text.contains("PartitionEOF"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn the_limiter_logs_one_per_kind_per_interval_and_counts_the_rest() {
        let limiter = RateLimiter::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(limiter.admit("a", at(0)), Some(0));
        for ms in 1..=100 {
            assert_eq!(limiter.admit("a", at(ms * 9)), None);
        }
        assert_eq!(limiter.admit("b", at(500)), Some(0), "kinds are apart");
        assert_eq!(limiter.admit("a", at(1_000)), Some(100));
        assert_eq!(limiter.admit("a", at(1_500)), None);
        assert_eq!(limiter.admit("a", at(2_000)), Some(1));
        assert_eq!(limiter.admit("a", at(60_000)), Some(0));
    }

    /// librdkafka quotes a value it refuses, and may quote values when it cannot create a client:
    /// a secret property's value never reaches the message.
    #[test]
    fn client_errors_never_show_a_secret_property() {
        use crate::config::{Config, DEFAULT_TOML, no_env};
        use rdkafka::types::RDKafkaConfRes;
        let mut config = Config::from_layers(DEFAULT_TOML, no_env())
            .expect("the default configuration")
            .kafka;
        for (key, value) in [
            ("sasl.password", "S3CRET-one"),
            ("ssl.key.password", "S3CRET-two"),
            ("sasl.mechanisms", "S3CRET-three"),
            ("linger.ms", "fast"),
        ] {
            config.properties.insert(key.into(), value.into());
        }
        let refused = |key: &str, value: &str| {
            KafkaError::ClientConfig(
                RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                format!("Invalid value \"{value}\" for configuration property \"{key}\""),
                key.into(),
                value.into(),
            )
        };
        for error in [
            refused("sasl.password", "S3CRET-one"),
            refused("ssl.key.password", "S3CRET-two"),
            KafkaError::ClientCreation("Unsupported SASL mechanism: S3CRET-three".into()),
        ] {
            let shown = redact_error(&config, error).to_string();
            assert!(!shown.contains("S3CRET"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        let shown = redact_error(&config, refused("linger.ms", "fast")).to_string();
        assert!(shown.contains("fast"), "not a secret: {shown}");
        // A real refusal, from librdkafka itself.
        let mut client = consumer_config(&config);
        client.remove("linger.ms");
        client.set("security.protocol", "SASL_PLAINTEXT");
        let error = create::<BaseConsumer<LogContext>>(&config, &client, "consumer")
            .err()
            .expect("an unknown SASL mechanism is refused");
        let shown = error.to_string();
        assert!(!shown.contains("S3CRET"), "{shown}");
    }
}
