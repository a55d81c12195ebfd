//! InfluxDB read back: InfluxQL over HTTP, and its contents as the rows and counters a run wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dataflows::model::Counter;
use serde_json::Value;
use shopflow::sinks::line_protocol::{Encoder, escape_tag_value};

/// The windows of the runs read by [`state`] (the fault tests' and the campaign's): 10 s.
pub const WINDOW_MS: u64 = 10_000;

/// Sends one InfluxQL statement on `database` (if any), times in epoch milliseconds: `GET` for
/// reads (`SELECT`, `SHOW`), `POST` for the rest, as InfluxDB 1.x asks. The status and the body,
/// or why there is no answer.
fn send(url: &str, database: Option<&str>, q: &str) -> Result<(u16, String), String> {
    let mut params = vec![("q", q), ("epoch", "ms")];
    if let Some(database) = database {
        params.push(("db", database));
    }
    let url = reqwest::Url::parse_with_params(&format!("{url}/query"), &params)
        .map_err(|e| e.to_string())?;
    let client = reqwest::blocking::Client::new();
    let read = q.starts_with("SELECT") || q.starts_with("SHOW");
    let request = if read {
        client.get(url)
    } else {
        client.post(url)
    };
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.text().map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// The JSON answer to an InfluxQL statement on `database`; `None` while InfluxDB does not answer
/// (or answers with something other than JSON).
pub fn query(url: &str, database: &str, q: &str) -> Option<Value> {
    let (_, body) = send(url, Some(database), q).ok()?;
    serde_json::from_str(&body).ok()
}

/// The JSON answer to an InfluxQL statement on `database`, whatever its status; fails the test
/// if InfluxDB does not answer with JSON.
pub fn answer(url: &str, database: &str, q: &str) -> Value {
    let (_, body) = send(url, Some(database), q).expect("InfluxDB answers");
    serde_json::from_str(&body).expect("JSON")
}

/// The JSON answer to an InfluxQL statement that must succeed: fails the test on any error, of
/// the request or of the statement.
pub fn checked(url: &str, database: Option<&str>, q: &str) -> Value {
    let (status, text) = send(url, database, q).expect("InfluxDB answers");
    assert!((200..300).contains(&status), "{q}: {status} {text}");
    let value: Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        value["results"][0].get("error").is_none(),
        "{q}: {}",
        value["results"][0]["error"]
    );
    value
}

/// Writes line protocol with millisecond timestamps; fails the test unless InfluxDB takes it.
pub fn write(url: &str, database: &str, lines: &str) {
    let url = reqwest::Url::parse_with_params(
        &format!("{url}/write"),
        &[("db", database), ("precision", "ms")],
    )
    .expect("a URL");
    let response = reqwest::blocking::Client::new()
        .post(url)
        .body(lines.to_owned())
        .send()
        .expect("InfluxDB answers");
    assert!(response.status().is_success(), "{:?}", response.text());
}

/// What InfluxDB holds, or should: every non-zero aggregate row (`measurement,tags,window=…`, and
/// ` @start` for windows) with its clicks, purchases, units and cents, and the counters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The aggregate rows by key: `[clicks, purchases, units, revenue_cents]`.
    pub rows: BTreeMap<String, [i64; 4]>,
    /// The counters by name, those at 0 left out.
    pub counters: BTreeMap<String, i64>,
}

impl State {
    /// The counters with the two refund counters summed: whether a refund met its purchase
    /// already counted depends on which tick each arrived in, the sum and every aggregate do not.
    pub fn counters_with_refunds_summed(&self) -> BTreeMap<String, i64> {
        let mut counters = self.counters.clone();
        let refunds = counters.remove("refunds_applied").unwrap_or(0)
            + counters.remove("refunds_unmatched").unwrap_or(0);
        if refunds != 0 {
            counters.insert("refunds".into(), refunds);
        }
        counters
    }

    /// A counter's value (0 when absent).
    pub fn counter(&self, counter: Counter) -> i64 {
        self.counters.get(counter.name()).copied().unwrap_or(0)
    }

    /// The rows that differ from `want`, described, at most `limit`.
    pub fn differences(&self, want: &State, limit: usize) -> Vec<String> {
        let keys: BTreeSet<&String> = self.rows.keys().chain(want.rows.keys()).collect();
        let mut differing: Vec<String> = keys
            .into_iter()
            .filter(|k| self.rows.get(*k) != want.rows.get(*k))
            .map(|k| {
                format!(
                    "{k}: influx {:?}, oracle {:?}",
                    self.rows.get(k),
                    want.rows.get(k)
                )
            })
            .collect();
        let (got, expected) = (
            self.counters_with_refunds_summed(),
            want.counters_with_refunds_summed(),
        );
        if got != expected {
            differing.push(format!("counters: influx {got:?}, oracle {expected:?}"));
        }
        differing.truncate(limit);
        differing
    }

    /// Equal rows, and equal counters with the refund counters summed.
    pub fn matches(&self, want: &State) -> bool {
        self.rows == want.rows
            && self.counters_with_refunds_summed() == want.counters_with_refunds_summed()
    }
}

/// The aggregate measurements the pipeline writes.
pub const MEASUREMENTS: [&str; 6] = [
    "campaign",
    "age_gender",
    "state",
    "country",
    "campaign_country",
    "campaign_age_gender",
];

/// A row's key from its measurement, tags (raw values) and window.
pub fn row_key<'a>(
    measurement: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    window: Option<(&str, u64)>,
) -> String {
    let mut key = measurement.to_owned();
    for (name, value) in tags {
        key.push(',');
        key.push_str(name);
        key.push('=');
        escape_tag_value(value, &mut key);
    }
    match window {
        Some((label, start)) => key.push_str(&format!(",window={label} @{start}")),
        None => key.push_str(",window=all"),
    }
    key
}

/// InfluxDB's contents for windows of [`WINDOW_MS`]: the last point of each all-time series,
/// every window point, the newest value of each counter. `None` while InfluxDB does not answer.
pub fn state(url: &str, database: &str) -> Option<State> {
    let label = Encoder::new(WINDOW_MS).window_label().to_owned();
    let mut state = State::default();
    for measurement in MEASUREMENTS {
        for windowed in [false, true] {
            let q = if windowed {
                format!(
                    "SELECT clicks, purchases, units, revenue_cents FROM \"{measurement}\" \
                     WHERE \"window\" = '{label}' GROUP BY *"
                )
            } else {
                format!(
                    "SELECT last(clicks), last(purchases), last(units), last(revenue_cents) \
                     FROM \"{measurement}\" WHERE \"window\" = 'all' GROUP BY *"
                )
            };
            let answer = query(url, database, &q)?;
            let result = &answer["results"][0];
            if result.get("error").is_some() {
                return None;
            }
            let Some(series) = result["series"].as_array() else {
                continue;
            };
            for s in series {
                let tags: Vec<(&str, &str)> = s["tags"]
                    .as_object()?
                    .iter()
                    .filter(|(name, _)| *name != "window")
                    .map(|(name, value)| (name.as_str(), value.as_str().unwrap_or("")))
                    .collect();
                for point in s["values"].as_array()? {
                    let point = point.as_array()?;
                    let mut values = [0i64; 4];
                    for (value, field) in values.iter_mut().zip(&point[1..]) {
                        *value = field.as_i64()?;
                    }
                    if values == [0; 4] {
                        continue;
                    }
                    let window = windowed.then(|| (label.as_str(), point[0].as_u64().unwrap_or(0)));
                    state
                        .rows
                        .insert(row_key(measurement, tags.iter().copied(), window), values);
                }
            }
        }
    }
    let answer = query(url, database, "SELECT last(*) FROM pipeline")?;
    if let Some(series) = answer["results"][0]["series"].as_array() {
        for s in series {
            let columns = s["columns"].as_array()?;
            let values = s["values"][0].as_array()?;
            for (column, value) in columns.iter().zip(values).skip(1) {
                if let (Some(name), Some(n)) = (column.as_str(), value.as_i64()) {
                    let name = name.strip_prefix("last_").unwrap_or(name);
                    if n != 0 {
                        state.counters.insert(name.to_owned(), n);
                    }
                }
            }
        }
    }
    Some(state)
}
