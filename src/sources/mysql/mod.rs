//! MySQL/MariaDB: the demographics table (loaded and changed by [`crate::writers::mysql`]), read
//! as a consistent snapshot, and then followed through the binary log as differential updates.
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
//! feature: [`Conn::get_binlog_stream`](mysql::Conn::get_binlog_stream)). These modules keep
//! what the crate leaves to its user: which transactions to deliver and when, positions and
//! reconnection, DDL detection, and the column facts a binlog without `binlog_row_metadata=FULL`
//! does not carry (signedness, charset).
//!
//! Every statement is parameterized except for the table name, which cannot be a parameter and
//! is therefore validated as a plain identifier and quoted.

mod binlog;
mod connection;
mod error;
mod rows;
mod source;

pub use crate::config::mysql::{MysqlConfig, MysqlTls, PASSWORD_ENV, is_identifier};
// What `writers::mysql` (load-demographics, change-demographics) shares with the source.
pub(crate) use connection::connect;
pub use error::MysqlError;
pub(crate) use error::sql_error;
pub use rows::{read_table, read_table_counting};
pub use source::{BinlogPosition, ChangeFeed, DemographicsSource, Follower};
