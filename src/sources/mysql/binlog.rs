//! The follower: a thread reading the binlog as a replica and sending each committed transaction to
//! the feed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use dataflows::model::Demographic;
use mysql::binlog::BinlogChecksumAlg;
use mysql::binlog::events::{Event, EventData, TableMapEvent};
use mysql::binlog::row::BinlogRow;
use mysql::binlog::value::BinlogValue;
use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use mysql::{BinlogRequest, BinlogStream, Column, Conn, Opts, Value};

use super::{
    connection::RETRY,
    error::MysqlError,
    rows::{RawRow, SkipLog, convert, value_int, value_text},
    source::{BinlogPosition, Charset, Layout, Message, Shared, Transaction, lock},
};
use crate::retry::sleep_unless;

/// How often the server sends a heartbeat on an idle binlog stream.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A binlog connection silent for this long (heartbeats included) is considered lost.
pub(super) const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// MariaDB's compressed events (`log_bin_compress`), which the crate does not decode.
const MARIADB_COMPRESSED_EVENTS: std::ops::RangeInclusive<u8> = 165..=171;

/// Server errors after which reconnecting is pointless: the position is gone, or access is.
fn is_fatal(error: &mysql::Error) -> bool {
    // 1236: binlog position unreadable (purged, or past the end). 1045: access denied.
    // 1227, 1044, 1142: missing privilege (REPLICATION SLAVE).
    let mysql::Error::MySqlError(e) = error else {
        return false;
    };
    matches!(e.code, 1236 | 1045 | 1227 | 1044 | 1142)
}

/// A binlog stream with its connection's id and its first event, read at once so that a bad
/// position or a missing privilege fails the opening.
pub(super) struct Stream {
    events: BinlogStream,
    first: Option<Event>,
    pub(super) connection_id: u32,
}

/// Connects as a replica `server_id` and asks for the binlog from `position`.
pub(super) fn open_stream(
    opts: &Opts,
    server_id: u32,
    position: &BinlogPosition,
) -> Result<Stream, mysql::Error> {
    let mut conn = Conn::new(opts.clone())?;
    // MariaDB: send GTID and annotate events as they are (the crate passes them on as events of
    // unknown type, which carry nothing for us); MySQL ignores it. Both: a heartbeat on an idle
    // stream, so that the read timeout tells a lost connection from a quiet server.
    conn.query_drop("SET @mariadb_slave_capability = 4")?;
    conn.query_drop(format!(
        "SET @master_heartbeat_period = {}",
        HEARTBEAT.as_nanos()
    ))?;
    let connection_id = conn.connection_id();
    let mut events = conn.get_binlog_stream(
        BinlogRequest::new(server_id)
            .with_filename(position.file.as_bytes())
            .with_pos(position.pos),
    )?;
    let first = events.next().unwrap_or_else(|| Err(stream_ended()))?;
    Ok(Stream {
        events,
        first: Some(first),
        connection_id,
    })
}

fn stream_ended() -> mysql::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the server ended the binlog stream",
    )
    .into()
}

/// Why a binlog stream ended.
enum StreamEnd {
    /// The feed was dropped.
    Stopped,
    /// The connection failed; a new one may resume.
    Lost(String),
    /// Resuming would fail the same way.
    Fatal(MysqlError),
}

/// The follower thread's state.
pub(super) struct Follower {
    /// Where and how the binlog connection connects.
    pub(super) opts: Opts,
    pub(super) addr: String,
    pub(super) server_id: u32,
    pub(super) retries: u32,
    pub(super) database: String,
    pub(super) table: String,
    pub(super) layout: Layout,
    pub(super) shared: Arc<Shared>,
    pub(super) sender: SyncSender<Message>,
    /// The position after the last committed transaction handled.
    pub(super) committed: BinlogPosition,
    pub(super) skips: SkipLog,
}

/// What a stream has read since the last commit.
struct StreamState {
    /// The binlog file being read: the file each event's `log_pos` is an offset in.
    file: String,
    /// Updates of the open transaction.
    pending: Vec<(Demographic, isize)>,
    /// The open transaction's change in rows that do not convert.
    pending_skipped: i64,
    /// Whether the stream's format description arrived: the crate reads the events before it
    /// as if they carried no checksum.
    described: bool,
    /// A rotate read before the format description (the artificial one opening every stream):
    /// its raw file name, which may end in the event's checksum, and its position.
    early_rotate: Option<(Vec<u8>, u64)>,
    /// The position once the stream was open (after its opening rotate).
    opened_at: BinlogPosition,
    /// Whether the server said with a heartbeat that it had nothing more to send.
    caught_up: bool,
}

impl StreamState {
    /// Whether the open transaction has done nothing to the table yet.
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.pending_skipped == 0
    }

    /// The open transaction, now committed; the state is ready for the next.
    fn take(&mut self) -> Transaction {
        Transaction {
            updates: std::mem::take(&mut self.pending),
            skipped: std::mem::replace(&mut self.pending_skipped, 0),
        }
    }
}

impl Follower {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    pub(super) fn run(mut self, mut stream: Stream) {
        // Consecutive failed connection attempts; they start over once a connection worked.
        let mut failures = 0;
        let mut pauses = RETRY.delays();
        loop {
            let connection_id = stream.connection_id;
            self.shared
                .connection_id
                .store(connection_id, Ordering::Relaxed);
            let (end, worked) = self.follow(stream);
            self.shared.connection_id.store(0, Ordering::Relaxed);
            let mut last = match end {
                StreamEnd::Lost(reason) if !self.stopped() => reason,
                StreamEnd::Fatal(error) if !self.stopped() => {
                    tracing::error!(%error, "the binlog follower stopped");
                    let _ = self.sender.send(Err(error));
                    return;
                }
                _ => return,
            };
            tracing::warn!(
                addr = %self.addr,
                connection_id,
                position = %self.committed,
                reason = last,
                "lost the binlog connection"
            );
            if worked {
                failures = 0;
                pauses = RETRY.delays();
            }
            stream = loop {
                if failures >= self.retries {
                    let error = MysqlError::FeedLost {
                        addr: self.addr.clone(),
                        position: self.committed.clone(),
                        attempts: failures,
                        last,
                    };
                    tracing::error!(%error, "giving up on the binlog");
                    let _ = self.sender.send(Err(error));
                    return;
                }
                failures += 1;
                self.shared
                    .reconnect_attempt
                    .store(failures, Ordering::Relaxed);
                // The retries are bounded here, by `failures`.
                let delay = pauses.next().unwrap_or(RETRY.max);
                tracing::warn!(
                    addr = %self.addr,
                    attempt = failures,
                    of = self.retries,
                    position = %self.committed,
                    ?delay,
                    "reconnecting to the binlog"
                );
                sleep_unless(delay, &self.shared.stop);
                if self.stopped() {
                    return;
                }
                match open_stream(&self.opts, self.server_id, &self.committed) {
                    Ok(stream) => {
                        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        self.shared.reconnect_attempt.store(0, Ordering::Relaxed);
                        tracing::info!(
                            addr = %self.addr,
                            position = %self.committed,
                            connection_id = stream.connection_id,
                            "binlog follower reconnected"
                        );
                        break stream;
                    }
                    Err(e) if is_fatal(&e) => {
                        let _ = self.sender.send(Err(self.binlog_error(e.to_string())));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(addr = %self.addr, attempt = failures, error = %e, "binlog reconnection failed");
                        last = e.to_string();
                    }
                }
            };
        }
    }

    /// Reads a stream until it ends; also says whether it worked: it moved the position or
    /// reached the end of the binlog (a heartbeat), so that the retries start over.
    fn follow(&mut self, mut stream: Stream) -> (StreamEnd, bool) {
        let mut state = StreamState {
            file: self.committed.file.clone(),
            pending: Vec::new(),
            pending_skipped: 0,
            described: false,
            early_rotate: None,
            opened_at: self.committed.clone(),
            caught_up: false,
        };
        let mut first = stream.first.take();
        let end = loop {
            if self.stopped() {
                break StreamEnd::Stopped;
            }
            let event = match first.take() {
                Some(event) => event,
                None => match stream.events.next() {
                    Some(Ok(event)) => event,
                    Some(Err(e)) if is_fatal(&e) => {
                        break StreamEnd::Fatal(self.binlog_error(e.to_string()));
                    }
                    Some(Err(e)) => break StreamEnd::Lost(e.to_string()),
                    None => break StreamEnd::Lost(stream_ended().to_string()),
                },
            };
            match self.event(&event, &stream.events, &mut state) {
                Ok(true) => {}
                Ok(false) => break StreamEnd::Stopped,
                Err(end) => break end,
            }
        };
        // A stream that fails again and again at the same place, without moving the position,
        // must count against the retries: it would otherwise loop forever, applying nothing.
        (end, state.caught_up || self.committed != state.opened_at)
    }

    fn binlog_error(&self, message: impl Into<String>) -> MysqlError {
        MysqlError::Binlog {
            addr: self.addr.clone(),
            message: message.into(),
        }
    }

    fn qualified(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    fn is_ours(&self, map: &TableMapEvent<'_>) -> bool {
        map.database_name_raw() == self.database.as_bytes()
            && map.table_name_raw() == self.table.as_bytes()
    }

    /// Handles one event; `Ok(false)` when the feed has gone.
    fn event(
        &mut self,
        event: &Event,
        stream: &BinlogStream,
        state: &mut StreamState,
    ) -> Result<bool, StreamEnd> {
        let header = event.header();
        let kind = header.event_type_raw();
        if MARIADB_COMPRESSED_EVENTS.contains(&kind) {
            return Err(StreamEnd::Fatal(MysqlError::Setting {
                setting: "log_bin_compress",
                found: "ON".into(),
                expected: "the binlog reader does not decode compressed events".into(),
            }));
        }
        if !checksum_matches(event) {
            return Err(StreamEnd::Lost(format!(
                "checksum mismatch in an event of type {kind}"
            )));
        }
        let data = match event.read_data() {
            Ok(Some(data)) => data,
            // MariaDB's own events (GTIDs, annotations, checkpoints) carry nothing for us.
            Ok(None) => return Ok(true),
            Err(e) => {
                return Err(StreamEnd::Fatal(
                    self.binlog_error(format!("malformed event of type {kind}: {e}")),
                ));
            }
        };
        let position = BinlogPosition {
            file: state.file.clone(),
            pos: u64::from(header.log_pos()),
        };
        match data {
            // Every rotate names the file the next events come from, and their offsets are in
            // it: the real one ending a file (log_pos > 0), and the artificial ones (log_pos 0)
            // the server sends when it opens a file, at the start of the stream (the file asked
            // for) and whenever it moves on to the next file (after a FLUSH BINARY LOGS or a
            // restart, whose file ends without a rotate). The crate reads the one opening the
            // stream before the format description says whether events end in a checksum, so
            // its name is read once that is known.
            EventData::RotateEvent(rotate) if !state.described => {
                state.early_rotate = Some((rotate.name_raw().to_vec(), rotate.position()));
            }
            EventData::RotateEvent(rotate) => {
                self.rotate(state, rotate.name_raw(), rotate.position());
            }
            EventData::FormatDescriptionEvent(description) => {
                state.described = true;
                if let Some((mut name, pos)) = state.early_rotate.take() {
                    if description.footer().get_checksum_alg()
                        == Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32))
                    {
                        name.truncate(name.len().saturating_sub(4));
                    }
                    self.rotate(state, &name, pos);
                    state.opened_at = self.committed.clone();
                }
            }
            EventData::HeartbeatEvent => state.caught_up = true,
            EventData::TableMapEvent(map)
                if self.is_ours(&map) && map.columns_count() != self.layout.columns as u64 =>
            {
                return Err(StreamEnd::Fatal(MysqlError::Table {
                    table: self.qualified(),
                    message: format!(
                        "the binlog has {} columns where the snapshot had {}: the table was altered; take a new snapshot",
                        map.columns_count(),
                        self.layout.columns
                    ),
                }));
            }
            EventData::RowsEvent(rows) => {
                // The crate keeps the table maps; a rows event follows its table's.
                let Some(map) = stream
                    .get_tme(rows.table_id())
                    .filter(|map| self.is_ours(map))
                else {
                    return Ok(true);
                };
                for row in rows.rows(map) {
                    let (before, after) = row.map_err(|e| {
                        StreamEnd::Fatal(self.binlog_error(format!("malformed rows event: {e}")))
                    })?;
                    let old = self.convert_image(before, -1, &mut state.pending_skipped)?;
                    let new = self.convert_image(after, 1, &mut state.pending_skipped)?;
                    if old.is_some() && old == new {
                        continue; // only columns we do not read changed
                    }
                    state.pending.extend(old.map(|row| (row, -1)));
                    state.pending.extend(new.map(|row| (row, 1)));
                }
            }
            EventData::XidEvent(_) => {
                return self.commit(state.take(), position);
            }
            EventData::QueryEvent(query) => {
                let statement = query.query();
                match first_keyword(&statement).as_str() {
                    "BEGIN" | "XA" | "SAVEPOINT" => {}
                    "COMMIT" => return self.commit(state.take(), position),
                    "ROLLBACK" => {
                        // Logged only when non-transactional tables were written as well.
                        state.take();
                        return self.commit(
                            Transaction {
                                updates: Vec::new(),
                                skipped: 0,
                            },
                            position,
                        );
                    }
                    _ if ddl_touches(&statement, &query.schema(), &self.database, &self.table) => {
                        return Err(StreamEnd::Fatal(MysqlError::Ddl {
                            table: self.qualified(),
                            statement: statement.chars().take(200).collect(),
                            position,
                        }));
                    }
                    _ if state.idle() => self.set_committed(position),
                    _ => {}
                }
            }
            EventData::TransactionPayloadEvent(_) => {
                return Err(StreamEnd::Fatal(MysqlError::Setting {
                    setting: "binlog_transaction_compression",
                    found: "ON".into(),
                    expected: "the binlog reader does not decode compressed transactions".into(),
                }));
            }
            // Heartbeats, format descriptions and the rest carry nothing for us.
            _ => {}
        }
        Ok(true)
    }

    /// Sends a committed transaction's updates and records the position after it.
    fn commit(
        &mut self,
        transaction: Transaction,
        position: BinlogPosition,
    ) -> Result<bool, StreamEnd> {
        let changed = !transaction.updates.is_empty() || transaction.skipped != 0;
        if changed && self.sender.send(Ok(transaction)).is_err() {
            return Ok(false);
        }
        self.set_committed(position);
        Ok(true)
    }

    /// Follows a rotate to `name`, where the stream goes on at `pos`.
    fn rotate(&mut self, state: &mut StreamState, name: &[u8], pos: u64) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name != state.file {
            tracing::info!(from = %state.file, to = %name, pos, "the binlog moved to another file");
        }
        state.file = name;
        if state.idle() {
            self.set_committed(BinlogPosition {
                file: state.file.clone(),
                pos,
            });
        }
    }

    fn set_committed(&mut self, position: BinlogPosition) {
        *lock(&self.shared.position) = position.clone();
        self.committed = position;
    }

    /// A row image (`None` for the missing side of an insert or a delete) as a demographic;
    /// one that does not convert is skipped, logged, and counted in `skipped` with `sign` (+1
    /// for an image written, -1 for one deleted or overwritten).
    fn convert_image(
        &mut self,
        row: Option<BinlogRow>,
        sign: i64,
        skipped: &mut i64,
    ) -> Result<Option<Demographic>, StreamEnd> {
        let Some(mut row) = row else {
            return Ok(None);
        };
        if row.len() != self.layout.columns {
            return Err(StreamEnd::Fatal(MysqlError::Setting {
                setting: "binlog_row_image",
                found: "not FULL for a change".into(),
                expected: format!(
                    "a row image of {} has {} of its {} columns: the writer's session must use binlog_row_image=FULL",
                    self.qualified(),
                    row.len(),
                    self.layout.columns
                ),
            }));
        }
        let columns = row.columns();
        let layout = &self.layout;
        let mut cell = |slot: usize| {
            let i = layout.positions[slot];
            binlog_value(
                row.take(i),
                &columns[i],
                layout.unsigned[i],
                layout.charsets[i],
            )
        };
        let converted = (|| {
            convert(RawRow {
                id: value_int(cell(0)?)?,
                age: value_int(cell(1)?)?,
                gender: value_text(cell(2)?)?,
                state: value_text(cell(3)?)?,
                country: value_text(cell(4)?)?,
            })
        })();
        Ok(converted
            .map_err(|reason| {
                self.skips.skip(&reason);
                *skipped += sign;
            })
            .ok())
    }
}

/// A binlog value as the snapshot's query gives it. Without `binlog_row_metadata=FULL` the binlog
/// does not say which integer columns are unsigned, so the crate reads them all as signed, nor
/// in which character set text is, so the crate leaves it as bytes: `information_schema` says.
fn binlog_value(
    value: Option<BinlogValue<'_>>,
    column: &Column,
    unsigned: bool,
    charset: Charset,
) -> Result<Value, String> {
    let value = match value {
        Some(value) => Value::try_from(value).map_err(|e| e.to_string())?,
        None => Value::NULL,
    };
    Ok(match value {
        Value::Int(v) if unsigned && v < 0 => {
            let bits = match column.column_type() {
                ColumnType::MYSQL_TYPE_TINY => 8,
                ColumnType::MYSQL_TYPE_SHORT => 16,
                ColumnType::MYSQL_TYPE_INT24 => 24,
                ColumnType::MYSQL_TYPE_LONG => 32,
                _ => 64,
            };
            Value::UInt(v as u64 & (u64::MAX >> (64 - bits)))
        }
        Value::Bytes(bytes) if charset == Charset::Latin1 => Value::Bytes(
            bytes
                .iter()
                .map(|&b| cp1252(b))
                .collect::<String>()
                .into_bytes(),
        ),
        value => value,
    })
}

/// Whether an event's CRC32, when it carries one, matches its bytes: the crate strips checksums
/// without checking them.
fn checksum_matches(event: &Event) -> bool {
    match (event.checksum(), event.footer().get_checksum_alg()) {
        (Some(sum), Ok(Some(alg @ BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32))) => {
            u32::from_le_bytes(sum) == event.calc_checksum(alg)
        }
        _ => true,
    }
}

/// The first word of a statement, upper-cased, after comments and whitespace.
fn first_keyword(statement: &str) -> String {
    let mut rest = statement.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after
                .find("*/")
                .map_or("", |i| &after[i + 2..])
                .trim_start();
        } else if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest.find('\n').map_or("", |i| &rest[i + 1..]).trim_start();
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Whether a logged statement changes `db.table` outside the row log.
fn ddl_touches(statement: &str, statement_db: &str, db: &str, table: &str) -> bool {
    let keyword = first_keyword(statement);
    let tokens: Vec<&str> = statement
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|t| !t.is_empty())
        .collect();
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    let mentions_table = tokens.contains(&table);
    let mentions_db = statement_db == db || tokens.contains(&db);
    match keyword.as_str() {
        "DROP"
            if upper
                .get(1)
                .is_some_and(|w| w == "DATABASE" || w == "SCHEMA") =>
        {
            tokens.contains(&db)
        }
        "TRUNCATE" | "DROP" | "ALTER" | "RENAME" => mentions_table && mentions_db,
        "CREATE" => {
            upper.get(1).is_some_and(|w| w == "OR")
                && upper.get(2).is_some_and(|w| w == "REPLACE")
                && mentions_table
                && mentions_db
        }
        _ => false,
    }
}

/// MySQL's latin1 (Windows-1252) byte as a character.
fn cp1252(byte: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    match byte {
        0x80..=0x9F => char::from_u32(u32::from(HIGH[usize::from(byte - 0x80)])).unwrap_or('?'),
        _ => char::from(byte),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_detection() {
        let touches = |s: &str, sdb: &str| ddl_touches(s, sdb, "db", "demographics");
        assert!(touches("TRUNCATE TABLE `demographics`", "db"));
        assert!(touches(
            "DROP TABLE `demographics` /* generated by server */",
            "db"
        ));
        assert!(touches("alter table db.demographics add x int", "other"));
        assert!(touches("DROP DATABASE db", "other"));
        assert!(touches(
            "CREATE OR REPLACE TABLE demographics (id int)",
            "db"
        ));
        assert!(!touches(
            "CREATE TABLE IF NOT EXISTS demographics (id int)",
            "db"
        ));
        assert!(!touches("TRUNCATE TABLE other", "db"));
        assert!(!touches("TRUNCATE TABLE demographics", "elsewhere"));
        assert!(!touches("/* x */ BEGIN", "db"));
        assert_eq!(first_keyword("/* c */ -- x\n commit"), "COMMIT");
    }

    #[test]
    fn binlog_values_get_their_signedness_and_charset() {
        let value = |v: Value, ty: ColumnType, unsigned: bool, charset: Charset| {
            binlog_value(
                Some(BinlogValue::Value(v)),
                &Column::new(ty),
                unsigned,
                charset,
            )
            .unwrap()
        };
        let tiny = ColumnType::MYSQL_TYPE_TINY;
        assert_eq!(
            value(Value::Int(-1), tiny, true, Charset::Utf8),
            Value::UInt(255)
        );
        assert_eq!(
            value(Value::Int(-1), tiny, false, Charset::Utf8),
            Value::Int(-1)
        );
        assert_eq!(
            value(
                Value::Int(-2),
                ColumnType::MYSQL_TYPE_LONG,
                true,
                Charset::Utf8
            ),
            Value::UInt(u64::from(u32::MAX) - 1)
        );
        assert_eq!(
            value(
                Value::Int(i64::MIN),
                ColumnType::MYSQL_TYPE_LONGLONG,
                true,
                Charset::Utf8
            ),
            Value::UInt(1 << 63)
        );
        let varchar = ColumnType::MYSQL_TYPE_VARCHAR;
        assert_eq!(
            value(
                Value::Bytes(vec![0x80, b'a', 0xe9]),
                varchar,
                false,
                Charset::Latin1
            ),
            Value::Bytes("€aé".as_bytes().to_vec())
        );
        assert_eq!(
            value(
                Value::Bytes("é".as_bytes().to_vec()),
                varchar,
                false,
                Charset::Utf8
            ),
            Value::Bytes("é".as_bytes().to_vec())
        );
        assert_eq!(
            binlog_value(None, &Column::new(varchar), false, Charset::Utf8).unwrap(),
            Value::NULL
        );
    }
}
