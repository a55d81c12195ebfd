//! The recomputation on hand-built cases: arrival times near a horizon or a close, series that
//! share a name after escaping, the sources' counters, events without an event time, sums beyond
//! 64 bits.

use super::*;

fn click(order: u64, user: u32, campaign: u32, event_time: u64) -> Event {
    Event {
        order_id: OrderId(order),
        tag: Tag::Click,
        user_id: UserId(user),
        campaign_id: CampaignId(campaign),
        total: Cents(0),
        units: 0,
        event_time: EventTimeMs(event_time),
    }
}

fn arrival(event: Event, partition: i32, offset: i64, timestamp_ms: u64) -> Arrival {
    Arrival {
        event,
        partition,
        offset,
        timestamp_ms: Some(timestamp_ms),
    }
}

fn user(id: u32, state: &str) -> Demographic {
    Demographic {
        id: UserId(id),
        age: 30,
        gender: Gender::Female,
        state: state.into(),
        country: "US".into(),
    }
}

/// The determined rows, named as the report names them.
fn described(expected: &Expected) -> BTreeMap<String, Totals> {
    expected
        .rows
        .iter()
        .map(|(key, totals)| (key.describe("60s"), *totals))
        .collect()
}

#[test]
fn arrival_times_near_the_horizon_a_close_or_each_other_leave_rows_undetermined() {
    let purchase = Event {
        order_id: OrderId(2),
        tag: Tag::Purchased,
        user_id: UserId(2),
        campaign_id: CampaignId(2),
        total: Cents(700),
        units: 2,
        event_time: EventTimeMs(200_000),
    };
    let arrivals = vec![
        // Order 1: a second delivery 10.5 s after the first; the horizon is 10 s.
        arrival(click(1, 1, 1, 100_000), 0, 0, 100_000),
        arrival(click(1, 1, 1, 100_000), 0, 1, 110_500),
        // Order 2: a purchase and its refund half a second apart, in two partitions.
        arrival(purchase.clone(), 1, 0, 200_000),
        arrival(
            Event {
                tag: Tag::Refunded,
                ..purchase
            },
            2,
            0,
            200_500,
        ),
        // Order 3: a click arriving half a second before its window [60 s, 120 s) closes.
        arrival(click(3, 3, 3, 100_000), 0, 2, 119_500),
    ];
    let table = vec![user(1, "CA"), user(2, "CA"), user(3, "NY")];
    let none = BTreeMap::new();

    // Exact arrival times: the second delivery is past the horizon and counts again; the purchase
    // and refund share a tick, so the refund applies; the click is in time for its window.
    let exact = recompute::recompute(arrivals.clone(), &none, &table, settings(0));
    let want: BTreeMap<String, Totals> = [
        ("campaign,campaign=1,window=all", totals(2, 0, 0, 0)),
        ("campaign,campaign=3,window=all", totals(1, 0, 0, 0)),
        ("campaign,campaign=1,window=60s @60000", totals(2, 0, 0, 0)),
        ("campaign,campaign=3,window=60s @60000", totals(1, 0, 0, 0)),
        (
            "age_gender,age_band=25-34,gender=F,window=all",
            totals(3, 0, 0, 0),
        ),
        ("state,country=US,state=CA,window=all", totals(2, 0, 0, 0)),
        ("state,country=US,state=NY,window=all", totals(1, 0, 0, 0)),
        ("country,country=US,window=all", totals(3, 0, 0, 0)),
        (
            "campaign_country,campaign=1,country=US,window=all",
            totals(2, 0, 0, 0),
        ),
        (
            "campaign_country,campaign=3,country=US,window=all",
            totals(1, 0, 0, 0),
        ),
        (
            "campaign_age_gender,age_band=25-34,campaign=1,gender=F,window=all",
            totals(2, 0, 0, 0),
        ),
        (
            "campaign_age_gender,age_band=25-34,campaign=3,gender=F,window=all",
            totals(1, 0, 0, 0),
        ),
    ]
    .into_iter()
    .map(|(k, t)| (k.to_owned(), t))
    .collect();
    assert_eq!(described(&exact), want);
    assert!(exact.undetermined.is_empty());
    let counter = |e: &Expected, c: Counter| e.counters[&c];
    assert_eq!(counter(&exact, Counter::EventsIn), Ok(5));
    assert_eq!(counter(&exact, Counter::Duplicates), Ok(0));
    assert_eq!(counter(&exact, Counter::RefundsApplied), Ok(1));
    assert_eq!(counter(&exact, Counter::LateForWindow), Ok(0));

    // Within 2 s: each of those three outcomes could go either way.
    let loose = recompute::recompute(arrivals, &none, &table, settings(2_000));
    let skip = |key: SeriesKey| loose.skip_reason(&key);
    assert_eq!(skip(campaign_key(1, None)), Some(Skip::NearOrderHorizon));
    assert_eq!(
        skip(campaign_key(1, Some(60_000))),
        Some(Skip::NearOrderHorizon)
    );
    assert_eq!(
        skip(campaign_key(2, Some(180_000))),
        Some(Skip::ArrivalOrder)
    );
    assert_eq!(
        skip(campaign_key(3, Some(60_000))),
        Some(Skip::NearWindowClose)
    );
    // What does not depend on them stays determined: order 3's all-time rows, and order 2's
    // all-time rows, zero whichever of purchase and refund came first.
    assert_eq!(skip(campaign_key(2, None)), None);
    assert_eq!(skip(campaign_key(3, None)), None);
    let rows = described(&loose);
    assert_eq!(
        rows.get("campaign,campaign=3,window=all"),
        Some(&totals(1, 0, 0, 0))
    );
    assert_eq!(rows.get("campaign,campaign=2,window=all"), None);
    assert_eq!(
        rows.get("state,country=US,state=NY,window=all"),
        Some(&totals(1, 0, 0, 0))
    );
    // The state of order 1's user is undetermined; the country holds it too.
    assert!(!rows.contains_key("state,country=US,state=CA,window=all"));
    assert!(!rows.contains_key("country,country=US,window=all"));
    assert_eq!(counter(&loose, Counter::EventsIn), Ok(5));
    assert_eq!(
        counter(&loose, Counter::Duplicates),
        Err(Skip::NearOrderHorizon)
    );
    assert_eq!(
        counter(&loose, Counter::RefundsApplied),
        Err(Skip::NearOrderHorizon)
    );
    assert_eq!(
        loose.stats.undetermined_orders,
        [
            (Skip::NearOrderHorizon, 1),
            (Skip::ArrivalOrder, 1),
            (Skip::NearWindowClose, 1)
        ]
        .into_iter()
        .collect()
    );
}

#[test]
fn rows_that_share_a_series_after_escaping_are_undetermined() {
    // Distinct text values stay distinct tags, but a state and country literally named "unknown"
    // land in the series of users without demographics (user 2 is not in the table).
    let table = vec![Demographic {
        country: "unknown".into(),
        ..user(1, "unknown")
    }];
    let arrivals = vec![
        arrival(click(1, 1, 1, 100_000), 0, 0, 100_000),
        arrival(click(2, 2, 1, 100_000), 0, 1, 100_000),
    ];
    let expected = recompute::recompute(arrivals, &BTreeMap::new(), &table, settings(0));
    let state = SeriesKey::of(&AggregateKey {
        dimension: Dimension::State(None),
        window: None,
    });
    assert_eq!(expected.skip_reason(&state), Some(Skip::SharedSeries));
    assert_eq!(
        described(&expected).get("campaign,campaign=1,window=all"),
        Some(&totals(2, 0, 0, 0))
    );
}

/// Every counter a source keeps is taken from verify's reading of the sources: none is left to
/// the ledger's replay, which never sees what the sources reject.
#[test]
fn every_counter_the_sources_keep_is_recomputed() {
    let sources: BTreeMap<Counter, i64> = SOURCE_COUNTERS
        .iter()
        .zip(1..)
        .map(|(counter, n)| (*counter, n))
        .collect();
    let arrivals = vec![arrival(click(1, 1, 1, 100_000), 0, 0, 100_000)];
    let expected = recompute::recompute(arrivals, &sources, &[user(1, "CA")], settings(0));
    for counter in Counter::ALL {
        let want = match sources.get(&counter) {
            Some(n) => *n,
            None if counter == Counter::EventsIn => 1,
            None => 0,
        };
        assert_eq!(expected.counters[&counter], Ok(want), "{counter:?}");
    }
    // And the comparison finds InfluxDB holding them equal.
    let found = Found {
        rows: expected
            .rows
            .iter()
            .map(|(key, totals)| (key.clone(), FoundRow::of(totals)))
            .collect(),
        counters: expected
            .counters
            .iter()
            .map(|(counter, value)| (*counter, value.expect("determined")))
            .collect(),
        foreign_windows: BTreeMap::new(),
    };
    let comparison = compare::compare(&expected, &found);
    assert!(comparison.is_match(), "{:#?}", comparison.mismatches);
}

/// An event without an event time is windowed by its arrival tick, as the pipeline does: it
/// leaves undetermined only the windows its arrival may fall in, and none when that is one
/// window; only a message without a timestamp leaves every window row undetermined.
#[test]
fn an_event_without_event_time_leaves_only_its_possible_windows_undetermined() {
    let arrivals = vec![
        arrival(click(1, 1, 1, 100_000), 0, 0, 100_000),
        // Arrived between 128 s and 132 s: window [120 s, 180 s) whichever.
        arrival(click(2, 2, 2, 0), 0, 1, 130_000),
        // Arrived between 177 s and 181 s: window 120 s or 180 s.
        arrival(click(3, 3, 3, 0), 0, 2, 179_000),
    ];
    let table = vec![user(1, "CA"), user(2, "CA"), user(3, "NY")];
    let none = BTreeMap::new();
    let expected = recompute::recompute(arrivals.clone(), &none, &table, settings(2_000));
    assert_eq!(expected.windows_undetermined, None);
    let skip = |key: SeriesKey| expected.skip_reason(&key);
    assert_eq!(skip(campaign_key(1, Some(60_000))), None);
    assert_eq!(skip(campaign_key(2, Some(120_000))), None);
    assert_eq!(
        skip(campaign_key(3, Some(120_000))),
        Some(Skip::NoEventTime)
    );
    assert_eq!(
        skip(campaign_key(3, Some(180_000))),
        Some(Skip::NoEventTime)
    );
    let rows = described(&expected);
    assert_eq!(
        rows.get("campaign,campaign=1,window=60s @60000"),
        Some(&totals(1, 0, 0, 0))
    );
    assert_eq!(
        rows.get("campaign,campaign=2,window=60s @120000"),
        Some(&totals(1, 0, 0, 0))
    );
    assert_eq!(
        rows.get("campaign,campaign=2,window=all"),
        Some(&totals(1, 0, 0, 0))
    );
    assert_eq!(expected.counters[&Counter::EventsIn], Ok(3));

    // Exact arrival times determine every window.
    let exact = recompute::recompute(arrivals.clone(), &none, &table, settings(0));
    assert!(exact.undetermined.is_empty() && exact.windows_undetermined.is_none());
    assert_eq!(
        described(&exact).get("campaign,campaign=3,window=60s @120000"),
        Some(&totals(1, 0, 0, 0))
    );

    // No timestamp: its arrival could be any time.
    let mut untimed = arrivals;
    untimed[2].timestamp_ms = None;
    let unknown = recompute::recompute(untimed, &none, &table, settings(2_000));
    assert_eq!(unknown.windows_undetermined, Some(Skip::NoEventTime));
}

/// 5,000 purchases of the largest total the source decodes sum beyond 64 bits: verify keeps the
/// exact sum, compares what the sink writes (clamped to InfluxDB's integers), and calls a
/// wrapped value wrong.
#[test]
#[allow(
    clippy::useless_conversion,
    reason = "written to compile with 64-bit fields, where it fails"
)]
fn sums_beyond_64_bits_are_recomputed_exactly() {
    let cents = shopflow::sources::avro::MAX_CENTS;
    let arrivals: Vec<Arrival> = (0..5_000u64)
        .map(|n| {
            let purchase = Event {
                order_id: OrderId(n),
                tag: Tag::Purchased,
                user_id: UserId(1),
                campaign_id: CampaignId(1),
                total: Cents(cents),
                units: i32::MAX as u32,
                event_time: EventTimeMs(100_000),
            };
            arrival(purchase, 0, n as i64, 100_000)
        })
        .collect();
    let expected = recompute::recompute(arrivals, &BTreeMap::new(), &[user(1, "CA")], settings(0));
    let all_time = &expected.rows[&campaign_key(1, None)];
    // (Written to hold for 64-bit fields too, where it fails.)
    assert_eq!(
        i128::try_from(all_time.revenue_cents).expect("exact"),
        5_000 * i128::from(cents)
    );
    assert_eq!(
        i128::try_from(all_time.units).expect("exact"),
        5_000 * i128::from(i32::MAX)
    );
    assert_eq!(all_time.purchases, 5_000);
    let found = |revenue_cents: i64| Found {
        rows: expected
            .rows
            .iter()
            .map(|(key, totals)| {
                let mut row = FoundRow::of(totals);
                if *key == campaign_key(1, None) {
                    row.revenue_cents = Some(revenue_cents);
                }
                (key.clone(), row)
            })
            .collect(),
        counters: expected
            .counters
            .iter()
            .map(|(counter, value)| (*counter, value.expect("determined")))
            .collect(),
        foreign_windows: BTreeMap::new(),
    };
    assert!(compare::compare(&expected, &found(i64::MAX)).is_match());
    let wrapped = (5_000 * i128::from(cents)) as i64;
    assert!(wrapped < 0);
    let comparison = compare::compare(&expected, &found(wrapped));
    assert_eq!(
        comparison.mismatches.len(),
        1,
        "{:#?}",
        comparison.mismatches
    );
}
