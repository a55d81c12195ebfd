//! Driving changes: applying generated changes to the table (`shopflow change-demographics`).

use std::time::{Duration, Instant};

use mysql::Params;
use mysql::prelude::Queryable;

use crate::generators::demographics::Changes;

use super::load::{insert_statement, push_row};
use crate::config::mysql::MysqlConfig;
use crate::sources::mysql::{MysqlError, connect, sql_error};

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
