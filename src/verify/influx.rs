//! Reading what InfluxDB holds: InfluxQL over the 1.x `/query` API, answers as chunked JSON.

use std::time::Duration;

use dataflows::model::Counter;
use serde_json::Value;

use super::VerifyError;
use super::compare::{Found, FoundRow};
use super::series::{COUNTERS_MEASUREMENT, SeriesKey, measurements};
use crate::sinks::influx::service::quote_identifier;
use crate::sinks::influx::{InfluxClient, InfluxConfig};

/// The fields of an aggregate row.
const FIELDS: [&str; 5] = [
    "clicks",
    "purchases",
    "units",
    "revenue_cents",
    "conversion",
];

/// Reads every aggregate row and counter of the database in `config`: the last value of each
/// all-time series (`window=all`), every point of the window series, and the last value of each
/// `pipeline` counter. Window points with another `window` tag than `window_label` are counted in
/// [`Found::foreign_windows`].
pub fn read(
    config: &InfluxConfig,
    window_label: &str,
    timeout: Duration,
) -> Result<Found, VerifyError> {
    let client = InfluxClient::new(config).map_err(|e| VerifyError::Influx(e.to_string()))?;
    let from = |measurement: &str| match &config.retention_policy {
        Some(rp) => format!("{}.{}", quote_identifier(rp), quote_identifier(measurement)),
        None => quote_identifier(measurement),
    };
    let mut found = Found::default();
    for measurement in measurements() {
        let last: Vec<String> = FIELDS.iter().map(|f| format!("LAST({f}) AS {f}")).collect();
        let statement = format!(
            "SELECT {} FROM {} WHERE \"window\" = 'all' GROUP BY *",
            last.join(", "),
            from(measurement)
        );
        query(&client, &statement, timeout, |series| {
            add_rows(&mut found, measurement, series, window_label)
        })?;
        let statement = format!(
            "SELECT {} FROM {} WHERE \"window\" <> 'all' GROUP BY *",
            FIELDS.join(", "),
            from(measurement)
        );
        query(&client, &statement, timeout, |series| {
            add_rows(&mut found, measurement, series, window_label)
        })?;
    }
    let last: Vec<String> = Counter::ALL
        .iter()
        .map(|c| format!("LAST({0}) AS {0}", c.name()))
        .collect();
    let statement = format!(
        "SELECT {} FROM {}",
        last.join(", "),
        from(COUNTERS_MEASUREMENT)
    );
    query(&client, &statement, timeout, |series| {
        let columns = columns(series)?;
        for row in rows(series)? {
            for counter in Counter::ALL {
                if let Some(value) = field(&columns, row, counter.name()).and_then(Value::as_i64) {
                    found.counters.insert(counter, value);
                }
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// Runs one statement and hands every series of every chunk of the answer to `each`.
fn query(
    client: &InfluxClient,
    statement: &str,
    timeout: Duration,
    mut each: impl FnMut(&Value) -> Result<(), VerifyError>,
) -> Result<(), VerifyError> {
    let response = client
        .query(statement, timeout)
        .map_err(|e| VerifyError::Influx(e.to_string()))?;
    let chunks = serde_json::Deserializer::from_reader(std::io::BufReader::new(response))
        .into_iter::<Value>();
    for chunk in chunks {
        let chunk = chunk
            .map_err(|e| VerifyError::Influx(format!("unreadable answer to `{statement}`: {e}")))?;
        if let Some(error) = chunk.get("error").and_then(Value::as_str) {
            return Err(VerifyError::Influx(format!("`{statement}`: {error}")));
        }
        for result in chunk
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(error) = result.get("error").and_then(Value::as_str) {
                return Err(VerifyError::Influx(format!("`{statement}`: {error}")));
            }
            for series in result
                .get("series")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                each(series)?;
            }
        }
    }
    Ok(())
}

fn columns(series: &Value) -> Result<Vec<&str>, VerifyError> {
    series
        .get("columns")
        .and_then(Value::as_array)
        .map(|c| c.iter().map(|c| c.as_str().unwrap_or("")).collect())
        .ok_or_else(|| VerifyError::Influx(format!("a series without columns: {series}")))
}

fn rows(series: &Value) -> Result<&Vec<Value>, VerifyError> {
    series
        .get("values")
        .and_then(Value::as_array)
        .ok_or_else(|| VerifyError::Influx(format!("a series without values: {series}")))
}

fn field<'a>(columns: &[&str], row: &'a Value, name: &str) -> Option<&'a Value> {
    let i = columns.iter().position(|c| *c == name)?;
    row.get(i).filter(|v| !v.is_null())
}

/// Adds the rows of one answered series of an aggregate measurement.
fn add_rows(
    found: &mut Found,
    measurement: &'static str,
    series: &Value,
    window_label: &str,
) -> Result<(), VerifyError> {
    let mut window = None;
    let mut tags: Vec<(String, String)> = Vec::new();
    if let Some(object) = series.get("tags").and_then(Value::as_object) {
        for (name, value) in object {
            // GROUP BY * gives a series without some tag an empty value for it.
            let value = value.as_str().unwrap_or("");
            if name == "window" {
                window = Some(value.to_owned());
            } else if !value.is_empty() {
                tags.push((name.clone(), value.to_owned()));
            }
        }
    }
    tags.sort();
    let columns = columns(series)?;
    for row in rows(series)? {
        let window = match window.as_deref() {
            Some("all") => None,
            Some(label) if label == window_label => {
                let time = field(&columns, row, "time")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| VerifyError::Influx(format!("a point without time: {row}")))?;
                Some(time)
            }
            other => {
                *found
                    .foreign_windows
                    .entry(other.unwrap_or("").to_owned())
                    .or_default() += 1;
                continue;
            }
        };
        let int = |name| field(&columns, row, name).and_then(Value::as_i64);
        let values = FoundRow {
            clicks: int("clicks"),
            purchases: int("purchases"),
            units: int("units"),
            revenue_cents: int("revenue_cents"),
            conversion: field(&columns, row, "conversion").and_then(Value::as_f64),
        };
        found.rows.insert(
            SeriesKey {
                measurement,
                tags: tags.clone(),
                window,
            },
            values,
        );
    }
    Ok(())
}
