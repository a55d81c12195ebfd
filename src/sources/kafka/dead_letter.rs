//! Dead letters: a copy of each rejected message, with why and where from in its headers.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};

use super::{client::LogContext, reader::Rejected};

/// Copies a rejected message to the dead-letter topic, saying why and where it came from.
/// The most payload bytes a dead letter copies: with its headers it stays under the 1 MB that
/// brokers and producers take by default (`message.max.bytes`); a larger payload is cut there,
/// and its headers say so.
pub const DEAD_LETTER_MAX_PAYLOAD: usize = 512 * 1024;

/// Copies a rejected message to the dead-letter topic, with why and where from in its headers:
/// a payload over [`DEAD_LETTER_MAX_PAYLOAD`] cut to it (`shopflow.truncated` = `true`,
/// `shopflow.payload-bytes` its whole size), a null payload marked (`shopflow.payload` = `null`).
pub(super) fn dead_letter(
    producer: &BaseProducer<LogContext>,
    topic: &str,
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    rejected: &Rejected,
    (source, partition, offset): (&str, i32, i64),
) {
    let partition_text = partition.to_string();
    let offset_text = offset.to_string();
    let whole = payload.map_or(0, <[u8]>::len);
    let size_text = whole.to_string();
    let copied = payload.map(|p| &p[..p.len().min(DEAD_LETTER_MAX_PAYLOAD)]);
    let mut headers = OwnedHeaders::new();
    if payload.is_none() {
        headers = headers.insert(Header {
            key: "shopflow.payload",
            value: Some("null"),
        });
    }
    if whole > DEAD_LETTER_MAX_PAYLOAD {
        headers = headers
            .insert(Header {
                key: "shopflow.truncated",
                value: Some("true"),
            })
            .insert(Header {
                key: "shopflow.payload-bytes",
                value: Some(&size_text),
            });
    }
    let headers = headers
        .insert(Header {
            key: "shopflow.reason",
            value: Some(rejected.reason),
        })
        .insert(Header {
            key: "shopflow.counter",
            value: Some(rejected.counter.name()),
        })
        .insert(Header {
            key: "shopflow.error",
            value: Some(&rejected.detail),
        })
        .insert(Header {
            key: "shopflow.topic",
            value: Some(source),
        })
        .insert(Header {
            key: "shopflow.partition",
            value: Some(&partition_text),
        })
        .insert(Header {
            key: "shopflow.offset",
            value: Some(&offset_text),
        });
    let mut record = BaseRecord::to(topic)
        .key(key.unwrap_or(&[]))
        .headers(headers);
    if let Some(copied) = copied {
        record = record.payload(copied);
    }
    if let Err((e, _)) = producer.send(record) {
        tracing::warn!(topic = %topic, "cannot copy a rejected message to the dead-letter topic: {e}");
    }
    producer.poll(Duration::ZERO);
}
