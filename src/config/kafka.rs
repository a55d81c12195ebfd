//! The `[kafka]` section: what the event topic is, how to reach it, and the bounds an event must
//! keep.

use std::collections::BTreeMap;
use std::fmt;

use dataflows::model::{Counter, Event, EventTimeMs};
use reqwest::Url;
use serde::{Deserialize, Serialize};

/// The `[kafka]` section: what the event topic is and how to reach it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Partitions of the topic when shopflow creates it (the embedded cluster, `produce`).
    pub partitions: i32,
    /// The consumer group whose committed offsets the pipeline resumes from.
    pub group_id: String,
    /// Where a pipeline starts reading.
    pub start: StartPosition,
    /// The schema id written in the Confluent header, and the id the bundled schema answers to
    /// when no schema registry is configured.
    pub schema_id: u32,
    /// A Confluent schema registry's URL (basic-auth credentials may be in it; they are never
    /// logged); empty for none. With one, the producer registers the bundled schema under
    /// `<topic>-value` and writes the id it is given instead of `schema_id`, and readers fetch
    /// the writer schema of each id they meet once.
    pub schema_registry_url: String,
    /// A topic that receives a copy of every malformed message (with its reason, topic, partition
    /// and offset as headers); empty for none.
    pub dead_letter_topic: String,
    /// At most this many messages per worker per poll round, so one busy partition cannot starve
    /// the worker's other duties.
    pub max_poll_messages: usize,
    /// A message with a larger payload is counted as `malformed_oversize` and not decoded.
    pub max_message_bytes: usize,
    /// An event whose time lies more than this many milliseconds before the moment it is read is
    /// rejected and counted as `rejected_too_old`; 0 for no bound.
    pub max_event_age_ms: u64,
    /// An event whose time lies more than this many milliseconds after the moment it is read is
    /// rejected and counted as `rejected_future`; 0 for no bound.
    pub max_future_skew_ms: u64,
    /// An event whose total exceeds this many cents is rejected as implausible and counted as
    /// `rejected_implausible`; 0 for no bound (the decoder's own limit, [`MAX_CENTS`], still
    /// holds).
    pub max_order_cents: u64,
    /// An event with more units than this is rejected as implausible and counted as
    /// `rejected_implausible`; 0 for no bound.
    pub max_units: u64,
    /// librdkafka properties passed through (TLS, SASL, fetch tuning...), once
    /// [resolved](KafkaConfig::resolve_properties): a `<name>-file` property reads `<name>` from
    /// a file, and a name given with dashes instead of dots (as an environment variable spells
    /// it) is dotted.
    pub properties: BTreeMap<String, String>,
}

/// The ending of a property whose value is a file to read the property from: `"sasl.password-file"
/// = "/run/secrets/kafka"` sets `sasl.password` to the file's content, as containers mount
/// secrets. No librdkafka property has a dash in its name.
pub const PROPERTY_FILE_SUFFIX: &str = "-file";

/// Where a pipeline starts reading its partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StartPosition {
    /// From the beginning of each partition.
    Earliest,
    /// From the end: only new events.
    Latest,
    /// From the beginning where the group has committed no offset; a group that has committed
    /// offsets is refused: with no checkpoint holding the state they cover, starting there would
    /// count only what follows them (positions come from the checkpoint when there is one).
    Committed,
}

impl KafkaConfig {
    /// Checks the values; names the first bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers: must name at least one host:port".into());
        }
        if self.topic.is_empty() || self.topic.len() > 249 || !self.topic.chars().all(topic_char) {
            return Err(format!(
                "kafka.topic: `{}` is not a valid topic name",
                self.topic
            ));
        }
        if !self.dead_letter_topic.is_empty() && !self.dead_letter_topic.chars().all(topic_char) {
            return Err(format!(
                "kafka.dead-letter-topic: `{}` is not a valid topic name",
                self.dead_letter_topic
            ));
        }
        if self.partitions < 1 {
            return Err("kafka.partitions: must be at least 1".into());
        }
        if self.group_id.is_empty() {
            return Err("kafka.group-id: must not be empty".into());
        }
        if !self.schema_registry_url.is_empty()
            && let Err(error) = RegistryUrl::parse(&self.schema_registry_url)
        {
            return Err(format!(
                "kafka.schema-registry-url: schema registry url: {error}"
            ));
        }
        if self.max_poll_messages == 0 {
            return Err("kafka.max-poll-messages: must be at least 1".into());
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(format!(
                "kafka.max-message-bytes: must be at least {MIN_MESSAGE_BYTES} (an event takes up to {} bytes)",
                MAX_ENCODED_LEN
            ));
        }
        Ok(())
    }

    /// Turns `properties` into librdkafka's own: a name with dashes and no dot, as the environment
    /// gives it (`SHOPFLOW__KAFKA__PROPERTIES__SASL_MECHANISM` is `sasl-mechanism`), is dotted
    /// (`sasl.mechanism`), and `<name>-file = PATH` becomes `<name>` = the file's content, a
    /// trailing line break dropped. The error names the property and the file, never a value.
    pub fn resolve_properties(&mut self) -> Result<(), String> {
        let mut resolved = BTreeMap::new();
        for (key, value) in &self.properties {
            let (name, path) = match key.strip_suffix(PROPERTY_FILE_SUFFIX) {
                Some(name) => (name, Some(value)),
                None => (key.as_str(), None),
            };
            let name = if name.contains('.') {
                name.to_owned()
            } else {
                name.replace('-', ".")
            };
            let value = match path {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("{key}: cannot read {path}: {e}"))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                None => value.clone(),
            };
            if resolved.insert(name.clone(), value).is_some() {
                return Err(format!(
                    "{name}: set twice (directly and from a file, or spelled \
                     with dashes and with dots)"
                ));
            }
        }
        self.properties = resolved;
        Ok(())
    }

    /// The event-time bounds of `max-event-age-ms` and `max-future-skew-ms`.
    pub fn time_bounds(&self) -> TimeBounds {
        TimeBounds {
            max_age_ms: self.max_event_age_ms,
            max_future_skew_ms: self.max_future_skew_ms,
        }
    }

    /// The plausibility bounds of `max-order-cents` and `max-units`.
    pub fn amount_bounds(&self) -> AmountBounds {
        AmountBounds {
            max_order_cents: self.max_order_cents,
            max_units: self.max_units,
        }
    }
}

/// The smallest `max-message-bytes` accepted: room for every event the bundled schema encodes.
pub const MIN_MESSAGE_BYTES: usize = 64;

// The event on the wire, as far as this section's checks need it: `sources::avro` (above config)
// re-exports these and encodes and decodes by them.

/// The Confluent header's length: the magic byte and the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

/// The largest order total accepted, in cents (2^51, about 22 trillion currency units).
///
/// Totals travel as a double in currency units; below this bound every whole number of cents
/// survives the trip `cents / 100 -> double -> (x * 100).round()` exactly, and every larger
/// one decodes to a value above it, so an amount is either exact or rejected.
pub const MAX_CENTS: i64 = 1 << 51;

/// The longest message `sources::avro::encode_event` writes: the header, four ints and two
/// longs as varints (at most 5 and 10 bytes), the double, and the enum index.
pub const MAX_ENCODED_LEN: usize = HEADER_LEN + 5 + 5 + 10 + 8 + 5 + 5 + 10;

/// A schema registry's URL (`kafka.schema-registry-url`), checked and taken apart: an absolute
/// `http[s]://[user:password@]host[:port][/path]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryUrl {
    /// The base URL, without credentials, query or fragment, ending in `/`.
    pub base: Url,
    /// The basic-auth user and password the URL carried, percent-decoded.
    pub auth: Option<(String, Option<String>)>,
}

impl fmt::Debug for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryUrl")
            .field("base", &self.base.as_str())
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RegistryUrl {
    /// Parses and checks `url`. The error never quotes the URL, so the credentials stay out of
    /// it.
    pub fn parse(url: &str) -> Result<RegistryUrl, String> {
        let mut base = Url::parse(url.trim()).map_err(|e| e.to_string())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err("must be an http:// or https:// URL with a host".into());
        }
        let auth = if base.username().is_empty() && base.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(String::from)
                    .map_err(|_| "credentials are not valid percent-encoded UTF-8".to_owned())
            };
            let user = decode(base.username())?;
            let password = base.password().map(decode).transpose()?;
            Some((user, password))
        };
        // Setting these fails only for URLs that cannot have credentials, ruled out above.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(RegistryUrl { base, auth })
    }
}

/// How far an event's time may lie from the moment it is read (its processing time) before the
/// source rejects it as implausible: a clock reset to 1970, a producer whose clock runs days ahead.
///
/// Late data within the bound is the dataflow's business (late for its window, counted in all-time
/// totals); data beyond it never enters the dataflow and is counted in `rejected_too_old` or
/// `rejected_future`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeBounds {
    /// The largest age, `now - event time`, accepted; 0 for no bound.
    pub max_age_ms: u64,
    /// The largest lead, `event time - now`, accepted; 0 for no bound.
    pub max_future_skew_ms: u64,
}

impl TimeBounds {
    /// The counter an event of time `event_time` read at `now_ms` is rejected under, if any.
    ///
    /// ```
    /// use dataflows::model::{Counter, EventTimeMs};
    /// use shopflow::sources::kafka::TimeBounds;
    ///
    /// let bounds = TimeBounds { max_age_ms: 1_000, max_future_skew_ms: 100 };
    /// let now = 1_700_000_000_000;
    /// assert_eq!(bounds.check(EventTimeMs(now - 1_000), now), None);
    /// assert_eq!(bounds.check(EventTimeMs(now - 1_001), now), Some(Counter::RejectedTooOld));
    /// assert_eq!(bounds.check(EventTimeMs(now + 101), now), Some(Counter::RejectedFuture));
    /// ```
    pub fn check(&self, event_time: EventTimeMs, now_ms: u64) -> Option<Counter> {
        let time = event_time.0;
        if self.max_age_ms > 0 && now_ms.saturating_sub(time) > self.max_age_ms {
            Some(Counter::RejectedTooOld)
        } else if self.max_future_skew_ms > 0
            && time.saturating_sub(now_ms) > self.max_future_skew_ms
        {
            Some(Counter::RejectedFuture)
        } else {
            None
        }
    }
}

/// How large an order's total and units may be before the source rejects the event as
/// implausible: a price typed in the wrong unit, a test value, a hostile producer.
///
/// An event beyond a bound never enters the dataflow and is counted in `rejected_implausible`.
/// Sums cannot wrap whatever the bounds ([`dataflows::model::Totals`] keeps them in 128 bits);
/// the bounds keep single absurd values out of every total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmountBounds {
    /// The largest total accepted, in cents; 0 for no bound.
    pub max_order_cents: u64,
    /// The most units accepted; 0 for no bound.
    pub max_units: u64,
}

impl AmountBounds {
    /// Whether `event` lies beyond a bound, and which: `Some("total_amount")` or
    /// `Some("units")`.
    ///
    /// ```
    /// use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
    /// use shopflow::sources::kafka::AmountBounds;
    ///
    /// let bounds = AmountBounds { max_order_cents: 1_000, max_units: 10 };
    /// let event = Event {
    ///     order_id: OrderId(1),
    ///     tag: Tag::Purchased,
    ///     user_id: UserId(1),
    ///     campaign_id: CampaignId(1),
    ///     total: Cents(1_000),
    ///     units: 10,
    ///     event_time: EventTimeMs(0),
    /// };
    /// assert_eq!(bounds.exceeded(&event), None);
    /// assert_eq!(bounds.exceeded(&Event { total: Cents(1_001), ..event.clone() }), Some("total_amount"));
    /// assert_eq!(bounds.exceeded(&Event { units: 11, ..event }), Some("units"));
    /// ```
    pub fn exceeded(&self, event: &Event) -> Option<&'static str> {
        let beyond = |value: u64, bound: u64| bound > 0 && value > bound;
        if beyond(event.total.0.unsigned_abs(), self.max_order_cents) {
            Some("total_amount")
        } else if beyond(u64::from(event.units), self.max_units) {
            Some("units")
        } else {
            None
        }
    }
}

fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}
