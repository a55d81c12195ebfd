//! The InfluxDB sink: against a real InfluxDB 1.x (`SHOPFLOW_TEST_INFLUX_URL`, ignored unless
//! `scripts/test-all` runs them), and against a tiny hand-written HTTP responder where attempts,
//! requests and timing must be counted exactly (those run always).
//!
//! By what they test: points written and read back on the real server (`server`), retries,
//! splitting, queueing and acknowledgements against the responder (`responder`), hostile tag
//! values (`tags`), lines InfluxDB refuses (`refused`), and the start's check (`start`).

mod refused;
mod responder;
mod server;
mod start;
mod tags;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::model::{
    AgeBand, AggregateKey, CampaignId, Cents, Counter, Dimension, EventTimeMs, Gender, OutputKey,
    OutputValue, Totals,
};
use dataflows::output::{Batch, Change};
use proptest::prelude::*;
use serde_json::{Value, json};
use shopflow::sinks::influx::service::quote_identifier;
use shopflow::sinks::influx::{
    Api, InfluxClient, InfluxConfig, InfluxSink, MAX_IN_FLIGHT, Secret, SetupError, WriteError,
};
use shopflow::sinks::line_protocol::Encoder;
use shopflow::sinks::{Sink, SinkError};

use crate::support;

/// A completed timestamp, and the start of a 60 s window before it.
const T: u64 = 1_700_000_000_000;
const W: u64 = 1_699_999_980_000;
const WINDOW_MS: u64 = 60_000;

// ---------------------------------------------------------------------------------------------
// Helpers

fn config(url: &str, database: &str) -> InfluxConfig {
    InfluxConfig {
        url: url.into(),
        api: Api::V1,
        database: database.into(),
        retention_policy: None,
        org: None,
        username: None,
        password: None,
        password_file: None,
        token: None,
        token_file: None,
        batch_lines: 5_000,
        gzip: false,
        timeout_ms: 5_000,
        max_retries: 2,
        initial_backoff_ms: 1,
        max_backoff_ms: 5,
        create_database: false,
        rejects_file: std::path::PathBuf::new(),
    }
}

fn aggregate(dimension: Dimension, window: Option<u64>, totals: Option<Totals>) -> Change {
    Change {
        key: OutputKey::Aggregate(AggregateKey {
            dimension,
            window: window.map(EventTimeMs),
        }),
        value: totals.map(OutputValue::Totals),
    }
}

fn counter(counter: Counter, n: i64) -> Change {
    Change {
        key: OutputKey::Counter(counter),
        value: Some(OutputValue::Count(n)),
    }
}

fn batch(time: u64, mut changes: Vec<Change>) -> Batch {
    changes.sort();
    Batch { time, changes }
}

fn totals(clicks: i64, purchases: i64, units: i64, revenue_cents: i64) -> Totals {
    Totals {
        clicks,
        purchases,
        units: units.into(),
        revenue_cents: revenue_cents.into(),
    }
}

/// `n` all-time campaign rows (campaigns `first ..`, clicks = campaign + 1) at `time`.
fn campaigns(time: u64, first: u32, n: u32) -> Batch {
    batch(
        time,
        (first..first + n)
            .map(|c| {
                let clicks = i64::from(c) + 1;
                aggregate(
                    Dimension::Campaign(CampaignId(c)),
                    None,
                    Some(totals(clicks, 0, 0, 0)),
                )
            })
            .collect(),
    )
}

fn encode(batch: &Batch) -> String {
    let mut out = String::new();
    Encoder::new(WINDOW_MS).encode(batch, &mut out);
    out
}

/// The [`WriteError`] inside a sink error (today wrapped in `SinkError::Io`).
fn write_error(error: &SinkError) -> WriteError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<WriteError>() {
            return found.clone();
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<WriteError>())
        {
            return found.clone();
        }
        cause = e.source();
    }
    panic!("no WriteError in {error:?}");
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// A real InfluxDB 1.x

fn influx_url() -> String {
    std::env::var("SHOPFLOW_TEST_INFLUX_URL").expect(
        "set SHOPFLOW_TEST_INFLUX_URL (e.g. http://127.0.0.1:8086) to run the InfluxDB tests",
    )
}

/// Runs InfluxQL; `GET` for reads, `POST` for the rest. Panics on any error.
fn influxql(db: Option<&str>, q: &str) -> Value {
    support::influx::checked(&influx_url(), db, q)
}

/// Every row of a query's result, as column → value, all series together.
fn rows(db: &str, q: &str) -> Vec<BTreeMap<String, Value>> {
    let result = influxql(Some(db), q);
    let mut out = Vec::new();
    for series in result["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let columns: Vec<&str> = series["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for values in series["values"].as_array().unwrap() {
            let row = columns
                .iter()
                .zip(values.as_array().unwrap())
                .map(|(c, v)| ((*c).to_owned(), v.clone()))
                .collect();
            out.push(row);
        }
    }
    out
}

fn row(value: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(value).unwrap()
}

/// The first column of every row (`SHOW` results).
fn names(db: &str, q: &str) -> Vec<String> {
    rows(db, q)
        .into_iter()
        .map(|r| {
            let (_, v) = r.into_iter().next().unwrap();
            v.as_str().unwrap().to_owned()
        })
        .collect()
}

/// A uniquely named database, dropped at the end of the test.
struct TestDb {
    name: String,
}

impl TestDb {
    /// A name only, not created.
    fn named(tag: &str) -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TestDb {
            name: format!(
                "shopflow_test_{tag}_{}_{}_{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    fn created(tag: &str) -> TestDb {
        let db = TestDb::named(tag);
        influxql(
            None,
            &format!("CREATE DATABASE {}", quote_identifier(&db.name)),
        );
        db
    }

    fn sink(&self, configure: impl FnOnce(&mut InfluxConfig)) -> InfluxSink {
        let mut config = config(&influx_url(), &self.name);
        configure(&mut config);
        InfluxSink::start(&config, WINDOW_MS).expect("sink starts")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            influxql(
                None,
                &format!("DROP DATABASE {}", quote_identifier(&self.name)),
            )
        });
    }
}

fn write_all(sink: &mut InfluxSink, batches: &[&Batch]) {
    for batch in batches {
        sink.write_batch(batch).expect("queued");
    }
}
