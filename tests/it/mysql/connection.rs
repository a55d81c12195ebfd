//! Connections lost and refused: the follower reconnects, an idle feed stays connected, a
//! server that stays away or cannot be reached is an error naming it.

use super::*;

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
