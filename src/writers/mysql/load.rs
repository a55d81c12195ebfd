//! Loading: creating the table and bulk-inserting demographics (`shopflow load-demographics`).

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use dataflows::model::Demographic;
use mysql::prelude::Queryable;
use mysql::{Conn, Params, Value};

use crate::config::mysql::{MysqlConfig, is_identifier};
use crate::sources::mysql::{MysqlError, connect, sql_error};

/// The table's DDL; the table name is substituted after validation.
const DDL: &str = include_str!("../../../config/mysql/demographics.sql");
/// The statement of [`DDL`] that names the table.
const DDL_CREATE: &str = "CREATE TABLE IF NOT EXISTS demographics";

/// Load statements per transaction.
const LOAD_STATEMENTS_PER_COMMIT: u64 = 20;

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

pub(super) fn insert_statement(table: &str, rows: usize) -> String {
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

pub(super) fn push_row(params: &mut Vec<Value>, row: &Demographic) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
