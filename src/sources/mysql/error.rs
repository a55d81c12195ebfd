//! What can go wrong talking to MySQL, as one typed error.

use std::io;

use super::source::BinlogPosition;
use crate::config::mysql::MysqlConfigError;

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

pub(crate) fn sql_error(context: impl Into<String>) -> impl FnOnce(mysql::Error) -> MysqlError {
    let context = context.into();
    move |source| MysqlError::Sql { context, source }
}

/// A bad `[mysql]` value found by [`crate::config::mysql::MysqlConfig::validate`] stops the
/// connector as any other configuration error does.
impl From<MysqlConfigError> for MysqlError {
    fn from(MysqlConfigError { key, message }: MysqlConfigError) -> MysqlError {
        MysqlError::Config { key, message }
    }
}
