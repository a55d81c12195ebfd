//! A message's payload into an event, or a counted rejection.

use std::time::{Duration, Instant};

use dataflows::model::{Counter, Event, EventTimeMs, Tick};

use crate::config::kafka::{AmountBounds, TimeBounds};
use crate::sources::avro::{DecodeError, Decoder};
use crate::sources::registry::{self, RegistryError, SchemaCache};

/// Turns payloads into events: the size limit, the decoder (with the registry's writer schemas),
/// the amount bounds and the event-time bounds.
pub(super) struct MessageReader {
    pub(super) decoder: Decoder,
    /// The schema registry's writer schemas, when there is one.
    pub(super) schemas: Option<SchemaCache>,
    pub(super) max_message_bytes: usize,
    pub(super) amount_bounds: AmountBounds,
    pub(super) time_bounds: TimeBounds,
    pub(super) warnings: Warnings,
}

impl MessageReader {
    /// One message's event, or why it is rejected.
    pub(super) fn read(
        &mut self,
        payload: &[u8],
        arrival: Tick,
        now: u64,
    ) -> Result<Event, Rejected> {
        if payload.len() > self.max_message_bytes {
            return Err(Rejected {
                counter: Counter::MalformedOversize,
                reason: "oversize",
                detail: format!(
                    "{} bytes, over max-message-bytes {}",
                    payload.len(),
                    self.max_message_bytes
                ),
            });
        }
        // An id the decoder does not know is fetched from the registry once; when that fails,
        // the message is counted as an unknown schema id.
        if let Some(schemas) = &mut self.schemas
            && let Some(id) = registry::header_schema_id(payload)
            && !self.decoder.knows(id)
            && let Err(error) = schemas.resolve(&mut self.decoder, id)
            && !matches!(error, RegistryError::RecentlyFailed { .. })
        {
            self.warnings
                .warn(format_args!("cannot fetch writer schema {id}: {error}"));
        }
        let event = match self.decoder.decode(payload) {
            Ok(decoded) => decoded.into_event(EventTimeMs(arrival)),
            Err(error) => {
                return Err(Rejected {
                    counter: counter_of(&error),
                    reason: error.reason(),
                    detail: error.to_string(),
                });
            }
        };
        if let Some(field) = self.amount_bounds.exceeded(&event) {
            return Err(Rejected {
                counter: Counter::RejectedImplausible,
                reason: Counter::RejectedImplausible.name(),
                detail: format!(
                    "{field} beyond the plausibility bound (total {} cents, {} units; {:?})",
                    event.total, event.units, self.amount_bounds
                ),
            });
        }
        match self.time_bounds.check(event.event_time, now) {
            None => Ok(event),
            Some(counter) => Err(Rejected {
                counter,
                reason: counter.name(),
                detail: format!(
                    "event time {} is {} ms from the wall clock at {now}, beyond the bounds {:?}",
                    event.event_time,
                    i128::from(event.event_time.0) - i128::from(now),
                    self.time_bounds
                ),
            }),
        }
    }
}

/// Why a message was not handed on.
#[derive(Debug)]
pub(in crate::sources::kafka) struct Rejected {
    /// The counter it is counted under.
    pub(in crate::sources::kafka) counter: Counter,
    /// A stable snake_case reason: [`DecodeError::reason`], `oversize`, or the counter's name.
    pub(in crate::sources::kafka) reason: &'static str,
    /// A message for the log and the dead-letter copy.
    pub(in crate::sources::kafka) detail: String,
}

/// Logs at most one warning per second, counting the ones it held back.
#[derive(Debug, Default)]
pub(super) struct Warnings {
    last: Option<Instant>,
    suppressed: u64,
}

impl Warnings {
    pub(super) fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if self
            .last
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(suppressed = self.suppressed, "{message}");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// The pipeline counter a decoding failure is counted under: framing, unknown schema, truncated
/// (or bytes left over), negative units or total, any other invalid value (wrong types included).
pub fn counter_of(error: &DecodeError) -> Counter {
    match error {
        DecodeError::BadMagic(_) | DecodeError::TooShort => Counter::MalformedFraming,
        DecodeError::UnknownSchemaId(_) => Counter::MalformedUnknownSchema,
        DecodeError::Truncated | DecodeError::TrailingBytes => Counter::MalformedTruncated,
        DecodeError::InvalidValue {
            field: "units" | "total_amount",
            reason: "negative",
        } => Counter::RejectedNegative,
        DecodeError::InvalidValue { .. } | DecodeError::Resolution(_) => {
            Counter::MalformedInvalidValue
        }
    }
}

#[cfg(test)]
mod tests {
    use dataflows::model::{CampaignId, Cents, OrderId, Tag, UserId};

    use super::*;
    use crate::config::kafka::MIN_MESSAGE_BYTES;
    use crate::sources::avro;

    const NOW: u64 = 1_800_000_000_000;

    fn event(event_time: u64) -> Event {
        Event {
            order_id: OrderId(7),
            tag: Tag::Purchased,
            user_id: UserId(3),
            campaign_id: CampaignId(2),
            total: Cents(1_999),
            units: 2,
            event_time: EventTimeMs(event_time),
        }
    }

    fn message(event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        avro::encode_event(avro::DEFAULT_SCHEMA_ID, event, &mut out);
        out
    }

    fn reader(max_message_bytes: usize, time_bounds: TimeBounds) -> MessageReader {
        MessageReader {
            decoder: Decoder::new().expect("the bundled schema"),
            schemas: None,
            max_message_bytes,
            amount_bounds: AmountBounds::default(),
            time_bounds,
            warnings: Warnings::default(),
        }
    }

    fn counter(reader: &mut MessageReader, payload: &[u8]) -> Option<Counter> {
        reader
            .read(payload, NOW - NOW % 1_000, NOW)
            .err()
            .map(|r| r.counter)
    }

    #[test]
    fn every_decoding_failure_has_its_counter() {
        let invalid = |field, reason| DecodeError::InvalidValue { field, reason };
        let cases = [
            (DecodeError::BadMagic(7), Counter::MalformedFraming),
            (DecodeError::TooShort, Counter::MalformedFraming),
            (
                DecodeError::UnknownSchemaId(9),
                Counter::MalformedUnknownSchema,
            ),
            (DecodeError::Truncated, Counter::MalformedTruncated),
            (DecodeError::TrailingBytes, Counter::MalformedTruncated),
            (invalid("units", "negative"), Counter::RejectedNegative),
            (
                invalid("total_amount", "negative"),
                Counter::RejectedNegative,
            ),
            (invalid("id", "negative"), Counter::MalformedInvalidValue),
            (
                invalid("event_time", "negative"),
                Counter::MalformedInvalidValue,
            ),
            (
                invalid("total_amount", "not a finite number"),
                Counter::MalformedInvalidValue,
            ),
            (
                invalid("tag", "enum index out of range"),
                Counter::MalformedInvalidValue,
            ),
            (
                DecodeError::Resolution("x".into()),
                Counter::MalformedInvalidValue,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(counter_of(&error), expected, "{error:?}");
        }
    }

    #[test]
    fn time_bounds_reject_beyond_them_and_zero_disables_them() {
        let bounds = TimeBounds {
            max_age_ms: 60_000,
            max_future_skew_ms: 5_000,
        };
        assert_eq!(bounds.check(EventTimeMs(NOW), NOW), None);
        assert_eq!(bounds.check(EventTimeMs(NOW - 60_000), NOW), None);
        assert_eq!(
            bounds.check(EventTimeMs(NOW - 60_001), NOW),
            Some(Counter::RejectedTooOld)
        );
        assert_eq!(
            bounds.check(EventTimeMs(1), NOW),
            Some(Counter::RejectedTooOld)
        );
        assert_eq!(bounds.check(EventTimeMs(NOW + 5_000), NOW), None);
        assert_eq!(
            bounds.check(EventTimeMs(NOW + 5_001), NOW),
            Some(Counter::RejectedFuture)
        );
        assert_eq!(
            bounds.check(EventTimeMs(u64::MAX), NOW),
            Some(Counter::RejectedFuture)
        );
        let off = TimeBounds::default();
        assert_eq!(off.check(EventTimeMs(1), NOW), None);
        assert_eq!(off.check(EventTimeMs(u64::MAX), NOW), None);
    }

    #[test]
    fn a_message_is_read_or_rejected_under_one_counter() {
        let bounds = TimeBounds {
            max_age_ms: 86_400_000,
            max_future_skew_ms: 300_000,
        };
        let mut reader = reader(64, bounds);
        let good = event(NOW - 30_000);
        assert_eq!(reader.read(&message(&good), NOW, NOW).ok(), Some(good));
        // No event time: it gets the arrival tick, which is within the bounds.
        let untimed = event(0);
        assert_eq!(
            reader.read(&message(&untimed), NOW - 500, NOW).ok(),
            Some(event(NOW - 500))
        );
        let mut padded = message(&event(NOW));
        padded.resize(65, 0);
        assert_eq!(
            counter(&mut reader, &padded),
            Some(Counter::MalformedOversize)
        );
        padded.truncate(64);
        assert_eq!(
            counter(&mut reader, &padded),
            Some(Counter::MalformedTruncated),
            "at the limit it is decoded: bytes left over"
        );
        let negative_units = Event {
            units: u32::MAX,
            ..event(NOW)
        };
        let negative_total = Event {
            total: Cents(-1),
            ..event(NOW)
        };
        for bad in [negative_units, negative_total] {
            assert_eq!(
                counter(&mut reader, &message(&bad)),
                Some(Counter::RejectedNegative)
            );
        }
        assert_eq!(
            counter(&mut reader, &message(&event(1))),
            Some(Counter::RejectedTooOld)
        );
        assert_eq!(
            counter(&mut reader, &message(&event(NOW + 3_600_000))),
            Some(Counter::RejectedFuture)
        );
        assert_eq!(
            counter(&mut reader, b"\x07junk"),
            Some(Counter::MalformedFraming)
        );
        assert_eq!(counter(&mut reader, b""), Some(Counter::MalformedFraming));
    }

    /// Totals and units beyond the bounds are rejected as implausible, at the bound they are
    /// read, and 0 disables a bound (the decoder's own limit still holds).
    #[test]
    fn amounts_beyond_the_plausibility_bounds_are_rejected() {
        let mut reader = reader(64, TimeBounds::default());
        reader.amount_bounds = AmountBounds {
            max_order_cents: 1_000_000,
            max_units: 500,
        };
        let at_bounds = Event {
            total: Cents(1_000_000),
            units: 500,
            ..event(NOW)
        };
        assert_eq!(
            reader.read(&message(&at_bounds), NOW, NOW).ok(),
            Some(at_bounds.clone())
        );
        let huge = Event {
            // The purchase: 2.2e13 currency units.
            total: Cents(2_200_000_000_000_000),
            ..at_bounds.clone()
        };
        for bad in [
            Event {
                total: Cents(1_000_001),
                ..at_bounds.clone()
            },
            Event {
                units: 501,
                ..at_bounds.clone()
            },
            huge.clone(),
        ] {
            let rejected = reader
                .read(&message(&bad), NOW, NOW)
                .expect_err("implausible");
            assert_eq!(rejected.counter, Counter::RejectedImplausible, "{bad:?}");
            assert_eq!(rejected.reason, "rejected_implausible");
        }
        // A negative total is counted as negative, whatever the bounds.
        let negative = Event {
            total: Cents(-5_000_000),
            ..at_bounds.clone()
        };
        assert_eq!(
            counter(&mut reader, &message(&negative)),
            Some(Counter::RejectedNegative)
        );
        // No bound: the decoder's limit is the only one.
        reader.amount_bounds = AmountBounds::default();
        assert_eq!(reader.read(&message(&huge), NOW, NOW).ok(), Some(huge));
        let beyond_decoding = Event {
            total: Cents(avro::MAX_CENTS + 1_000),
            ..at_bounds
        };
        assert_eq!(
            counter(&mut reader, &message(&beyond_decoding)),
            Some(Counter::MalformedInvalidValue)
        );
    }

    /// The shipped bounds admit every event the generator makes and reject the totals.
    #[test]
    fn the_shipped_bounds_are_on() {
        use crate::config::{Config, DEFAULT_TOML, no_env};
        let config =
            Config::from_layers(DEFAULT_TOML, no_env()).expect("the default configuration");
        let bounds = config.kafka.amount_bounds();
        assert!(
            bounds.max_order_cents > 0 && bounds.max_units > 0,
            "{bounds:?}"
        );
        let generator =
            crate::generators::events::EventGenerator::new(config.generator.clone(), NOW)
                .expect("the default generator");
        for n in 0..200_000 {
            let event = generator.event(n);
            assert_eq!(bounds.exceeded(&event), None, "{event:?}");
        }
        let huge = Event {
            total: Cents(2_200_000_000_000_000),
            ..event(NOW)
        };
        assert_eq!(bounds.exceeded(&huge), Some("total_amount"));
    }

    #[test]
    fn the_message_size_limit_leaves_room_for_every_event() {
        const { assert!(MIN_MESSAGE_BYTES >= avro::MAX_ENCODED_LEN) };
        let widest = Event {
            order_id: OrderId(u64::MAX >> 1),
            user_id: UserId(i32::MAX as u32),
            campaign_id: CampaignId(i32::MAX as u32),
            units: i32::MAX as u32,
            total: Cents(avro::MAX_CENTS),
            event_time: EventTimeMs(u64::MAX >> 1),
            ..event(NOW)
        };
        assert!(message(&widest).len() <= avro::MAX_ENCODED_LEN);
    }
}
