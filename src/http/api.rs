//! The JSON API: the aggregate rows as the sink last wrote them, the recent windows as time
//! series, the pipeline's figures, and a stream of changes per completed timestamp.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use dataflows::model::{Dimension, OutputKey, OutputValue, Tick, Totals};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::observed::{TickMessage, counters, lock};
use super::rows::{FIELDS, Measurement, Row, measurements};
use super::{ApiError, AppState};
use crate::runtime::Status;
use crate::sinks::line_protocol::RuntimeMetrics;

/// The query string as pairs, or a 400 saying why it does not parse.
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// `GET /api/measurements`: every aggregate measurement, its tags and fields.
pub async fn list_measurements() -> Json<Vec<Measurement>> {
    Json(measurements())
}

/// Which rows: all-time totals, the latest window, or the window starting at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    All,
    Latest,
    Start(u64),
}

/// The parameters of `/api/rows` and `/api/windows`, checked.
#[derive(Debug)]
struct Selection {
    measurement: Measurement,
    window: Window,
    filters: Vec<(&'static str, String)>,
    sort: Option<&'static str>,
    descending: bool,
    limit: Option<usize>,
    field: Option<&'static str>,
}

/// Parses the parameters; `allowed` names the ones this endpoint takes besides `tag.<name>`.
fn select(query: Pairs, allowed: &[&str]) -> Result<Selection, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut params: BTreeMap<&str, &str> = BTreeMap::new();
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for (name, value) in &pairs {
        if let Some(tag) = name.strip_prefix("tag.") {
            tags.push((tag, value));
        } else if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{name}`; this endpoint takes {} and tag.<name>",
                allowed.join(", ")
            )));
        } else if params.insert(name, value).is_some() {
            return Err(ApiError::bad_request(format!("`{name}` given twice")));
        }
    }
    let name = params
        .get("measurement")
        .ok_or_else(|| ApiError::bad_request("`measurement` is required"))?;
    let all = measurements();
    let names: Vec<&str> = all.iter().map(|m| m.measurement).collect();
    let measurement = all
        .iter()
        .find(|m| m.measurement == *name)
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown measurement `{name}`; one of {}",
                names.join(", ")
            ))
        })?;
    let field = |key: &str| -> Result<Option<&'static str>, ApiError> {
        params
            .get(key)
            .map(|f| {
                FIELDS
                    .iter()
                    .copied()
                    .find(|known| known == f)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "unknown field `{f}` in `{key}`; one of {}",
                            FIELDS.join(", ")
                        ))
                    })
            })
            .transpose()
    };
    let window = match params.get("window").copied() {
        None | Some("all") => Window::All,
        Some("latest") => Window::Latest,
        Some(start) => Window::Start(start.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "`window` is `all`, `latest` or a window start in ms, not `{start}`"
            ))
        })?),
    };
    let filters = tags
        .into_iter()
        .map(|(tag, value)| {
            let known = measurement
                .tags
                .iter()
                .copied()
                .find(|t| *t == tag)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`{}` has no tag `{tag}`; its tags: {}",
                        measurement.measurement,
                        measurement.tags.join(", ")
                    ))
                })?;
            Ok((known, value.to_owned()))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let descending = match params.get("order").copied() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`order` is `asc` or `desc`, not `{other}`"
            )));
        }
    };
    let limit = params
        .get("limit")
        .map(|n| {
            n.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!("`limit` is a number of rows, not `{n}`"))
            })
        })
        .transpose()?;
    Ok(Selection {
        sort: field("sort")?,
        field: field("field")?,
        measurement,
        window,
        filters,
        descending,
        limit,
    })
}

/// A row as the sink thread holds it, copied out from under its lock.
struct Held {
    dimension: Dimension,
    window: Option<u64>,
    totals: Totals,
}

/// The rows of one measurement, with the timestamp they are at, read under the locks the sink
/// thread writes under (the live table, then the recent windows), so that they are consistent.
fn read_rows(
    status: &Status,
    measurement: &Measurement,
    window: Window,
) -> (Option<Tick>, Vec<Held>) {
    let table = lock(&status.table);
    let recent = lock(&status.observed.recent);
    let rows = match window {
        Window::All => table
            .iter()
            .filter_map(|(key, value)| match (key, value) {
                (OutputKey::Aggregate(key), OutputValue::Totals(totals))
                    if key.window.is_none() && measurement.holds(&key.dimension) =>
                {
                    Some(Held {
                        dimension: key.dimension.clone(),
                        window: None,
                        totals: *totals,
                    })
                }
                _ => None,
            })
            .collect(),
        Window::Latest | Window::Start(_) => {
            let start = match window {
                Window::Start(start) => Some(start),
                _ => recent
                    .windows
                    .iter()
                    .rev()
                    .find(|(_, rows)| rows.keys().any(|d| measurement.holds(d)))
                    .map(|(start, _)| *start),
            };
            start
                .and_then(|start| recent.windows.get(&start).map(|rows| (start, rows)))
                .map(|(start, rows)| {
                    rows.iter()
                        .filter(|(d, _)| measurement.holds(d))
                        .map(|(d, totals)| Held {
                            dimension: d.clone(),
                            window: Some(start),
                            totals: *totals,
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
    };
    (recent.time, rows)
}

/// `GET /api/rows`: one measurement's rows, all-time or of a window, filtered by tags, sorted
/// and cut.
pub async fn rows(State(state): State<AppState>, query: Pairs) -> Result<Json<Value>, ApiError> {
    let selection = select(query, &["measurement", "window", "sort", "order", "limit"])?;
    let (time, raw) = read_rows(&state.status, &selection.measurement, selection.window);
    let mut rows: Vec<Row> = raw
        .iter()
        .map(|held| Row::new(&held.dimension, held.window, Some(&held.totals)))
        .filter(|row| row.matches(&selection.filters))
        .collect();
    // Ties, and no sort at all, in tag order: the same request gives the same rows.
    rows.sort_by(|a, b| a.tags.cmp(&b.tags));
    if let Some(field) = selection.sort {
        let key = |row: &Row| row.fields.map_or(0.0, |f| f.sort_key(field));
        rows.sort_by(|a, b| {
            let ordering = key(a).total_cmp(&key(b));
            if selection.descending {
                ordering.reverse()
            } else {
                ordering
            }
        });
    }
    if let Some(limit) = selection.limit {
        rows.truncate(limit);
    }
    Ok(Json(json!({ "time": time, "rows": rows })))
}

/// `GET /api/windows`: one field of one measurement over the recent windows, a series per tag
/// set.
pub async fn windows(State(state): State<AppState>, query: Pairs) -> Result<Json<Value>, ApiError> {
    let selection = select(query, &["measurement", "field"])?;
    let field = selection.field.ok_or_else(|| {
        ApiError::bad_request(format!("`field` is required; one of {}", FIELDS.join(", ")))
    })?;
    let (time, windows) = {
        let recent = lock(&state.status.observed.recent);
        let windows: Vec<(u64, Vec<(Dimension, Totals)>)> = recent
            .windows
            .iter()
            .map(|(start, rows)| {
                let rows = rows
                    .iter()
                    .filter(|(d, _)| selection.measurement.holds(d))
                    .map(|(d, t)| (d.clone(), *t))
                    .collect();
                (*start, rows)
            })
            .collect();
        (recent.time, windows)
    };
    let mut series: BTreeMap<BTreeMap<&'static str, String>, Vec<Value>> = BTreeMap::new();
    for (start, rows) in windows {
        for (dimension, totals) in rows {
            let row = Row::new(&dimension, Some(start), Some(&totals));
            if !row.matches(&selection.filters) {
                continue;
            }
            let value = row.fields.and_then(|f| f.get(field)).unwrap_or(Value::Null);
            series
                .entry(row.tags)
                .or_default()
                .push(json!([start, value]));
        }
    }
    let series: Vec<Value> = series
        .into_iter()
        .map(|(tags, points)| json!({ "tags": tags, "points": points }))
        .collect();
    Ok(Json(json!({ "time": time, "series": series })))
}

/// The runtime figures as the `runtime` measurement names them, with the sink's totals.
fn runtime_json(runtime: Option<&RuntimeMetrics>, lines: u64, bytes: u64) -> Value {
    let r = runtime.copied().unwrap_or_default();
    json!({
        "consumer_lag": r.consumer_lag,
        "freshness_ms": r.freshness_ms,
        "sink_retries": r.sink_retries,
        "sink_rejected_lines": r.sink_rejected_lines,
        "events_per_second": r.events_per_second,
        "lines_written": lines,
        "bytes_written": bytes,
    })
}

/// This process: the version, its place in the cluster, what it has done.
fn process_json(status: &Status) -> Value {
    let begun = status.observed.begun();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "process": begun.map(|b| b.process),
        "processes": begun.map(|b| b.processes),
        "workers": begun.map(|b| b.workers),
        "started_ms": begun.map(|b| b.started_ms),
        "events": status.generated.load(Ordering::Relaxed),
        "batches": status.batches.load(Ordering::Relaxed),
    })
}

fn counters_json(counters: &[(&'static str, i64)]) -> Value {
    Value::Object(
        counters
            .iter()
            .map(|(name, n)| ((*name).to_owned(), json!(n)))
            .collect(),
    )
}

/// `GET /api/pipeline`: the counters, the runtime figures and the process.
pub async fn pipeline(State(state): State<AppState>) -> Json<Value> {
    let status = &state.status;
    let (time, counters, runtime, lines, bytes) = {
        let table = lock(&status.table);
        let recent = lock(&status.observed.recent);
        (
            recent.time,
            counters(&table),
            recent.runtime,
            recent.lines,
            recent.bytes,
        )
    };
    Json(json!({
        "time": time,
        "counters": counters_json(&counters),
        "runtime": runtime_json(runtime.as_ref(), lines, bytes),
        "process": process_json(status),
    }))
}

/// A tick's JSON, encoded once for every client.
fn tick_json<'a>(message: &'a TickMessage, status: &Status) -> &'a str {
    message.json.get_or_init(|| {
        let changes: Vec<Row> = message
            .changes
            .iter()
            .filter_map(|change| match (&change.key, change.value) {
                (OutputKey::Aggregate(key), value) => {
                    let totals = match value {
                        Some(OutputValue::Totals(totals)) => Some(totals),
                        _ => None,
                    };
                    Some(Row::new(
                        &key.dimension,
                        key.window.map(|w| w.0),
                        totals.as_ref(),
                    ))
                }
                (OutputKey::Counter(_), _) => None,
            })
            .collect();
        let (lines, bytes) = {
            let recent = lock(&status.observed.recent);
            (recent.lines, recent.bytes)
        };
        json!({
            "time": message.time,
            "changes": changes,
            "pipeline": {
                "counters": counters_json(&message.counters),
                "runtime": runtime_json(message.runtime.as_ref(), lines, bytes),
                "process": process_json(status),
            },
        })
        .to_string()
    })
}

/// `GET /api/stream`: Server-Sent Events, a `tick` per completed timestamp that changed
/// something; a client that falls more than
/// [`STREAM_BUFFER_TICKS`](super::observed::STREAM_BUFFER_TICKS) behind gets a `reset` (refetch
/// the rows) and goes on from the newest.
pub async fn stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.status.observed.subscribe();
    let status = Arc::clone(&state.status);
    let events =
        futures_util::stream::unfold((receiver, status), |(mut receiver, status)| async move {
            let event = match receiver.recv().await {
                Ok(message) => Event::default()
                    .event("tick")
                    .data(tick_json(&message, &status)),
                Err(RecvError::Lagged(skipped)) => Event::default()
                    .event("reset")
                    .data(json!({ "skipped": skipped }).to_string()),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), (receiver, status)))
        });
    Sse::new(events).keep_alive(KeepAlive::default())
}
