//! The Avro event codec: round trips, agreement with apache-avro, schema evolution, and hostile
//! bytes.

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shopflow::sources::avro::{
    DEFAULT_SCHEMA_ID, DecodeError, DecodePath, Decoder, EVENT_SCHEMA, HEADER_LEN, MAX_CENTS,
    SchemaError, encode_event, event_schema,
};

use crate::support::avro::{
    apache_message, bundled_value, coupon_value, encoded, tag_index, zigzag,
};

/// Version 1 of the event schema, as the seed's producers wrote it.
const V1_SCHEMA: &str = r#"{
  "type": "record",
  "name": "Event",
  "namespace": "io.shopflow",
  "fields": [
    {"name": "id", "type": "int"},
    {"name": "campaign_id", "type": "int"},
    {"name": "order_id", "type": "long"},
    {"name": "total_amount", "type": "double"},
    {"name": "units", "type": "int"},
    {"name": "tag", "type": {"type": "enum", "name": "Tag", "symbols": ["click", "purchased"]}}
  ]
}"#;
const V1_ID: u32 = 7;

/// A later writer that added an optional field the engine does not know.
const COUPON_SCHEMA: &str = r#"{
  "type": "record",
  "name": "Event",
  "namespace": "io.shopflow",
  "fields": [
    {"name": "id", "type": "int"},
    {"name": "campaign_id", "type": "int"},
    {"name": "order_id", "type": "long"},
    {"name": "total_amount", "type": "double"},
    {"name": "units", "type": "int"},
    {"name": "tag", "type": {"type": "enum", "name": "Tag", "symbols": ["click", "purchased", "refunded"], "default": "click"}},
    {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 0},
    {"name": "coupon", "type": ["null", "string"], "default": null}
  ]
}"#;
const COUPON_ID: u32 = 8;

fn decoder() -> Decoder {
    let mut decoder = Decoder::new().expect("the bundled schema parses");
    decoder
        .register(V1_ID, V1_SCHEMA)
        .expect("version 1 registers");
    decoder
        .register(COUPON_ID, COUPON_SCHEMA)
        .expect("the coupon schema registers");
    decoder
}

/// A uniformly random width, then a value of that width: every varint length gets drawn.
fn wide(rng: &mut StdRng, max_bits: u32) -> u64 {
    let bits = rng.random_range(0..=max_bits);
    if bits == 0 {
        0
    } else {
        rng.random::<u64>() >> (64 - bits)
    }
}

/// A random event the schema can carry.
fn random_event(rng: &mut StdRng) -> Event {
    let tag = [Tag::Click, Tag::Purchased, Tag::Refunded][rng.random_range(0..3)];
    Event {
        order_id: OrderId(wide(rng, 63)),
        tag,
        user_id: UserId(wide(rng, 31) as u32),
        campaign_id: CampaignId(wide(rng, 31) as u32),
        total: Cents(if rng.random_bool(0.05) {
            MAX_CENTS - rng.random_range(0..1_000)
        } else {
            wide(rng, 51) as i64
        }),
        units: wide(rng, 31) as u32,
        event_time: EventTimeMs(wide(rng, 63)),
    }
}

fn v1_value(user: i32, tag: Tag, cents: i64) -> Value {
    Value::Record(vec![
        ("id".into(), Value::Int(user)),
        ("campaign_id".into(), Value::Int(3)),
        ("order_id".into(), Value::Long(99)),
        ("total_amount".into(), Value::Double(cents as f64 / 100.0)),
        ("units".into(), Value::Int(2)),
        (
            "tag".into(),
            Value::Enum(tag_index(tag), tag.symbol().into()),
        ),
    ])
}

fn sample_event() -> Event {
    Event {
        order_id: OrderId(123_456_789),
        tag: Tag::Purchased,
        user_id: UserId(42),
        campaign_id: CampaignId(7),
        total: Cents(12_345),
        units: 3,
        event_time: EventTimeMs(1_700_000_000_000),
    }
}

fn invalid(field: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::InvalidValue { field, reason }
}

/// A message of the bundled layout built field by field, for values `encode_event` never writes.
fn raw_message(fields: &[&[u8]]) -> Vec<u8> {
    let mut message = vec![0];
    message.extend_from_slice(&DEFAULT_SCHEMA_ID.to_be_bytes());
    for field in fields {
        message.extend_from_slice(field);
    }
    message
}

/// The bundled layout with the given raw fields, the others those of [`sample_event`].
struct Raw {
    id: Vec<u8>,
    campaign_id: Vec<u8>,
    order_id: Vec<u8>,
    total_amount: Vec<u8>,
    units: Vec<u8>,
    tag: Vec<u8>,
    event_time: Vec<u8>,
}

impl Raw {
    fn sample() -> Raw {
        Raw {
            id: zigzag(42),
            campaign_id: zigzag(7),
            order_id: zigzag(123_456_789),
            total_amount: 123.45f64.to_le_bytes().to_vec(),
            units: zigzag(3),
            tag: zigzag(1),
            event_time: zigzag(1_700_000_000_000),
        }
    }

    fn message(&self) -> Vec<u8> {
        raw_message(&[
            &self.id,
            &self.campaign_id,
            &self.order_id,
            &self.total_amount,
            &self.units,
            &self.tag,
            &self.event_time,
        ])
    }
}

#[test]
fn random_events_round_trip_through_the_fast_path() {
    let decoder = Decoder::with_bundled(31).unwrap();
    let mut rng = StdRng::seed_from_u64(0xA7_01);
    let mut message = Vec::new();
    for _ in 0..20_000 {
        let event = random_event(&mut rng);
        message.clear();
        encode_event(31, &event, &mut message);
        let decoded = decoder.decode(&message).unwrap();
        assert_eq!(decoded.schema_id, 31);
        assert_eq!(decoded.path, DecodePath::Fast);
        assert_eq!(decoded.event, event);
    }
}

#[test]
fn encoding_and_fast_decoding_agree_with_apache_avro() {
    let schema = event_schema().unwrap();
    let decoder = Decoder::new().unwrap();
    let reader = GenericDatumReader::builder(schema).build().unwrap();
    let mut rng = StdRng::seed_from_u64(0xA7_02);
    for _ in 0..5_000 {
        let event = random_event(&mut rng);
        let theirs = apache_message(DEFAULT_SCHEMA_ID, schema, bundled_value(&event));
        let ours = encoded(DEFAULT_SCHEMA_ID, &event);
        assert_eq!(ours, theirs, "{event:?}");
        // apache-avro reads our bytes back as the record it would have written.
        let read = reader.read_value(&mut &ours[HEADER_LEN..]).unwrap();
        assert_eq!(read, bundled_value(&event));
        let fast = decoder.decode(&ours).unwrap();
        let generic = decoder.decode_generic(&ours).unwrap();
        assert_eq!(fast.path, DecodePath::Fast);
        assert_eq!(generic.path, DecodePath::Generic);
        assert_eq!(fast.event, event);
        assert_eq!(generic.event, event);
    }
}

#[test]
fn the_bundled_layout_takes_the_fast_path_whatever_its_docs_and_defaults() {
    let mut decoder = Decoder::new().unwrap();
    // The bundled schema's layout with no docs, defaults or logical type: the same canonical form.
    let bare = r#"{"type": "record", "name": "Event", "namespace": "io.shopflow", "fields": [
        {"name": "id", "type": "int"}, {"name": "campaign_id", "type": "int"},
        {"name": "order_id", "type": "long"}, {"name": "total_amount", "type": "double"},
        {"name": "units", "type": "int"},
        {"name": "tag", "type": {"type": "enum", "name": "Tag", "symbols": ["click", "purchased", "refunded"]}},
        {"name": "event_time", "type": "long"}]}"#;
    decoder.register(12, bare).unwrap();
    decoder.register(13, EVENT_SCHEMA).unwrap();
    for id in [DEFAULT_SCHEMA_ID, 12, 13] {
        assert!(decoder.knows(id));
        let decoded = decoder.decode(&encoded(id, &sample_event())).unwrap();
        assert_eq!(decoded.path, DecodePath::Fast, "id {id}");
        assert_eq!(decoded.event, sample_event());
    }
    assert!(!decoder.knows(14));
}

#[test]
fn a_writer_with_the_same_fields_in_another_order_takes_the_generic_path() {
    let mut decoder = Decoder::new().unwrap();
    let reordered = r#"{"type": "record", "name": "Event", "namespace": "io.shopflow", "fields": [
        {"name": "campaign_id", "type": "int"}, {"name": "id", "type": "int"},
        {"name": "order_id", "type": "long"}, {"name": "total_amount", "type": "double"},
        {"name": "units", "type": "int"},
        {"name": "tag", "type": {"type": "enum", "name": "Tag", "symbols": ["click", "purchased", "refunded"]}},
        {"name": "event_time", "type": "long"}]}"#;
    decoder.register(15, reordered).unwrap();
    let schema = Schema::parse_str(reordered).unwrap();
    let Value::Record(mut fields) = bundled_value(&sample_event()) else {
        unreachable!()
    };
    fields.swap(0, 1);
    fields[6].1 = Value::Long(sample_event().event_time.0 as i64);
    let decoded = decoder
        .decode(&apache_message(15, &schema, Value::Record(fields)))
        .unwrap();
    assert_eq!(decoded.path, DecodePath::Generic);
    assert_eq!(decoded.event, sample_event());
}

#[test]
fn version_1_writers_decode_with_no_event_time() {
    let decoder = decoder();
    let v1 = Schema::parse_str(V1_SCHEMA).unwrap();
    for (user, tag) in [(5, Tag::Click), (6, Tag::Purchased)] {
        let message = apache_message(V1_ID, &v1, v1_value(user, tag, 1_999));
        let decoded = decoder.decode(&message).unwrap();
        assert_eq!(decoded.schema_id, V1_ID);
        assert_eq!(decoded.path, DecodePath::Generic);
        assert!(!decoded.has_event_time());
        let expected = Event {
            order_id: OrderId(99),
            tag,
            user_id: UserId(user as u32),
            campaign_id: CampaignId(3),
            total: Cents(1_999),
            units: 2,
            event_time: EventTimeMs(0),
        };
        assert_eq!(decoded.event, expected);
        // The caller substitutes the arrival time for the absent event time.
        let arrived = decoded.into_event(EventTimeMs(1_234));
        assert_eq!(arrived.event_time, EventTimeMs(1_234));
    }
}

#[test]
fn into_event_keeps_a_written_event_time() {
    let decoded = Decoder::new()
        .unwrap()
        .decode(&encoded(DEFAULT_SCHEMA_ID, &sample_event()))
        .unwrap();
    assert!(decoded.has_event_time());
    assert_eq!(decoded.into_event(EventTimeMs(5)), sample_event());
}

#[test]
fn a_writer_with_an_extra_field_decodes_and_the_field_is_ignored() {
    let decoder = decoder();
    let schema = Schema::parse_str(COUPON_SCHEMA).unwrap();
    let mut rng = StdRng::seed_from_u64(0xA7_03);
    for i in 0..500 {
        let event = random_event(&mut rng);
        let coupon = (i % 2 == 1).then_some("SAVE10-ÉTÉ");
        let message = apache_message(COUPON_ID, &schema, coupon_value(&event, coupon));
        let decoded = decoder.decode(&message).unwrap();
        assert_eq!(decoded.path, DecodePath::Generic);
        assert_eq!(decoded.event, event);
    }
}

#[test]
fn writer_schemas_that_cannot_be_read_are_refused_at_registration() {
    let mut decoder = Decoder::new().unwrap();
    assert!(matches!(
        decoder.register(9, "{not json"),
        Err(SchemaError::Parse(_))
    ));
    let string_id = V1_SCHEMA.replacen(
        r#""name": "id", "type": "int""#,
        r#""name": "id", "type": "string""#,
        1,
    );
    assert!(matches!(
        decoder.register(9, &string_id),
        Err(SchemaError::Incompatible { id: 9, .. })
    ));
    // Dropping a field the bundled schema has no default for.
    let no_units = V1_SCHEMA.replacen(r#"{"name": "units", "type": "int"},"#, "", 1);
    assert!(matches!(
        decoder.register(9, &no_units),
        Err(SchemaError::Incompatible { id: 9, .. })
    ));
    assert!(!decoder.knows(9));
}

#[test]
fn totals_round_half_away_from_zero_to_cents() {
    let decoder = Decoder::new().unwrap();
    // Each amount times 100 is exactly halfway between two cents in binary.
    for (amount, cents) in [(0.125, 13), (0.025, 3), (2.675, 268), (0.0, 0), (-0.0, 0)] {
        let mut raw = Raw::sample();
        raw.total_amount = f64::to_le_bytes(amount).to_vec();
        let decoded = decoder.decode(&raw.message()).unwrap();
        assert_eq!(decoded.event.total, Cents(cents), "{amount}");
    }
}

#[test]
fn totals_up_to_max_cents_are_exact_and_larger_ones_rejected() {
    let decoder = Decoder::new().unwrap();
    let with_total = |cents: i64| Event {
        total: Cents(cents),
        ..sample_event()
    };
    for cents in [MAX_CENTS, MAX_CENTS - 1, MAX_CENTS - 99] {
        let decoded = decoder.decode(&encoded(1, &with_total(cents))).unwrap();
        assert_eq!(decoded.event.total, Cents(cents));
    }
    for cents in [MAX_CENTS + 1, MAX_CENTS + 100, i64::MAX] {
        assert_eq!(
            decoder.decode(&encoded(1, &with_total(cents))),
            Err(invalid("total_amount", "too large to keep in exact cents"))
        );
    }
}

#[test]
fn events_the_schema_cannot_carry_are_rejected_not_misread() {
    let decoder = Decoder::new().unwrap();
    let cases: [(Event, &str); 6] = [
        (
            Event {
                user_id: UserId(u32::MAX),
                ..sample_event()
            },
            "id",
        ),
        (
            Event {
                campaign_id: CampaignId(1 << 31),
                ..sample_event()
            },
            "campaign_id",
        ),
        (
            Event {
                order_id: OrderId(u64::MAX),
                ..sample_event()
            },
            "order_id",
        ),
        (
            Event {
                total: Cents(-1),
                ..sample_event()
            },
            "total_amount",
        ),
        (
            Event {
                units: u32::MAX,
                ..sample_event()
            },
            "units",
        ),
        (
            Event {
                event_time: EventTimeMs(1 << 63),
                ..sample_event()
            },
            "event_time",
        ),
    ];
    for (event, field) in cases {
        assert_eq!(
            decoder.decode(&encoded(1, &event)),
            Err(invalid(field, "negative")),
            "{field}"
        );
    }
}

#[test]
fn a_wrong_magic_byte_is_bad_magic() {
    let decoder = decoder();
    let mut message = encoded(DEFAULT_SCHEMA_ID, &sample_event());
    message[0] = 0x7b;
    assert_eq!(decoder.decode(&message), Err(DecodeError::BadMagic(0x7b)));
    assert_eq!(
        decoder.decode(b"{\"id\":1}"),
        Err(DecodeError::BadMagic(b'{'))
    );
    assert_eq!(decoder.decode(&[0xff]), Err(DecodeError::BadMagic(0xff)));
}

#[test]
fn an_unknown_schema_id_is_reported_with_the_id() {
    let decoder = decoder();
    let message = encoded(4_000_000_000, &sample_event());
    assert_eq!(
        decoder.decode(&message),
        Err(DecodeError::UnknownSchemaId(4_000_000_000))
    );
    assert_eq!(
        decoder.decode_generic(&message),
        Err(DecodeError::UnknownSchemaId(4_000_000_000))
    );
}

#[test]
fn every_truncation_is_too_short_or_truncated() {
    let decoder = decoder();
    let event = sample_event();
    let v1 = Schema::parse_str(V1_SCHEMA).unwrap();
    let coupon = Schema::parse_str(COUPON_SCHEMA).unwrap();
    let messages = [
        encoded(DEFAULT_SCHEMA_ID, &event),
        apache_message(V1_ID, &v1, v1_value(5, Tag::Purchased, 1_999)),
        apache_message(COUPON_ID, &coupon, coupon_value(&event, Some("SPRING"))),
        apache_message(COUPON_ID, &coupon, coupon_value(&event, None)),
    ];
    for message in &messages {
        assert!(decoder.decode(message).is_ok());
        for len in 0..message.len() {
            let prefix = &message[..len];
            let expected = if len < HEADER_LEN {
                DecodeError::TooShort
            } else {
                DecodeError::Truncated
            };
            assert_eq!(
                decoder.decode(prefix),
                Err(expected.clone()),
                "{len} of {message:?}"
            );
            assert_eq!(
                decoder.decode_generic(prefix),
                Err(expected),
                "{len} of {message:?}"
            );
        }
    }
}

#[test]
fn negative_numbers_are_invalid_values() {
    let decoder = Decoder::new().unwrap();
    let mut raw = Raw::sample();
    raw.units = zigzag(-2);
    let message = raw.message();
    assert_eq!(decoder.decode(&message), Err(invalid("units", "negative")));
    assert_eq!(
        decoder.decode_generic(&message),
        Err(invalid("units", "negative"))
    );

    let mut raw = Raw::sample();
    raw.id = zigzag(-1);
    assert_eq!(
        decoder.decode(&raw.message()),
        Err(invalid("id", "negative"))
    );

    let mut raw = Raw::sample();
    raw.order_id = zigzag(i64::MIN);
    assert_eq!(
        decoder.decode(&raw.message()),
        Err(invalid("order_id", "negative"))
    );

    let mut raw = Raw::sample();
    raw.event_time = zigzag(-1);
    assert_eq!(
        decoder.decode(&raw.message()),
        Err(invalid("event_time", "negative"))
    );
}

#[test]
fn amounts_that_are_not_money_are_invalid_values() {
    let decoder = Decoder::new().unwrap();
    for (amount, reason) in [
        (-0.01, "negative"),
        (f64::NEG_INFINITY, "not a finite number"),
        (f64::INFINITY, "not a finite number"),
        (f64::NAN, "not a finite number"),
        (1e300, "too large to keep in exact cents"),
    ] {
        let mut raw = Raw::sample();
        raw.total_amount = amount.to_le_bytes().to_vec();
        let message = raw.message();
        assert_eq!(
            decoder.decode(&message),
            Err(invalid("total_amount", reason))
        );
        assert_eq!(
            decoder.decode_generic(&message),
            Err(invalid("total_amount", reason))
        );
    }
}

#[test]
fn an_enum_index_out_of_range_is_an_invalid_value() {
    let decoder = decoder();
    for index in [3, 100, -1] {
        let mut raw = Raw::sample();
        raw.tag = zigzag(index);
        let message = raw.message();
        assert_eq!(
            decoder.decode(&message),
            Err(invalid("tag", "enum index out of range"))
        );
        assert_eq!(
            decoder.decode_generic(&message),
            Err(invalid("tag", "enum index out of range"))
        );
    }
    // Version 1 has two symbols: `refunded`'s index is out of its range.
    let mut message = vec![0];
    message.extend_from_slice(&V1_ID.to_be_bytes());
    for field in [
        zigzag(1),
        zigzag(2),
        zigzag(3),
        1.5f64.to_le_bytes().to_vec(),
        zigzag(1),
        zigzag(2),
    ] {
        message.extend_from_slice(&field);
    }
    assert_eq!(
        decoder.decode(&message),
        Err(invalid("tag", "enum index out of range"))
    );
}

#[test]
fn a_huge_varint_is_an_invalid_value() {
    let decoder = decoder();
    // Ten continuation bytes: longer than any 64-bit varint.
    let mut raw = Raw::sample();
    raw.order_id = vec![0xff; 12];
    assert_eq!(
        decoder.decode(&raw.message()),
        Err(invalid("order_id", "varint overflows 64 bits"))
    );
    assert_eq!(
        decoder.decode_generic(&raw.message()),
        Err(invalid("order_id", "varint overflows 64 bits"))
    );
    // Ten bytes whose last carries more than the 64th bit.
    let mut raw = Raw::sample();
    raw.event_time = [[0x80; 9].as_slice(), &[0x02]].concat();
    assert_eq!(
        decoder.decode(&raw.message()),
        Err(invalid("event_time", "varint overflows 64 bits"))
    );
    // The largest ten-byte varint is fine as a long, not as an int.
    let mut raw = Raw::sample();
    raw.units = [[0xff; 9].as_slice(), &[0x01]].concat();
    assert_eq!(
        decoder.decode(&raw.message()),
        Err(invalid("units", "outside the int range"))
    );
    let mut raw = Raw::sample();
    raw.campaign_id = zigzag(i64::from(i32::MAX) + 1);
    assert_eq!(
        decoder.decode(&raw.message()),
        Err(invalid("campaign_id", "outside the int range"))
    );
    // In a version-1 message, through the generic path.
    let mut message = vec![0];
    message.extend_from_slice(&V1_ID.to_be_bytes());
    message.extend_from_slice(&[0xff; 11]);
    assert_eq!(
        decoder.decode(&message),
        Err(invalid("id", "varint overflows 64 bits"))
    );
}

#[test]
fn trailing_garbage_is_trailing_bytes() {
    let decoder = decoder();
    let mut message = encoded(DEFAULT_SCHEMA_ID, &sample_event());
    message.extend_from_slice(b"\x00garbage");
    assert_eq!(decoder.decode(&message), Err(DecodeError::TrailingBytes));
    assert_eq!(
        decoder.decode_generic(&message),
        Err(DecodeError::TrailingBytes)
    );
    let v1 = Schema::parse_str(V1_SCHEMA).unwrap();
    let mut message = apache_message(V1_ID, &v1, v1_value(1, Tag::Click, 0));
    message.push(0);
    assert_eq!(decoder.decode(&message), Err(DecodeError::TrailingBytes));
}

#[test]
fn hostile_lengths_and_indexes_in_writer_only_fields_allocate_nothing() {
    let decoder = decoder();
    let schema = Schema::parse_str(COUPON_SCHEMA).unwrap();
    let valid = apache_message(COUPON_ID, &schema, coupon_value(&sample_event(), None));
    // The last byte is the coupon's union index (0: null).
    let prefix = &valid[..valid.len() - 1];
    let with_coupon = |tail: &[u8]| [prefix, tail].concat();
    // A string of 2^62 bytes announced in a 30-byte message.
    let huge = with_coupon(&[zigzag(1), zigzag(1 << 62)].concat());
    assert_eq!(decoder.decode(&huge), Err(DecodeError::Truncated));
    let negative = with_coupon(&[zigzag(1), zigzag(-5)].concat());
    assert_eq!(
        decoder.decode(&negative),
        Err(invalid("writer-only field", "negative length"))
    );
    let not_utf8 = with_coupon(&[zigzag(1), zigzag(2), vec![0xc3, 0x28]].concat());
    assert_eq!(
        decoder.decode(&not_utf8),
        Err(invalid("writer-only field", "string is not UTF-8"))
    );
    let bad_branch = with_coupon(&zigzag(2));
    assert_eq!(
        decoder.decode(&bad_branch),
        Err(invalid("writer-only field", "union index out of range"))
    );
}

#[test]
fn arrays_of_nothing_cannot_outnumber_the_message_bytes() {
    // Null items take no bytes, so only the count bounds the work.
    let mut decoder = Decoder::new().unwrap();
    let schema = COUPON_SCHEMA.replacen(
        r#"["null", "string"], "default": null"#,
        r#"{"type": "array", "items": "null"}, "default": []"#,
        1,
    );
    decoder.register(20, &schema).unwrap();
    let mut message = encoded(20, &sample_event());
    message.extend_from_slice(&zigzag(1 << 40));
    message.extend_from_slice(&zigzag(0));
    assert_eq!(
        decoder.decode(&message),
        Err(invalid(
            "writer-only field",
            "more items than the message has bytes"
        ))
    );
    let mut message = encoded(20, &sample_event());
    message.extend_from_slice(&zigzag(3));
    message.extend_from_slice(&zigzag(0));
    assert_eq!(decoder.decode(&message).unwrap().event, sample_event());
}

#[test]
fn reasons_are_stable_snake_case_names() {
    let errors = [
        DecodeError::BadMagic(1),
        DecodeError::TooShort,
        DecodeError::UnknownSchemaId(3),
        DecodeError::Truncated,
        invalid("units", "negative"),
        DecodeError::TrailingBytes,
        DecodeError::Resolution("x".into()),
    ];
    let reasons: Vec<&str> = errors.iter().map(DecodeError::reason).collect();
    assert_eq!(
        reasons,
        [
            "bad_magic",
            "too_short",
            "unknown_schema_id",
            "truncated",
            "invalid_value",
            "trailing_bytes",
            "resolution"
        ]
    );
    assert_eq!(reasons, DecodeError::REASONS);
}

/// A header for one of the test decoder's schemas, or none, before arbitrary bytes.
fn framed(header: u8, body: &[u8]) -> Vec<u8> {
    let id = match header {
        0 => return body.to_vec(),
        1 => DEFAULT_SCHEMA_ID,
        2 => V1_ID,
        _ => COUPON_ID,
    };
    let mut message = vec![0];
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(body);
    message
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(header in 0u8..4, body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let decoder = decoder();
        let message = framed(header, &body);
        let fast = decoder.decode(&message);
        let generic = decoder.decode_generic(&message);
        // Both paths accept the same messages of the bundled layout, and read them alike; they
        // may name different faults in a message with several.
        if header == 1 {
            prop_assert_eq!(fast.ok().map(|d| d.event), generic.ok().map(|d| d.event));
        }
    }

    #[test]
    fn corrupted_valid_messages_never_panic(
        seed in any::<u64>(),
        header in 1u8..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let decoder = decoder();
        let event = random_event(&mut StdRng::seed_from_u64(seed));
        let mut message = match header {
            1 => encoded(DEFAULT_SCHEMA_ID, &event),
            2 => apache_message(
                V1_ID,
                &Schema::parse_str(V1_SCHEMA).unwrap(),
                v1_value(event.user_id.0 as i32, Tag::Click, event.total.0),
            ),
            _ => apache_message(
                COUPON_ID,
                &Schema::parse_str(COUPON_SCHEMA).unwrap(),
                coupon_value(&event, Some("WINTER")),
            ),
        };
        for (at, byte) in flips {
            let at = HEADER_LEN + at % (message.len() - HEADER_LEN);
            message[at] ^= byte;
        }
        let fast = decoder.decode(&message);
        let generic = decoder.decode_generic(&message);
        if header == 1 {
            prop_assert_eq!(fast.ok().map(|d| d.event), generic.ok().map(|d| d.event));
        }
    }
}
