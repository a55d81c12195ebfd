//! A real InfluxDB 1.x: batches read back exactly, split, gzipped, hostile tags, a 4xx, a hostile
//! database name.

use super::*;

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn batches_read_back_exactly_removals_as_zeros_and_rewrites_are_idempotent() {
    let db = TestDb::created("roundtrip");
    let first = batch(
        T,
        vec![
            aggregate(
                Dimension::Campaign(CampaignId(7)),
                Some(W),
                Some(totals(4, 1, 2, 1_999)),
            ),
            aggregate(
                Dimension::Campaign(CampaignId(7)),
                None,
                Some(totals(10, 3, 5, 12_000)),
            ),
            aggregate(
                Dimension::State(Some(("US".into(), "CA".into()))),
                None,
                Some(Totals::click()),
            ),
            aggregate(
                Dimension::AgeGender(Some((AgeBand::From25To34, Gender::Female))),
                Some(W),
                Some(Totals::purchase(Cents(2_500), 2)),
            ),
            counter(Counter::EventsIn, 100),
            counter(Counter::Duplicates, 1),
        ],
    );
    let second = batch(
        T + 1_000,
        vec![
            // Removals: the window's point is overwritten, the all-time series gets a zero point.
            aggregate(Dimension::Campaign(CampaignId(7)), Some(W), None),
            aggregate(
                Dimension::State(Some(("US".into(), "CA".into()))),
                None,
                None,
            ),
            counter(Counter::EventsIn, 150),
        ],
    );

    let mut sink = db.sink(|_| {});
    write_all(&mut sink, &[&first]);
    wait_for("the first batch", || sink.written() == 5);
    assert_eq!(
        rows(&db.name, "SELECT * FROM campaign"),
        [
            row(
                json!({"time": W, "campaign": "7", "window": "60s", "clicks": 4, "purchases": 1,
                       "units": 2, "revenue_cents": 1999, "conversion": 0.25})
            ),
            row(
                json!({"time": T, "campaign": "7", "window": "all", "clicks": 10, "purchases": 3,
                       "units": 5, "revenue_cents": 12000, "conversion": 0.3})
            ),
        ]
    );

    write_all(&mut sink, &[&second]);
    sink.finish().expect("written");
    assert_eq!(sink.written(), 8);
    let snapshot = sink.stats().snapshot();
    assert_eq!(
        (
            snapshot.lines_written,
            snapshot.retries,
            snapshot.failed,
            snapshot.in_flight
        ),
        (8, 0, 0, 0)
    );
    assert_eq!(snapshot.requests, snapshot.attempts);

    let zeros = |time: u64, tags: Value| {
        let mut r = row(
            json!({"time": time, "clicks": 0, "purchases": 0, "units": 0,
                               "revenue_cents": 0, "conversion": 0}),
        );
        r.extend(row(tags));
        r
    };
    let expected_campaign = vec![
        zeros(W, json!({"campaign": "7", "window": "60s"})),
        row(
            json!({"time": T, "campaign": "7", "window": "all", "clicks": 10, "purchases": 3,
                   "units": 5, "revenue_cents": 12000, "conversion": 0.3}),
        ),
    ];
    let expected_state = vec![
        row(
            json!({"time": T, "country": "US", "state": "CA", "window": "all", "clicks": 1,
                   "purchases": 0, "units": 0, "revenue_cents": 0, "conversion": 0}),
        ),
        zeros(
            T + 1_000,
            json!({"country": "US", "state": "CA", "window": "all"}),
        ),
    ];
    let expected_age_gender = vec![row(
        json!({"time": W, "age_band": "25-34", "gender": "F", "window": "60s", "clicks": 0,
               "purchases": 1, "units": 2, "revenue_cents": 2500, "conversion": 0}),
    )];
    let expected_pipeline = vec![
        row(json!({"time": T, "events_in": 100, "duplicates": 1})),
        row(json!({"time": T + 1_000, "events_in": 150, "duplicates": null})),
    ];
    let check = || {
        assert_eq!(
            names(&db.name, "SHOW MEASUREMENTS"),
            ["age_gender", "campaign", "pipeline", "state"]
        );
        assert_eq!(rows(&db.name, "SELECT * FROM campaign"), expected_campaign);
        assert_eq!(rows(&db.name, "SELECT * FROM state"), expected_state);
        assert_eq!(
            rows(&db.name, "SELECT * FROM age_gender"),
            expected_age_gender
        );
        assert_eq!(rows(&db.name, "SELECT * FROM pipeline"), expected_pipeline);
        assert_eq!(
            rows(&db.name, "SELECT COUNT(*) FROM /.*/")
                .iter()
                .map(|r| ["count_clicks", "count_events_in"]
                    .iter()
                    .find_map(|k| r.get(*k).and_then(Value::as_u64)))
                .collect::<Vec<_>>(),
            [Some(1), Some(2), Some(2), Some(2)]
        );
    };
    check();

    // Replaying both batches (a retried request, a restarted run) changes nothing.
    let mut again = db.sink(|_| {});
    write_all(&mut again, &[&first, &second]);
    again.finish().expect("written");
    assert_eq!(again.written(), 8);
    check();
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn a_batch_of_more_than_5000_lines_is_split_and_all_arrive() {
    let db = TestDb::created("split");
    let big = campaigns(T, 0, 12_345);
    let mut sink = db.sink(|_| {});
    sink.write_batch(&big).expect("queued");
    sink.finish().expect("written");
    let stats = sink.stats().snapshot();
    assert_eq!(stats.requests, 3, "5000 + 5000 + 2345: {stats:?}");
    assert_eq!(stats.attempts, 3);
    assert_eq!(stats.lines_written, 12_345);
    assert_eq!(sink.written(), 12_345);
    assert_eq!(
        rows(
            &db.name,
            "SELECT COUNT(clicks), SUM(clicks), MAX(clicks) FROM campaign"
        ),
        [row(
            json!({"time": 0, "count": 12_345, "sum": 12_345 * 12_346 / 2, "max": 12_345})
        )]
    );
    assert_eq!(
        rows(&db.name, "SHOW SERIES EXACT CARDINALITY"),
        [row(json!({"count": 12_345}))]
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn gzip_bodies_are_accepted() {
    let db = TestDb::created("gzip");
    let mut sink = db.sink(|c| {
        c.gzip = true;
        c.batch_lines = 1_000;
    });
    let big = campaigns(T, 0, 2_500);
    let small = batch(T + 1_000, vec![counter(Counter::RefundsApplied, 7)]);
    write_all(&mut sink, &[&big, &small]);
    sink.finish().expect("written");
    assert_eq!(sink.written(), 2_501);
    assert_eq!(
        rows(&db.name, "SELECT COUNT(clicks), SUM(clicks) FROM campaign"),
        [row(
            json!({"time": 0, "count": 2_500, "sum": 2_500 * 2_501 / 2})
        )]
    );
    assert_eq!(
        rows(&db.name, "SELECT * FROM pipeline"),
        [row(json!({"time": T + 1_000, "refunds_applied": 7}))]
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn hostile_tag_values_stay_one_point_with_their_tags() {
    let db = TestDb::created("hostile");
    // Ending in a backslash too: InfluxDB 1.x rejects a tag value ending in `\\` however it is
    // escaped, so the encoder writes backslashes as the look-alike U+FF3C.
    let state = "CA,evil=1 x=2 clicks=999i \"q\"\nhack y=1 back\\ slash\\";
    let hostile = batch(
        T,
        vec![aggregate(
            Dimension::State(Some(("U S".into(), state.into()))),
            None,
            Some(totals(3, 1, 1, 500)),
        )],
    );
    let mut sink = db.sink(|_| {});
    sink.write_batch(&hostile).unwrap();
    sink.finish().expect("written");
    assert_eq!(sink.written(), 1);

    assert_eq!(names(&db.name, "SHOW MEASUREMENTS"), ["state"]);
    assert_eq!(
        names(&db.name, "SHOW TAG KEYS FROM state"),
        ["country", "state", "window"]
    );
    assert_eq!(
        names(&db.name, "SHOW FIELD KEYS FROM state"),
        [
            "clicks",
            "conversion",
            "purchases",
            "revenue_cents",
            "units"
        ]
    );
    assert_eq!(rows(&db.name, "SHOW SERIES").len(), 1);
    // Line protocol has no line-break escape: the encoder writes `\n` as the two characters `\n`
    // and a backslash as `＼`; commas, equals signs, spaces and quotes arrive as themselves.
    let read_back = state.replace('\\', "\u{FF3C}").replace('\n', "\\n");
    assert_eq!(
        read_back,
        "CA,evil=1 x=2 clicks=999i \"q\"\\nhack y=1 back\u{FF3C} slash\u{FF3C}"
    );
    assert_eq!(
        rows(&db.name, "SELECT * FROM state"),
        [row(
            json!({"time": T, "country": "U S", "state": read_back, "window": "all",
                   "clicks": 3, "purchases": 1, "units": 1, "revenue_cents": 500,
                   "conversion": 1.0 / 3.0})
        )]
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn a_4xx_for_the_whole_request_is_fatal_at_once_and_carries_influxdbs_message() {
    // Writing to a database that does not exist.
    let missing = TestDb::named("missing");
    let mut sink = missing.sink(|_| {});
    let stats = sink.stats();
    sink.write_batch(&campaigns(T, 0, 3)).expect("queued");
    wait_for("the failure", || stats.snapshot().failed == 1);
    let expected = format!("database not found: \"{}\"", missing.name);
    let error = sink.write_batch(&campaigns(T + 1_000, 0, 3)).unwrap_err();
    assert_eq!(
        write_error(&error),
        WriteError::Rejected {
            status: 404,
            message: expected.clone()
        }
    );
    assert!(error.to_string().contains(&expected), "{error}");
    let error = sink.finish().unwrap_err();
    assert!(error.to_string().contains(&expected), "{error}");
    let stats = stats.snapshot();
    assert_eq!(
        (
            stats.attempts,
            stats.retries,
            stats.failed,
            stats.requests,
            stats.lines_written
        ),
        (1, 0, 1, 0, 0)
    );
    assert_eq!(sink.written(), 0);

    // The client itself says which InfluxDB it is.
    let db = TestDb::created("version");
    let client = InfluxClient::new(&config(&influx_url(), &db.name)).unwrap();
    let version = client.ping().expect("pong").expect("a version header");
    assert!(version.starts_with('1'), "{version}");
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn create_database_quotes_a_hostile_name() {
    let canary = TestDb::created("canary");
    let hostile = TestDb {
        // InfluxDB refuses `/` and `\` in database names; a quote must not end the identifier.
        name: format!(
            "{}\"; DROP DATABASE \"{}",
            TestDb::named("x").name,
            canary.name
        ),
    };
    let mut sink = hostile.sink(|c| c.create_database = true);
    sink.write_batch(&campaigns(T, 0, 2)).unwrap();
    sink.finish().expect("written");
    let databases = names(&canary.name, "SHOW DATABASES");
    assert!(databases.contains(&hostile.name), "{databases:?}");
    assert!(databases.contains(&canary.name), "{databases:?}");
    assert_eq!(rows(&hostile.name, "SELECT * FROM campaign").len(), 2);
    // Creating it again is a no-op.
    let mut again = hostile.sink(|c| c.create_database = true);
    again.finish().unwrap();
}
