//! Decoding Avro events: the hand-written fast path against apache-avro's generic path.
//!
//! Each benchmark handles the same 10,000 pre-encoded random events; criterion reports the time
//! per batch and the throughput in events per second.

use std::hint::black_box;

use apache_avro::types::Value;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shopflow::sources::avro::{DEFAULT_SCHEMA_ID, Decoder, HEADER_LEN, encode_event, event_schema};

const EVENTS: usize = 10_000;

/// Events shaped like the generator's: small ids, recent times, totals of a few hundred.
fn events() -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(0xBE_AC);
    let tags = [Tag::Click, Tag::Purchased, Tag::Refunded];
    (0..EVENTS)
        .map(|n| {
            let tag = tags[rng.random_range(0..3)];
            let bought = tag != Tag::Click;
            Event {
                order_id: OrderId(n as u64 * 7),
                tag,
                user_id: UserId(rng.random_range(0..1_000_000)),
                campaign_id: CampaignId(rng.random_range(0..500)),
                total: Cents(if bought {
                    rng.random_range(100..100_000)
                } else {
                    0
                }),
                units: if bought { rng.random_range(1..10) } else { 0 },
                event_time: EventTimeMs(1_700_000_000_000 + rng.random_range(0..86_400_000)),
            }
        })
        .collect()
}

/// The resolved record to an event, by position; what a caller of apache-avro alone would write.
fn convert(value: Value) -> Option<Event> {
    let Value::Record(fields) = value else {
        return None;
    };
    let mut fields = fields.into_iter().map(|(_, value)| value);
    let (
        Some(Value::Int(id)),
        Some(Value::Int(campaign)),
        Some(Value::Long(order)),
        Some(Value::Double(amount)),
        Some(Value::Int(units)),
        Some(Value::Enum(tag, _)),
        Some(Value::TimestampMillis(time)),
    ) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    )
    else {
        return None;
    };
    Some(Event {
        order_id: OrderId(u64::try_from(order).ok()?),
        tag: [Tag::Click, Tag::Purchased, Tag::Refunded]
            .get(tag as usize)
            .copied()?,
        user_id: UserId(u32::try_from(id).ok()?),
        campaign_id: CampaignId(u32::try_from(campaign).ok()?),
        total: Cents((amount * 100.0).round() as i64),
        units: u32::try_from(units).ok()?,
        event_time: EventTimeMs(u64::try_from(time).ok()?),
    })
}

fn decoding(c: &mut Criterion) {
    let events = events();
    let messages: Vec<Vec<u8>> = events
        .iter()
        .map(|event| {
            let mut message = Vec::new();
            encode_event(DEFAULT_SCHEMA_ID, event, &mut message);
            message
        })
        .collect();
    let decoder = Decoder::new().expect("the bundled schema parses");
    let schema = event_schema().expect("the bundled schema parses");

    // The three must agree before their speed means anything.
    for (message, event) in messages.iter().zip(&events) {
        assert_eq!(&decoder.decode(message).expect("fast").event, event);
        assert_eq!(
            &decoder.decode_generic(message).expect("generic").event,
            event
        );
        #[allow(deprecated)]
        let value = apache_avro::from_avro_datum(schema, &mut &message[HEADER_LEN..], Some(schema))
            .expect("apache-avro");
        assert_eq!(convert(value).as_ref(), Some(event));
    }

    let mut group = c.benchmark_group("avro_decode_10k");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("fast", |b| {
        b.iter(|| {
            for message in &messages {
                black_box(decoder.decode(black_box(message)).ok());
            }
        })
    });
    group.bench_function("generic", |b| {
        b.iter(|| {
            for message in &messages {
                black_box(decoder.decode_generic(black_box(message)).ok());
            }
        })
    });
    group.bench_function("apache_from_avro_datum", |b| {
        b.iter(|| {
            for message in &messages {
                let mut body = &black_box(message)[HEADER_LEN..];
                #[allow(deprecated)]
                let value = apache_avro::from_avro_datum(schema, &mut body, Some(schema));
                black_box(value.ok().and_then(convert));
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("avro_encode_10k");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("encode_event", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            for event in &events {
                out.clear();
                encode_event(DEFAULT_SCHEMA_ID, black_box(event), &mut out);
                black_box(&out);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decoding);
criterion_main!(benches);
