//! MySQL/MariaDB: the demographics table, bulk-loaded, read as a consistent snapshot, and then
//! followed through the binary log as differential updates.
//!
//! Reading has two halves that must meet exactly:
//!
//! 1. [`DemographicsSource::start`] opens a transaction with a consistent snapshot, reads the
//!    binlog position that snapshot corresponds to and every row of the table in it.
//! 2. A follower thread asks the server for the binlog from that position (a replication client:
//!    `COM_BINLOG_DUMP`), decodes the row events of this one table, and sends each committed
//!    transaction to the [`ChangeFeed`] as `(row, -1 | +1)` updates, in commit order.
//!
//! On MariaDB the position comes from `binlog_snapshot_file` / `binlog_snapshot_position`, which
//! InnoDB fixes atomically with the snapshot, so writers are never blocked. MySQL has no such
//! status; there the snapshot is taken under `FLUSH TABLES WITH READ LOCK` (held only while the
//! position is read: writes stall for milliseconds, and the user needs the RELOAD privilege).
//!
//! The binlog client is this file's own (the handshake, `mysql_native_password`, and the row
//! events of the table's column types): the `mysql` crate only exposes its binlog client with its
//! `binlog` feature, which this build does not enable.
//!
//! Every statement is parameterized except for the table name, which cannot be a parameter and
//! is therefore validated as a plain identifier and quoted.

use std::borrow::Cow;
use std::cell::{Cell as StdCell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataflows::model::{Demographic, Gender, Name, UserId};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Params, Value};
use serde::{Deserialize, Serialize, Serializer};

use crate::generators::demographics::Changes;

/// The environment variable a password is read from when the configuration names none.
pub const PASSWORD_ENV: &str = "SHOPFLOW_MYSQL_PASSWORD";

/// The table's DDL; the table name is substituted after validation.
const DDL: &str = include_str!("../../config/mysql/demographics.sql");
/// The statement of [`DDL`] that names the table.
const DDL_CREATE: &str = "CREATE TABLE IF NOT EXISTS demographics";

/// Committed transactions the feed buffers before the follower waits for the reader.
const FEED_CAPACITY: usize = 1024;
/// Load statements per transaction.
const LOAD_STATEMENTS_PER_COMMIT: u64 = 20;
/// The first reconnection delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the server sends a heartbeat on an idle binlog stream.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A binlog connection silent for this long (heartbeats included) is considered lost.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning about unconvertible rows per this interval.
const SKIP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The `[mysql]` section: where the demographics table lives and how to reach it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MysqlConfig {
    /// `mysql://user@host:port/database`. The password comes from `password`, else
    /// `password-file`, else the URL (`user:password@`), else `SHOPFLOW_MYSQL_PASSWORD`.
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: String,
    /// The password; printed and serialized as `***`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_masked"
    )]
    pub password: Option<String>,
    /// A file holding the password (a trailing newline is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The table: `[A-Za-z_][A-Za-z0-9_]{0,63}`.
    pub table: String,
    /// Rows per INSERT statement when loading.
    pub load_batch_rows: usize,
    /// The replica server id the binlog follower registers with; unique among the server's
    /// replicas, and not the server's own. 0 picks a random id per start.
    pub server_id: u32,
    /// How long one connection attempt may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How many times a failed connection is retried, with exponential backoff, before giving up:
    /// at start, and each time the binlog follower loses its connection.
    pub connect_retries: u32,
}

impl Default for MysqlConfig {
    fn default() -> MysqlConfig {
        MysqlConfig {
            url: "mysql://shopflow@127.0.0.1:3306/shopflow".into(),
            password: None,
            password_file: None,
            table: "demographics".into(),
            load_batch_rows: 1_000,
            server_id: 0,
            connect_timeout_ms: 5_000,
            connect_retries: 5,
        }
    }
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("url", &mask_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("table", &self.table)
            .field("load_batch_rows", &self.load_batch_rows)
            .field("server_id", &self.server_id)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("connect_retries", &self.connect_retries)
            .finish()
    }
}

fn serialize_masked<S: Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("***")
}

fn serialize_masked_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

/// The URL with the password in its user info, if any, replaced by `***`.
pub fn mask_url(url: &str) -> Cow<'_, str> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    let Some(at) = url[after_scheme..authority_end].rfind('@') else {
        return Cow::Borrowed(url);
    };
    let at = after_scheme + at;
    match url[after_scheme..at].find(':') {
        Some(colon) => Cow::Owned(format!(
            "{}***{}",
            &url[..after_scheme + colon + 1],
            &url[at..]
        )),
        None => Cow::Borrowed(url),
    }
}

/// Whether `name` is an identifier that may be spliced into SQL: `[A-Za-z_][A-Za-z0-9_]{0,63}`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl MysqlConfig {
    /// The default configuration for `url`.
    pub fn new(url: impl Into<String>) -> MysqlConfig {
        MysqlConfig {
            url: url.into(),
            ..MysqlConfig::default()
        }
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), MysqlError> {
        let invalid = |key, message: String| Err(MysqlError::Config { key, message });
        if !self.url.starts_with("mysql://") {
            return invalid(
                "mysql.url",
                "must look like mysql://user@host:port/database".into(),
            );
        }
        let opts = match Opts::from_url(&self.url) {
            Ok(opts) => opts,
            Err(e) => return invalid("mysql.url", format!("cannot parse: {e}")),
        };
        if opts.get_db_name().is_none_or(str::is_empty) {
            return invalid(
                "mysql.url",
                "must name the database: mysql://user@host:port/database".into(),
            );
        }
        if opts.get_user().is_none_or(str::is_empty) {
            return invalid(
                "mysql.url",
                "must name the user: mysql://user@host:port/database".into(),
            );
        }
        if self.password.is_some() && self.password_file.is_some() {
            return invalid(
                "mysql.password-file",
                "set either password or password-file, not both".into(),
            );
        }
        if !is_identifier(&self.table) {
            return invalid(
                "mysql.table",
                format!(
                    "{:?} is not an identifier [A-Za-z_][A-Za-z0-9_]{{0,63}}",
                    self.table
                ),
            );
        }
        if !(1..=10_000).contains(&self.load_batch_rows) {
            return invalid("mysql.load-batch-rows", "must be 1 to 10000".into());
        }
        if !(1..=600_000).contains(&self.connect_timeout_ms) {
            return invalid(
                "mysql.connect-timeout-ms",
                "must be 1 to 600000 (10 minutes)".into(),
            );
        }
        if self.connect_retries > 100 {
            return invalid("mysql.connect-retries", "must be at most 100".into());
        }
        Ok(())
    }

    /// The password: `password`, else `password-file`, else the URL's, else the environment's
    /// `SHOPFLOW_MYSQL_PASSWORD` (a fallback, like the mysql client's `MYSQL_PWD`).
    fn resolve_password(&self, opts: &Opts) -> Result<Option<String>, MysqlError> {
        if let Some(password) = &self.password {
            return Ok(Some(password.clone()));
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| MysqlError::Config {
                key: "mysql.password-file",
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(password) = opts.get_pass() {
            return Ok(Some(password.to_owned()));
        }
        Ok(std::env::var(PASSWORD_ENV).ok())
    }

    /// The validated connection options.
    fn opts(&self) -> Result<Opts, MysqlError> {
        self.validate()?;
        let opts = Opts::from_url(&self.url).map_err(|e| MysqlError::Config {
            key: "mysql.url",
            message: format!("cannot parse: {e}"),
        })?;
        let password = self.resolve_password(&opts)?;
        Ok(OptsBuilder::from_opts(opts)
            .pass(password)
            .tcp_connect_timeout(Some(self.connect_timeout()))
            .into())
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The database named by the URL.
    fn database(&self) -> Result<String, MysqlError> {
        Ok(self.opts()?.get_db_name().unwrap_or_default().to_owned())
    }
}

/// `host:port` of the options, for messages.
fn endpoint(opts: &Opts) -> String {
    format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the connector failed.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    /// A configuration value is unusable; the message names the key.
    #[error("invalid configuration: {key}: {message}")]
    Config {
        /// The key, as `mysql.key`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No connection could be made.
    #[error("cannot connect to MySQL at {addr} after {attempts} attempt(s): {detail}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        detail: String,
    },
    /// A statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The driver's error.
        source: mysql::Error,
    },
    /// A server setting rules out following the binlog.
    #[error("server setting {setting} is {found}: {expected}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// Its value.
        found: String,
        /// What it must be, and how.
        expected: String,
    },
    /// The table is missing or not of the expected shape.
    #[error("table {table}: {message}")]
    Table {
        /// The table, as `database.table`.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// The binlog stream failed in a way a reconnection does not mend.
    #[error("binlog stream from {addr}: {message}")]
    Binlog {
        /// `host:port`.
        addr: String,
        /// What happened.
        message: String,
    },
    /// The follower lost its connection and could not get it back.
    #[error(
        "the binlog follower lost {addr} at {position} and gave up after {attempts} reconnection attempt(s): {last}"
    )]
    FeedLost {
        /// `host:port`.
        addr: String,
        /// The last position applied; a new follower may resume there.
        position: BinlogPosition,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// A statement changed the table in a way the row log does not carry (TRUNCATE, DROP, ALTER,
    /// RENAME): the feed cannot stay exact and stops.
    #[error(
        "the change feed of {table} stopped at {position}: the statement {statement:?} changed the table outside the row log; take a new snapshot"
    )]
    Ddl {
        /// The table, as `database.table`.
        table: String,
        /// The statement, as logged.
        statement: String,
        /// The position after the statement.
        position: BinlogPosition,
    },
    /// The feed has stopped; its error, if any, was returned before.
    #[error("the change feed is closed")]
    Closed,
    /// Reading a file or the terminal failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

fn sql_error(context: impl Into<String>) -> impl FnOnce(mysql::Error) -> MysqlError {
    let context = context.into();
    move |source| MysqlError::Sql { context, source }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// Whether a connection error may go away by itself.
fn retryable(error: &mysql::Error) -> bool {
    match error {
        mysql::Error::IoError(_) | mysql::Error::DriverError(_) => true,
        // Too many connections, server shutting down, connection killed.
        mysql::Error::MySqlError(e) => matches!(e.code, 1040 | 1053 | 1927),
        _ => false,
    }
}

/// The delay before retry `attempt` (1-based).
fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// Sleeps for `duration`, waking early when `stop` is set.
fn sleep_unless(duration: Duration, stop: &AtomicBool) {
    let end = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A connection, retried with bounded exponential backoff.
fn connect(config: &MysqlConfig) -> Result<Conn, MysqlError> {
    let opts = config.opts()?;
    let addr = endpoint(&opts);
    let attempts = config.connect_retries + 1;
    let mut attempt = 1;
    loop {
        match Conn::new(opts.clone()) {
            Ok(conn) => return Ok(conn),
            Err(e) if attempt < attempts && retryable(&e) => {
                let delay = backoff(attempt);
                tracing::warn!(%addr, attempt, of = attempts, error = %e, ?delay, "MySQL connection failed; retrying");
                std::thread::sleep(delay);
                attempt += 1;
            }
            Err(e) => {
                return Err(MysqlError::Connect {
                    addr,
                    attempts: attempt,
                    detail: e.to_string(),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// What a load did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// Rows inserted.
    pub rows: u64,
    /// INSERT statements executed.
    pub statements: u64,
    /// Wall time, connection and table creation included.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Rows per second.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The DDL with the table name substituted; `table` must be a validated identifier.
fn table_ddl(table: &str) -> Result<String, MysqlError> {
    if !is_identifier(table) {
        return Err(MysqlError::Config {
            key: "mysql.table",
            message: format!("{table:?} is not an identifier"),
        });
    }
    let body: String = DDL
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    if body.matches(DDL_CREATE).count() != 1 {
        return Err(MysqlError::Table {
            table: table.into(),
            message: format!("config/mysql/demographics.sql must contain {DDL_CREATE:?} once"),
        });
    }
    Ok(body
        .replace(DDL_CREATE, &format!("CREATE TABLE IF NOT EXISTS `{table}`"))
        .trim()
        .trim_end_matches(';')
        .to_owned())
}

fn insert_statement(table: &str, rows: usize) -> String {
    let mut sql = format!("INSERT INTO `{table}` (id, age, gender, state, country) VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 {
            "(?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?)"
        });
    }
    sql
}

fn push_row(params: &mut Vec<Value>, row: &Demographic) {
    params.push(Value::UInt(u64::from(row.id.0)));
    params.push(Value::UInt(u64::from(row.age)));
    params.push(Value::Bytes(row.gender.code().as_bytes().to_vec()));
    params.push(Value::Bytes(row.state.as_bytes().to_vec()));
    params.push(Value::Bytes(row.country.as_bytes().to_vec()));
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "loading demographics {bar:40} {human_pos}/{human_len} rows {per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Creates the table if it is missing (from `config/mysql/demographics.sql`), empties it, and
/// loads `rows` with multi-row parameterized INSERTs, `load-batch-rows` rows per statement,
/// committing every few statements. `total` sizes the progress bar, shown on stderr when it is a
/// terminal.
pub fn load_demographics(
    config: &MysqlConfig,
    rows: impl Iterator<Item = Demographic>,
    total: u64,
) -> Result<LoadReport, MysqlError> {
    let started = Instant::now();
    config.validate()?;
    let table = &config.table;
    let ddl = table_ddl(table)?;
    let mut conn = connect(config)?;
    conn.query_drop(&ddl)
        .map_err(sql_error(format!("creating table {table}")))?;
    conn.query_drop(format!("TRUNCATE TABLE `{table}`"))
        .map_err(sql_error(format!("truncating table {table}")))?;
    let batch = config.load_batch_rows;
    let full = conn
        .prep(insert_statement(table, batch))
        .map_err(sql_error("preparing the load statement"))?;
    let bar = progress_bar(total);
    let mut params: Vec<Value> = Vec::with_capacity(batch * 5);
    let (mut loaded, mut statements) = (0u64, 0u64);
    let mut exec = |conn: &mut Conn, params: Vec<Value>, rows: usize| -> Result<(), MysqlError> {
        if statements % LOAD_STATEMENTS_PER_COMMIT == 0 {
            conn.query_drop("START TRANSACTION")
                .map_err(sql_error("starting a load transaction"))?;
        }
        if rows == batch {
            conn.exec_drop(&full, Params::Positional(params))
        } else {
            conn.exec_drop(insert_statement(table, rows), Params::Positional(params))
        }
        .map_err(sql_error(format!("inserting rows into {table}")))?;
        statements += 1;
        loaded += rows as u64;
        bar.inc(rows as u64);
        if statements % LOAD_STATEMENTS_PER_COMMIT == 0 {
            conn.query_drop("COMMIT")
                .map_err(sql_error("committing a load transaction"))?;
        }
        Ok(())
    };
    let mut in_batch = 0;
    for row in rows {
        push_row(&mut params, &row);
        in_batch += 1;
        if in_batch == batch {
            exec(
                &mut conn,
                std::mem::replace(&mut params, Vec::with_capacity(batch * 5)),
                in_batch,
            )?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        exec(&mut conn, std::mem::take(&mut params), in_batch)?;
    }
    if statements % LOAD_STATEMENTS_PER_COMMIT != 0 {
        conn.query_drop("COMMIT")
            .map_err(sql_error("committing a load transaction"))?;
    }
    bar.finish_and_clear();
    let report = LoadReport {
        rows: loaded,
        statements,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        table = %table,
        rows = report.rows,
        elapsed_ms = report.elapsed.as_millis() as u64,
        rows_per_second = report.rows_per_second() as u64,
        "loaded demographics"
    );
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// The five columns of a row, as read, before conversion.
#[derive(Default)]
struct RawRow {
    id: Option<i128>,
    age: Option<i128>,
    gender: Option<String>,
    state: Option<String>,
    country: Option<String>,
}

/// The row as a [`Demographic`], or why not.
fn convert(raw: RawRow) -> Result<Demographic, String> {
    let id = raw.id.ok_or("id is NULL")?;
    let id = u32::try_from(id).map_err(|_| format!("id {id} is out of range"))?;
    let age = raw.age.ok_or_else(|| format!("id {id}: age is NULL"))?;
    let age = u8::try_from(age).map_err(|_| format!("id {id}: age {age} is out of range"))?;
    let gender = raw
        .gender
        .ok_or_else(|| format!("id {id}: gender is NULL"))?;
    let gender = Gender::parse(&gender)
        .ok_or_else(|| format!("id {id}: gender {gender:?} is not F, M, X or U"))?;
    let state = raw.state.ok_or_else(|| format!("id {id}: state is NULL"))?;
    let country = raw
        .country
        .ok_or_else(|| format!("id {id}: country is NULL"))?;
    Ok(Demographic {
        id: UserId(id),
        age,
        gender,
        state: Name::from(state),
        country: Name::from(country),
    })
}

fn value_int(value: Value) -> Result<Option<i128>, String> {
    match value {
        Value::NULL => Ok(None),
        Value::Int(v) => Ok(Some(i128::from(v))),
        Value::UInt(v) => Ok(Some(i128::from(v))),
        Value::Bytes(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{:?} is not an integer", String::from_utf8_lossy(&bytes))),
        other => Err(format!("{other:?} is not an integer")),
    }
}

fn value_text(value: Value) -> Result<Option<String>, String> {
    match value {
        Value::NULL => Ok(None),
        Value::Bytes(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| "a text column is not UTF-8".into()),
        Value::Int(v) => Ok(Some(v.to_string())),
        Value::UInt(v) => Ok(Some(v.to_string())),
        other => Err(format!("{other:?} is not text")),
    }
}

/// A result row of `SELECT id, age, gender, state, country`.
fn convert_row(row: mysql::Row) -> Result<Demographic, String> {
    let mut values = row.unwrap().into_iter();
    let mut next = || values.next().unwrap_or(Value::NULL);
    let raw = RawRow {
        id: value_int(next())?,
        age: value_int(next())?,
        gender: value_text(next())?,
        state: value_text(next())?,
        country: value_text(next())?,
    };
    convert(raw)
}

/// Counts rows that do not convert, and warns about them at most once per interval.
struct SkipLog {
    shared: Arc<Shared>,
    table: String,
    last_warning: Option<Instant>,
    suppressed: u64,
}

impl SkipLog {
    fn skip(&mut self, reason: &str) {
        self.shared.skipped.fetch_add(1, Ordering::Relaxed);
        if self
            .last_warning
            .is_some_and(|at| at.elapsed() < SKIP_WARNING_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            table = %self.table,
            reason,
            skipped_total = self.shared.skipped.load(Ordering::Relaxed),
            not_logged_since_last_warning = self.suppressed,
            "skipping a demographics row that does not convert"
        );
        self.last_warning = Some(Instant::now());
        self.suppressed = 0;
    }
}

fn select_statement(table: &str) -> String {
    format!("SELECT id, age, gender, state, country FROM `{table}`")
}

/// Every row of the table that converts, in id order (a plain read, not a snapshot for
/// following; for checks and tools).
pub fn read_table(config: &MysqlConfig) -> Result<Vec<Demographic>, MysqlError> {
    config.validate()?;
    let mut conn = connect(config)?;
    let table = &config.table;
    let result = conn
        .query_iter(format!("{} ORDER BY id", select_statement(table)))
        .map_err(sql_error(format!("reading {table}")))?;
    let mut rows = Vec::new();
    for row in result {
        let row = row.map_err(sql_error(format!("reading {table}")))?;
        match convert_row(row) {
            Ok(row) => rows.push(row),
            Err(reason) => tracing::debug!(%table, reason, "skipping a row"),
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// The source: snapshot, then binlog
// ---------------------------------------------------------------------------------------------

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
enum Charset {
    /// utf8mb4, utf8mb3, ascii, binary.
    Utf8,
    /// MySQL's latin1, which is Windows-1252.
    Latin1,
}

/// Where the five columns sit in the table and how they are typed.
#[derive(Clone, Debug)]
struct Layout {
    columns: usize,
    /// Ordinals of id, age, gender, state, country.
    positions: [usize; 5],
    unsigned: Vec<bool>,
    charsets: Vec<Charset>,
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
) -> Result<(Vec<Demographic>, BinlogPosition), MysqlError> {
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
    {
        let result = conn
            .query_iter(select_statement(table))
            .map_err(sql_error(format!("reading the snapshot of {table}")))?;
        for row in result {
            let row = row.map_err(sql_error(format!("reading the snapshot of {table}")))?;
            match convert_row(row) {
                Ok(row) => rows.push(row),
                Err(reason) => skips.skip(&reason),
            }
        }
    }
    conn.query_drop("COMMIT")
        .map_err(sql_error("ending the snapshot transaction"))?;
    Ok((rows, position))
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
        let (rows, position) = snapshot(&mut conn, &info, &table, &mut skips)?;
        drop(conn);
        tracing::info!(
            table = %format!("{database}.{table}"),
            rows = rows.len(),
            %position,
            "read the demographics snapshot"
        );
        between();
        let target = BinlogTarget {
            host: opts.get_ip_or_hostname().into_owned(),
            port: opts.get_tcp_port(),
            addr: endpoint(&opts),
            user: opts.get_user().unwrap_or_default().to_owned(),
            password: opts.get_pass().unwrap_or_default().to_owned(),
            server_id,
            connect_timeout: config.connect_timeout(),
        };
        let first = connect_binlog_retrying(&target, &position, config.connect_retries)?;
        *lock(&shared.position) = position.clone();
        shared
            .connection_id
            .store(first.connection_id, Ordering::Relaxed);
        *lock(&shared.socket) = first.wire.writer.try_clone().ok();
        let (sender, receiver) = mpsc::sync_channel(FEED_CAPACITY);
        let follower = Follower {
            target,
            retries: config.connect_retries,
            database,
            table,
            layout,
            shared: shared.clone(),
            sender,
            committed: position.clone(),
            skips,
        };
        let thread = std::thread::Builder::new()
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
                shared,
                snapshot_position: position,
                thread: Some(thread),
            },
        ))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the follower and the feed share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    skipped: AtomicU64,
    reconnects: AtomicU64,
    connection_id: AtomicU32,
    position: Mutex<BinlogPosition>,
    socket: Mutex<Option<TcpStream>>,
}

/// A committed transaction's updates, or the error that ended the feed.
type Message = Result<Vec<(Demographic, isize)>, MysqlError>;

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
    shared: Arc<Shared>,
    snapshot_position: BinlogPosition,
    thread: Option<JoinHandle<()>>,
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
            Ok(Ok(batch)) => batch,
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
                Ok(Ok(batch)) => out.extend(batch),
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

    /// Rows skipped because they did not convert (bad gender, age out of range, NULLs), in the
    /// snapshot and in the feed.
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
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(socket) = lock(&self.shared.socket).as_ref() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            // The follower may be waiting for room in the channel: make some until it has gone.
            while !thread.is_finished() {
                while self.receiver.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The follower
// ---------------------------------------------------------------------------------------------

/// Where the binlog client connects, and as whom.
struct BinlogTarget {
    host: String,
    port: u16,
    addr: String,
    user: String,
    password: String,
    server_id: u32,
    connect_timeout: Duration,
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

fn connect_binlog_retrying(
    target: &BinlogTarget,
    position: &BinlogPosition,
    retries: u32,
) -> Result<BinlogConn, MysqlError> {
    let mut attempt = 1;
    loop {
        match BinlogConn::open(target, position) {
            Ok(conn) => return Ok(conn),
            Err(ClientError::Io(e)) if attempt <= retries => {
                let delay = backoff(attempt);
                tracing::warn!(addr = %target.addr, attempt, of = retries + 1, error = %e, ?delay, "binlog connection failed; retrying");
                std::thread::sleep(delay);
                attempt += 1;
            }
            Err(ClientError::Io(e)) => {
                return Err(MysqlError::Connect {
                    addr: target.addr.clone(),
                    attempts: attempt,
                    detail: e.to_string(),
                });
            }
            Err(other) => {
                return Err(MysqlError::Binlog {
                    addr: target.addr.clone(),
                    message: other.to_string(),
                });
            }
        }
    }
}

/// A table map: the column types of the table a rows event names.
#[derive(Clone, Debug)]
struct TableMap {
    types: Vec<u8>,
    meta: Vec<u16>,
}

/// The follower thread's state.
struct Follower {
    target: BinlogTarget,
    retries: u32,
    database: String,
    table: String,
    layout: Layout,
    shared: Arc<Shared>,
    sender: SyncSender<Message>,
    /// The position after the last committed transaction handled.
    committed: BinlogPosition,
    skips: SkipLog,
}

/// Decoding state of one connection's stream.
#[derive(Default)]
struct StreamState {
    file: String,
    /// Whether events carry a CRC32 trailer, as the last format description said.
    checksum: Option<bool>,
    /// Post-header lengths by event type, from the format description.
    post_header: Vec<u8>,
    /// Table maps of this table, by table id.
    tables: HashMap<u64, TableMap>,
    /// Updates of the open transaction.
    pending: Vec<(Demographic, isize)>,
    /// Whether any event arrived after the first: the connection works.
    healthy: bool,
}

impl Follower {
    fn run(mut self, first: BinlogConn) {
        let mut conn = Some(first);
        let mut failures: u32 = 0;
        let mut last_error = String::new();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let current = match conn.take() {
                Some(current) => current,
                None => {
                    if failures > self.retries {
                        let error = MysqlError::FeedLost {
                            addr: self.target.addr.clone(),
                            position: self.committed.clone(),
                            attempts: failures - 1,
                            last: last_error,
                        };
                        tracing::error!(%error, "giving up on the binlog");
                        let _ = self.sender.send(Err(error));
                        return;
                    }
                    if failures > 0 {
                        let delay = backoff(failures);
                        tracing::warn!(
                            addr = %self.target.addr,
                            attempt = failures,
                            of = self.retries,
                            position = %self.committed,
                            ?delay,
                            "reconnecting to the binlog"
                        );
                        sleep_unless(delay, &self.shared.stop);
                        if self.shared.stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    match BinlogConn::open(&self.target, &self.committed) {
                        Ok(c) => {
                            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                addr = %self.target.addr,
                                position = %self.committed,
                                connection_id = c.connection_id,
                                "binlog follower reconnected"
                            );
                            c
                        }
                        Err(ClientError::Server { code, message })
                            if is_fatal_server_error(code) =>
                        {
                            let _ = self.sender.send(Err(MysqlError::Binlog {
                                addr: self.target.addr.clone(),
                                message: format!("server error {code}: {message}"),
                            }));
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(addr = %self.target.addr, attempt = failures, error = %e, "binlog reconnection failed");
                            last_error = e.to_string();
                            failures += 1;
                            continue;
                        }
                    }
                }
            };
            let connection_id = current.connection_id;
            self.shared
                .connection_id
                .store(connection_id, Ordering::Relaxed);
            *lock(&self.shared.socket) = current.wire.writer.try_clone().ok();
            let mut state = StreamState::default();
            let end = self.stream(current, &mut state);
            self.shared.connection_id.store(0, Ordering::Relaxed);
            *lock(&self.shared.socket) = None;
            match end {
                StreamEnd::Stopped => return,
                StreamEnd::Fatal(error) => {
                    tracing::error!(%error, "the binlog follower stopped");
                    let _ = self.sender.send(Err(error));
                    return;
                }
                StreamEnd::Lost(reason) => {
                    if self.shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tracing::warn!(
                        addr = %self.target.addr,
                        connection_id,
                        position = %self.committed,
                        reason,
                        "lost the binlog connection"
                    );
                    failures = if state.healthy { 1 } else { failures + 1 };
                    last_error = reason;
                }
            }
        }
    }

    fn stream(&mut self, mut conn: BinlogConn, state: &mut StreamState) -> StreamEnd {
        let mut first = true;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return StreamEnd::Stopped;
            }
            let packet = match conn.next_packet() {
                Ok(packet) => packet,
                Err(ClientError::Server { code, message }) if is_fatal_server_error(code) => {
                    return StreamEnd::Fatal(MysqlError::Binlog {
                        addr: self.target.addr.clone(),
                        message: format!("server error {code}: {message}"),
                    });
                }
                Err(e) => {
                    if self.shared.stop.load(Ordering::Relaxed) {
                        return StreamEnd::Stopped;
                    }
                    return StreamEnd::Lost(e.to_string());
                }
            };
            if !first {
                state.healthy = true;
            }
            first = false;
            match self.event(&packet, state) {
                Ok(true) => {}
                Ok(false) => return StreamEnd::Stopped,
                Err(end) => return end,
            }
        }
    }

    fn fatal(&self, message: impl Into<String>) -> StreamEnd {
        StreamEnd::Fatal(MysqlError::Binlog {
            addr: self.target.addr.clone(),
            message: message.into(),
        })
    }

    /// Handles one event; `Ok(false)` when the feed has gone.
    fn event(&mut self, event: &[u8], state: &mut StreamState) -> Result<bool, StreamEnd> {
        if event.len() < EVENT_HEADER {
            return Err(self.fatal(format!("an event of {} bytes", event.len())));
        }
        let kind = event[4];
        let size = u32::from_le_bytes([event[9], event[10], event[11], event[12]]) as usize;
        let log_pos = u32::from_le_bytes([event[13], event[14], event[15], event[16]]);
        if size != event.len() {
            return Err(self.fatal(format!(
                "event type {kind} says {size} bytes but has {}",
                event.len()
            )));
        }
        let body = if kind == FORMAT_DESCRIPTION_EVENT {
            // The format description ends with the checksum algorithm and 4 checksum bytes.
            if event.len() < EVENT_HEADER + 57 + 5 {
                return Err(self.fatal("a truncated format description event"));
            }
            let algorithm = event[event.len() - 5];
            state.checksum = Some(algorithm == 1);
            if algorithm == 1 && !crc_matches(event) {
                return Err(StreamEnd::Lost(
                    "format description checksum mismatch".into(),
                ));
            }
            &event[EVENT_HEADER..event.len() - 5]
        } else {
            match state.checksum {
                Some(true) if event.len() < EVENT_HEADER + 4 || !crc_matches(event) => {
                    if !matches!(
                        kind,
                        QUERY_EVENT
                            | ROTATE_EVENT
                            | XID_EVENT
                            | TABLE_MAP_EVENT
                            | WRITE_ROWS_V1..=DELETE_ROWS_V1
                            | WRITE_ROWS_V2..=DELETE_ROWS_V2
                    ) {
                        return Ok(true); // a heartbeat or the like, which we do not read
                    }
                    return Err(StreamEnd::Lost(format!(
                        "checksum mismatch in an event of type {kind}"
                    )));
                }
                Some(true) => &event[EVENT_HEADER..event.len() - 4],
                Some(false) => &event[EVENT_HEADER..],
                // Before the first format description (the artificial rotate): detect it.
                None if event.len() >= EVENT_HEADER + 4 && crc_matches(event) => {
                    &event[EVENT_HEADER..event.len() - 4]
                }
                None => &event[EVENT_HEADER..],
            }
        };
        let parse = |e: String| self.fatal(format!("malformed event of type {kind}: {e}"));
        match kind {
            ROTATE_EVENT => {
                let mut r = Reader::new(body);
                let pos = r.u64().map_err(parse)?;
                let file = String::from_utf8_lossy(r.rest()).into_owned();
                state.file = file.clone();
                if state.pending.is_empty() {
                    self.committed = BinlogPosition { file, pos };
                }
            }
            FORMAT_DESCRIPTION_EVENT => {
                let mut r = Reader::new(body);
                r.take(2 + 50 + 4).map_err(parse)?;
                let header_len = r.u8().map_err(parse)?;
                if usize::from(header_len) != EVENT_HEADER {
                    return Err(self.fatal(format!("event header length {header_len}")));
                }
                state.post_header = r.rest().to_vec();
            }
            TABLE_MAP_EVENT => {
                let post = post_header_len(state, kind, 8);
                let mut r = Reader::new(body);
                let table_id = if post == 6 { r.uint(4) } else { r.uint(6) }.map_err(parse)?;
                r.take(post.saturating_sub(if post == 6 { 4 } else { 6 }))
                    .map_err(parse)?;
                let db_len = usize::from(r.u8().map_err(parse)?);
                let db = r.take(db_len).map_err(parse)?;
                r.u8().map_err(parse)?;
                let table_len = usize::from(r.u8().map_err(parse)?);
                let table = r.take(table_len).map_err(parse)?;
                r.u8().map_err(parse)?;
                if db == self.database.as_bytes() && table == self.table.as_bytes() {
                    let columns = r.lenenc().map_err(parse)? as usize;
                    let types = r.take(columns).map_err(parse)?.to_vec();
                    let meta_len = r.lenenc().map_err(parse)? as usize;
                    let meta = parse_column_meta(&types, r.take(meta_len).map_err(parse)?)
                        .map_err(parse)?;
                    if columns != self.layout.columns {
                        return Err(StreamEnd::Fatal(MysqlError::Table {
                            table: self.qualified(),
                            message: format!(
                                "the binlog has {columns} columns where the snapshot had {}: the table was altered; take a new snapshot",
                                self.layout.columns
                            ),
                        }));
                    }
                    state.tables.insert(table_id, TableMap { types, meta });
                } else {
                    state.tables.remove(&table_id);
                }
            }
            WRITE_ROWS_V1 | UPDATE_ROWS_V1 | DELETE_ROWS_V1 | WRITE_ROWS_V2 | UPDATE_ROWS_V2
            | DELETE_ROWS_V2 => {
                let v2 = kind >= WRITE_ROWS_V2;
                let post = post_header_len(state, kind, if v2 { 10 } else { 8 });
                let mut r = Reader::new(body);
                let table_id = if post == 6 { r.uint(4) } else { r.uint(6) }.map_err(parse)?;
                if let Some(map) = state.tables.get(&table_id) {
                    r.take(2).map_err(parse)?; // flags
                    if v2 {
                        let extra = r.u16().map_err(parse)?;
                        r.take(usize::from(extra).saturating_sub(2))
                            .map_err(parse)?;
                    }
                    let map = map.clone();
                    let action = match kind {
                        WRITE_ROWS_V1 | WRITE_ROWS_V2 => RowsAction::Insert,
                        UPDATE_ROWS_V1 | UPDATE_ROWS_V2 => RowsAction::Update,
                        _ => RowsAction::Delete,
                    };
                    self.rows(&mut r, &map, action, &mut state.pending)?;
                }
            }
            XID_EVENT => {
                let position = BinlogPosition {
                    file: state.file.clone(),
                    pos: u64::from(log_pos),
                };
                state.tables.clear();
                return self.commit(std::mem::take(&mut state.pending), position);
            }
            QUERY_EVENT => {
                let post = post_header_len(state, kind, 13);
                let mut r = Reader::new(body);
                r.take(8).map_err(parse)?;
                let db_len = usize::from(r.u8().map_err(parse)?);
                r.take(2).map_err(parse)?;
                let status_len = usize::from(r.u16().map_err(parse)?);
                r.take(post.saturating_sub(13) + status_len)
                    .map_err(parse)?;
                let db = String::from_utf8_lossy(r.take(db_len).map_err(parse)?).into_owned();
                r.u8().map_err(parse)?;
                let statement = String::from_utf8_lossy(r.rest()).into_owned();
                let position = BinlogPosition {
                    file: state.file.clone(),
                    pos: u64::from(log_pos),
                };
                let keyword = first_keyword(&statement);
                match keyword.as_str() {
                    "BEGIN" | "XA" | "SAVEPOINT" => {}
                    "COMMIT" => {
                        state.tables.clear();
                        return self.commit(std::mem::take(&mut state.pending), position);
                    }
                    "ROLLBACK" => {
                        // Logged only when non-transactional tables were written as well.
                        state.pending.clear();
                        state.tables.clear();
                        return self.commit(Vec::new(), position);
                    }
                    _ => {
                        if ddl_touches(&statement, &db, &self.database, &self.table) {
                            return Err(StreamEnd::Fatal(MysqlError::Ddl {
                                table: self.qualified(),
                                statement: statement.chars().take(200).collect(),
                                position,
                            }));
                        }
                        if state.pending.is_empty() {
                            self.committed = position;
                        }
                    }
                }
            }
            TRANSACTION_PAYLOAD_EVENT => {
                return Err(StreamEnd::Fatal(MysqlError::Setting {
                    setting: "binlog_transaction_compression",
                    found: "ON".into(),
                    expected: "the binlog reader does not decode compressed transactions".into(),
                }));
            }
            MARIADB_COMPRESSED_FIRST..=MARIADB_COMPRESSED_LAST => {
                return Err(StreamEnd::Fatal(MysqlError::Setting {
                    setting: "log_bin_compress",
                    found: "ON".into(),
                    expected: "the binlog reader does not decode compressed events".into(),
                }));
            }
            // Heartbeats, GTIDs, annotations, checkpoints and the rest carry nothing for us.
            _ => {}
        }
        Ok(true)
    }

    fn qualified(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// Sends a committed transaction's updates and records the position after it.
    fn commit(
        &mut self,
        updates: Vec<(Demographic, isize)>,
        position: BinlogPosition,
    ) -> Result<bool, StreamEnd> {
        if !updates.is_empty() && self.sender.send(Ok(updates)).is_err() {
            return Ok(false);
        }
        *lock(&self.shared.position) = position.clone();
        self.committed = position;
        Ok(true)
    }

    /// Decodes the rows of a rows event into updates.
    fn rows(
        &mut self,
        r: &mut Reader<'_>,
        map: &TableMap,
        action: RowsAction,
        out: &mut Vec<(Demographic, isize)>,
    ) -> Result<(), StreamEnd> {
        let parse = |e: String| self.fatal(format!("malformed rows event: {e}"));
        let columns = r.lenenc().map_err(parse)? as usize;
        if columns != map.types.len() {
            return Err(self.fatal(format!(
                "rows event has {columns} columns, its table map {}",
                map.types.len()
            )));
        }
        let bitmap_len = columns.div_ceil(8);
        let before = r.take(bitmap_len).map_err(parse)?.to_vec();
        let after = if action == RowsAction::Update {
            r.take(bitmap_len).map_err(parse)?.to_vec()
        } else {
            before.clone()
        };
        while r.remaining() > 0 {
            let first = self.row_image(r, map, &before)?;
            match action {
                RowsAction::Insert => {
                    if let Some(row) = self.checked(first) {
                        out.push((row, 1));
                    }
                }
                RowsAction::Delete => {
                    if let Some(row) = self.checked(first) {
                        out.push((row, -1));
                    }
                }
                RowsAction::Update => {
                    let second = self.row_image(r, map, &after)?;
                    let old = self.checked(first);
                    let new = self.checked(second);
                    if old.is_some() && old == new {
                        continue; // only columns we do not read changed
                    }
                    if let Some(old) = old {
                        out.push((old, -1));
                    }
                    if let Some(new) = new {
                        out.push((new, 1));
                    }
                }
            }
        }
        Ok(())
    }

    fn checked(&mut self, row: Result<Demographic, String>) -> Option<Demographic> {
        row.map_err(|reason| self.skips.skip(&reason)).ok()
    }

    /// One row image: `Ok(Err(reason))` when it does not convert.
    fn row_image(
        &self,
        r: &mut Reader<'_>,
        map: &TableMap,
        present: &[u8],
    ) -> Result<Result<Demographic, String>, StreamEnd> {
        let parse = |e: String| self.fatal(format!("malformed row image: {e}"));
        let is_present = |i: usize| present[i / 8] & (1 << (i % 8)) != 0;
        let count = (0..map.types.len()).filter(|&i| is_present(i)).count();
        let nulls = r.take(count.div_ceil(8)).map_err(parse)?;
        let mut cells: [Option<Cell<'_>>; 5] = Default::default();
        let mut ordinal = 0;
        for (i, (&kind, &meta)) in map.types.iter().zip(&map.meta).enumerate() {
            if !is_present(i) {
                continue;
            }
            let null = nulls[ordinal / 8] & (1 << (ordinal % 8)) != 0;
            ordinal += 1;
            let cell = if null {
                Cell::Null
            } else {
                read_cell(r, kind, meta, self.layout.unsigned[i]).map_err(parse)?
            };
            if let Some(slot) = self.layout.positions.iter().position(|&p| p == i) {
                cells[slot] = Some(cell);
            }
        }
        for (slot, cell) in cells.iter().enumerate() {
            if cell.is_none() {
                return Err(StreamEnd::Fatal(MysqlError::Setting {
                    setting: "binlog_row_image",
                    found: "not FULL for a change".into(),
                    expected: format!(
                        "a row image of {} lacks column {}: the writer's session must use binlog_row_image=FULL",
                        self.qualified(),
                        WANTED[slot]
                    ),
                }));
            }
        }
        let [id, age, gender, state, country] = cells;
        let charset = |slot: usize| self.layout.charsets[self.layout.positions[slot]];
        let converted = (|| {
            let raw = RawRow {
                id: id.unwrap_or(Cell::Null).int()?,
                age: age.unwrap_or(Cell::Null).int()?,
                gender: gender.unwrap_or(Cell::Null).text(charset(2))?,
                state: state.unwrap_or(Cell::Null).text(charset(3))?,
                country: country.unwrap_or(Cell::Null).text(charset(4))?,
            };
            convert(raw)
        })();
        Ok(converted)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowsAction {
    Insert,
    Update,
    Delete,
}

/// Server errors after which reconnecting is pointless: the position is gone, or access is.
fn is_fatal_server_error(code: u16) -> bool {
    // 1236: binlog position unreadable (purged, or past the end). 1045: access denied.
    // 1227, 1044, 1142: missing privilege (REPLICATION SLAVE).
    matches!(code, 1236 | 1045 | 1227 | 1044 | 1142)
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

// ---------------------------------------------------------------------------------------------
// Binlog events
// ---------------------------------------------------------------------------------------------

const EVENT_HEADER: usize = 19;
const QUERY_EVENT: u8 = 2;
const ROTATE_EVENT: u8 = 4;
const FORMAT_DESCRIPTION_EVENT: u8 = 15;
const XID_EVENT: u8 = 16;
const TABLE_MAP_EVENT: u8 = 19;
const WRITE_ROWS_V1: u8 = 23;
const UPDATE_ROWS_V1: u8 = 24;
const DELETE_ROWS_V1: u8 = 25;
const WRITE_ROWS_V2: u8 = 30;
const UPDATE_ROWS_V2: u8 = 31;
const DELETE_ROWS_V2: u8 = 32;
const TRANSACTION_PAYLOAD_EVENT: u8 = 40;
const MARIADB_COMPRESSED_FIRST: u8 = 165;
const MARIADB_COMPRESSED_LAST: u8 = 171;

fn post_header_len(state: &StreamState, kind: u8, default: usize) -> usize {
    state
        .post_header
        .get(usize::from(kind) - 1)
        .map_or(default, |&n| usize::from(n))
}

fn crc_matches(event: &[u8]) -> bool {
    let (data, sum) = event.split_at(event.len() - 4);
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum().to_le_bytes() == sum
}

/// Column types of the binlog (`enum_field_types`).
mod field {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// The table map's per-column metadata, one number per column.
fn parse_column_meta(types: &[u8], meta: &[u8]) -> Result<Vec<u16>, String> {
    let mut r = Reader::new(meta);
    types
        .iter()
        .map(|&kind| {
            Ok(match kind {
                field::FLOAT
                | field::DOUBLE
                | field::BLOB
                | field::TINY_BLOB
                | field::MEDIUM_BLOB
                | field::LONG_BLOB
                | field::GEOMETRY
                | field::JSON
                | field::TIMESTAMP2
                | field::DATETIME2
                | field::TIME2 => u16::from(r.u8()?),
                field::VARCHAR | field::VAR_STRING => r.u16()?,
                // Big-endian: the real type, then the length (or its low byte).
                field::STRING | field::ENUM | field::SET | field::NEWDECIMAL | field::BIT => {
                    let high = r.u8()?;
                    let low = r.u8()?;
                    u16::from(high) << 8 | u16::from(low)
                }
                _ => 0,
            })
        })
        .collect()
}

/// A decoded value of a column we read.
#[derive(Clone, Copy, Debug)]
enum Cell<'a> {
    Null,
    Int(i128),
    Bytes(&'a [u8]),
    Other,
}

impl Cell<'_> {
    fn int(self) -> Result<Option<i128>, String> {
        match self {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(v)),
            Cell::Bytes(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .map(Some)
                .ok_or_else(|| "a non-integer in an integer column".into()),
            Cell::Other => Err("a column of an unexpected type".into()),
        }
    }

    fn text(self, charset: Charset) -> Result<Option<String>, String> {
        match self {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(v.to_string())),
            Cell::Bytes(bytes) => match charset {
                Charset::Utf8 => String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| "a text column is not UTF-8".into()),
                Charset::Latin1 => Ok(Some(bytes.iter().map(|&b| cp1252(b)).collect())),
            },
            Cell::Other => Err("a column of an unexpected type".into()),
        }
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

/// Bytes of a packed DECIMAL(precision, scale).
fn decimal_size(precision: u16, scale: u16) -> usize {
    const DIGITS: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    let (precision, scale) = (usize::from(precision), usize::from(scale));
    let integral = precision.saturating_sub(scale);
    integral / 9 * 4 + DIGITS[integral % 9] + scale / 9 * 4 + DIGITS[scale % 9]
}

/// Reads one non-NULL value of a column of type `kind`.
fn read_cell<'a>(
    r: &mut Reader<'a>,
    kind: u8,
    meta: u16,
    unsigned: bool,
) -> Result<Cell<'a>, String> {
    let int = |r: &mut Reader<'a>, n: usize| -> Result<Cell<'a>, String> {
        let raw = r.uint(n)?;
        let bits = n * 8;
        Ok(Cell::Int(if unsigned {
            i128::from(raw)
        } else {
            // Sign-extend.
            let shift = 128 - bits;
            (i128::from(raw) << shift) >> shift
        }))
    };
    let fraction = |fsp: u16| usize::from(fsp).div_ceil(2);
    Ok(match kind {
        field::TINY => int(r, 1)?,
        field::SHORT => int(r, 2)?,
        field::INT24 => int(r, 3)?,
        field::LONG => int(r, 4)?,
        field::LONGLONG => int(r, 8)?,
        field::YEAR => {
            r.take(1)?;
            Cell::Other
        }
        field::FLOAT | field::TIMESTAMP => {
            r.take(4)?;
            Cell::Other
        }
        field::DOUBLE | field::DATETIME => {
            r.take(8)?;
            Cell::Other
        }
        field::DATE | field::NEWDATE | field::TIME => {
            r.take(3)?;
            Cell::Other
        }
        field::TIMESTAMP2 => {
            r.take(4 + fraction(meta))?;
            Cell::Other
        }
        field::DATETIME2 => {
            r.take(5 + fraction(meta))?;
            Cell::Other
        }
        field::TIME2 => {
            r.take(3 + fraction(meta))?;
            Cell::Other
        }
        field::NEWDECIMAL => {
            r.take(decimal_size(meta >> 8, meta & 0xff))?;
            Cell::Other
        }
        field::BIT => {
            let (bits, bytes) = (meta >> 8, meta & 0xff);
            r.take(usize::from(bytes) + usize::from(bits > 0))?;
            Cell::Other
        }
        field::VARCHAR | field::VAR_STRING => {
            let len = if meta < 256 {
                usize::from(r.u8()?)
            } else {
                usize::from(r.u16()?)
            };
            Cell::Bytes(r.take(len)?)
        }
        field::STRING | field::ENUM | field::SET => {
            let real = (meta >> 8) as u8;
            if real == field::ENUM || real == field::SET {
                r.take(usize::from(meta & 0xff))?;
                Cell::Other
            } else {
                let max = (((meta >> 4) & 0x300) ^ 0x300) + (meta & 0xff);
                let len = if max > 255 {
                    usize::from(r.u16()?)
                } else {
                    usize::from(r.u8()?)
                };
                Cell::Bytes(r.take(len)?)
            }
        }
        field::BLOB
        | field::TINY_BLOB
        | field::MEDIUM_BLOB
        | field::LONG_BLOB
        | field::GEOMETRY
        | field::JSON => {
            let len = r.uint(usize::from(meta))? as usize;
            Cell::Bytes(r.take(len)?)
        }
        field::NULL => Cell::Null,
        field::DECIMAL => return Err("the old DECIMAL column type is not supported".into()),
        other => return Err(format!("column type {other} is not supported")),
    })
}

/// A little-endian reader over a byte slice.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "wanted {n} bytes at offset {} of {}",
                self.pos,
                self.data.len()
            ));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.data[self.pos..];
        self.pos = self.data.len();
        out
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        if n > 8 {
            return Err(format!("an integer of {n} bytes"));
        }
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(bytes))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(self.uint(2)? as u16)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(self.uint(4)? as u32)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.uint(8)
    }

    /// A length-encoded integer.
    fn lenenc(&mut self) -> Result<u64, String> {
        match self.u8()? {
            0xfc => self.uint(2),
            0xfd => self.uint(3),
            0xfe => self.uint(8),
            n if n < 0xfb => Ok(u64::from(n)),
            n => Err(format!("length prefix {n:#x}")),
        }
    }

    /// Bytes up to a NUL (consumed), or to the end.
    fn nul_terminated(&mut self) -> &'a [u8] {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                &rest[..i]
            }
            None => self.rest(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binlog client: the MySQL protocol, as much as a replica needs
// ---------------------------------------------------------------------------------------------

/// A binlog client failure.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("server error {code}: {message}")]
    Server { code: u16, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unsupported(String),
}

/// MySQL packets over a socket.
struct Wire {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    seq: u8,
}

impl Wire {
    fn read_packet(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        loop {
            let mut header = [0u8; 4];
            self.reader.read_exact(&mut header)?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
            self.seq = header[3].wrapping_add(1);
            let start = out.len();
            out.resize(start + len, 0);
            self.reader.read_exact(&mut out[start..])?;
            if len < 0xff_ffff {
                return Ok(out);
            }
        }
    }

    fn write_packet(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        if payload.len() >= 0xff_ffff {
            return Err(ClientError::Protocol("a command over 16 MiB".into()));
        }
        let mut packet = Vec::with_capacity(payload.len() + 4);
        packet.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
        packet.push(self.seq);
        packet.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        self.writer.write_all(&packet)?;
        Ok(())
    }

    /// Sends a command (sequence 0).
    fn command(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.seq = 0;
        self.write_packet(payload)
    }

    /// Reads an OK packet, or returns the server's error.
    fn expect_ok(&mut self) -> Result<(), ClientError> {
        let packet = self.read_packet()?;
        match packet.first() {
            Some(0x00) => Ok(()),
            Some(0xff) => Err(server_error(&packet)),
            _ => Err(ClientError::Protocol(format!(
                "expected OK, got a packet starting {:#x?}",
                packet.first()
            ))),
        }
    }
}

fn server_error(packet: &[u8]) -> ClientError {
    let mut r = Reader::new(packet.get(1..).unwrap_or_default());
    let code = r.u16().unwrap_or(0);
    let mut message = r.rest();
    if message.first() == Some(&b'#') && message.len() >= 6 {
        message = &message[6..];
    }
    ClientError::Server {
        code,
        message: String::from_utf8_lossy(message).into_owned(),
    }
}

const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_LONG_FLAG: u32 = 0x4;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const NATIVE_PASSWORD: &str = "mysql_native_password";

/// A connection streaming the binlog.
struct BinlogConn {
    wire: Wire,
    connection_id: u32,
    /// The first packet, read while opening to surface errors early.
    first: Option<Vec<u8>>,
}

impl BinlogConn {
    /// Connects, authenticates, registers as a replica and asks for the binlog from `position`.
    fn open(target: &BinlogTarget, position: &BinlogPosition) -> Result<BinlogConn, ClientError> {
        let stream = connect_tcp(&target.host, target.port, target.connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(target.connect_timeout.max(STREAM_READ_TIMEOUT)))?;
        stream.set_write_timeout(Some(target.connect_timeout.max(STREAM_READ_TIMEOUT)))?;
        let mut wire = Wire {
            reader: BufReader::with_capacity(256 * 1024, stream.try_clone()?),
            writer: stream,
            seq: 0,
        };
        let connection_id = authenticate(&mut wire, target)?;
        for statement in [
            "SET @master_binlog_checksum = @@global.binlog_checksum".to_owned(),
            // MariaDB: send GTID and annotate events as they are; MySQL ignores it.
            "SET @mariadb_slave_capability = 4".to_owned(),
            format!("SET @master_heartbeat_period = {}", HEARTBEAT.as_nanos()),
        ] {
            let mut payload = vec![0x03];
            payload.extend_from_slice(statement.as_bytes());
            wire.command(&payload)?;
            wire.expect_ok()?;
        }
        // COM_REGISTER_SLAVE: shows the follower in SHOW SLAVE HOSTS.
        let mut payload = vec![0x15];
        payload.extend_from_slice(&target.server_id.to_le_bytes());
        for field in [b"shopflow".as_slice(), b"", b""] {
            payload.push(field.len() as u8);
            payload.extend_from_slice(field);
        }
        payload.extend_from_slice(&0u16.to_le_bytes()); // port
        payload.extend_from_slice(&0u32.to_le_bytes()); // rank
        payload.extend_from_slice(&0u32.to_le_bytes()); // master id
        wire.command(&payload)?;
        wire.expect_ok()?;
        // COM_BINLOG_DUMP.
        let pos = u32::try_from(position.pos).map_err(|_| {
            ClientError::Unsupported(format!(
                "binlog position {position} is past 4 GiB: COM_BINLOG_DUMP cannot ask for it"
            ))
        })?;
        let mut payload = vec![0x12];
        payload.extend_from_slice(&pos.to_le_bytes());
        payload.extend_from_slice(&0u16.to_le_bytes());
        payload.extend_from_slice(&target.server_id.to_le_bytes());
        payload.extend_from_slice(position.file.as_bytes());
        wire.command(&payload)?;
        let mut conn = BinlogConn {
            wire,
            connection_id,
            first: None,
        };
        let first = conn.next_packet()?;
        conn.first = Some(first);
        Ok(conn)
    }

    /// The next event (without the OK marker).
    fn next_packet(&mut self) -> Result<Vec<u8>, ClientError> {
        if let Some(first) = self.first.take() {
            return Ok(first);
        }
        let mut packet = self.wire.read_packet()?;
        match packet.first() {
            Some(0x00) => {
                packet.remove(0);
                Ok(packet)
            }
            Some(0xff) => Err(server_error(&packet)),
            Some(0xfe) if packet.len() < 9 => Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server ended the binlog stream",
            ))),
            _ => Err(ClientError::Protocol(format!(
                "unexpected packet starting {:#x?}",
                packet.first()
            ))),
        }
    }
}

fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ClientError> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{host}:{port} resolves to no address"),
    );
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(ClientError::Io(last))
}

/// Reads the server's greeting and logs in with `mysql_native_password`; returns the
/// connection id.
fn authenticate(wire: &mut Wire, target: &BinlogTarget) -> Result<u32, ClientError> {
    let greeting = wire.read_packet()?;
    if greeting.first() == Some(&0xff) {
        return Err(server_error(&greeting));
    }
    let protocol = |e: String| ClientError::Protocol(format!("server greeting: {e}"));
    let mut r = Reader::new(&greeting);
    if r.u8().map_err(protocol)? != 10 {
        return Err(ClientError::Unsupported(
            "the server speaks a protocol older than 4.1".into(),
        ));
    }
    r.nul_terminated(); // server version
    let connection_id = r.u32().map_err(protocol)?;
    let mut scramble = r.take(8).map_err(protocol)?.to_vec();
    r.take(1).map_err(protocol)?;
    let mut capabilities = u32::from(r.u16().map_err(protocol)?);
    r.take(3).map_err(protocol)?; // charset, status
    capabilities |= u32::from(r.u16().map_err(protocol)?) << 16;
    let auth_len = usize::from(r.u8().map_err(protocol)?);
    r.take(10).map_err(protocol)?;
    if capabilities & CLIENT_PROTOCOL_41 == 0 || capabilities & CLIENT_SECURE_CONNECTION == 0 {
        return Err(ClientError::Unsupported(
            "the server lacks protocol 4.1 authentication".into(),
        ));
    }
    let part2 = r
        .take(auth_len.saturating_sub(8).max(13))
        .map_err(protocol)?;
    scramble.extend_from_slice(&part2[..part2.len() - 1]);
    let plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 {
        String::from_utf8_lossy(r.nul_terminated()).into_owned()
    } else {
        NATIVE_PASSWORD.to_owned()
    };
    let client = CLIENT_LONG_PASSWORD
        | CLIENT_LONG_FLAG
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | (capabilities & CLIENT_PLUGIN_AUTH);
    // Whatever the server's default plugin, answer as mysql_native_password: the server asks
    // to switch when the account uses another.
    tracing::trace!(plugin, "server's default authentication plugin");
    let auth = native_password(&target.password, &scramble);
    let mut payload = Vec::with_capacity(128);
    payload.extend_from_slice(&client.to_le_bytes());
    payload.extend_from_slice(&(16u32 << 20).to_le_bytes());
    payload.push(45); // utf8mb4_general_ci
    payload.extend_from_slice(&[0; 23]);
    payload.extend_from_slice(target.user.as_bytes());
    payload.push(0);
    payload.push(auth.len() as u8);
    payload.extend_from_slice(&auth);
    if client & CLIENT_PLUGIN_AUTH != 0 {
        payload.extend_from_slice(NATIVE_PASSWORD.as_bytes());
        payload.push(0);
    }
    wire.write_packet(&payload)?;
    loop {
        let packet = wire.read_packet()?;
        match packet.first() {
            Some(0x00) => return Ok(connection_id),
            Some(0xff) => return Err(server_error(&packet)),
            Some(0xfe) => {
                let mut r = Reader::new(&packet[1..]);
                let plugin = String::from_utf8_lossy(r.nul_terminated()).into_owned();
                let data = r.rest();
                let data = data.strip_suffix(&[0]).unwrap_or(data);
                if plugin != NATIVE_PASSWORD {
                    return Err(unsupported_plugin(&target.user, &plugin));
                }
                wire.write_packet(&native_password(&target.password, data))?;
            }
            Some(0x01) => return Err(unsupported_plugin(&target.user, "caching_sha2_password")),
            _ => {
                return Err(ClientError::Protocol(
                    "unexpected packet during authentication".into(),
                ));
            }
        }
    }
}

fn unsupported_plugin(user: &str, plugin: &str) -> ClientError {
    ClientError::Unsupported(format!(
        "user {user} authenticates with {plugin}; the binlog client speaks only mysql_native_password \
         (ALTER USER ... IDENTIFIED WITH mysql_native_password BY '...')"
    ))
}

/// The `mysql_native_password` answer: SHA1(pw) XOR SHA1(scramble, SHA1(SHA1(pw))).
fn native_password(password: &str, scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = sha1(&[password.as_bytes()]);
    let stage2 = sha1(&[&stage1]);
    let mix = sha1(&[scramble, &stage2]);
    stage1.iter().zip(mix).map(|(a, b)| a ^ b).collect()
}

/// SHA-1, for `mysql_native_password` only.
fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut message: Vec<u8> = parts.concat();
    let bits = (message.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bits.to_be_bytes());
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Driving changes
// ---------------------------------------------------------------------------------------------

/// What [`apply_changes`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changes drawn from the generator (some are empty and write nothing).
    pub changes: u64,
    /// Rows inserted.
    pub inserts: u64,
    /// Rows updated.
    pub updates: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Changes the table did not match (no such row, or a duplicate id): the table and the
    /// generator have diverged, for instance after a load with another seed.
    pub mismatches: u64,
}

/// Writes generated changes to the table at `per_second` (infinite: as fast as the server
/// takes them), each change one autocommitted parameterized statement, until `duration` has
/// passed or `max_changes` changes were drawn.
pub fn apply_changes(
    config: &MysqlConfig,
    changes: &mut Changes,
    per_second: f64,
    duration: Duration,
    max_changes: u64,
) -> Result<ApplyReport, MysqlError> {
    if per_second.is_nan() || per_second <= 0.0 {
        return Err(MysqlError::Config {
            key: "per-second",
            message: format!("{per_second} is not a positive rate"),
        });
    }
    let mut conn = connect(config)?;
    let table = &config.table;
    let context = |what: &str| format!("{what} a generated change of {table}");
    let insert = conn
        .prep(insert_statement(table, 1))
        .map_err(sql_error(context("preparing to insert")))?;
    let update = conn
        .prep(format!(
            "UPDATE `{table}` SET age = ?, gender = ?, state = ?, country = ? WHERE id = ?"
        ))
        .map_err(sql_error(context("preparing to update")))?;
    let delete = conn
        .prep(format!("DELETE FROM `{table}` WHERE id = ?"))
        .map_err(sql_error(context("preparing to delete")))?;
    let started = Instant::now();
    let mut report = ApplyReport::default();
    while report.changes < max_changes {
        let offset = report.changes as f64 / per_second;
        if offset > duration.as_secs_f64() || started.elapsed() >= duration {
            break;
        }
        let due = started + Duration::from_secs_f64(offset);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let change = changes.next_change();
        report.changes += 1;
        let affected = match change.as_slice() {
            [] => continue,
            [(row, 1)] => {
                let mut params = Vec::with_capacity(5);
                push_row(&mut params, row);
                match conn.exec_drop(&insert, Params::Positional(params)) {
                    Err(mysql::Error::MySqlError(e)) if e.code == 1062 => 0,
                    other => {
                        other.map_err(sql_error(context("inserting")))?;
                        report.inserts += 1;
                        conn.affected_rows()
                    }
                }
            }
            [(_, -1), (new, 1)] => {
                conn.exec_drop(
                    &update,
                    (
                        new.age,
                        new.gender.code(),
                        new.state.as_str(),
                        new.country.as_str(),
                        new.id.0,
                    ),
                )
                .map_err(sql_error(context("updating")))?;
                report.updates += 1;
                conn.affected_rows()
            }
            [(old, -1)] => {
                conn.exec_drop(&delete, (old.id.0,))
                    .map_err(sql_error(context("deleting")))?;
                report.deletes += 1;
                conn.affected_rows()
            }
            other => {
                return Err(MysqlError::Table {
                    table: table.clone(),
                    message: format!("the generator produced an unexpected change: {other:?}"),
                });
            }
        };
        if affected == 0 {
            report.mismatches += 1;
            tracing::debug!(%table, ?change, "a generated change did not match the table");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_matches_known_digests() {
        assert_eq!(
            hex(&sha1(&[b"abc"])),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(&[b""])),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            hex(&sha1(&[&long[..500], &long[500..]])),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn identifiers_and_masks() {
        assert!(is_identifier("demographics"));
        assert!(is_identifier("_t9"));
        assert!(!is_identifier("9t"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier("t`; DROP TABLE x; --"));
        assert!(!is_identifier(&"a".repeat(65)));
        assert!(is_identifier(&"a".repeat(64)));
        assert_eq!(
            mask_url("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(mask_url("mysql://u@h:3306/db"), "mysql://u@h:3306/db");
        assert_eq!(mask_url("mysql://h/db"), "mysql://h/db");
    }

    #[test]
    fn the_ddl_names_the_configured_table() {
        let ddl = table_ddl("people_2").unwrap();
        assert!(
            ddl.starts_with("CREATE TABLE IF NOT EXISTS `people_2` ("),
            "{ddl}"
        );
        assert!(!ddl.contains("--"));
        assert!(table_ddl("bad name").is_err());
    }

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
    fn column_sizes() {
        assert_eq!(decimal_size(10, 2), 5);
        assert_eq!(decimal_size(18, 9), 8);
        // CHAR(1) utf8mb4: real type STRING, 4 bytes.
        let meta = parse_column_meta(&[field::STRING, field::VARCHAR], &[0xfe, 4, 0, 1]).unwrap();
        assert_eq!(meta, vec![0xfe04, 256]);
        let data = [1, b'F', 3, 0, b'a', b'b', b'c'];
        let mut r = Reader::new(&data);
        assert!(matches!(
            read_cell(&mut r, field::STRING, meta[0], false),
            Ok(Cell::Bytes(b"F"))
        ));
        assert!(matches!(
            read_cell(&mut r, field::VARCHAR, meta[1], false),
            Ok(Cell::Bytes(b"abc"))
        ));
        let mut r = Reader::new(&[0xff]);
        assert!(matches!(
            read_cell(&mut r, field::TINY, 0, false),
            Ok(Cell::Int(-1))
        ));
        let mut r = Reader::new(&[0xff]);
        assert!(matches!(
            read_cell(&mut r, field::TINY, 0, true),
            Ok(Cell::Int(255))
        ));
        assert_eq!(cp1252(0x80), '€');
        assert_eq!(cp1252(b'a'), 'a');
        assert_eq!(cp1252(0xe9), 'é');
    }

    #[test]
    fn conversion_rejects_bad_rows() {
        let raw = || RawRow {
            id: Some(7),
            age: Some(30),
            gender: Some("F".into()),
            state: Some("CA".into()),
            country: Some("US".into()),
        };
        assert_eq!(convert(raw()).unwrap().gender, Gender::Female);
        assert!(
            convert(RawRow {
                gender: Some("Q".into()),
                ..raw()
            })
            .is_err()
        );
        assert!(
            convert(RawRow {
                age: Some(300),
                ..raw()
            })
            .is_err()
        );
        assert!(convert(RawRow { age: None, ..raw() }).is_err());
        assert!(
            convert(RawRow {
                id: Some(-1),
                ..raw()
            })
            .is_err()
        );
    }

    #[test]
    fn config_validation_names_the_key() {
        let ok = MysqlConfig::new("mysql://u@h:3306/db");
        ok.validate().unwrap();
        let err = |c: MysqlConfig| c.validate().unwrap_err().to_string();
        assert!(
            err(MysqlConfig {
                table: "x; drop".into(),
                ..ok.clone()
            })
            .contains("mysql.table")
        );
        assert!(err(MysqlConfig::new("mysql://u@h:3306")).contains("mysql.url"));
        assert!(err(MysqlConfig::new("postgres://u@h/db")).contains("mysql.url"));
        assert!(
            err(MysqlConfig {
                load_batch_rows: 0,
                ..ok.clone()
            })
            .contains("mysql.load-batch-rows")
        );
        assert!(
            err(MysqlConfig {
                connect_retries: 1000,
                ..ok.clone()
            })
            .contains("mysql.connect-retries")
        );
        assert!(
            err(MysqlConfig {
                password: Some("a".into()),
                password_file: Some("/p".into()),
                ..ok.clone()
            })
            .contains("mysql.password-file")
        );
    }
}
