//! The load, the snapshot and the feed: rows read back, changes in commit order and seen
//! exactly once, a snapshot consistent with racing writers, hostile values, rows that do not
//! convert, a truncated table.

use super::*;

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn loads_100k_rows_and_reads_them_back() {
    let db = TestDb::new();
    let rows: Vec<_> = demographics::table(42, 100_000).collect();
    let report = load_demographics(&db.config, rows.iter().cloned(), 100_000).unwrap();
    println!(
        "loaded {} rows in {:.3} s ({:.0} rows/s, {} statements)",
        report.rows,
        report.elapsed.as_secs_f64(),
        report.rows_per_second(),
        report.statements
    );
    assert_eq!(report.rows, 100_000);
    assert_eq!(
        read_table(&db.config).unwrap(),
        rows,
        "read back in id order"
    );
    let started = Instant::now();
    let (snapshot, feed) = DemographicsSource::start(&db.config).unwrap();
    println!(
        "snapshot of {} rows in {:.3} s",
        snapshot.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sorted(snapshot), rows);
    assert_eq!(feed.skipped_rows(), 0);
    // Loading again replaces the table: the same rows, not twice as many.
    drop(feed);
    let report = load_demographics(&db.config, rows.iter().take(10).cloned(), 10).unwrap();
    assert_eq!(report.rows, 10);
    assert_eq!(read_table(&db.config).unwrap(), rows[..10]);
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn snapshot_then_follows_inserts_updates_deletes_in_commit_order() {
    let db = TestDb::new();
    let rows = load_small(&db, 7, 50);
    let (snapshot, feed) = DemographicsSource::start(&db.config).unwrap();
    assert_eq!(sorted(snapshot.clone()), rows);
    assert!(feed.try_recv_all().unwrap().is_empty());
    let mut conn = db.conn();
    let mut expected: Updates = Vec::new();

    let newcomer = row(1_000, 33, Gender::Other, "ON", "CA");
    insert(&mut conn, &newcomer);
    expected.push((newcomer.clone(), 1));

    let moved = Demographic {
        state: "BY".into(),
        country: "DE".into(),
        ..rows[1].clone()
    };
    update(&mut conn, &moved);
    expected.extend([(rows[1].clone(), -1), (moved, 1)]);

    let older = Demographic {
        age: rows[2].age + 1,
        ..rows[2].clone()
    };
    update(&mut conn, &older);
    expected.extend([(rows[2].clone(), -1), (older, 1)]);

    delete(&mut conn, 3);
    expected.push((rows[3].clone(), -1));

    // Several changes to one row in one transaction: each step, in order.
    conn.query_drop("START TRANSACTION").unwrap();
    let step1 = Demographic {
        age: 20,
        ..rows[4].clone()
    };
    let step2 = Demographic {
        state: "TX".into(),
        country: "US".into(),
        ..step1.clone()
    };
    let step3 = Demographic {
        gender: Gender::Undisclosed,
        ..step2.clone()
    };
    update(&mut conn, &step1);
    update(&mut conn, &step2);
    update(&mut conn, &step3);
    conn.query_drop("COMMIT").unwrap();
    expected.extend([
        (rows[4].clone(), -1),
        (step1.clone(), 1),
        (step1, -1),
        (step2.clone(), 1),
        (step2, -1),
        (step3, 1),
    ]);

    // A rolled-back transaction yields nothing.
    conn.query_drop("START TRANSACTION").unwrap();
    update(
        &mut conn,
        &Demographic {
            age: 99,
            ..rows[5].clone()
        },
    );
    insert(&mut conn, &row(1_001, 40, Gender::Male, "CA", "US"));
    delete(&mut conn, 6);
    conn.query_drop("ROLLBACK").unwrap();

    let marker = row(1_002, 50, Gender::Female, "NY", "US");
    insert(&mut conn, &marker);
    expected.push((marker, 1));

    let started = Instant::now();
    let got = collect(&feed, expected.len(), Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(got, expected);

    // Random generated changes: the snapshot plus the feed stays equal to the table.
    let mut state = BTreeMap::new();
    accumulate(&mut state, snapshot.into_iter().map(|r| (r, 1)));
    accumulate(&mut state, got);
    let mut changes = Changes::new(7, 50, 30);
    let report = apply_changes(
        &db.config,
        &mut changes,
        f64::INFINITY,
        Duration::from_secs(60),
        300,
    )
    .unwrap();
    assert_eq!(report.changes, 300);
    assert!(
        report.inserts + report.updates + report.deletes > 200,
        "{report:?}"
    );
    assert_feed_matches_table(&db, &mut state, &feed);
    assert_eq!(feed.skipped_rows(), 0);
    assert_eq!(feed.reconnects(), 0);
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn changes_between_snapshot_and_follower_are_seen_exactly_once() {
    let db = TestDb::new();
    let rows = load_small(&db, 3, 20);
    let mut conn = db.conn();
    let in_gap_update = Demographic {
        age: 77,
        ..rows[1].clone()
    };
    let in_gap_insert = row(500, 25, Gender::Female, "QC", "CA");
    let (snapshot, feed) = DemographicsSource::start_with_pause(&db.config, || {
        update(&mut conn, &in_gap_update);
        insert(&mut conn, &in_gap_insert);
    })
    .unwrap();
    // Right after start returns.
    let after = Demographic {
        state: "FL".into(),
        country: "US".into(),
        ..rows[2].clone()
    };
    update(&mut conn, &after);
    assert_eq!(
        sorted(snapshot.clone()),
        rows,
        "the snapshot predates the gap"
    );
    let expected = vec![
        (rows[1].clone(), -1),
        (in_gap_update, 1),
        (in_gap_insert, 1),
        (rows[2].clone(), -1),
        (after, 1),
    ];
    let got = collect(&feed, expected.len(), Duration::from_secs(5));
    assert_eq!(got, expected);
    let mut state = BTreeMap::new();
    accumulate(&mut state, snapshot.into_iter().map(|r| (r, 1)));
    accumulate(&mut state, got);
    assert_feed_matches_table(&db, &mut state, &feed);
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn the_snapshot_is_consistent_with_writers_racing_it() {
    let db = TestDb::new();
    let initial = load_small(&db, 29, 2_000);
    // The writer runs from before the snapshot until after it, however long the snapshot takes
    // (a fixed 1.5 s of writing ended before a snapshot slowed down by a loaded machine did).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (config, stop) = (db.config.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut changes = Changes::new(29, 2_000, 500);
            let (mut drawn, mut mismatches) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let report = apply_changes(
                    &config,
                    &mut changes,
                    2_000.0,
                    Duration::from_millis(100),
                    u64::MAX,
                )
                .unwrap();
                drawn += report.changes;
                mismatches += report.mismatches;
            }
            (drawn, mismatches)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (snapshot, feed) = DemographicsSource::start(&db.config).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (drawn, mismatches) = writer.join().unwrap();
    assert!(drawn > 0, "the writer wrote");
    assert_eq!(mismatches, 0, "{drawn} changes");
    assert_ne!(
        sorted(snapshot.clone()),
        initial,
        "changes before the snapshot"
    );
    let mut state = BTreeMap::new();
    accumulate(&mut state, snapshot.iter().cloned().map(|r| (r, 1)));
    let before_feed = state.clone();
    assert_feed_matches_table(&db, &mut state, &feed);
    assert_ne!(state, before_feed, "changes after the snapshot");
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn hostile_values_round_trip_through_load_and_feed() {
    let db = TestDb::new();
    let injection = "x'); DROP TABLE demographics; --";
    let punctuation = "a,b \"double\" 'single'\nnew line\ttab\\back`tick";
    let mut rows: Vec<_> = demographics::table(5, 10).collect();
    rows[3].state = injection.into();
    rows[4].state = punctuation.into();
    rows[5].country = "São Paulo, Île-de-France 😀".into();
    load_demographics(&db.config, rows.iter().cloned(), 10).unwrap();
    assert_eq!(read_table(&db.config).unwrap(), rows);
    let (snapshot, feed) = DemographicsSource::start(&db.config).unwrap();
    assert_eq!(sorted(snapshot), rows);
    let mut conn = db.conn();
    let inserted = row(77, 30, Gender::Male, injection, punctuation);
    insert(&mut conn, &inserted);
    let updated = Demographic {
        state: punctuation.into(),
        country: injection.into(),
        ..rows[0].clone()
    };
    update(&mut conn, &updated);
    let got = collect(&feed, 3, Duration::from_secs(5));
    assert_eq!(
        got,
        vec![(inserted, 1), (rows[0].clone(), -1), (updated, 1)]
    );
    let count: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM demographics")
        .unwrap();
    assert_eq!(count, Some(11), "the table is still there");

    // An invalid table name never reaches the server.
    for table in [
        "demographics; DROP TABLE x",
        "demo`graphics",
        "",
        "9lives",
        "a.b",
    ] {
        let config = MysqlConfig {
            table: table.into(),
            ..db.config.clone()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("mysql.table"), "{err}");
        let err = load_demographics(&config, std::iter::empty(), 0).unwrap_err();
        assert!(
            matches!(
                err,
                MysqlError::Config {
                    key: "mysql.table",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn rows_that_do_not_convert_are_skipped_and_counted() {
    let db = TestDb::new();
    let rows = load_small(&db, 11, 10);
    let mut conn = db.conn();
    let raw_insert =
        "INSERT INTO demographics (id, age, gender, state, country) VALUES (?, ?, ?, ?, ?)";
    conn.exec_drop(raw_insert, (900, 30, "Q", "CA", "US"))
        .unwrap();
    let (snapshot, feed) = DemographicsSource::start(&db.config).unwrap();
    assert_eq!(sorted(snapshot), rows, "the bad row is not in the snapshot");
    assert_eq!(feed.skipped_rows(), 1);
    // The pipeline's `demographics_skipped`: the rows that do not convert, now.
    assert_eq!(feed.take_skipped(), 1, "the snapshot's");
    assert_eq!(feed.take_skipped(), 0, "taken");

    conn.exec_drop(raw_insert, (901, 30, "Z", "CA", "US"))
        .unwrap(); // skipped
    conn.exec_drop("UPDATE demographics SET gender = 'Q' WHERE id = 1", ())
        .unwrap(); // the old row leaves, the new one is skipped
    conn.exec_drop("UPDATE demographics SET gender = 'F' WHERE id = 1", ())
        .unwrap(); // the old row is skipped, the new one arrives
    delete(&mut conn, 901); // skipped
    let fine = row(902, 45, Gender::Male, "WA", "US");
    insert(&mut conn, &fine);
    let expected = vec![
        (rows[1].clone(), -1),
        (
            Demographic {
                gender: Gender::Female,
                ..rows[1].clone()
            },
            1,
        ),
        (fine, 1),
    ];
    let got = collect(&feed, expected.len(), Duration::from_secs(5));
    assert_eq!(got, expected);
    assert_eq!(feed.skipped_rows(), 5);
    // 901 came and went, id 1 went bad and came back: still one bad row.
    assert_eq!(feed.take_skipped(), 0);

    // Transactions that touch only bad rows: 903 written, 900 rewritten then deleted, 904
    // written. Two bad rows now.
    conn.exec_drop(raw_insert, (903, 30, "Q", "CA", "US"))
        .unwrap();
    conn.exec_drop("UPDATE demographics SET age = 31 WHERE id = 900", ())
        .unwrap();
    delete(&mut conn, 900);
    conn.exec_drop(raw_insert, (904, 30, "Q", "CA", "US"))
        .unwrap();
    let mut bad = 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert_eq!(
            feed.recv_timeout(Duration::from_millis(100)).unwrap(),
            vec![],
            "no row that converts changed"
        );
        bad += feed.take_skipped();
    }
    let (table, skipped) = read_table_counting(&db.config).unwrap();
    assert_eq!((bad, skipped), (2, 2));
    assert_eq!(table.len(), rows.len() + 1);
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn truncate_stops_the_feed_with_an_error() {
    let db = TestDb::new();
    load_small(&db, 17, 5);
    let (_, feed) = DemographicsSource::start(&db.config).unwrap();
    let mut conn = db.conn();
    delete(&mut conn, 0);
    conn.query_drop("TRUNCATE TABLE demographics").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut updates = Vec::new();
    let err = loop {
        match feed.recv_timeout(Duration::from_millis(100)) {
            Ok(batch) => updates.extend(batch),
            Err(e) => break e,
        }
        assert!(Instant::now() < deadline, "no error after TRUNCATE");
    };
    assert_eq!(updates.len(), 1, "the delete before it arrived");
    assert!(matches!(err, MysqlError::Ddl { .. }), "{err}");
    assert!(err.to_string().contains("TRUNCATE"), "{err}");
    assert!(matches!(feed.try_recv_all(), Err(MysqlError::Closed)));
}
