//! Avro messages for the tests: the bundled layout written by `encode_event`, field by field, or
//! by apache-avro as an independent writer.

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use dataflows::model::{Event, Tag};
use shopflow::sources::avro::encode_event;

/// `event` as the shop sends it: Confluent-framed under `schema_id`.
pub fn encoded(schema_id: u32, event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    encode_event(schema_id, event, &mut out);
    out
}

/// Appends `n` as Avro's zig-zag varint.
pub fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `n` as Avro's zig-zag varint.
pub fn zigzag(n: i64) -> Vec<u8> {
    let mut out = Vec::new();
    put_long(&mut out, n);
    out
}

/// The event as an apache-avro record of the bundled schema.
pub fn bundled_value(event: &Event) -> Value {
    Value::Record(vec![
        ("id".into(), Value::Int(event.user_id.0 as i32)),
        ("campaign_id".into(), Value::Int(event.campaign_id.0 as i32)),
        ("order_id".into(), Value::Long(event.order_id.0 as i64)),
        (
            "total_amount".into(),
            Value::Double(event.total.0 as f64 / 100.0),
        ),
        ("units".into(), Value::Int(event.units as i32)),
        (
            "tag".into(),
            Value::Enum(tag_index(event.tag), event.tag.symbol().into()),
        ),
        (
            "event_time".into(),
            Value::TimestampMillis(event.event_time.0 as i64),
        ),
    ])
}

/// The tag's index among the bundled schema's enum symbols.
pub fn tag_index(tag: Tag) -> u32 {
    match tag {
        Tag::Click => 0,
        Tag::Purchased => 1,
        Tag::Refunded => 2,
    }
}

/// The event as a record of the bundled schema with an optional `coupon` string added last.
pub fn coupon_value(event: &Event, coupon: Option<&str>) -> Value {
    let Value::Record(mut fields) = bundled_value(event) else {
        unreachable!("bundled_value builds a record")
    };
    let coupon = match coupon {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(code) => Value::Union(1, Box::new(Value::String(code.into()))),
    };
    fields.push(("coupon".into(), coupon));
    Value::Record(fields)
}

/// Frames `value` written by apache-avro with `schema`.
pub fn apache_message(schema_id: u32, schema: &Schema, value: Value) -> Vec<u8> {
    let body = GenericDatumWriter::builder(schema)
        .build()
        .expect("a writer")
        .write_value_to_vec(value)
        .expect("written");
    let mut message = vec![0];
    message.extend_from_slice(&schema_id.to_be_bytes());
    message.extend_from_slice(&body);
    message
}
