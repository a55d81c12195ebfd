//! MySQL/MariaDB: the demographics table, bulk-loaded, read as a consistent snapshot, and then
//! followed through the binary log as differential updates.
//!
//! Reading has two halves that must meet exactly:
//!
//! 1. [`DemographicsSource::start`] opens a transaction with a consistent snapshot, reads the
//!    binlog position that snapshot corresponds to and every row of the table in it.
//! 2. A follower thread asks the server for the binlog from that position (as a replica:
//!    `COM_BINLOG_DUMP`), decodes the row events of this one table, and sends each committed
//!    transaction to the [`ChangeFeed`] as `(row, -1 | +1)` updates, in commit order.
//!
//! On MariaDB the position comes from `binlog_snapshot_file` / `binlog_snapshot_position`, which
//! InnoDB fixes atomically with the snapshot, so writers are never blocked. MySQL has no such
//! status; there the snapshot is taken under `FLUSH TABLES WITH READ LOCK` (held only while the
//! position is read: writes stall for milliseconds, and the user needs the RELOAD privilege).
//!
//! The replication protocol and the event and row decoding are the `mysql` crate's (its `binlog`
//! feature: [`Conn::get_binlog_stream`]). This file keeps what the crate leaves to its user:
//! which transactions to deliver and when, positions and reconnection, DDL detection, and the
//! column facts a binlog without `binlog_row_metadata=FULL` does not carry (signedness, charset).
//!
//! Every statement is parameterized except for the table name, which cannot be a parameter and
//! is therefore validated as a plain identifier and quoted.

use std::cell::{Cell as StdCell, RefCell};
use std::fmt;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::model::{Demographic, Gender, Name, UserId};
use mysql::binlog::BinlogChecksumAlg;
use mysql::binlog::events::{Event, EventData, TableMapEvent};
use mysql::binlog::row::BinlogRow;
use mysql::binlog::value::BinlogValue;
use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use mysql::{BinlogRequest, BinlogStream, Column, Conn, Opts, OptsBuilder, Params, Value};
use serde::{Deserialize, Serialize, Serializer};

use crate::generators::demographics::Changes;

/// The environment variable a password is read from when the configuration names none.
pub const PASSWORD_ENV: &str = "SHOPFLOW_MYSQL_PASSWORD";

/// The table's DDL; the table name is substituted after validation.
const DDL: &str = include_str!("../../../config/mysql/demographics.sql");
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
const SKIP_WARNING_INTERVAL: Duration = Duration::from_secs(1);

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
pub use crate::config::redact_url as mask_url;

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

/// Calls `f` until it succeeds, fails with an error that is not [`retryable`], or has failed
/// `retries + 1` times, sleeping with exponential backoff in between. The error comes with the
/// number of attempts made.
fn retrying<T>(
    addr: &str,
    retries: u32,
    mut f: impl FnMut() -> Result<T, mysql::Error>,
) -> Result<T, (u32, mysql::Error)> {
    let mut attempt = 1;
    loop {
        match f() {
            Ok(value) => return Ok(value),
            Err(e) if attempt <= retries && retryable(&e) => {
                let delay = backoff(attempt);
                tracing::warn!(%addr, attempt, of = retries + 1, error = %e, ?delay, "MySQL connection failed; retrying");
                std::thread::sleep(delay);
                attempt += 1;
            }
            Err(e) => return Err((attempt, e)),
        }
    }
}

/// A connection, retried with bounded exponential backoff.
fn connect(config: &MysqlConfig) -> Result<Conn, MysqlError> {
    let opts = config.opts()?;
    let addr = endpoint(&opts);
    retrying(&addr, config.connect_retries, || Conn::new(opts.clone())).map_err(|(attempts, e)| {
        MysqlError::Connect {
            addr: addr.clone(),
            attempts,
            detail: e.to_string(),
        }
    })
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
    read_table_counting(config).map(|(rows, _)| rows)
}

/// [`read_table`], and how many rows do not convert (what the pipeline's
/// `demographics_skipped` counts).
pub fn read_table_counting(config: &MysqlConfig) -> Result<(Vec<Demographic>, u64), MysqlError> {
    config.validate()?;
    let mut conn = connect(config)?;
    let table = &config.table;
    let result = conn
        .query_iter(format!("{} ORDER BY id", select_statement(table)))
        .map_err(sql_error(format!("reading {table}")))?;
    let mut rows = Vec::new();
    let mut skipped = 0;
    for row in result {
        let row = row.map_err(sql_error(format!("reading {table}")))?;
        match convert_row(row) {
            Ok(row) => rows.push(row),
            Err(reason) => {
                tracing::debug!(%table, reason, "skipping a row");
                skipped += 1;
            }
        }
    }
    Ok((rows, skipped))
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
        let follower = Follower {
            opts,
            addr,
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
}

/// A committed transaction, or the error that ended the feed.
type Message = Result<Transaction, MysqlError>;

/// A committed transaction's effect on the table.
struct Transaction {
    /// Its updates of rows that convert.
    updates: Vec<(Demographic, isize)>,
    /// The change in the number of rows that do not convert: +1 for each such row written, -1
    /// for each such row deleted or overwritten.
    skipped: i64,
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

// ---------------------------------------------------------------------------------------------
// The follower
// ---------------------------------------------------------------------------------------------

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
struct Stream {
    events: BinlogStream,
    first: Option<Event>,
    connection_id: u32,
}

/// Connects as a replica `server_id` and asks for the binlog from `position`.
fn open_stream(
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
struct Follower {
    /// Where and how the binlog connection connects.
    opts: Opts,
    addr: String,
    server_id: u32,
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

    fn run(mut self, mut stream: Stream) {
        // Consecutive failed connection attempts; they start over once a connection worked.
        let mut failures = 0;
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
                let delay = backoff(failures);
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
