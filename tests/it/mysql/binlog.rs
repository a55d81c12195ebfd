//! The binlog through a proxy that rewrites it: the follower keeps its file across rotations
//! and reconnections, and a stream failing at the same event gives up after the retries.

use super::*;

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
