//! The MySQL/MariaDB connector against a real server: bulk load, snapshot and binlog feed,
//! hostile values, unconvertible rows, a killed connection. The server is read from
//! `SHOPFLOW_TEST_MYSQL_URL` (`mysql://user:password@host:port`, no database): each test creates
//! its own database and drops it at the end.

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::model::{Demographic, Gender, UserId};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};
use shopflow::generators::demographics::{self, Changes};
use shopflow::sources::mysql::{
    ChangeFeed, DemographicsSource, MysqlConfig, MysqlError, apply_changes, load_demographics,
    read_table, read_table_counting,
};

type Updates = Vec<(Demographic, isize)>;

/// A database of its own on the test server, dropped at the end.
pub(crate) struct TestDb {
    server: String,
    pub(crate) name: String,
    pub(crate) config: MysqlConfig,
}

impl TestDb {
    pub(crate) fn new() -> TestDb {
        let server = std::env::var("SHOPFLOW_TEST_MYSQL_URL").expect(
            "SHOPFLOW_TEST_MYSQL_URL (mysql://user:password@host:port) names the test server",
        );
        let server = server.trim_end_matches('/').to_owned();
        let name = format!("shopflow_test_{:016x}", rand::random::<u64>());
        let mut admin = Conn::new(Opts::from_url(&server).expect("a mysql:// URL"))
            .expect("the test server answers");
        admin
            .query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .unwrap();
        let config = MysqlConfig {
            connect_retries: 5,
            connect_timeout_ms: 2_000,
            ..MysqlConfig::new(format!("{server}/{name}"))
        };
        TestDb {
            server,
            name,
            config,
        }
    }

    /// A separate connection to the test database, for writing behind the source's back.
    fn conn(&self) -> Conn {
        Conn::new(Opts::from_url(&self.config.url).unwrap()).unwrap()
    }

    /// A connection without a default database.
    fn admin(&self) -> Conn {
        Conn::new(Opts::from_url(&self.server).unwrap()).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Conn::new(Opts::from_url(&self.server).unwrap()) {
            let _ = admin.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

fn row(id: u32, age: u8, gender: Gender, state: &str, country: &str) -> Demographic {
    Demographic {
        id: UserId(id),
        age,
        gender,
        state: state.into(),
        country: country.into(),
    }
}

fn insert(conn: &mut Conn, r: &Demographic) {
    conn.exec_drop(
        "INSERT INTO demographics (id, age, gender, state, country) VALUES (?, ?, ?, ?, ?)",
        (
            r.id.0,
            r.age,
            r.gender.code(),
            r.state.as_str(),
            r.country.as_str(),
        ),
    )
    .unwrap();
}

fn update(conn: &mut Conn, r: &Demographic) {
    conn.exec_drop(
        "UPDATE demographics SET age = ?, gender = ?, state = ?, country = ? WHERE id = ?",
        (
            r.age,
            r.gender.code(),
            r.state.as_str(),
            r.country.as_str(),
            r.id.0,
        ),
    )
    .unwrap();
}

fn delete(conn: &mut Conn, id: u32) {
    conn.exec_drop("DELETE FROM demographics WHERE id = ?", (id,))
        .unwrap();
}

/// Reads the feed until `want` updates arrived (or `within` passed), then a little longer to
/// catch any extra.
fn collect(feed: &ChangeFeed, want: usize, within: Duration) -> Updates {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(feed.recv_timeout(Duration::from_millis(100)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    got.extend(feed.try_recv_all().unwrap());
    got
}

/// Applies updates to a multiset of rows.
fn accumulate(
    into: &mut BTreeMap<Demographic, isize>,
    updates: impl IntoIterator<Item = (Demographic, isize)>,
) {
    for (row, diff) in updates {
        *into.entry(row).or_default() += diff;
    }
    into.retain(|_, n| *n != 0);
}

/// Waits until the snapshot plus the feed equals a fresh read of the table.
fn assert_feed_matches_table(
    db: &TestDb,
    state: &mut BTreeMap<Demographic, isize>,
    feed: &ChangeFeed,
) {
    let table: BTreeMap<Demographic, isize> = read_table(&db.config)
        .unwrap()
        .into_iter()
        .map(|r| (r, 1))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while *state != table && Instant::now() < deadline {
        accumulate(
            state,
            feed.recv_timeout(Duration::from_millis(100)).unwrap(),
        );
    }
    assert!(state.values().all(|&n| n == 1), "one copy of each row");
    assert_eq!(
        state.len(),
        table.len(),
        "snapshot + feed has as many rows as the table"
    );
    assert!(*state == table, "snapshot + feed equals the table");
}

pub(crate) fn load_small(db: &TestDb, seed: u64, users: u32) -> Vec<Demographic> {
    let rows: Vec<_> = demographics::table(seed, users).collect();
    load_demographics(&db.config, rows.iter().cloned(), u64::from(users)).unwrap();
    rows
}

fn sorted(mut rows: Vec<Demographic>) -> Vec<Demographic> {
    rows.sort();
    rows
}

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
fn the_follower_reconnects_after_its_connection_is_killed() {
    let db = TestDb::new();
    let rows = load_small(&db, 13, 20);
    let (snapshot, feed) = DemographicsSource::start(&db.config).unwrap();
    let mut conn = db.conn();
    let before = row(600, 20, Gender::Female, "CA", "US");
    insert(&mut conn, &before);
    assert_eq!(collect(&feed, 1, Duration::from_secs(5)), vec![(before, 1)]);
    // A new binlog file: the follower moves on to it, and resumes in it below.
    let file = feed.position().file;
    conn.query_drop("FLUSH BINARY LOGS").unwrap();
    let rotated = row(601, 21, Gender::Male, "CA", "US");
    insert(&mut conn, &rotated);
    assert_eq!(
        collect(&feed, 1, Duration::from_secs(5)),
        vec![(rotated.clone(), 1)]
    );
    assert_ne!(
        feed.position().file,
        file,
        "followed into the next binlog file"
    );

    let id = feed.connection_id().expect("connected");
    let mut admin = db.admin();
    let processes: Vec<(u64, String)> = admin
        .query("SELECT ID, COMMAND FROM information_schema.PROCESSLIST")
        .unwrap();
    assert!(
        processes
            .iter()
            .any(|(pid, command)| *pid == u64::from(id) && command == "Binlog Dump"),
        "the follower's connection {id} is a Binlog Dump in the process list: {processes:?}"
    );
    admin.query_drop(format!("KILL {id}")).unwrap();

    let mut expected = Vec::new();
    for k in 0..5u32 {
        let r = row(700 + k, 30, Gender::Male, "TX", "US");
        insert(&mut conn, &r);
        expected.push((r, 1));
    }
    let moved = Demographic {
        state: "NI".into(),
        country: "DE".into(),
        ..rows[0].clone()
    };
    update(&mut conn, &moved);
    expected.extend([(rows[0].clone(), -1), (moved, 1)]);
    let got = collect(&feed, expected.len(), Duration::from_secs(10));
    assert_eq!(got, expected, "every change exactly once, in order");
    assert!(feed.reconnects() >= 1);
    assert_ne!(feed.connection_id(), Some(id));

    let mut state = BTreeMap::new();
    accumulate(&mut state, snapshot.into_iter().map(|r| (r, 1)));
    accumulate(
        &mut state,
        [(row(600, 20, Gender::Female, "CA", "US"), 1), (rotated, 1)],
    );
    accumulate(&mut state, got);
    assert_feed_matches_table(&db, &mut state, &feed);
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn an_idle_feed_stays_connected_and_a_password_file_works() {
    let db = TestDb::new();
    let rows = load_small(&db, 19, 5);
    // The URL without its password, which comes from a file instead.
    let opts = Opts::from_url(&db.config.url).unwrap();
    let password = opts.get_pass().unwrap_or_default().to_owned();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{password}\n")).unwrap();
    let config = MysqlConfig {
        url: format!(
            "mysql://{}@{}:{}/{}",
            opts.get_user().unwrap(),
            opts.get_ip_or_hostname(),
            opts.get_tcp_port(),
            db.name
        ),
        password_file: Some(file.path().to_owned()),
        ..db.config.clone()
    };
    let (snapshot, feed) = DemographicsSource::start(&config).unwrap();
    assert_eq!(sorted(snapshot), rows);
    let id = feed.connection_id();
    // Longer than the follower's read timeout (10 s): heartbeats keep the stream alive.
    std::thread::sleep(Duration::from_secs(12));
    assert!(feed.try_recv_all().unwrap().is_empty());
    assert_eq!(feed.reconnects(), 0, "no reconnection while idle");
    assert_eq!(feed.connection_id(), id);
    let mut conn = db.conn();
    delete(&mut conn, 2);
    assert_eq!(
        collect(&feed, 1, Duration::from_secs(5)),
        vec![(rows[2].clone(), -1)]
    );
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

/// A TCP proxy to the test server that can be cut off: its port then refuses connections.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub(crate) fn to(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, sockets) = (stop.clone(), sockets.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let mut all = sockets.lock().unwrap();
                    for (from, to) in [(&client, &server), (&server, &client)] {
                        let (mut from, mut to) =
                            (from.try_clone().unwrap(), to.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                    all.extend([client, server]);
                }
            })
        };
        Proxy {
            port,
            stop,
            sockets,
            acceptor: Some(acceptor),
        }
    }

    /// Closes every connection and the port.
    pub(crate) fn cut(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn the_feed_gives_up_with_an_error_when_the_server_stays_away() {
    let db = TestDb::new();
    load_small(&db, 23, 5);
    let opts = Opts::from_url(&db.config.url).unwrap();
    let mut proxy = Proxy::to(format!(
        "{}:{}",
        opts.get_ip_or_hostname(),
        opts.get_tcp_port()
    ));
    let config = MysqlConfig {
        url: format!(
            "mysql://{}:{}@127.0.0.1:{}/{}",
            opts.get_user().unwrap(),
            opts.get_pass().unwrap_or_default(),
            proxy.port,
            db.name
        ),
        connect_retries: 2,
        connect_timeout_ms: 1_000,
        ..db.config.clone()
    };
    let (_, feed) = DemographicsSource::start(&config).unwrap();
    let mut conn = db.conn();
    delete(&mut conn, 1);
    assert_eq!(collect(&feed, 1, Duration::from_secs(5)).len(), 1);
    let position = feed.position();
    proxy.cut();
    let started = Instant::now();
    let err = loop {
        match feed.recv_timeout(Duration::from_millis(100)) {
            Ok(batch) => assert!(batch.is_empty(), "{batch:?}"),
            Err(e) => break e,
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no error");
    };
    let message = err.to_string();
    match &err {
        MysqlError::FeedLost {
            addr,
            position: at,
            attempts,
            ..
        } => {
            assert_eq!(*addr, format!("127.0.0.1:{}", proxy.port));
            assert_eq!(*attempts, 2);
            // Other tests write other databases of the same server: their transactions are
            // skipped as irrelevant and still move the position, until the cut.
            assert_eq!(*at, feed.position(), "the last position applied");
            assert!(*at >= position, "{at} went back before {position}");
        }
        other => panic!("expected FeedLost, got {other}"),
    }
    assert!(
        message.contains("gave up after 2 reconnection attempt"),
        "{message}"
    );
    assert!(matches!(feed.try_recv_all(), Err(MysqlError::Closed)));
}

#[test]
fn an_unreachable_server_fails_fast_naming_the_address() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = MysqlConfig {
        connect_retries: 2,
        connect_timeout_ms: 1_000,
        ..MysqlConfig::new(format!("mysql://shopflow@127.0.0.1:{port}/shopflow"))
    };
    let started = Instant::now();
    let err = DemographicsSource::start(&config).err().expect("fails");
    let message = err.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("after 3 attempt"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded retries"
    );
    let err = load_demographics(&config, std::iter::empty(), 0).unwrap_err();
    assert!(
        matches!(err, MysqlError::Connect { attempts: 3, .. }),
        "{err}"
    );
}

#[test]
fn the_proposed_toml_section_is_the_default_and_secrets_stay_hidden() {
    #[derive(serde::Deserialize)]
    struct File {
        mysql: MysqlConfig,
    }
    let section = r#"
[mysql]
url = "mysql://shopflow@127.0.0.1:3306/shopflow"
table = "demographics"
load-batch-rows = 1000
server-id = 0
connect-timeout-ms = 5000
connect-retries = 5
"#;
    let file: File = toml::from_str(section).unwrap();
    assert_eq!(file.mysql, MysqlConfig::default());
    file.mysql.validate().unwrap();
    let unknown = section.replace("server-id", "server-idd");
    assert!(toml::from_str::<File>(&unknown).is_err());

    let config = MysqlConfig {
        password: Some("hunter2".into()),
        url: "mysql://shopflow:urlsecret@db:3306/shopflow".into(),
        ..MysqlConfig::default()
    };
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("urlsecret"),
        "{debug}"
    );
    assert!(debug.contains("***"), "{debug}");
    let printed = toml::to_string(&config).unwrap();
    assert!(
        !printed.contains("hunter2") && !printed.contains("urlsecret"),
        "{printed}"
    );

    let bad = MysqlConfig {
        table: "x; DROP TABLE y".into(),
        ..MysqlConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "invalid configuration: mysql.table: \"x; DROP TABLE y\" is not an identifier [A-Za-z_][A-Za-z0-9_]{0,63}"
    );
}

/// What a [`BinlogProxy`] does to the binlog events it passes on.
const PASS: u8 = 0;
/// Turns each real ROTATE event (the one ending a file) into a STOP event, as a server restart
/// leaves its file: the follower then learns of the next file only from the server's
/// artificial rotate.
const HIDE_ROTATES: u8 = 1;
/// Flips a byte in every rows event, leaving its checksum wrong.
const CORRUPT_ROWS: u8 = 2;

/// A TCP proxy to the test server that rewrites the binlog events it passes on, per its `mode`.
struct BinlogProxy {
    port: u16,
    mode: Arc<std::sync::atomic::AtomicU8>,
    stop: Arc<AtomicBool>,
}

impl BinlogProxy {
    fn to(upstream: String, mode: u8) -> BinlogProxy {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(mode));
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_, mode_) = (stop.clone(), mode.clone());
        std::thread::spawn(move || {
            while !stop_.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
                let (mut from, mut to, mode) = (server, client, mode_.clone());
                // Server to client, packet by packet (3 bytes of length, 1 of sequence).
                std::thread::spawn(move || {
                    let mut header = [0u8; 4];
                    while from.read_exact(&mut header).is_ok() {
                        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
                        let mut payload = vec![0u8; len];
                        if from.read_exact(&mut payload).is_err() {
                            break;
                        }
                        rewrite_event(&mut payload, mode.load(Ordering::Relaxed));
                        if to.write_all(&header).is_err() || to.write_all(&payload).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        BinlogProxy { port, mode, stop }
    }

    /// A config like `config` whose connections go through this proxy.
    fn config(&self, config: &MysqlConfig) -> MysqlConfig {
        let opts = Opts::from_url(&config.url).unwrap();
        MysqlConfig {
            url: format!(
                "mysql://{}:{}@127.0.0.1:{}/{}",
                opts.get_user().unwrap(),
                opts.get_pass().unwrap_or_default(),
                self.port,
                opts.get_db_name().unwrap()
            ),
            ..config.clone()
        }
    }
}

impl Drop for BinlogProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Rewrites a binlog event packet (`0x00`, a 19-byte header, data, CRC32) per `mode`; other
/// packets, and events whose length or checksum do not check out, pass as they are.
fn rewrite_event(payload: &mut [u8], mode: u8) {
    const HEADER: usize = 1 + 19;
    if mode == PASS || payload.len() < HEADER + 4 || payload[0] != 0 {
        return;
    }
    let u32_at = |p: &[u8], i: usize| u32::from_le_bytes(p[i..i + 4].try_into().unwrap());
    let (kind, size, log_pos) = (payload[5], u32_at(payload, 10), u32_at(payload, 14));
    let body = payload.len() - 4;
    if size as usize != payload.len() - 1
        || crc32fast::hash(&payload[1..body]) != u32_at(payload, body)
    {
        return;
    }
    match mode {
        HIDE_ROTATES if kind == 4 && log_pos != 0 => {
            payload[5] = 3; // STOP_EVENT
            let sum = crc32fast::hash(&payload[1..body]);
            payload[body..].copy_from_slice(&sum.to_le_bytes());
        }
        CORRUPT_ROWS if matches!(kind, 23..=25 | 30..=32) => payload[body - 1] ^= 0x55,
        _ => {}
    }
}

/// Kills the follower's binlog connection, once it has one other than `last`; returns its id.
/// Updates arriving meanwhile go to `got`; an error of the feed fails the test.
fn kill_follower(db: &TestDb, feed: &ChangeFeed, last: Option<u32>, got: &mut Updates) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        match feed.connection_id() {
            Some(id) if Some(id) != last => break id,
            _ => {}
        }
        assert!(Instant::now() < deadline, "the follower did not reconnect");
        got.extend(feed.recv_timeout(Duration::from_millis(20)).unwrap());
    };
    db.admin().query_drop(format!("KILL {id}")).unwrap();
    id
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn the_follower_keeps_the_binlog_file_across_rotations_and_reconnections() {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    let seed: u64 = std::env::var("SHOPFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (SHOPFLOW_TEST_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new();
    let rows = load_small(&db, seed, 30);
    let opts = Opts::from_url(&db.config.url).unwrap();
    let upstream = format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port());
    let proxy = BinlogProxy::to(upstream, HIDE_ROTATES);
    let (snapshot, feed) = DemographicsSource::start(&proxy.config(&db.config)).unwrap();
    assert_eq!(sorted(snapshot.clone()), sorted(rows));
    let mut table: BTreeMap<u32, Demographic> =
        snapshot.iter().map(|r| (r.id.0, r.clone())).collect();
    let mut conn = db.conn();
    let mut expected = Updates::new();
    let mut got = Updates::new();
    let mut killed = None;
    let mut next_id = 1_000;
    for round in 0..8 {
        // Half the rounds as after a restart (files end without a rotate), half as after FLUSH.
        let mode = if round % 2 == 0 { HIDE_ROTATES } else { PASS };
        proxy.mode.store(mode, Ordering::Relaxed);
        for _ in 0..rng.random_range(4..10) {
            match rng.random_range(0..10) {
                0..=4 => {
                    // A transaction of one to three changes.
                    let mut tx = conn.start_transaction(Default::default()).unwrap();
                    for _ in 0..rng.random_range(1..=3) {
                        let ids: Vec<u32> = table.keys().copied().collect();
                        let pick = ids[rng.random_range(0..ids.len())];
                        match rng.random_range(0..3) {
                            0 => {
                                let r = row(
                                    next_id,
                                    rng.random_range(18..90),
                                    Gender::Female,
                                    "CA",
                                    "US",
                                );
                                next_id += 1;
                                tx.exec_drop(
                                    "INSERT INTO demographics (id, age, gender, state, country) VALUES (?, ?, ?, ?, ?)",
                                    (r.id.0, r.age, r.gender.code(), r.state.as_str(), r.country.as_str()),
                                )
                                .unwrap();
                                expected.push((r.clone(), 1));
                                table.insert(r.id.0, r);
                            }
                            1 => {
                                let old = table[&pick].clone();
                                let new = Demographic {
                                    age: if old.age == 40 { 41 } else { 40 },
                                    ..old.clone()
                                };
                                tx.exec_drop(
                                    "UPDATE demographics SET age = ? WHERE id = ?",
                                    (new.age, pick),
                                )
                                .unwrap();
                                expected.extend([(old, -1), (new.clone(), 1)]);
                                table.insert(pick, new);
                            }
                            _ if table.len() > 5 => {
                                tx.exec_drop("DELETE FROM demographics WHERE id = ?", (pick,))
                                    .unwrap();
                                expected.push((table.remove(&pick).unwrap(), -1));
                            }
                            _ => {}
                        }
                    }
                    tx.commit().unwrap();
                }
                5..=6 => {
                    for _ in 0..rng.random_range(1..=2) {
                        conn.query_drop("FLUSH BINARY LOGS").unwrap();
                    }
                }
                7..=8 => killed = Some(kill_follower(&db, &feed, killed, &mut got)),
                _ => got.extend(feed.recv_timeout(Duration::from_millis(200)).unwrap()),
            }
        }
    }
    // The last changes after a file change and a reconnection.
    conn.query_drop("FLUSH BINARY LOGS").unwrap();
    kill_follower(&db, &feed, killed, &mut got);
    let last = row(next_id, 33, Gender::Male, "TX", "US");
    insert(&mut conn, &last);
    expected.push((last.clone(), 1));
    table.insert(last.id.0, last);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < expected.len() && Instant::now() < deadline {
        got.extend(feed.recv_timeout(Duration::from_millis(100)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    got.extend(feed.try_recv_all().unwrap());
    assert_eq!(
        got.len(),
        expected.len(),
        "seed {seed}: as many updates as changes made"
    );
    assert!(
        got == expected,
        "seed {seed}: every change exactly once, in order"
    );
    assert!(feed.reconnects() >= 1);
    let mut state = BTreeMap::new();
    accumulate(&mut state, snapshot.into_iter().map(|r| (r, 1)));
    accumulate(&mut state, got);
    let want: BTreeMap<Demographic, isize> = table.into_values().map(|r| (r, 1)).collect();
    assert_eq!(
        state, want,
        "seed {seed}: snapshot + feed equals the changes made"
    );
    assert_feed_matches_table(&db, &mut state, &feed);
}

#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn a_stream_failing_at_the_same_event_gives_up_after_the_retries() {
    let db = TestDb::new();
    load_small(&db, 29, 5);
    let opts = Opts::from_url(&db.config.url).unwrap();
    let proxy = BinlogProxy::to(
        format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port()),
        PASS,
    );
    let config = MysqlConfig {
        connect_retries: 2,
        ..proxy.config(&db.config)
    };
    let (_, feed) = DemographicsSource::start(&config).unwrap();
    let mut conn = db.conn();
    delete(&mut conn, 1);
    assert_eq!(collect(&feed, 1, Duration::from_secs(5)).len(), 1);
    // Every rows event from now on fails its checksum, at every reconnection.
    proxy.mode.store(CORRUPT_ROWS, Ordering::Relaxed);
    kill_follower(&db, &feed, None, &mut Updates::new());
    delete(&mut conn, 2);
    let started = Instant::now();
    let err = loop {
        match feed.recv_timeout(Duration::from_millis(100)) {
            Ok(batch) => assert!(
                batch.is_empty(),
                "a corrupted change was applied: {batch:?}"
            ),
            Err(e) => break e,
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still retrying after 30 s ({} reconnections)",
            feed.reconnects()
        );
    };
    let message = err.to_string();
    assert!(matches!(err, MysqlError::FeedLost { .. }), "{message}");
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}
