//! Rows: the table's rows as the model's demographics, counting those that do not convert.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataflows::model::{Demographic, Gender, Name, UserId};
use mysql::Value;
use mysql::prelude::Queryable;

use super::{
    config::MysqlConfig,
    connection::connect,
    error::{MysqlError, sql_error},
    source::Shared,
};

/// At most one warning about unconvertible rows per this interval.
const SKIP_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// The five columns of a row, as read, before conversion.
#[derive(Default)]
pub(super) struct RawRow {
    pub(super) id: Option<i128>,
    pub(super) age: Option<i128>,
    pub(super) gender: Option<String>,
    pub(super) state: Option<String>,
    pub(super) country: Option<String>,
}

/// The row as a [`Demographic`], or why not.
pub(super) fn convert(raw: RawRow) -> Result<Demographic, String> {
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

pub(super) fn value_int(value: Value) -> Result<Option<i128>, String> {
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

pub(super) fn value_text(value: Value) -> Result<Option<String>, String> {
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
pub(super) fn convert_row(row: mysql::Row) -> Result<Demographic, String> {
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
pub(super) struct SkipLog {
    pub(super) shared: Arc<Shared>,
    pub(super) table: String,
    pub(super) last_warning: Option<Instant>,
    pub(super) suppressed: u64,
}

impl SkipLog {
    pub(super) fn skip(&mut self, reason: &str) {
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

pub(super) fn select_statement(table: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
