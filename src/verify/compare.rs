//! The comparison: what InfluxDB holds against what the sources of record determine, key by key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use dataflows::model::{Counter, Totals};

use super::recompute::{Expected, Skip};
use super::series::{COUNTERS_MEASUREMENT, Family, SeriesKey};

/// The largest difference between two conversion rates still taken as equal: they are written
/// as decimal text and read back through JSON, so the last bit may differ.
const CONVERSION_EPSILON: f64 = 1e-9;

/// An aggregate row as InfluxDB holds it: each field's latest value, `None` when the field has
/// none (a point written without it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FoundRow {
    /// `clicks`.
    pub clicks: Option<i64>,
    /// `purchases`.
    pub purchases: Option<i64>,
    /// `units`.
    pub units: Option<i64>,
    /// `revenue_cents`.
    pub revenue_cents: Option<i64>,
    /// `conversion`.
    pub conversion: Option<f64>,
}

impl FoundRow {
    /// The row the sink writes for `totals` (units and revenue clamped to 64 bits, as written).
    pub fn of(totals: &Totals) -> FoundRow {
        let (units, revenue_cents, _) = totals.clamped();
        FoundRow {
            clicks: Some(totals.clicks),
            purchases: Some(totals.purchases),
            units: Some(units),
            revenue_cents: Some(revenue_cents),
            conversion: Some(totals.conversion_rate().unwrap_or(0.0)),
        }
    }

    /// Whether the row says nothing: every field zero or absent, as the sink writes a removed
    /// row.
    pub fn is_zero(&self) -> bool {
        [self.clicks, self.purchases, self.units, self.revenue_cents]
            .iter()
            .all(|v| v.is_none_or(|v| v == 0))
            && self.conversion.is_none_or(|v| v == 0.0)
    }

    /// The fields that differ from `expected`: `(name, expected, found)`, as text.
    fn differences(&self, expected: &Totals) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let show = |v: Option<i64>| v.map_or_else(|| "nothing".to_owned(), |v| v.to_string());
        // The sink writes units and revenue clamped to InfluxDB's 64-bit integers.
        let (units, revenue_cents, _) = expected.clamped();
        for (name, want, got) in [
            ("clicks", expected.clicks, self.clicks),
            ("purchases", expected.purchases, self.purchases),
            ("units", units, self.units),
            ("revenue_cents", revenue_cents, self.revenue_cents),
        ] {
            if got != Some(want) {
                out.push((name, want.to_string(), show(got)));
            }
        }
        let want = expected.conversion_rate().unwrap_or(0.0);
        if self
            .conversion
            .is_none_or(|got| (got - want).abs() > CONVERSION_EPSILON)
        {
            out.push((
                "conversion",
                want.to_string(),
                self.conversion
                    .map_or_else(|| "nothing".to_owned(), |v| v.to_string()),
            ));
        }
        out
    }
}

/// What InfluxDB holds.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// The aggregate rows: the last value of each all-time series, every point of each window
    /// series (one per window).
    pub rows: HashMap<SeriesKey, FoundRow>,
    /// The counters' latest values; a counter never written is absent.
    pub counters: BTreeMap<Counter, i64>,
    /// Window points whose `window` tag is not this configuration's window size (another
    /// configuration wrote them), by tag value; not compared.
    pub foreign_windows: BTreeMap<String, u64>,
}

/// How one key differs.
#[derive(Clone, Debug, PartialEq)]
pub enum Difference {
    /// The row should hold `expected` but InfluxDB has no row, or a zero one.
    Missing {
        /// The recomputed value.
        expected: Totals,
    },
    /// InfluxDB holds a nonzero row that should be zero or absent.
    Unexpected {
        /// What InfluxDB holds.
        found: FoundRow,
    },
    /// Both hold the row, with different values.
    Wrong {
        /// The recomputed value.
        expected: Totals,
        /// What InfluxDB holds.
        found: FoundRow,
    },
    /// A counter differs (absent counts as 0).
    Count {
        /// The recomputed value.
        expected: i64,
        /// What InfluxDB holds.
        found: i64,
    },
}

/// The key that differs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MismatchKey {
    /// An aggregate row.
    Row(SeriesKey),
    /// A counter of the `pipeline` measurement.
    Counter(Counter),
}

/// One differing key.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// The key.
    pub key: MismatchKey,
    /// How it differs.
    pub difference: Difference,
}

impl Mismatch {
    /// One line: the key as InfluxDB names it, then what differs.
    pub fn describe(&self, window_label: &str) -> String {
        let key = match &self.key {
            MismatchKey::Row(series) => series.describe(window_label),
            MismatchKey::Counter(counter) => format!("{COUNTERS_MEASUREMENT} {}", counter.name()),
        };
        let totals = |t: &Totals| {
            format!(
                "clicks={} purchases={} units={} revenue_cents={}",
                t.clicks, t.purchases, t.units, t.revenue_cents
            )
        };
        let what = match &self.difference {
            Difference::Missing { expected } => {
                format!("missing from InfluxDB (expected {})", totals(expected))
            }
            Difference::Unexpected { found } => {
                let show = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                format!(
                    "in InfluxDB but should be zero or absent (found clicks={} purchases={} units={} revenue_cents={})",
                    show(found.clicks),
                    show(found.purchases),
                    show(found.units),
                    show(found.revenue_cents)
                )
            }
            Difference::Wrong { expected, found } => found
                .differences(expected)
                .iter()
                .map(|(name, want, got)| format!("{name} expected {want}, found {got}"))
                .collect::<Vec<_>>()
                .join("; "),
            Difference::Count { expected, found } => format!("expected {expected}, found {found}"),
        };
        format!("{key}: {what}")
    }
}

/// One family's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Keys compared: determined, and nonzero on at least one side (every counter not skipped).
    pub compared: u64,
    /// Compared keys that differ.
    pub mismatched: u64,
    /// Keys not compared, by reason.
    pub skipped: BTreeMap<Skip, u64>,
}

/// The outcome of a comparison.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Figures per family, every family present.
    pub families: BTreeMap<Family, Tally>,
    /// Every differing key, sorted by key.
    pub mismatches: Vec<Mismatch>,
}

impl Comparison {
    /// Keys compared, over all families.
    pub fn compared(&self) -> u64 {
        self.families.values().map(|t| t.compared).sum()
    }

    /// Whether every compared key is equal.
    pub fn is_match(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// The report's table and mismatches (at most `list` of them listed).
    pub fn render(&self, window_label: &str, list: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<34} {:>9} {:>10} {:>9}",
            "family", "compared", "mismatched", "skipped"
        );
        let mut reasons: BTreeSet<Skip> = BTreeSet::new();
        for (family, tally) in &self.families {
            let skipped: u64 = tally.skipped.values().sum();
            let mut line = format!(
                "{:<34} {:>9} {:>10} {:>9}",
                family.describe(window_label),
                tally.compared,
                tally.mismatched,
                skipped
            );
            if skipped > 0 {
                let detail: Vec<String> = tally
                    .skipped
                    .iter()
                    .map(|(skip, n)| format!("{n} {}", skip.name()))
                    .collect();
                line.push_str(&format!("  ({})", detail.join(", ")));
                reasons.extend(tally.skipped.keys());
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if !reasons.is_empty() {
            let _ = writeln!(out, "skipped, because:");
            for skip in reasons {
                let _ = writeln!(out, "  {}: {}", skip.name(), skip.explanation());
            }
        }
        for mismatch in self.mismatches.iter().take(list) {
            let _ = writeln!(out, "mismatch: {}", mismatch.describe(window_label));
        }
        if self.mismatches.len() > list {
            let _ = writeln!(
                out,
                "... and {} more mismatching keys (--list to show more)",
                self.mismatches.len() - list
            );
        }
        out
    }
}

/// Compares every key either side has, and every counter.
pub fn compare(expected: &Expected, found: &Found) -> Comparison {
    let mut comparison = Comparison {
        families: Family::all()
            .into_iter()
            .map(|family| (family, Tally::default()))
            .collect(),
        mismatches: Vec::new(),
    };
    let keys: BTreeSet<&SeriesKey> = expected.rows.keys().chain(found.rows.keys()).collect();
    for key in keys {
        let tally = comparison.families.entry(key.family()).or_default();
        if let Some(skip) = expected.skip_reason(key) {
            *tally.skipped.entry(skip).or_default() += 1;
            continue;
        }
        let want = expected.rows.get(key);
        let got = found.rows.get(key).filter(|row| !row.is_zero());
        let difference = match (want, got) {
            (None, None) => continue,
            (Some(want), None) => Some(Difference::Missing { expected: *want }),
            (None, Some(got)) => Some(Difference::Unexpected { found: *got }),
            (Some(want), Some(got)) => {
                (!got.differences(want).is_empty()).then_some(Difference::Wrong {
                    expected: *want,
                    found: *got,
                })
            }
        };
        tally.compared += 1;
        if let Some(difference) = difference {
            tally.mismatched += 1;
            comparison.mismatches.push(Mismatch {
                key: MismatchKey::Row(key.clone()),
                difference,
            });
        }
    }
    for (counter, value) in &expected.counters {
        let tally = comparison.families.entry(Family::Counters).or_default();
        let want = match value {
            Ok(want) => *want,
            Err(skip) => {
                *tally.skipped.entry(*skip).or_default() += 1;
                continue;
            }
        };
        let got = found.counters.get(counter).copied().unwrap_or(0);
        tally.compared += 1;
        if want != got {
            tally.mismatched += 1;
            comparison.mismatches.push(Mismatch {
                key: MismatchKey::Counter(*counter),
                difference: Difference::Count {
                    expected: want,
                    found: got,
                },
            });
        }
    }
    comparison.mismatches.sort_by(|a, b| a.key.cmp(&b.key));
    comparison
}
