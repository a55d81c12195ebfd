//! The MySQL/MariaDB connector against a real server: bulk load, snapshot and binlog feed,
//! hostile values, unconvertible rows, a killed connection. The server is read from
//! `SHOPFLOW_TEST_MYSQL_URL` (`mysql://user:password@host:port`, no database): each test creates
//! its own database and drops it at the end.
//!
//! By what they test: the load, the snapshot and the feed (`feed`), lost and refused connections
//! (`connection`), the binlog's rotations and failing streams through a rewriting proxy
//! (`binlog`), and the configuration section (`settings`).

mod binlog;
mod connection;
mod feed;
mod settings;

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
    ChangeFeed, DemographicsSource, MysqlConfig, MysqlError, read_table, read_table_counting,
};
use shopflow::writers::mysql::{apply_changes, load_demographics};

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
