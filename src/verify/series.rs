//! Where each value lives in InfluxDB: the series key of an aggregate row, and the families the
//! report counts by.

use std::fmt;

use dataflows::families::{FAMILIES, dimensions};
use dataflows::model::{AggregateKey, CampaignId};

use crate::sinks::line_protocol::{escape_tag_value, measurement_and_tags};

/// The aggregate measurements, one per family, in the order the report lists them.
pub fn measurements() -> [&'static str; FAMILIES.len()] {
    dimensions(CampaignId(0), None).map(|dimension| measurement_and_tags(&dimension).0)
}

/// The measurement of the engine's counters.
pub const COUNTERS_MEASUREMENT: &str = "pipeline";

/// An aggregate row as InfluxDB keeps it: measurement, tags as stored, and the window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// The measurement, one of [`measurements`].
    pub measurement: &'static str,
    /// The tags other than `window`, with their values as InfluxDB stores them (see
    /// [`stored_tag_value`]), sorted by name.
    pub tags: Vec<(String, String)>,
    /// `None` for the all-time row (`window=all`); for a window row, the window's start in ms,
    /// which is also the time of its point.
    pub window: Option<u64>,
}

impl SeriesKey {
    /// Where the sink writes the row of `key`.
    pub fn of(key: &AggregateKey) -> SeriesKey {
        let (measurement, tags) = measurement_and_tags(&key.dimension);
        let mut tags: Vec<(String, String)> = tags
            .into_iter()
            .map(|(name, value)| (name.to_owned(), stored_tag_value(&value)))
            .collect();
        tags.sort();
        SeriesKey {
            measurement,
            tags,
            window: key.window.map(|start| start.0),
        }
    }

    /// The family this row is counted in.
    pub fn family(&self) -> Family {
        Family::Aggregate {
            measurement: self.measurement,
            windowed: self.window.is_some(),
        }
    }

    /// The row as the report names it: `campaign,campaign=7,window=all`, or for a window row
    /// `campaign,campaign=7,window=60s @1700000040000` (the window's start in ms).
    pub fn describe(&self, window_label: &str) -> String {
        let mut out = String::from(self.measurement);
        for (name, value) in &self.tags {
            out.push(',');
            out.push_str(name);
            out.push('=');
            out.push_str(value);
        }
        match self.window {
            None => out.push_str(",window=all"),
            Some(start) => {
                out.push_str(",window=");
                out.push_str(window_label);
                out.push_str(&format!(" @{start}"));
            }
        }
        out
    }
}

/// What the report counts keys by: each aggregate measurement's all-time and window rows, and the
/// counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// The rows of an aggregate measurement.
    Aggregate {
        /// The measurement.
        measurement: &'static str,
        /// Window rows (`true`) or all-time rows.
        windowed: bool,
    },
    /// The `pipeline` counters.
    Counters,
}

impl Family {
    /// Every family, in report order.
    pub fn all() -> Vec<Family> {
        let mut families = Vec::new();
        for measurement in measurements() {
            for windowed in [false, true] {
                families.push(Family::Aggregate {
                    measurement,
                    windowed,
                });
            }
        }
        families.push(Family::Counters);
        families
    }

    /// How the report names the family: `campaign window=all`, `campaign window=60s`, `pipeline`.
    pub fn describe(&self, window_label: &str) -> String {
        match self {
            Family::Aggregate {
                measurement,
                windowed: false,
            } => format!("{measurement} window=all"),
            Family::Aggregate {
                measurement,
                windowed: true,
            } => format!("{measurement} window={window_label}"),
            Family::Counters => COUNTERS_MEASUREMENT.to_owned(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("<window>"))
    }
}

/// A tag value as InfluxDB stores it once the sink wrote it: escaped by the line-protocol encoder
/// ([`escape_tag_value`]), then unescaped by InfluxDB, which turns `\,`, `\=` and `\ ` back into
/// the character and keeps every other backslash.
pub fn stored_tag_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len() + 8);
    escape_tag_value(value, &mut escaped);
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next @ (',' | '=' | ' '))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_undo_only_what_influxdb_unescapes() {
        assert_eq!(stored_tag_value("a,b=c d"), "a,b=c d");
        assert_eq!(stored_tag_value("x\ny\\"), "x\\ny\u{FF3C}");
        assert_eq!(stored_tag_value(""), "(empty)");
        assert_eq!(stored_tag_value("a\u{7}b"), "a\\u{7}b");
    }
}
