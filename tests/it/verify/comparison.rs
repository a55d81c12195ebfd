//! The comparison of recomputed rows with what InfluxDB holds, on hand-built rows.

use super::*;

#[test]
fn comparison_reports_wrong_missing_and_unexpected_rows_and_ignores_zero_ones() {
    let (a, b, c, d, e, f, h, i, j) = (
        campaign_key(1, None),
        campaign_key(2, None),
        campaign_key(3, None),
        campaign_key(4, None),
        campaign_key(5, None),
        campaign_key(6, None),
        campaign_key(7, Some(0)),
        campaign_key(8, None),
        campaign_key(9, None),
    );
    // A segment row of window 0, closed long before `now`.
    let g = SeriesKey::of(&AggregateKey {
        dimension: Dimension::AgeGender(None),
        window: Some(EventTimeMs(0)),
    });
    let mut counters: BTreeMap<Counter, Result<i64, Skip>> =
        Counter::ALL.iter().map(|c| (*c, Ok(0))).collect();
    counters.insert(Counter::EventsIn, Ok(10));
    counters.insert(Counter::Duplicates, Ok(2));
    counters.insert(Counter::RefundsApplied, Err(Skip::NearOrderHorizon));
    let expected = Expected {
        settings: settings(0),
        rows: [
            (a.clone(), totals(10, 2, 3, 500)),
            (b.clone(), totals(5, 1, 1, 100)),
            (c.clone(), totals(4, 0, 0, 0)),
            (d.clone(), totals(4, 0, 0, 0)),
            (h.clone(), totals(2, 0, 0, 0)),
            (i.clone(), totals(4, 1, 1, 10)),
        ]
        .into_iter()
        .collect(),
        undetermined: [(j.clone(), Skip::ArrivalOrder)].into_iter().collect(),
        windows_undetermined: None,
        counters,
        stats: Stats::default(),
    };
    let found = Found {
        rows: [
            (a.clone(), FoundRow::of(&totals(10, 2, 3, 500))),
            (b.clone(), FoundRow::of(&totals(5, 1, 1, 101))),
            (d.clone(), FoundRow::of(&Totals::default())),
            (e.clone(), FoundRow::of(&totals(1, 0, 0, 0))),
            (f.clone(), FoundRow::of(&Totals::default())),
            (g.clone(), FoundRow::of(&totals(3, 0, 0, 0))),
            (h.clone(), FoundRow::of(&totals(2, 0, 0, 0))),
            (
                i.clone(),
                FoundRow {
                    conversion: None,
                    ..FoundRow::of(&totals(4, 1, 1, 10))
                },
            ),
            (j.clone(), FoundRow::of(&totals(999, 0, 0, 0))),
        ]
        .into_iter()
        .collect(),
        counters: [(Counter::EventsIn, 10), (Counter::RefundsApplied, 5)]
            .into_iter()
            .collect(),
        foreign_windows: BTreeMap::new(),
    };
    let comparison = compare::compare(&expected, &found);
    let differences: Vec<(MismatchKey, Difference)> = comparison
        .mismatches
        .iter()
        .map(|m| (m.key.clone(), m.difference.clone()))
        .collect();
    assert_eq!(
        differences,
        vec![
            (
                MismatchKey::Row(b.clone()),
                Difference::Wrong {
                    expected: totals(5, 1, 1, 100),
                    found: FoundRow::of(&totals(5, 1, 1, 101)),
                }
            ),
            (
                MismatchKey::Row(c.clone()),
                Difference::Missing {
                    expected: totals(4, 0, 0, 0)
                }
            ),
            (
                MismatchKey::Row(d.clone()),
                Difference::Missing {
                    expected: totals(4, 0, 0, 0)
                }
            ),
            (
                MismatchKey::Row(e.clone()),
                Difference::Unexpected {
                    found: FoundRow::of(&totals(1, 0, 0, 0))
                }
            ),
            (
                MismatchKey::Row(i.clone()),
                Difference::Wrong {
                    expected: totals(4, 1, 1, 10),
                    found: FoundRow {
                        conversion: None,
                        ..FoundRow::of(&totals(4, 1, 1, 10))
                    },
                }
            ),
            (
                MismatchKey::Counter(Counter::Duplicates),
                Difference::Count {
                    expected: 2,
                    found: 0
                }
            ),
        ]
    );
    let lines: Vec<String> = comparison
        .mismatches
        .iter()
        .map(|m| m.describe("60s"))
        .collect();
    assert_eq!(
        lines,
        vec![
            "campaign,campaign=2,window=all: revenue_cents expected 100, found 101",
            "campaign,campaign=3,window=all: missing from InfluxDB (expected clicks=4 purchases=0 units=0 revenue_cents=0)",
            "campaign,campaign=4,window=all: missing from InfluxDB (expected clicks=4 purchases=0 units=0 revenue_cents=0)",
            "campaign,campaign=5,window=all: in InfluxDB but should be zero or absent (found clicks=1 purchases=0 units=0 revenue_cents=0)",
            "campaign,campaign=8,window=all: conversion expected 0.25, found nothing",
            "pipeline duplicates: expected 2, found 0",
        ]
    );
    let tally = |family| comparison.families[&family].clone();
    let campaign_all = tally(Family::Aggregate {
        measurement: "campaign",
        windowed: false,
    });
    assert_eq!(
        (
            campaign_all.compared,
            campaign_all.mismatched,
            campaign_all.skipped.clone()
        ),
        (6, 5, [(Skip::ArrivalOrder, 1)].into_iter().collect())
    );
    let campaign_windows = tally(Family::Aggregate {
        measurement: "campaign",
        windowed: true,
    });
    assert_eq!(
        (campaign_windows.compared, campaign_windows.mismatched),
        (1, 0)
    );
    let segment_windows = tally(Family::Aggregate {
        measurement: "age_gender",
        windowed: true,
    });
    assert_eq!(
        (segment_windows.compared, segment_windows.skipped),
        (0, [(Skip::ClosedSegmentWindow, 1)].into_iter().collect())
    );
    let counters = tally(Family::Counters);
    assert_eq!(
        (counters.compared, counters.mismatched, counters.skipped),
        (
            Counter::ALL.len() as u64 - 1,
            1,
            [(Skip::NearOrderHorizon, 1)].into_iter().collect()
        )
    );
    assert_eq!(comparison.compared(), 6 + 1 + Counter::ALL.len() as u64 - 1);
    assert!(!comparison.is_match());
    let report = comparison.render("60s", 2);
    assert!(
        report.contains("mismatch: campaign,campaign=3,window=all: missing from InfluxDB")
            && report.contains("... and 4 more mismatching keys"),
        "{report}"
    );
    assert!(!report.contains("campaign=4"), "listed at most 2: {report}");
}
