//! InfluxDB line protocol: a pure encoder of output batches.
//!
//! One measurement per aggregate family, tags for the keys, integer fields for the values:
//!
//! ```text
//! campaign,campaign=7,window=all clicks=12i,purchases=3i,units=5i,revenue_cents=12000i,conversion=0.25 1700000000000
//! state,country=US,state=CA,window=60s clicks=4i,purchases=1i,units=1i,revenue_cents=999i,conversion=0.25 1699999980000
//! pipeline events_in=100i,duplicates=1i 1700000000000
//! ```
//!
//! All-time rows (`window=all`) are written at the completed timestamp, so each key is a series of
//! running totals; window rows at their window's start, so a late correction overwrites the
//! window's point. A removed row is written with every field zero, so no dashboard shows a stale
//! value. Timestamps are milliseconds (`precision=ms`).

use std::fmt::Write as _;

use dataflows::model::{AggregateKey, Dimension, OutputKey, OutputValue, Totals};
use dataflows::output::{Batch, Change};

/// The tag value written for the segment of users without demographics.
pub const UNKNOWN: &str = "unknown";
/// What a backslash in a tag value is written as.
pub const BACKSLASH: char = '\u{FF3C}';
/// The tag value written for an empty text value (InfluxDB rejects empty tag values).
pub const EMPTY: &str = "(empty)";
/// The tag value written for the text value `(empty)` itself, so it stays apart from [`EMPTY`].
pub const LITERAL_EMPTY: &str = "\\u{28}empty)";
/// The most bytes a tag value takes in a line, its escapes included. InfluxDB 1.x refuses a point
/// whose series key (measurement and tags) exceeds 65,535 bytes; with at most three tags of
/// this size and short names, every key stays well below that.
pub const MAX_TAG_VALUE_BYTES: usize = 4_096;
/// What follows the kept part of a tag value cut for length, before the 8 lowercase hex digits of
/// the CRC-32 (IEEE) of the whole value's UTF-8 bytes, which keep distinct long values apart.
pub const CUT_MARKER: &str = "…#";
/// The bytes a cut value ends with: the marker and its checksum.
const CUT_SUFFIX_BYTES: usize = CUT_MARKER.len() + 8;

/// The engine's own figures at one moment, written as a `runtime` point per process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RuntimeMetrics {
    /// When, in ms since the epoch.
    pub time_ms: u64,
    /// The process (`-p`).
    pub process: usize,
    /// Messages in this process's partitions not yet read.
    pub consumer_lag: u64,
    /// Now minus the newest event time the written output reflects.
    pub freshness_ms: u64,
    /// Write retries of the sink so far.
    pub sink_retries: u64,
    /// Lines the sink's destination refused so far (counted and skipped, the others written).
    pub sink_rejected_lines: u64,
    /// Events entering the dataflow per second, since the previous point.
    pub events_per_second: f64,
}

/// Appends the `runtime` line of `metrics` to `out`.
pub fn encode_runtime(metrics: &RuntimeMetrics, out: &mut String) {
    let _ = writeln!(
        out,
        "runtime,process={} consumer_lag={}i,freshness_ms={}i,sink_retries={}i,sink_rejected_lines={}i,events_per_second={} {}",
        metrics.process,
        metrics.consumer_lag,
        metrics.freshness_ms,
        metrics.sink_retries,
        metrics.sink_rejected_lines,
        metrics.events_per_second,
        metrics.time_ms
    );
}

/// Encodes batches as line protocol.
#[derive(Clone, Debug)]
pub struct Encoder {
    window_label: String,
}

impl Encoder {
    /// An encoder labelling windowed rows with their window size, e.g. `window=60s`.
    pub fn new(window_ms: u64) -> Encoder {
        let window_label = if window_ms.is_multiple_of(1_000) {
            format!("{}s", window_ms / 1_000)
        } else {
            format!("{window_ms}ms")
        };
        Encoder { window_label }
    }

    /// The `window` tag of windowed rows.
    pub fn window_label(&self) -> &str {
        &self.window_label
    }

    /// Appends the lines of one batch to `out`, each ending in a newline.
    pub fn encode(&self, batch: &Batch, out: &mut String) {
        let mut counters: Vec<(&'static str, i64)> = Vec::new();
        for Change { key, value } in &batch.changes {
            match (key, value) {
                (OutputKey::Aggregate(key), value) => {
                    let totals = match value {
                        Some(OutputValue::Totals(totals)) => *totals,
                        _ => Totals::default(),
                    };
                    self.encode_aggregate(key, &totals, batch.time, out);
                }
                (OutputKey::Counter(counter), value) => {
                    let n = match value {
                        Some(OutputValue::Count(n)) => *n,
                        _ => 0,
                    };
                    counters.push((counter.name(), n));
                }
            }
        }
        if !counters.is_empty() {
            out.push_str("pipeline ");
            for (i, (name, n)) in counters.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{name}={n}i");
            }
            let _ = writeln!(out, " {}", batch.time);
        }
    }

    fn encode_aggregate(&self, key: &AggregateKey, totals: &Totals, time: u64, out: &mut String) {
        let (measurement, tags) = measurement_and_tags(&key.dimension);
        out.push_str(measurement);
        for (name, value) in tags {
            out.push(',');
            out.push_str(name);
            out.push('=');
            escape_tag_value(&value, out);
        }
        out.push_str(",window=");
        match key.window {
            Some(_) => out.push_str(&self.window_label),
            None => out.push_str("all"),
        }
        let (units, revenue_cents, clamped) = totals.clamped();
        if clamped {
            warn_clamped(measurement, totals);
        }
        let _ = write!(
            out,
            " clicks={}i,purchases={}i,units={units}i,revenue_cents={revenue_cents}i,conversion={}",
            totals.clicks,
            totals.purchases,
            totals.conversion_rate().unwrap_or(0.0)
        );
        let _ = writeln!(out, " {}", key.window.map_or(time, |start| start.0));
    }
}

/// Says, at most once a second, that a row's units or revenue lie beyond InfluxDB's 64-bit
/// integers and are written clamped (the dataflow keeps them exactly; only the written value is
/// clamped).
fn warn_clamped(measurement: &str, totals: &Totals) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNING_S: AtomicU64 = AtomicU64::new(0);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARNING_S.swap(now_s, Ordering::Relaxed) != now_s {
        tracing::warn!(
            measurement,
            units = %totals.units,
            revenue_cents = %totals.revenue_cents,
            "a sum exceeds InfluxDB's 64-bit integers: written clamped to the nearest bound"
        );
    }
}

/// The measurement of a dimension and its tags, in the order InfluxDB prefers (sorted by name).
pub fn measurement_and_tags(dimension: &Dimension) -> (&'static str, Vec<(&'static str, String)>) {
    let text = |v: Option<&str>| v.unwrap_or(UNKNOWN).to_owned();
    let age_gender = |ag: &Option<(dataflows::model::AgeBand, dataflows::model::Gender)>| {
        [
            ("age_band", text(ag.map(|(band, _)| band.label()))),
            ("gender", text(ag.map(|(_, gender)| gender.code()))),
        ]
    };
    match dimension {
        Dimension::Campaign(c) => ("campaign", vec![("campaign", c.to_string())]),
        Dimension::AgeGender(ag) => ("age_gender", age_gender(ag).to_vec()),
        Dimension::State(place) => (
            "state",
            vec![
                ("country", text(place.as_ref().map(|(c, _)| c.as_str()))),
                ("state", text(place.as_ref().map(|(_, s)| s.as_str()))),
            ],
        ),
        Dimension::Country(c) => ("country", vec![("country", text(c.as_deref()))]),
        Dimension::CampaignCountry(campaign, c) => (
            "campaign_country",
            vec![
                ("campaign", campaign.to_string()),
                ("country", text(c.as_deref())),
            ],
        ),
        Dimension::CampaignAgeGender(campaign, ag) => {
            let [band, gender] = age_gender(ag);
            (
                "campaign_age_gender",
                vec![band, ("campaign", campaign.to_string()), gender],
            )
        }
    }
}

/// Appends a tag value escaped so that InfluxDB accepts it whatever it holds, and nothing in it can
/// end the tag, the tag set or the line. Total: every string gives a non-empty tag of at most
/// [`MAX_TAG_VALUE_BYTES`] bytes; and distinct strings give distinct tags (but for values cut for
/// length, told apart by their checksum). What InfluxDB then stores and reads back:
///
/// - Commas, equals signs and spaces are themselves (backslash-escaped in the line, unescaped by
///   InfluxDB).
/// - A backslash is the look-alike `＼` (U+FF3C): 1.x has no escape for it that every version
///   reads alike, and rejects a value ending in one. A `＼` itself is written `\u{ff3c}`.
/// - Line protocol has no escape for line breaks: `\n`, `\r` and `\t` are written as those two
///   characters. Every other control character (Unicode `Cc`: U+0000–U+001F, U+007F–U+009F), the
///   line and paragraph separators (U+2028, U+2029) and the bidirectional controls (U+061C,
///   U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), which would hide in or reorder what a
///   dashboard shows, are written in Rust's notation `\u{hex}` (lowercase, no leading zeros).
///   Every other character, any script, mark, symbol or emoji, is itself.
/// - The empty value is [`EMPTY`], `(empty)`; the value `(empty)` itself is [`LITERAL_EMPTY`].
/// - A value whose escaped form would exceed [`MAX_TAG_VALUE_BYTES`] keeps its longest prefix of
///   whole characters (escapes whole) that fits with the suffix, then [`CUT_MARKER`] and the
///   CRC-32 of the whole value, e.g. `AAAA…#` and 8 hex digits.
///
/// Every escape starts with a backslash, which no other character becomes, so a stored backslash
/// always begins an escape.
pub fn escape_tag_value(value: &str, out: &mut String) {
    if value.is_empty() {
        out.push_str(EMPTY);
        return;
    }
    if value == EMPTY {
        out.push_str(LITERAL_EMPTY);
        return;
    }
    let start = out.len();
    for c in value.chars() {
        push_escaped(c, out);
    }
    if out.len() - start <= MAX_TAG_VALUE_BYTES {
        return;
    }
    // Rare: escape again up to the last whole character that fits with the suffix.
    out.truncate(start);
    for c in value.chars() {
        let before = out.len();
        push_escaped(c, out);
        if out.len() - start > MAX_TAG_VALUE_BYTES - CUT_SUFFIX_BYTES {
            out.truncate(before);
            break;
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(value.as_bytes());
    let _ = write!(out, "{CUT_MARKER}{:08x}", crc.sum());
}

/// One character of a tag value, escaped (see [`escape_tag_value`]).
fn push_escaped(c: char, out: &mut String) {
    match c {
        ',' | '=' | ' ' => {
            out.push('\\');
            out.push(c);
        }
        '\\' => out.push(BACKSLASH),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        BACKSLASH
        | '\u{2028}'
        | '\u{2029}'
        | '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => out.extend(c.escape_unicode()),
        c if c.is_control() => out.extend(c.escape_unicode()),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use dataflows::model::{CampaignId, Counter, EventTimeMs};

    use super::*;

    fn encode(changes: Vec<Change>) -> String {
        let mut out = String::new();
        Encoder::new(60_000).encode(
            &Batch {
                time: 1_000,
                changes,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn rows_counters_and_removals() {
        let totals = Totals {
            clicks: 4,
            purchases: 1,
            units: 2,
            revenue_cents: 1_999,
        };
        let out = encode(vec![
            Change {
                key: OutputKey::Aggregate(AggregateKey {
                    dimension: Dimension::Campaign(CampaignId(7)),
                    window: Some(EventTimeMs(600)),
                }),
                value: Some(OutputValue::Totals(totals)),
            },
            Change {
                key: OutputKey::Aggregate(AggregateKey {
                    dimension: Dimension::AgeGender(None),
                    window: None,
                }),
                value: None,
            },
            Change {
                key: OutputKey::Counter(Counter::EventsIn),
                value: Some(OutputValue::Count(12)),
            },
            Change {
                key: OutputKey::Counter(Counter::Duplicates),
                value: Some(OutputValue::Count(3)),
            },
        ]);
        assert_eq!(
            out,
            "campaign,campaign=7,window=60s clicks=4i,purchases=1i,units=2i,revenue_cents=1999i,conversion=0.25 600\n\
             age_gender,age_band=unknown,gender=unknown,window=all clicks=0i,purchases=0i,units=0i,revenue_cents=0i,conversion=0 1000\n\
             pipeline events_in=12i,duplicates=3i 1000\n"
        );
    }

    /// Sums beyond InfluxDB's 64-bit integers are written clamped to them, never wrapped.
    #[test]
    fn sums_beyond_64_bits_are_written_clamped() {
        let totals = Totals {
            clicks: 1,
            purchases: 5_000,
            units: -(1i128 << 70),
            revenue_cents: 5_000 * (1i128 << 51),
        };
        let out = encode(vec![Change {
            key: OutputKey::Aggregate(AggregateKey {
                dimension: Dimension::Campaign(CampaignId(7)),
                window: None,
            }),
            value: Some(OutputValue::Totals(totals)),
        }]);
        assert_eq!(
            out,
            "campaign,campaign=7,window=all clicks=1i,purchases=5000i,units=-9223372036854775808i,\
             revenue_cents=9223372036854775807i,conversion=5000 1000\n"
        );
    }

    #[test]
    fn runtime_metrics_line() {
        let mut out = String::new();
        let metrics = RuntimeMetrics {
            time_ms: 5,
            process: 1,
            consumer_lag: 7,
            freshness_ms: 250,
            sink_retries: 2,
            sink_rejected_lines: 3,
            events_per_second: 1500.5,
        };
        encode_runtime(&metrics, &mut out);
        assert_eq!(
            out,
            "runtime,process=1 consumer_lag=7i,freshness_ms=250i,sink_retries=2i,sink_rejected_lines=3i,events_per_second=1500.5 5\n"
        );
    }

    #[test]
    fn hostile_tag_values_cannot_add_tags_fields_or_lines() {
        let mut out = String::new();
        escape_tag_value("a,b=c d\\", &mut out);
        assert_eq!(out, "a\\,b\\=c\\ d\u{FF3C}");
        let mut out = String::new();
        escape_tag_value("x\ny z=1i 5\r\t\u{7}\"q\"", &mut out);
        assert_eq!(out, "x\\ny\\ z\\=1i\\ 5\\r\\t\\u{7}\"q\"");
        let mut out = String::new();
        escape_tag_value("", &mut out);
        assert_eq!(out, "(empty)");

        // A whole line with a hostile state stays one line with its three tags and five fields.
        let key = AggregateKey {
            dimension: Dimension::State(Some((
                "U S".into(),
                "CA,evil=1 clicks=999i\nhack x=1".into(),
            ))),
            window: None,
        };
        let line = encode(vec![Change {
            key: OutputKey::Aggregate(key),
            value: Some(OutputValue::Totals(Totals::click())),
        }]);
        assert_eq!(line.matches('\n').count(), 1);
        let unescaped_separators = |s: &str, sep: char| {
            let mut count = 0;
            let mut chars = s.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == sep {
                    count += 1;
                }
            }
            count
        };
        assert_eq!(
            unescaped_separators(line.trim_end(), ' '),
            2,
            "measurement+tags, fields, time: {line}"
        );
        let head = line.split(" clicks=").next().unwrap();
        assert_eq!(unescaped_separators(head, ','), 3, "three tags: {line}");
        assert_eq!(unescaped_separators(head, '='), 3, "three tags: {line}");
    }
}
