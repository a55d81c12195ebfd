//! The source: a consistent snapshot of the table, then its binlog as a [`ChangeFeed`].

use std::cell::{Cell as StdCell, RefCell};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataflows::model::Demographic;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};

use super::{
    binlog::{self, STREAM_READ_TIMEOUT, open_stream},
    connection::endpoint,
    connection::{connect, retryable, retrying},
    error::{MysqlError, sql_error},
    rows::{SkipLog, convert_row, select_statement},
};
use crate::config::mysql::MysqlConfig;

/// Committed transactions the feed buffers before the follower waits for the reader.
const FEED_CAPACITY: usize = 1024;

/// A position in the server's binary log.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BinlogPosition {
    /// The binlog file name, e.g. `binlog.000003`.
    pub file: String,
    /// The byte offset of the next event in it.
    pub pos: u64,
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// How text columns are stored, for decoding binlog row images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Charset {
    /// utf8mb4, utf8mb3, ascii, binary.
    Utf8,
    /// MySQL's latin1, which is Windows-1252.
    Latin1,
}

/// Where the five columns sit in the table and how they are typed.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    pub(super) columns: usize,
    /// Ordinals of id, age, gender, state, country.
    pub(super) positions: [usize; 5],
    pub(super) unsigned: Vec<bool>,
    pub(super) charsets: Vec<Charset>,
}

const WANTED: [&str; 5] = ["id", "age", "gender", "state", "country"];

fn read_layout(conn: &mut Conn, database: &str, table: &str) -> Result<Layout, MysqlError> {
    let qualified = format!("{database}.{table}");
    let engine: Option<Option<String>> = conn
        .exec_first(
            "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (database, table),
        )
        .map_err(sql_error(format!("looking up table {qualified}")))?;
    match engine {
        None => {
            return Err(MysqlError::Table {
                table: qualified,
                message: "does not exist (load it first)".into(),
            });
        }
        Some(engine)
            if !engine
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case("InnoDB")) =>
        {
            return Err(MysqlError::Table {
                table: qualified,
                message: format!(
                    "uses engine {}; a consistent snapshot needs InnoDB",
                    engine.as_deref().unwrap_or("(none: a view?)")
                ),
            });
        }
        Some(_) => {}
    }
    let columns: Vec<(String, String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        .map_err(sql_error(format!("reading the columns of {qualified}")))?;
    let mut positions = [0; 5];
    for (slot, wanted) in positions.iter_mut().zip(WANTED) {
        *slot = columns
            .iter()
            .position(|(name, _, _)| name.eq_ignore_ascii_case(wanted))
            .ok_or_else(|| MysqlError::Table {
                table: qualified.clone(),
                message: format!("has no column {wanted}"),
            })?;
    }
    let mut charsets = Vec::with_capacity(columns.len());
    for (name, _, charset) in &columns {
        charsets.push(match charset.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "binary") => Charset::Utf8,
            Some("latin1") => Charset::Latin1,
            Some(other) => {
                return Err(MysqlError::Table {
                    table: qualified,
                    message: format!(
                        "column {name} has character set {other}; the binlog reader decodes utf8mb4, utf8mb3, ascii and latin1"
                    ),
                });
            }
        });
    }
    Ok(Layout {
        columns: columns.len(),
        positions,
        unsigned: columns
            .iter()
            .map(|(_, ty, _)| ty.to_ascii_lowercase().contains("unsigned"))
            .collect(),
        charsets,
    })
}

/// The server's flavour and binlog settings, checked before following.
struct ServerInfo {
    mariadb: bool,
    server_id: u32,
}

fn check_server(conn: &mut Conn) -> Result<ServerInfo, MysqlError> {
    let row: Option<(String, String, String, String, u32)> = conn
        .query_first(
            "SELECT @@version, CAST(@@global.log_bin AS CHAR), @@global.binlog_format, \
             @@global.binlog_row_image, @@global.server_id",
        )
        .map_err(sql_error("reading the server's binlog settings"))?;
    let Some((version, log_bin, format, image, server_id)) = row else {
        return Err(MysqlError::Setting {
            setting: "log_bin",
            found: "unknown".into(),
            expected: "the server did not report its binlog settings".into(),
        });
    };
    if !matches!(log_bin.to_ascii_uppercase().as_str(), "1" | "ON") {
        return Err(MysqlError::Setting {
            setting: "log_bin",
            found: "OFF".into(),
            expected: "the change feed reads the binary log: start the server with --log-bin"
                .into(),
        });
    }
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(MysqlError::Setting {
            setting: "binlog_format",
            found: format,
            expected: "the change feed needs binlog_format=ROW".into(),
        });
    }
    if !image.eq_ignore_ascii_case("FULL") {
        return Err(MysqlError::Setting {
            setting: "binlog_row_image",
            found: image,
            expected: "the change feed needs binlog_row_image=FULL".into(),
        });
    }
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    if mariadb {
        let compress: Option<String> = conn
            .query_first("SELECT CAST(@@global.log_bin_compress AS CHAR)")
            .map_err(sql_error("reading log_bin_compress"))?;
        if compress.is_some_and(|c| matches!(c.to_ascii_uppercase().as_str(), "1" | "ON")) {
            return Err(MysqlError::Setting {
                setting: "log_bin_compress",
                found: "ON".into(),
                expected: "the binlog reader does not decode compressed events: set it OFF".into(),
            });
        }
    }
    Ok(ServerInfo { mariadb, server_id })
}

/// Reads the table and the binlog position of the same instant.
fn snapshot(
    conn: &mut Conn,
    info: &ServerInfo,
    table: &str,
    skips: &mut SkipLog,
) -> Result<(Vec<Demographic>, BinlogPosition, i64), MysqlError> {
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .map_err(sql_error("setting the snapshot's isolation level"))?;
    let position = if info.mariadb {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .map_err(sql_error("starting the snapshot transaction"))?;
        let status: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .map_err(sql_error("reading binlog_snapshot_file/position"))?;
        let get = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        BinlogPosition {
            file: get("binlog_snapshot_file").unwrap_or_default(),
            pos: get("binlog_snapshot_position")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        }
    } else {
        // MySQL: hold off writers while the snapshot and the position are taken together.
        conn.query_drop("FLUSH TABLES WITH READ LOCK")
            .map_err(sql_error(
                "FLUSH TABLES WITH READ LOCK (MySQL needs it, and the RELOAD privilege, for a consistent position)",
            ))?;
        let taken = (|| {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")?;
            let status: Option<mysql::Row> = match conn.query_first("SHOW BINARY LOG STATUS") {
                Ok(row) => row,
                Err(_) => conn.query_first("SHOW MASTER STATUS")?,
            };
            Ok::<_, mysql::Error>(status.map(|row| {
                let (file, pos): (String, u64) = (
                    row.get(0).unwrap_or_default(),
                    row.get(1).unwrap_or_default(),
                );
                BinlogPosition { file, pos }
            }))
        })();
        let unlocked = conn.query_drop("UNLOCK TABLES");
        let position = taken.map_err(sql_error("taking the snapshot and its binlog position"))?;
        unlocked.map_err(sql_error("UNLOCK TABLES"))?;
        position.unwrap_or_default()
    };
    if position.file.is_empty() || position.pos == 0 {
        return Err(MysqlError::Setting {
            setting: "log_bin",
            found: "without a position".into(),
            expected: "the server reported no binlog position for the snapshot".into(),
        });
    }
    let mut rows = Vec::new();
    let mut skipped = 0;
    {
        let result = conn
            .query_iter(select_statement(table))
            .map_err(sql_error(format!("reading the snapshot of {table}")))?;
        for row in result {
            let row = row.map_err(sql_error(format!("reading the snapshot of {table}")))?;
            match convert_row(row) {
                Ok(row) => rows.push(row),
                Err(reason) => {
                    skips.skip(&reason);
                    skipped += 1;
                }
            }
        }
    }
    conn.query_drop("COMMIT")
        .map_err(sql_error("ending the snapshot transaction"))?;
    Ok((rows, position, skipped))
}

/// The demographics table as a snapshot and a feed of its changes.
pub struct DemographicsSource;

impl DemographicsSource {
    /// Reads the table in a consistent snapshot and starts following the binlog from the
    /// position of that snapshot: the rows, then every committed change after them, exactly once.
    ///
    /// Fails when the server cannot be reached after `connect-retries` retries, when the binlog
    /// is off or not `binlog_format=ROW` / `binlog_row_image=FULL`, or when the table is missing.
    pub fn start(config: &MysqlConfig) -> Result<(Vec<Demographic>, ChangeFeed), MysqlError> {
        Self::start_with_pause(config, || {})
    }

    /// [`start`](Self::start), calling `between` after the snapshot is read and before the
    /// binlog follower connects: tests make changes there to check that none falls in the gap.
    #[doc(hidden)]
    pub fn start_with_pause(
        config: &MysqlConfig,
        between: impl FnOnce(),
    ) -> Result<(Vec<Demographic>, ChangeFeed), MysqlError> {
        let opts = config.opts()?;
        let database = config.database()?;
        let table = config.table.clone();
        let mut conn = connect(config)?;
        let info = check_server(&mut conn)?;
        let server_id = match config.server_id {
            0 => loop {
                let id = rand::random::<u32>() | 0x8000_0000;
                if id != info.server_id {
                    break id;
                }
            },
            id if id == info.server_id => {
                return Err(MysqlError::Config {
                    key: "mysql.server-id",
                    message: format!("{id} is the server's own server_id; pick another"),
                });
            }
            id => id,
        };
        let layout = read_layout(&mut conn, &database, &table)?;
        let shared = Arc::new(Shared::default());
        let mut skips = SkipLog {
            shared: shared.clone(),
            table: format!("{database}.{table}"),
            last_warning: None,
            suppressed: 0,
        };
        let (rows, position, skipped) = snapshot(&mut conn, &info, &table, &mut skips)?;
        drop(conn);
        tracing::info!(
            table = %format!("{database}.{table}"),
            rows = rows.len(),
            skipped,
            %position,
            "read the demographics snapshot"
        );
        between();
        let addr = endpoint(&opts);
        let stream_timeout = Some(config.connect_timeout().max(STREAM_READ_TIMEOUT));
        let opts: Opts = OptsBuilder::from_opts(opts)
            // The address the URL names, not the server's local socket even when it is local.
            .prefer_socket(false)
            .read_timeout(stream_timeout)
            .write_timeout(stream_timeout)
            .into();
        let first = retrying(&addr, config.connect_retries, || {
            open_stream(&opts, server_id, &position)
        })
        .map_err(|(attempts, e)| {
            if retryable(&e) {
                MysqlError::Connect {
                    addr: addr.clone(),
                    attempts,
                    detail: e.to_string(),
                }
            } else {
                MysqlError::Binlog {
                    addr: addr.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        *lock(&shared.position) = position.clone();
        shared
            .connection_id
            .store(first.connection_id, Ordering::Relaxed);
        let (sender, receiver) = mpsc::sync_channel(FEED_CAPACITY);
        let follower = binlog::Follower {
            opts,
            addr: addr.clone(),
            server_id,
            retries: config.connect_retries,
            database,
            table,
            layout,
            shared: shared.clone(),
            sender,
            committed: position.clone(),
            skips,
        };
        std::thread::Builder::new()
            .name("mysql-binlog".into())
            .spawn(move || follower.run(first))
            .map_err(|source| MysqlError::Io {
                context: "starting the binlog follower thread".into(),
                source,
            })?;
        Ok((
            rows,
            ChangeFeed {
                receiver,
                pending_error: RefCell::new(None),
                ended: StdCell::new(false),
                skipped_change: StdCell::new(skipped),
                shared,
                snapshot_position: position,
                addr,
                retries: config.connect_retries,
            },
        ))
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the follower and the feed share.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    pub(super) skipped: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) connection_id: AtomicU32,
    /// The reconnection attempt under way (1 for the first), 0 while a stream is open.
    pub(super) reconnect_attempt: AtomicU32,
    pub(super) position: Mutex<BinlogPosition>,
}

/// A committed transaction, or the error that ended the feed.
pub(super) type Message = Result<Transaction, MysqlError>;

/// A committed transaction's effect on the table.
pub(super) struct Transaction {
    /// Its updates of rows that convert.
    pub(super) updates: Vec<(Demographic, isize)>,
    /// The change in the number of rows that do not convert: +1 for each such row written, -1
    /// for each such row deleted or overwritten.
    pub(super) skipped: i64,
}

/// The changes to the table after its snapshot, as differential updates in commit order:
/// insert `(row, +1)`, delete `(row, -1)`, update `(old, -1), (new, +1)`.
///
/// A follower thread fills a bounded channel; when the reader falls behind, the follower waits.
/// Dropping the feed stops the follower.
pub struct ChangeFeed {
    receiver: Receiver<Message>,
    pending_error: RefCell<Option<MysqlError>>,
    /// Set once the feed's error was returned.
    ended: StdCell<bool>,
    /// The change in the number of unconvertible rows not yet taken: the snapshot's, then each
    /// transaction's as its updates are received.
    skipped_change: StdCell<i64>,
    shared: Arc<Shared>,
    snapshot_position: BinlogPosition,
    /// The server, as errors name it.
    addr: String,
    /// `mysql.connect-retries`.
    retries: u32,
}

/// The binlog follower's connection as another thread sees it: connected, or not and why.
#[derive(Clone)]
pub struct Follower {
    shared: Arc<Shared>,
    addr: String,
    retries: u32,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follower")
            .field("addr", &self.addr)
            .field("connected", &self.connected())
            .finish()
    }
}

impl Follower {
    /// Whether the follower has a binlog stream open: `Err` says why not (the connection was
    /// lost and it is reconnecting, or it stopped).
    pub fn connected(&self) -> Result<(), String> {
        if self.shared.connection_id.load(Ordering::Relaxed) != 0 {
            return Ok(());
        }
        if self.shared.stop.load(Ordering::Relaxed) {
            return Err(format!(
                "the MySQL binlog follower of {} stopped",
                self.addr
            ));
        }
        match self.shared.reconnect_attempt.load(Ordering::Relaxed) {
            0 => Err(format!(
                "the MySQL binlog follower lost its connection to {}",
                self.addr
            )),
            attempt => Err(format!(
                "the MySQL binlog follower is reconnecting to {} (attempt {attempt} of {}, \
                 mysql.connect-retries)",
                self.addr, self.retries
            )),
        }
    }
}

impl ChangeFeed {
    /// All changes available now, in commit order, without waiting. An error ends the feed: it
    /// is returned once, after the changes before it, and [`MysqlError::Closed`] after that.
    pub fn try_recv_all(&self) -> Result<Vec<(Demographic, isize)>, MysqlError> {
        self.check_ended()?;
        let mut out = Vec::new();
        self.drain_into(&mut out)?;
        Ok(out)
    }

    /// The error the feed ended with, once, then [`MysqlError::Closed`].
    fn check_ended(&self) -> Result<(), MysqlError> {
        if let Some(error) = self.pending_error.borrow_mut().take() {
            self.ended.set(true);
            return Err(error);
        }
        if self.ended.get() {
            return Err(MysqlError::Closed);
        }
        Ok(())
    }

    /// Waits up to `timeout` for a change, then returns everything available (empty when none
    /// came in time).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<(Demographic, isize)>, MysqlError> {
        self.check_ended()?;
        let mut out = match self.receiver.recv_timeout(timeout) {
            Ok(Ok(transaction)) => self.received(transaction),
            Ok(Err(error)) => {
                self.ended.set(true);
                return Err(error);
            }
            Err(RecvTimeoutError::Timeout) => return Ok(Vec::new()),
            Err(RecvTimeoutError::Disconnected) => {
                self.ended.set(true);
                return Err(MysqlError::Closed);
            }
        };
        self.drain_into(&mut out)?;
        Ok(out)
    }

    fn drain_into(&self, out: &mut Vec<(Demographic, isize)>) -> Result<(), MysqlError> {
        loop {
            match self.receiver.try_recv() {
                Ok(Ok(transaction)) => out.extend(self.received(transaction)),
                Ok(Err(error)) if out.is_empty() => {
                    self.ended.set(true);
                    return Err(error);
                }
                Ok(Err(error)) => {
                    *self.pending_error.borrow_mut() = Some(error);
                    return Ok(());
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) if out.is_empty() => {
                    self.ended.set(true);
                    return Err(MysqlError::Closed);
                }
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    /// A received transaction's updates; its change in unconvertible rows is kept for
    /// [`take_skipped`](Self::take_skipped).
    fn received(&self, transaction: Transaction) -> Vec<(Demographic, isize)> {
        self.skipped_change
            .set(self.skipped_change.get() + transaction.skipped);
        transaction.updates
    }

    /// How the number of rows that do not convert (bad gender, age out of range, NULLs) changed
    /// since the last call: first the snapshot's count, then each received transaction's
    /// change, in step with the updates returned so far. Summed, it is the number of such rows
    /// in the table as of the last update returned: the `demographics_skipped` counter.
    pub fn take_skipped(&self) -> isize {
        self.skipped_change.replace(0) as isize
    }

    /// Rows skipped because they did not convert (bad gender, age out of range, NULLs), in the
    /// snapshot and in the feed: every skip, an invalid row updated twice counted twice.
    pub fn skipped_rows(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// How many times the follower reconnected after losing its connection.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// The server's id of the follower's current connection (`SHOW PROCESSLIST`), if connected.
    pub fn connection_id(&self) -> Option<u32> {
        Some(self.shared.connection_id.load(Ordering::Relaxed)).filter(|&id| id != 0)
    }

    /// A handle on the follower's connection for someone else to watch (the HTTP server's
    /// `/ready`): it stays valid, and cheap to read, while the feed itself is owned elsewhere.
    pub fn follower(&self) -> Follower {
        Follower {
            shared: self.shared.clone(),
            addr: self.addr.clone(),
            retries: self.retries,
        }
    }

    /// The binlog position of the snapshot.
    pub fn snapshot_position(&self) -> &BinlogPosition {
        &self.snapshot_position
    }

    /// The position after the last transaction sent to the feed (or skipped as irrelevant).
    pub fn position(&self) -> BinlogPosition {
        lock(&self.shared.position).clone()
    }
}

impl Drop for ChangeFeed {
    /// Stops the follower without waiting for it. It notices at once when it waits for room in
    /// the channel (which closes now), else at its next event or heartbeat (every `HEARTBEAT`),
    /// and then closes its connection: the crate's stream does not lend its socket for a
    /// shutdown from here.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}
