//! Rows as the API shows them: the measurements, tags and fields of the InfluxDB line protocol
//! writer ([`crate::sinks::line_protocol`]), so that the web page and Grafana agree.

use std::collections::BTreeMap;

use dataflows::families::{self, FAMILIES};
use dataflows::model::{CampaignId, Dimension, Totals};
use serde::Serialize;

use crate::sinks::line_protocol::{escape_tag_value, measurement_and_tags};

/// The fields of every aggregate row, as the line protocol writer names them.
pub const FIELDS: [&str; 5] = [
    "clicks",
    "purchases",
    "units",
    "revenue_cents",
    "conversion",
];

/// One dimension of each family's: the measurements, in the order the API lists them.
fn samples() -> [Dimension; FAMILIES.len()] {
    families::dimensions(CampaignId(0), None)
}

/// An aggregate measurement: its name and tag names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// Its name, e.g. `campaign`.
    pub measurement: &'static str,
    /// Its tags (besides `window`), sorted.
    pub tags: Vec<&'static str>,
    /// Its fields.
    pub fields: Vec<&'static str>,
    /// The place of its family in [`FAMILIES`].
    #[serde(skip)]
    family: usize,
}

impl Measurement {
    /// Whether `dimension` is one of this measurement's rows.
    pub fn holds(&self, dimension: &Dimension) -> bool {
        families::family_of(dimension) == self.family
    }
}

/// Every aggregate measurement.
pub fn measurements() -> Vec<Measurement> {
    samples()
        .iter()
        .map(|dimension| {
            let (measurement, tags) = measurement_and_tags(dimension);
            Measurement {
                measurement,
                tags: tags.into_iter().map(|(name, _)| name).collect(),
                fields: FIELDS.to_vec(),
                family: families::family_of(dimension),
            }
        })
        .collect()
}

/// A tag value as InfluxDB stores it: the line protocol escape, less the backslashes before
/// commas, equals signs and spaces, which InfluxDB removes (see [`escape_tag_value`]).
pub fn stored_tag_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    escape_tag_value(value, &mut escaped);
    if !escaped.contains('\\') {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some(',' | '=' | ' ')) {
            continue;
        }
        out.push(c);
    }
    out
}

/// A row's fields, as the line protocol writer writes them: units and revenue clamped to 64 bits,
/// conversion 0 without clicks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Fields {
    /// Clicks counted.
    pub clicks: i64,
    /// Purchases counted.
    pub purchases: i64,
    /// Units purchased.
    pub units: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
    /// Purchases per click.
    pub conversion: f64,
}

impl Fields {
    /// The fields of `totals`.
    pub fn of(totals: &Totals) -> Fields {
        let (units, revenue_cents, _) = totals.clamped();
        Fields {
            clicks: totals.clicks,
            purchases: totals.purchases,
            units,
            revenue_cents,
            conversion: totals.conversion_rate().unwrap_or(0.0),
        }
    }

    /// The value of the field `name` (one of [`FIELDS`]).
    pub fn get(&self, name: &str) -> Option<serde_json::Value> {
        Some(match name {
            "clicks" => self.clicks.into(),
            "purchases" => self.purchases.into(),
            "units" => self.units.into(),
            "revenue_cents" => self.revenue_cents.into(),
            "conversion" => serde_json::Number::from_f64(self.conversion)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            _ => return None,
        })
    }

    /// The value of the field `name` as a number to sort by.
    pub fn sort_key(&self, name: &str) -> f64 {
        match name {
            "clicks" => self.clicks as f64,
            "purchases" => self.purchases as f64,
            "units" => self.units as f64,
            "revenue_cents" => self.revenue_cents as f64,
            _ => self.conversion,
        }
    }
}

/// One row as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The measurement.
    pub measurement: &'static str,
    /// The window's start in ms, or `None` for all-time totals.
    pub window: Option<u64>,
    /// The tags (besides `window`), as InfluxDB stores them.
    pub tags: BTreeMap<&'static str, String>,
    /// The fields; `None` for a removed row (in the stream).
    pub fields: Option<Fields>,
}

impl Row {
    /// The row of `dimension` in `window` with `totals` (`None`: removed).
    pub fn new(dimension: &Dimension, window: Option<u64>, totals: Option<&Totals>) -> Row {
        let (measurement, tags) = measurement_and_tags(dimension);
        Row {
            measurement,
            window,
            tags: tags
                .into_iter()
                .map(|(name, value)| (name, stored_tag_value(&value)))
                .collect(),
            fields: totals.map(Fields::of),
        }
    }

    /// Whether every `(tag, value)` of `filters` matches.
    pub fn matches(&self, filters: &[(&'static str, String)]) -> bool {
        filters
            .iter()
            .all(|(name, value)| self.tags.get(name) == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use dataflows::model::{AggregateKey, EventTimeMs, OutputKey, OutputValue};
    use dataflows::output::{Batch, Change};

    use super::*;
    use crate::sinks::line_protocol::Encoder;

    /// The names here are the line protocol writer's: every measurement, tag and field.
    #[test]
    fn names_are_the_line_protocol_writers() {
        for dimension in samples() {
            let totals = Totals {
                clicks: 4,
                purchases: 1,
                units: 2,
                revenue_cents: 999,
            };
            let mut line = String::new();
            Encoder::new(60_000).encode(
                &Batch {
                    time: 5,
                    changes: vec![Change {
                        key: OutputKey::Aggregate(AggregateKey {
                            dimension: dimension.clone(),
                            window: Some(EventTimeMs(0)),
                        }),
                        value: Some(OutputValue::Totals(totals)),
                    }],
                },
                &mut line,
            );
            let row = Row::new(&dimension, Some(0), Some(&totals));
            let m = measurements()
                .into_iter()
                .find(|m| m.holds(&dimension))
                .expect("a measurement");
            assert_eq!(m.measurement, row.measurement);
            let (head, rest) = line.split_once(' ').expect("tags, then fields");
            let mut parts = head.split(',');
            assert_eq!(parts.next(), Some(m.measurement));
            let tags: Vec<&str> = parts
                .map(|p| p.split_once('=').expect("tag=value").0)
                .filter(|t| *t != "window")
                .collect();
            assert_eq!(tags, m.tags, "{line}");
            let fields: Vec<&str> = rest
                .split(' ')
                .next()
                .expect("fields")
                .split(',')
                .map(|f| f.split_once('=').expect("field=value").0)
                .collect();
            assert_eq!(fields, FIELDS, "{line}");
        }
        let places: Vec<usize> = samples().iter().map(families::family_of).collect();
        assert_eq!(places, (0..samples().len()).collect::<Vec<_>>());
    }

    /// Tag values read back from InfluxDB: separators unescaped, every other escape kept.
    #[test]
    fn tag_values_are_stored_as_influxdb_stores_them() {
        assert_eq!(stored_tag_value("CA"), "CA");
        assert_eq!(stored_tag_value("a, b=c"), "a, b=c");
        assert_eq!(stored_tag_value(""), "(empty)");
        assert_eq!(stored_tag_value("x\ny\\"), "x\\ny\u{FF3C}");
    }
}
