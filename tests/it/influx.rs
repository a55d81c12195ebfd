//! The InfluxDB sink: against a real InfluxDB 1.x (`SHOPFLOW_TEST_INFLUX_URL`, ignored unless
//! `scripts/test-all` runs them), and against a tiny hand-written HTTP responder where attempts,
//! requests and timing must be counted exactly (those run always).

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
    let mut url = reqwest::Url::parse(&format!("{}/query", influx_url())).unwrap();
    {
        let mut query = url.query_pairs_mut();
        if let Some(db) = db {
            query.append_pair("db", db);
        }
        query.append_pair("epoch", "ms").append_pair("q", q);
    }
    let client = reqwest::blocking::Client::new();
    let read = q.starts_with("SELECT") || q.starts_with("SHOW");
    let request = if read {
        client.get(url)
    } else {
        client.post(url)
    };
    let response = request.send().expect("InfluxDB answers");
    let status = response.status();
    let text = response.text().unwrap();
    assert!(status.is_success(), "{q}: {status} {text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert!(
        value["results"][0].get("error").is_none(),
        "{q}: {}",
        value["results"][0]["error"]
    );
    value
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

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn batches_read_back_exactly_removals_as_zeros_and_rewrites_are_idempotent() {
    let db = TestDb::created("roundtrip");
    let first = batch(
        T,
        vec![
            aggregate(
                Dimension::Campaign(CampaignId(7)),
                Some(W),
                Some(totals(4, 1, 2, 1_999)),
            ),
            aggregate(
                Dimension::Campaign(CampaignId(7)),
                None,
                Some(totals(10, 3, 5, 12_000)),
            ),
            aggregate(
                Dimension::State(Some(("US".into(), "CA".into()))),
                None,
                Some(Totals::click()),
            ),
            aggregate(
                Dimension::AgeGender(Some((AgeBand::From25To34, Gender::Female))),
                Some(W),
                Some(Totals::purchase(Cents(2_500), 2)),
            ),
            counter(Counter::EventsIn, 100),
            counter(Counter::Duplicates, 1),
        ],
    );
    let second = batch(
        T + 1_000,
        vec![
            // Removals: the window's point is overwritten, the all-time series gets a zero point.
            aggregate(Dimension::Campaign(CampaignId(7)), Some(W), None),
            aggregate(
                Dimension::State(Some(("US".into(), "CA".into()))),
                None,
                None,
            ),
            counter(Counter::EventsIn, 150),
        ],
    );

    let mut sink = db.sink(|_| {});
    write_all(&mut sink, &[&first]);
    wait_for("the first batch", || sink.written() == 5);
    assert_eq!(
        rows(&db.name, "SELECT * FROM campaign"),
        [
            row(
                json!({"time": W, "campaign": "7", "window": "60s", "clicks": 4, "purchases": 1,
                       "units": 2, "revenue_cents": 1999, "conversion": 0.25})
            ),
            row(
                json!({"time": T, "campaign": "7", "window": "all", "clicks": 10, "purchases": 3,
                       "units": 5, "revenue_cents": 12000, "conversion": 0.3})
            ),
        ]
    );

    write_all(&mut sink, &[&second]);
    sink.finish().expect("written");
    assert_eq!(sink.written(), 8);
    let snapshot = sink.stats().snapshot();
    assert_eq!(
        (
            snapshot.lines_written,
            snapshot.retries,
            snapshot.failed,
            snapshot.in_flight
        ),
        (8, 0, 0, 0)
    );
    assert_eq!(snapshot.requests, snapshot.attempts);

    let zeros = |time: u64, tags: Value| {
        let mut r = row(
            json!({"time": time, "clicks": 0, "purchases": 0, "units": 0,
                               "revenue_cents": 0, "conversion": 0}),
        );
        r.extend(row(tags));
        r
    };
    let expected_campaign = vec![
        zeros(W, json!({"campaign": "7", "window": "60s"})),
        row(
            json!({"time": T, "campaign": "7", "window": "all", "clicks": 10, "purchases": 3,
                   "units": 5, "revenue_cents": 12000, "conversion": 0.3}),
        ),
    ];
    let expected_state = vec![
        row(
            json!({"time": T, "country": "US", "state": "CA", "window": "all", "clicks": 1,
                   "purchases": 0, "units": 0, "revenue_cents": 0, "conversion": 0}),
        ),
        zeros(
            T + 1_000,
            json!({"country": "US", "state": "CA", "window": "all"}),
        ),
    ];
    let expected_age_gender = vec![row(
        json!({"time": W, "age_band": "25-34", "gender": "F", "window": "60s", "clicks": 0,
               "purchases": 1, "units": 2, "revenue_cents": 2500, "conversion": 0}),
    )];
    let expected_pipeline = vec![
        row(json!({"time": T, "events_in": 100, "duplicates": 1})),
        row(json!({"time": T + 1_000, "events_in": 150, "duplicates": null})),
    ];
    let check = || {
        assert_eq!(
            names(&db.name, "SHOW MEASUREMENTS"),
            ["age_gender", "campaign", "pipeline", "state"]
        );
        assert_eq!(rows(&db.name, "SELECT * FROM campaign"), expected_campaign);
        assert_eq!(rows(&db.name, "SELECT * FROM state"), expected_state);
        assert_eq!(
            rows(&db.name, "SELECT * FROM age_gender"),
            expected_age_gender
        );
        assert_eq!(rows(&db.name, "SELECT * FROM pipeline"), expected_pipeline);
        assert_eq!(
            rows(&db.name, "SELECT COUNT(*) FROM /.*/")
                .iter()
                .map(|r| ["count_clicks", "count_events_in"]
                    .iter()
                    .find_map(|k| r.get(*k).and_then(Value::as_u64)))
                .collect::<Vec<_>>(),
            [Some(1), Some(2), Some(2), Some(2)]
        );
    };
    check();

    // Replaying both batches (a retried request, a restarted run) changes nothing.
    let mut again = db.sink(|_| {});
    write_all(&mut again, &[&first, &second]);
    again.finish().expect("written");
    assert_eq!(again.written(), 8);
    check();
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn a_batch_of_more_than_5000_lines_is_split_and_all_arrive() {
    let db = TestDb::created("split");
    let big = campaigns(T, 0, 12_345);
    let mut sink = db.sink(|_| {});
    sink.write_batch(&big).expect("queued");
    sink.finish().expect("written");
    let stats = sink.stats().snapshot();
    assert_eq!(stats.requests, 3, "5000 + 5000 + 2345: {stats:?}");
    assert_eq!(stats.attempts, 3);
    assert_eq!(stats.lines_written, 12_345);
    assert_eq!(sink.written(), 12_345);
    assert_eq!(
        rows(
            &db.name,
            "SELECT COUNT(clicks), SUM(clicks), MAX(clicks) FROM campaign"
        ),
        [row(
            json!({"time": 0, "count": 12_345, "sum": 12_345 * 12_346 / 2, "max": 12_345})
        )]
    );
    assert_eq!(
        rows(&db.name, "SHOW SERIES EXACT CARDINALITY"),
        [row(json!({"count": 12_345}))]
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn gzip_bodies_are_accepted() {
    let db = TestDb::created("gzip");
    let mut sink = db.sink(|c| {
        c.gzip = true;
        c.batch_lines = 1_000;
    });
    let big = campaigns(T, 0, 2_500);
    let small = batch(T + 1_000, vec![counter(Counter::RefundsApplied, 7)]);
    write_all(&mut sink, &[&big, &small]);
    sink.finish().expect("written");
    assert_eq!(sink.written(), 2_501);
    assert_eq!(
        rows(&db.name, "SELECT COUNT(clicks), SUM(clicks) FROM campaign"),
        [row(
            json!({"time": 0, "count": 2_500, "sum": 2_500 * 2_501 / 2})
        )]
    );
    assert_eq!(
        rows(&db.name, "SELECT * FROM pipeline"),
        [row(json!({"time": T + 1_000, "refunds_applied": 7}))]
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn hostile_tag_values_stay_one_point_with_their_tags() {
    let db = TestDb::created("hostile");
    // Ending in a backslash too: InfluxDB 1.x rejects a tag value ending in `\\` however it is
    // escaped, so the encoder writes backslashes as the look-alike U+FF3C.
    let state = "CA,evil=1 x=2 clicks=999i \"q\"\nhack y=1 back\\ slash\\";
    let hostile = batch(
        T,
        vec![aggregate(
            Dimension::State(Some(("U S".into(), state.into()))),
            None,
            Some(totals(3, 1, 1, 500)),
        )],
    );
    let mut sink = db.sink(|_| {});
    sink.write_batch(&hostile).unwrap();
    sink.finish().expect("written");
    assert_eq!(sink.written(), 1);

    assert_eq!(names(&db.name, "SHOW MEASUREMENTS"), ["state"]);
    assert_eq!(
        names(&db.name, "SHOW TAG KEYS FROM state"),
        ["country", "state", "window"]
    );
    assert_eq!(
        names(&db.name, "SHOW FIELD KEYS FROM state"),
        [
            "clicks",
            "conversion",
            "purchases",
            "revenue_cents",
            "units"
        ]
    );
    assert_eq!(rows(&db.name, "SHOW SERIES").len(), 1);
    // Line protocol has no line-break escape: the encoder writes `\n` as the two characters `\n`
    // and a backslash as `＼`; commas, equals signs, spaces and quotes arrive as themselves.
    let read_back = state.replace('\\', "\u{FF3C}").replace('\n', "\\n");
    assert_eq!(
        read_back,
        "CA,evil=1 x=2 clicks=999i \"q\"\\nhack y=1 back\u{FF3C} slash\u{FF3C}"
    );
    assert_eq!(
        rows(&db.name, "SELECT * FROM state"),
        [row(
            json!({"time": T, "country": "U S", "state": read_back, "window": "all",
                   "clicks": 3, "purchases": 1, "units": 1, "revenue_cents": 500,
                   "conversion": 1.0 / 3.0})
        )]
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn a_4xx_for_the_whole_request_is_fatal_at_once_and_carries_influxdbs_message() {
    // Writing to a database that does not exist.
    let missing = TestDb::named("missing");
    let mut sink = missing.sink(|_| {});
    let stats = sink.stats();
    sink.write_batch(&campaigns(T, 0, 3)).expect("queued");
    wait_for("the failure", || stats.snapshot().failed == 1);
    let expected = format!("database not found: \"{}\"", missing.name);
    let error = sink.write_batch(&campaigns(T + 1_000, 0, 3)).unwrap_err();
    assert_eq!(
        write_error(&error),
        WriteError::Rejected {
            status: 404,
            message: expected.clone()
        }
    );
    assert!(error.to_string().contains(&expected), "{error}");
    let error = sink.finish().unwrap_err();
    assert!(error.to_string().contains(&expected), "{error}");
    let stats = stats.snapshot();
    assert_eq!(
        (
            stats.attempts,
            stats.retries,
            stats.failed,
            stats.requests,
            stats.lines_written
        ),
        (1, 0, 1, 0, 0)
    );
    assert_eq!(sink.written(), 0);

    // The client itself says which InfluxDB it is.
    let db = TestDb::created("version");
    let client = InfluxClient::new(&config(&influx_url(), &db.name)).unwrap();
    let version = client.ping().expect("pong").expect("a version header");
    assert!(version.starts_with('1'), "{version}");
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn create_database_quotes_a_hostile_name() {
    let canary = TestDb::created("canary");
    let hostile = TestDb {
        // InfluxDB refuses `/` and `\` in database names; a quote must not end the identifier.
        name: format!(
            "{}\"; DROP DATABASE \"{}",
            TestDb::named("x").name,
            canary.name
        ),
    };
    let mut sink = hostile.sink(|c| c.create_database = true);
    sink.write_batch(&campaigns(T, 0, 2)).unwrap();
    sink.finish().expect("written");
    let databases = names(&canary.name, "SHOW DATABASES");
    assert!(databases.contains(&hostile.name), "{databases:?}");
    assert!(databases.contains(&canary.name), "{databases:?}");
    assert_eq!(rows(&hostile.name, "SELECT * FROM campaign").len(), 2);
    // Creating it again is a no-op.
    let mut again = hostile.sink(|c| c.create_database = true);
    again.finish().unwrap();
}

// ---------------------------------------------------------------------------------------------
// A hand-written responder, to count attempts and control timing exactly

/// One request as the responder saw it.
#[derive(Clone, Debug)]
struct Seen {
    /// `POST /write?db=shop&precision=ms`
    target: String,
    /// Lower-cased names.
    headers: BTreeMap<String, String>,
    /// The body as sent (compressed, if it was).
    body: Vec<u8>,
}

impl Seen {
    fn text(&self) -> String {
        if self.headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&self.body[..])
                .read_to_string(&mut out)
                .unwrap();
            out
        } else {
            String::from_utf8(self.body.clone()).unwrap()
        }
    }
}

/// The answer to request number `n` (0-based) with this body: status, JSON body, delay before
/// answering.
type Script = dyn Fn(usize, &[u8]) -> (u16, &'static str, Duration) + Send + Sync;

struct Responder {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    busy: Arc<AtomicUsize>,
    most_busy: Arc<AtomicUsize>,
}

impl Responder {
    /// Listens on a free local port; every connection gets a thread, requests are numbered in the
    /// order they arrive.
    fn start(
        script: impl Fn(usize) -> (u16, &'static str, Duration) + Send + Sync + 'static,
    ) -> Self {
        Self::answering(move |n, _| script(n))
    }

    /// [`Responder::start`] with answers that depend on the request's body too.
    fn answering(
        script: impl Fn(usize, &[u8]) -> (u16, &'static str, Duration) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script: Arc<Script> = Arc::new(script);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(AtomicUsize::new(0));
        let most_busy = Arc::new(AtomicUsize::new(0));
        let state = (seen.clone(), busy.clone(), most_busy.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (script, (seen, busy, most_busy)) = (script.clone(), state.clone());
                std::thread::spawn(move || serve(stream, &*script, &seen, &busy, &most_busy));
            }
        });
        Responder {
            url,
            seen,
            busy,
            most_busy,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn serve(
    stream: TcpStream,
    script: &Script,
    seen: &Mutex<Vec<Seen>>,
    busy: &AtomicUsize,
    most_busy: &AtomicUsize,
) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.trim_end().trim_end_matches(" HTTP/1.1").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        }
        let length = headers
            .get("content-length")
            .map_or(0, |l| l.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
        most_busy.fetch_max(now, Ordering::SeqCst);
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                target,
                headers,
                body: body.clone(),
            });
            seen.len() - 1
        };
        let (status, answer, delay) = script(n, &body);
        std::thread::sleep(delay);
        busy.fetch_sub(1, Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn ok() -> (u16, &'static str, Duration) {
    (204, "", Duration::ZERO)
}

#[test]
fn a_closed_port_fails_after_exactly_three_attempts() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut sink = InfluxSink::start(&config(&url, "shop"), WINDOW_MS).unwrap();
    let stats = sink.stats();
    sink.write_batch(&campaigns(T, 0, 2)).expect("queued");
    let error = sink.finish().unwrap_err();
    match write_error(&error) {
        WriteError::RetriesExhausted { attempts: 3, last } => {
            assert!(matches!(*last, WriteError::Connect(_)), "{last:?}")
        }
        other => panic!("expected 3 attempts ending in a connection error, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains("gave up after 3 attempts: cannot connect"),
        "{error}"
    );
    let stats = stats.snapshot();
    assert_eq!(
        (
            stats.attempts,
            stats.retries,
            stats.failed,
            stats.requests,
            stats.lines_written,
            stats.in_flight
        ),
        (3, 2, 1, 0, 0, 0)
    );
    // The error stays: the next batch gets it too, and so does a second finish.
    let again = sink.write_batch(&campaigns(T + 1_000, 0, 2)).unwrap_err();
    assert!(matches!(
        write_error(&again),
        WriteError::RetriesExhausted { attempts: 3, .. }
    ));
    assert!(sink.finish().is_err());

    // create-database retries the same way, then fails the start.
    let creating = InfluxConfig {
        create_database: true,
        ..config(&url, "shop")
    };
    match InfluxSink::start(&creating, WINDOW_MS).unwrap_err() {
        SetupError::CreateDatabase { database, source } => {
            assert_eq!(database, "shop");
            assert!(matches!(
                source,
                WriteError::RetriesExhausted { attempts: 3, .. }
            ));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_answering_503_twice_gets_the_write_on_the_third_attempt() {
    let server = Responder::start(|n| match n {
        0 | 1 => (503, r#"{"error":"timeout"}"#, Duration::ZERO),
        _ => ok(),
    });
    let mut sink = InfluxSink::start(&config(&server.url, "shop"), WINDOW_MS).unwrap();
    let lines = campaigns(T, 0, 3);
    sink.write_batch(&lines).unwrap();
    sink.finish().expect("written on the third attempt");
    let stats = sink.stats().snapshot();
    assert_eq!(
        (
            stats.attempts,
            stats.retries,
            stats.requests,
            stats.failed,
            stats.lines_written
        ),
        (3, 2, 1, 0, 3)
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.target, "POST /write?db=shop&precision=ms");
        assert_eq!(request.text(), encode(&lines));
        assert!(!request.headers.contains_key("authorization"));
    }

    // With retries off, the 503's message is the error.
    let server = Responder::start(|_| (503, r#"{"error":"engine overloaded"}"#, Duration::ZERO));
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            max_retries: 0,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    sink.write_batch(&lines).unwrap();
    let error = write_error(&sink.finish().unwrap_err());
    assert_eq!(
        error,
        WriteError::RetriesExhausted {
            attempts: 1,
            last: Box::new(WriteError::Unavailable {
                status: 503,
                message: "engine overloaded".into()
            })
        }
    );
}

#[test]
fn a_timeout_is_retried() {
    let server = Responder::start(|n| {
        let delay = if n == 0 {
            Duration::from_millis(1_000)
        } else {
            Duration::ZERO
        };
        (204, "", delay)
    });
    let client = InfluxClient::new(&InfluxConfig {
        timeout_ms: 200,
        ..config(&server.url, "shop")
    })
    .unwrap();
    client.write(b"m x=1i 1\n").expect("the second attempt");
    let stats = client.stats().snapshot();
    assert_eq!(
        (stats.attempts, stats.retries, stats.requests, stats.failed),
        (2, 1, 1, 0)
    );

    let server = Responder::start(|_| (204, "", Duration::from_millis(1_000)));
    let client = InfluxClient::new(&InfluxConfig {
        timeout_ms: 200,
        max_retries: 0,
        ..config(&server.url, "shop")
    })
    .unwrap();
    assert_eq!(
        client.write(b"m x=1i 1\n"),
        Err(WriteError::RetriesExhausted {
            attempts: 1,
            last: Box::new(WriteError::Timeout(200))
        })
    );
}

#[test]
fn a_4xx_for_the_whole_request_is_fatal_not_retried_and_no_line_is_counted_as_refused() {
    // 400 retention policy not found: the request, not a line, is at fault.
    for (status, answer, message) in [
        (
            400,
            r#"{"error":"retention policy not found: nope"}"#,
            "retention policy not found: nope",
        ),
        (
            401,
            r#"{"error":"authorization failed"}"#,
            "authorization failed",
        ),
        (403, r#"{"error":"forbidden"}"#, "forbidden"),
        (
            404,
            r#"{"error":"database not found: \"shop\""}"#,
            "database not found: \"shop\"",
        ),
    ] {
        let server = Responder::start(move |_| (status, answer, Duration::ZERO));
        let client = InfluxClient::new(&config(&server.url, "shop")).unwrap();
        assert_eq!(
            client.write(b"m x=1i 1\nm x=2i 2\n"),
            Err(WriteError::Rejected {
                status,
                message: message.into()
            })
        );
        assert_eq!(server.count(), 1, "{status}: no retry, no halving");
        let stats = client.stats().snapshot();
        assert_eq!(
            (
                stats.attempts,
                stats.retries,
                stats.failed,
                stats.rejected_lines,
                stats.lines_written
            ),
            (1, 0, 1, 0, 0),
            "{status}"
        );
    }
}

#[test]
fn refused_lines_are_found_by_halving_counted_and_appended_to_the_rejects_file() {
    // A server that refuses, like InfluxDB 1.x, any body holding a `bad` line, and writes the rest.
    let server = Responder::answering(|_, body| {
        if String::from_utf8_lossy(body).contains("bad") {
            (
                400,
                r#"{"error":"partial write: field type conflict: input field \"bad\" dropped=1"}"#,
                Duration::ZERO,
            )
        } else {
            ok()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.lp");
    let client = InfluxClient::new(&InfluxConfig {
        rejects_file: rejects.clone(),
        ..config(&server.url, "shop")
    })
    .unwrap();
    let bad = [3usize, 4, 41, 99];
    let body: String = (0..100)
        .map(|i| {
            if bad.contains(&i) {
                format!("m bad=\"{i}\" {i}\n")
            } else {
                format!("m x={i}i {i}\n")
            }
        })
        .collect();
    client
        .write(body.as_bytes())
        .expect("a refused line does not fail the write");
    let stats = client.stats().snapshot();
    assert_eq!(
        (
            stats.requests,
            stats.failed,
            stats.rejected_lines,
            stats.lines_written
        ),
        (1, 0, 4, 96)
    );
    // Every good line was written (again, by halves), in order, after the refused first try.
    let written: Vec<String> = server
        .seen()
        .iter()
        .filter(|seen| !seen.text().contains("bad"))
        .flat_map(|seen| seen.text().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let good: Vec<String> = body
        .lines()
        .filter(|l| !l.contains("bad"))
        .map(str::to_owned)
        .collect();
    assert_eq!(written, good);
    let message = "partial write: field type conflict: input field \"bad\" dropped=1";
    let expected: String = bad
        .iter()
        .map(|i| format!("# HTTP 400: {message}\nm bad=\"{i}\" {i}\n"))
        .collect();
    assert_eq!(std::fs::read_to_string(&rejects).unwrap(), expected);
    // Halving costs requests only around the refused lines.
    assert!(server.count() < 60, "{} requests", server.count());

    // A rejects file that cannot be opened is a configuration error naming its key.
    let error = InfluxClient::new(&InfluxConfig {
        rejects_file: dir.path().join("no/such/dir/rejects.lp"),
        ..config(&server.url, "shop")
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("influx.rejects-file"), "{error}");
}

/// Log output, captured for one thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn refused_lines_are_logged_at_most_once_a_second_with_influxdbs_message_and_no_secret() {
    let server = Responder::answering(|_, body| {
        if String::from_utf8_lossy(body).contains("bad") {
            (
                400,
                r#"{"error":"partial write: unable to parse 'bad': missing fields dropped=0"}"#,
                Duration::ZERO,
            )
        } else {
            ok()
        }
    });
    let client = InfluxClient::new(&InfluxConfig {
        username: Some("shop".into()),
        password: Some(Secret::new("hunter2-secret")),
        ..config(&server.url, "shop")
    })
    .unwrap();
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let started = Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        let body: String = (0..100)
            .map(|i| {
                if i % 5 == 0 {
                    "bad\n".to_owned()
                } else {
                    format!("m x={i}i {i}\n")
                }
            })
            .collect();
        client.write(body.as_bytes()).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the test needs a fast write"
        );
        std::thread::sleep(Duration::from_millis(1_100));
        client.write(b"m x=1i 1\nbad\n").unwrap();
    });
    assert_eq!(client.stats().snapshot().rejected_lines, 21);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("WARN"), "{text}");
    assert!(lines[0].contains("InfluxDB refused a line"), "{text}");
    assert!(
        lines[0].contains("partial write: unable to parse 'bad': missing fields dropped=0"),
        "{text}"
    );
    assert!(
        lines[0].contains("since_last_log=1 sink_rejected_lines=1"),
        "{text}"
    );
    assert!(
        lines[1].contains("since_last_log=20 sink_rejected_lines=21"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_body_too_large_is_split_until_it_fits() {
    // 413 for a body of more than 3 lines.
    let server = Responder::answering(|_, body| {
        if body.iter().filter(|&&b| b == b'\n').count() > 3 {
            (
                413,
                r#"{"error":"Request Entity Too Large"}"#,
                Duration::ZERO,
            )
        } else {
            ok()
        }
    });
    let client = InfluxClient::new(&config(&server.url, "shop")).unwrap();
    let body: String = (0..20).map(|i| format!("m x={i}i {i}\n")).collect();
    client.write(body.as_bytes()).unwrap();
    let written: String = server
        .seen()
        .iter()
        .filter(|seen| seen.text().lines().count() <= 3)
        .map(Seen::text)
        .collect();
    assert_eq!(written, body);
    let stats = client.stats().snapshot();
    assert_eq!(
        (stats.requests, stats.rejected_lines, stats.lines_written),
        (1, 0, 20)
    );
    // One line still too large is refused, counted, and the others are written.
    let server = Responder::answering(|_, body| {
        if body.len() > 1_000 {
            (413, "", Duration::ZERO)
        } else {
            ok()
        }
    });
    let client = InfluxClient::new(&config(&server.url, "shop")).unwrap();
    let huge = format!("m s=\"{}\" 5\n", "x".repeat(2_000));
    let body = format!("m x=1i 1\n{huge}m x=2i 2\n");
    client.write(body.as_bytes()).unwrap();
    let stats = client.stats().snapshot();
    assert_eq!((stats.rejected_lines, stats.lines_written), (1, 2));
}

#[test]
fn requests_carry_the_api_url_credentials_and_encoding() {
    let server = Responder::start(|_| ok());
    let lines = campaigns(T, 0, 5);

    // v1, a path prefix, a retention policy, basic authentication, gzip.
    let v1 = InfluxConfig {
        url: format!("{}/influx/", server.url),
        database: "shop db".into(),
        retention_policy: Some("one week".into()),
        username: Some("shop".into()),
        password: Some(Secret::new("hunter2")),
        gzip: true,
        ..config(&server.url, "shop")
    };
    let mut sink = InfluxSink::start(&v1, WINDOW_MS).unwrap();
    sink.write_batch(&lines).unwrap();
    sink.finish().unwrap();

    // v2: organisation, bucket, token.
    let v2 = InfluxConfig {
        api: Api::V2,
        org: Some("acme".into()),
        token: Some(Secret::new("t0ken")),
        ..config(&server.url, "shop")
    };
    let client = InfluxClient::new(&v2).unwrap();
    assert!(!format!("{client:?}").contains("t0ken"));
    client.write(encode(&lines).as_bytes()).unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].target,
        "POST /influx/write?db=shop+db&rp=one+week&precision=ms"
    );
    assert_eq!(seen[0].headers["authorization"], "Basic c2hvcDpodW50ZXIy");
    assert_eq!(seen[0].headers["content-encoding"], "gzip");
    assert_eq!(seen[0].text(), encode(&lines));
    assert!(seen[0].body.len() < encode(&lines).len());
    assert_eq!(
        seen[1].target,
        "POST /api/v2/write?org=acme&bucket=shop&precision=ms"
    );
    assert_eq!(seen[1].headers["authorization"], "Token t0ken");
    assert!(!seen[1].headers.contains_key("content-encoding"));
    assert_eq!(seen[1].text(), encode(&lines));
}

#[test]
fn a_slow_server_blocks_the_caller_with_a_bounded_queue_and_order_is_kept() {
    const DELAY: Duration = Duration::from_millis(100);
    const BATCHES: u32 = 12;
    let server = Responder::start(|_| (204, "", DELAY));
    // Every batch is exactly one full request, so nothing can be merged.
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            batch_lines: 10,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    let stats = sink.stats();
    let started = Instant::now();
    for i in 0..BATCHES {
        sink.write_batch(&campaigns(T + u64::from(i) * 1_000, i * 10, 10))
            .unwrap();
        let now = stats.snapshot();
        assert!(now.in_flight <= MAX_IN_FLIGHT, "{now:?}");
        // What is not in flight has been answered: the caller cannot run ahead of the server.
        assert!(
            now.requests + MAX_IN_FLIGHT > u64::from(i),
            "batch {i}: {now:?}"
        );
    }
    let queued_in = started.elapsed();
    let must_wait = DELAY * (BATCHES - MAX_IN_FLIGHT as u32 - 1);
    assert!(
        queued_in >= must_wait,
        "{BATCHES} batches queued in {queued_in:?}: the caller must wait for the server"
    );
    sink.finish().unwrap();
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.requests, u64::from(BATCHES));
    assert_eq!(snapshot.lines_written, u64::from(BATCHES) * 10);
    assert!(snapshot.max_in_flight <= MAX_IN_FLIGHT, "{snapshot:?}");
    assert_eq!(server.most_busy.load(Ordering::SeqCst), 1, "one at a time");
    assert_eq!(server.busy.load(Ordering::SeqCst), 0);
    // In time order, each request one whole batch.
    let bodies: Vec<String> = server.seen().iter().map(Seen::text).collect();
    let expected: Vec<String> = (0..BATCHES)
        .map(|i| encode(&campaigns(T + u64::from(i) * 1_000, i * 10, 10)))
        .collect();
    assert_eq!(bodies, expected);
}

#[test]
fn small_batches_queued_behind_a_slow_request_are_merged() {
    let server = Responder::start(|n| {
        (
            204,
            "",
            if n == 0 {
                Duration::from_millis(300)
            } else {
                Duration::ZERO
            },
        )
    });
    let mut sink = InfluxSink::start(&config(&server.url, "shop"), WINDOW_MS).unwrap();
    let batches: Vec<Batch> = (0..4).map(|i| campaigns(T + i * 1_000, 0, 2)).collect();
    sink.write_batch(&batches[0]).unwrap();
    wait_for("the first request", || server.count() == 1);
    for b in &batches[1..] {
        sink.write_batch(b).unwrap();
    }
    sink.finish().unwrap();
    let seen: Vec<String> = server.seen().iter().map(Seen::text).collect();
    assert_eq!(
        seen,
        [
            encode(&batches[0]),
            batches[1..].iter().map(encode).collect::<String>()
        ]
    );
    assert_eq!(sink.stats().snapshot().requests, 2);
    assert_eq!(sink.written(), 8);
}

#[test]
fn dropping_an_unfinished_sink_stops_retrying() {
    let server = Responder::start(|_| (503, "", Duration::ZERO));
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            max_retries: 1_000,
            initial_backoff_ms: 200,
            max_backoff_ms: 200,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    sink.write_batch(&campaigns(T, 0, 1)).unwrap();
    wait_for("a first attempt", || server.count() >= 1);
    let started = Instant::now();
    drop(sink);
    assert!(started.elapsed() < Duration::from_secs(2));
    let attempts = server.count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.count(), attempts, "no attempt after the drop");
}

/// A timestamp is acknowledged only once InfluxDB has answered 2xx for every line of it and of
/// every timestamp before it: not when it is handed to the sink, not while its write is retried,
/// never when the write fails for good.
#[test]
fn a_timestamp_is_acknowledged_only_once_influxdb_has_answered_all_of_it() {
    // The first request is answered after 400 ms; the second and later are refused until the
    // retries run out.
    let server = Responder::start(|n| match n {
        0 => (204, "", Duration::from_millis(400)),
        _ => (503, r#"{"error":"down"}"#, Duration::ZERO),
    });
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            max_retries: 3,
            initial_backoff_ms: 50,
            max_backoff_ms: 50,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    let acknowledged = sink.acknowledged();
    sink.write_batch(&campaigns(T, 0, 3)).unwrap();
    sink.complete_below(T + 1).unwrap();
    assert_eq!(acknowledged.below(), 0, "handed over is not acknowledged");
    wait_for("the first answer", || server.count() == 1);
    assert_eq!(acknowledged.below(), 0, "sent but not yet answered");
    wait_for("the acknowledgement", || acknowledged.below() == T + 1);
    // A timestamp without output is acknowledged behind the ones before it.
    sink.complete_below(T + 2).unwrap();
    wait_for("an empty timestamp", || acknowledged.below() == T + 2);
    // A timestamp whose write is retried and then fails for good is never acknowledged.
    sink.write_batch(&campaigns(T + 2, 0, 3)).unwrap();
    sink.complete_below(T + 3).unwrap();
    sink.finish().expect_err("the retries ran out");
    assert_eq!(server.count(), 1 + 4, "one attempt and three retries");
    assert_eq!(acknowledged.below(), T + 2);
}

// ---------------------------------------------------------------------------------------------
// Tag values: any string becomes a tag InfluxDB accepts and reads back as docs/semantics.md documents

/// What InfluxDB reads back for a text tag value, written from docs/semantics.md's mapping (not from the
/// encoder): `\` as `＼`; `\n`, `\r`, `\t` as two characters; other control characters, U+2028,
/// U+2029, the bidirectional controls and `＼` itself as `\u{hex}`; the empty value as `(empty)`
/// and `(empty)` as `\u{28}empty)`; a value longer than 4096 bytes in the line (where `,`, `=` and
/// ` ` take a backslash more) cut after its last whole character that fits with 12 bytes to
/// spare, then `…#` and the CRC-32 of the whole value in 8 lowercase hex digits.
fn documented_tag(value: &str) -> String {
    match value {
        "" => return "(empty)".into(),
        "(empty)" => return "\\u{28}empty)".into(),
        _ => {}
    }
    let pieces: Vec<String> = value
        .chars()
        .map(|c| {
            let hidden = matches!(
                u32::from(c),
                0..=0x1f
                    | 0x7f..=0x9f
                    | 0x61c
                    | 0x200e
                    | 0x200f
                    | 0x2028
                    | 0x2029
                    | 0x202a..=0x202e
                    | 0x2066..=0x2069
                    | 0xff3c
            );
            match c {
                '\\' => "\u{ff3c}".to_owned(),
                '\n' => "\\n".to_owned(),
                '\r' => "\\r".to_owned(),
                '\t' => "\\t".to_owned(),
                _ if hidden => format!("\\u{{{:x}}}", u32::from(c)),
                _ => c.to_string(),
            }
        })
        .collect();
    let in_line = |piece: &str| piece.len() + piece.matches([',', '=', ' ']).count();
    if pieces.iter().map(|p| in_line(p)).sum::<usize>() <= 4_096 {
        return pieces.concat();
    }
    let mut kept = String::new();
    let mut size = 0;
    for piece in &pieces {
        size += in_line(piece);
        if size > 4_096 - 12 {
            break;
        }
        kept.push_str(piece);
    }
    format!("{kept}…#{:08x}", crc32(value.as_bytes()))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Characters that have broken, or could break, a tag value: separators, escapes, every kind of
/// control and invisible character, look-alikes of the escapes, astral characters.
const HOSTILE: &[char] = &[
    ',',
    '=',
    ' ',
    '\\',
    '"',
    '\'',
    '#',
    '(',
    ')',
    '{',
    '}',
    'u',
    'n',
    '\n',
    '\r',
    '\t',
    '\0',
    '\u{1}',
    '\u{1b}',
    '\u{1f}',
    '\u{7f}',
    '\u{80}',
    '\u{85}',
    '\u{9f}',
    '\u{a0}',
    '\u{ad}',
    '\u{301}',
    '\u{61c}',
    '\u{200b}',
    '\u{200d}',
    '\u{200e}',
    '\u{202e}',
    '\u{2028}',
    '\u{2029}',
    '\u{2066}',
    '\u{2069}',
    '\u{2026}',
    '\u{e000}',
    '\u{feff}',
    '\u{fffd}',
    '\u{ffff}',
    '\u{ff3c}',
    '\u{1f600}',
    '\u{1f468}',
    '\u{10ffff}',
    'é',
    'ß',
    '中',
];

/// A random hostile string: short mostly, sometimes long, now and then over 64 KiB.
fn hostile_string(rng: &mut rand::rngs::StdRng) -> String {
    use rand::RngExt as _;
    let len = match rng.random_range(0..100) {
        0..70 => rng.random_range(0..12),
        70..97 => rng.random_range(12..300),
        _ => rng.random_range(20_000..70_000),
    };
    (0..len)
        .map(|_| match rng.random_range(0..3) {
            0 => HOSTILE[rng.random_range(0..HOSTILE.len())],
            1 => char::from(rng.random_range(b' '..=b'~')),
            _ => loop {
                if let Some(c) = char::from_u32(rng.random_range(0..0x11_0000)) {
                    break c;
                }
            },
        })
        .collect()
}

/// The strings that once failed, or were meant to: control characters only, empty, a trailing
/// backslash, the escapes' look-alikes, 64 KiB of separators.
fn hostile_classics() -> Vec<String> {
    let mut classics: Vec<String> = [
        "",
        "\u{1}",
        "\u{1}\u{2}\u{7f}",
        "\0",
        "\u{85}",
        "(empty)",
        "\\",
        "\\\\",
        "a\\",
        "\u{ff3c}",
        "\\u{1}",
        "\u{2028}",
        "\u{202e}evil",
        "\u{feff}",
        "unknown",
        " ",
        ",",
        "=",
        "\n",
        "\\n",
        "…#00000000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    classics.push(",".repeat(65_536));
    classics.push("x".repeat(65_536));
    classics.push(format!("{}\\", "é".repeat(40_000)));
    classics.push("\u{1}".repeat(70_000));
    classics
}

/// One all-time `country` row per value, its `clicks` the value's index, and `state` rows for
/// pairs of them (`clicks` = `1_000_000` + the pair's index).
fn tag_batch(values: &[String]) -> Batch {
    let mut changes: Vec<Change> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            aggregate(
                Dimension::Country(Some(v.as_str().into())),
                None,
                Some(totals(i as i64, 0, 0, 0)),
            )
        })
        .collect();
    for (k, pair) in values.chunks_exact(2).enumerate() {
        changes.push(aggregate(
            Dimension::State(Some((pair[0].as_str().into(), pair[1].as_str().into()))),
            None,
            Some(totals(1_000_000 + k as i64, 0, 0, 0)),
        ));
    }
    batch(T, changes)
}

/// The tag values InfluxDB 1.x reads from one line, parsed as its `models/points.go` does: a tag
/// value ends at a `,` or ` ` not preceded by a backslash, must not be empty nor hold an `=` not
/// preceded by one, and is then unescaped (`\,`, `\ `, `\=`, in that order); the line holds no
/// line break; the series key is at most 65,535 bytes.
fn influx1_tags(line: &str) -> Result<Vec<(String, String)>, String> {
    let line = line.strip_suffix('\n').ok_or("no line break at the end")?;
    if line.contains('\n') {
        return Err("a line break inside the line".into());
    }
    let buf = line.as_bytes();
    let escaped = |i: usize| i > 0 && buf[i - 1] == b'\\';
    // The measurement ends at the first unescaped `,` or ` `.
    let mut i = (0..buf.len())
        .find(|&i| (buf[i] == b',' || buf[i] == b' ') && !escaped(i))
        .ok_or("no fields")?;
    let mut tags = Vec::new();
    while buf[i] == b',' {
        let key_start = i + 1;
        let eq = (key_start..buf.len())
            .find(|&j| buf[j] == b'=' && !escaped(j))
            .ok_or("missing tag value")?;
        let value_start = eq + 1;
        if value_start >= buf.len() || buf[value_start] == b',' || buf[value_start] == b' ' {
            return Err("missing tag value".into());
        }
        let mut j = value_start;
        loop {
            j += 1;
            if j >= buf.len() {
                return Err("missing fields".into());
            }
            if buf[j] == b'=' && !escaped(j) {
                return Err("invalid tag format".into());
            }
            if (buf[j] == b',' || buf[j] == b' ') && !escaped(j) {
                break;
            }
        }
        let unescape = |s: &str| {
            s.replace("\\,", ",")
                .replace("\\ ", " ")
                .replace("\\=", "=")
        };
        tags.push((
            unescape(&line[key_start..eq]),
            unescape(&line[value_start..j]),
        ));
        i = j;
    }
    if i > 65_535 {
        return Err(format!("max key length exceeded: {i} > 65535"));
    }
    Ok(tags)
}

/// Encodes a `country` and a `state` row of hostile values, parses the lines as InfluxDB 1.x
/// does, and compares every tag with the documented mapping.
fn check_hostile(country: &str, state: &str) -> Result<(), TestCaseError> {
    let encoded = encode(&batch(
        T,
        vec![
            aggregate(
                Dimension::Country(Some(country.into())),
                None,
                Some(totals(1, 0, 0, 0)),
            ),
            aggregate(
                Dimension::State(Some((country.into(), state.into()))),
                None,
                Some(totals(1, 0, 0, 0)),
            ),
        ],
    ));
    let lines: Vec<String> = encoded.split_inclusive('\n').map(str::to_owned).collect();
    prop_assert_eq!(lines.len(), 2, "{:?}", encoded);
    let mut read = Vec::new();
    for line in &lines {
        let tags = influx1_tags(line).map_err(|e| TestCaseError::fail(format!("{e}: {line:?}")))?;
        read.push(tags);
    }
    let (country_tag, state_tag) = (documented_tag(country), documented_tag(state));
    let expected = vec![
        vec![
            ("country".to_owned(), country_tag.clone()),
            ("window".to_owned(), "all".to_owned()),
        ],
        vec![
            ("country".to_owned(), country_tag),
            ("state".to_owned(), state_tag),
            ("window".to_owned(), "all".to_owned()),
        ],
    ];
    read.sort();
    let mut expected = expected;
    expected.sort();
    prop_assert_eq!(read, expected);
    Ok(())
}

fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        2 => proptest::sample::select(HOSTILE),
        1 => any::<char>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    /// Any string, as a tag, is one InfluxDB 1.x parses, and reads back as documented.
    #[test]
    fn any_string_is_a_tag_influxdb_accepts_and_reads_back_as_documented(
        country in proptest::collection::vec(hostile_char(), 0..24),
        state in proptest::collection::vec(hostile_char(), 0..24),
    ) {
        let (country, state): (String, String) = (country.into_iter().collect(), state.into_iter().collect());
        check_hostile(&country, &state)?;
    }

    /// Distinct strings of confusable characters stay distinct tags.
    #[test]
    fn distinct_strings_stay_distinct_tags(
        a in proptest::collection::vec(proptest::sample::select(&['\\', '\u{ff3c}', 'u', '{', '}', '1', '\u{1}', '\n', 'n', '(', ')', 'e'][..]), 0..8),
        b in proptest::collection::vec(proptest::sample::select(&['\\', '\u{ff3c}', 'u', '{', '}', '1', '\u{1}', '\n', 'n', '(', ')', 'e'][..]), 0..8),
    ) {
        let (a, b): (String, String) = (a.into_iter().collect(), b.into_iter().collect());
        let tag = |v: &str| -> Result<String, TestCaseError> {
            let line = encode(&batch(T, vec![aggregate(Dimension::Country(Some(v.into())), None, Some(totals(1, 0, 0, 0)))]));
            let tags = influx1_tags(&line).map_err(TestCaseError::fail)?;
            Ok(tags[0].1.clone())
        };
        prop_assert_eq!(a == b, tag(&a)? == tag(&b)?, "{:?} {:?}", a, b);
    }
}

#[test]
fn long_empty_and_control_only_strings_are_tags_influxdb_accepts() {
    let classics = hostile_classics();
    for (i, value) in classics.iter().enumerate() {
        check_hostile(value, &classics[classics.len() - 1 - i]).unwrap();
    }
    // Every value's tag takes at most 4096 bytes in the line; the distinct ones stay distinct.
    let tags: std::collections::BTreeSet<String> =
        classics.iter().map(|v| documented_tag(v)).collect();
    assert_eq!(tags.len(), classics.len());
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the oracle's CRC-32");
    let cut = documented_tag(&",".repeat(65_536));
    assert_eq!(
        cut,
        format!("{}…#{:08x}", ",".repeat(2_042), crc32(&[b','; 65_536]))
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn thousands_of_hostile_strings_are_written_and_read_back_as_documented() {
    use rand::SeedableRng as _;
    let db = TestDb::created("hostile_tags");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7A65);
    let mut values = hostile_classics();
    let mut seen: std::collections::BTreeSet<String> = values.iter().cloned().collect();
    while values.len() < 3_000 {
        let value = hostile_string(&mut rng);
        if seen.insert(value.clone()) {
            values.push(value);
        }
    }
    // The mapping is one to one here, so every value is a series of its own.
    let tags: Vec<String> = values.iter().map(|v| documented_tag(v)).collect();
    assert_eq!(
        tags.iter().collect::<std::collections::BTreeSet<_>>().len(),
        values.len()
    );
    let batch = tag_batch(&values);
    let mut sink = db.sink(|_| {});
    let stats = sink.stats();
    sink.write_batch(&batch).expect("queued");
    sink.finish().expect("every line accepted");
    let pairs = values.len() / 2;
    assert_eq!(sink.written(), (values.len() + pairs) as u64);
    assert_eq!(stats.snapshot().rejected_lines, 0);

    let mut countries = 0;
    for row in rows(&db.name, "SELECT clicks, country FROM country") {
        let i = row["clicks"].as_u64().unwrap() as usize;
        assert_eq!(
            row["country"].as_str().unwrap(),
            tags[i],
            "value {i}: {:?}",
            values[i]
        );
        countries += 1;
    }
    assert_eq!(countries, values.len());
    let mut states = 0;
    for row in rows(&db.name, "SELECT clicks, country, \"state\" FROM \"state\"") {
        let k = row["clicks"].as_u64().unwrap() as usize - 1_000_000;
        assert_eq!(
            (
                row["country"].as_str().unwrap(),
                row["state"].as_str().unwrap()
            ),
            (tags[2 * k].as_str(), tags[2 * k + 1].as_str()),
            "pair {k}"
        );
        states += 1;
    }
    assert_eq!(states, pairs);
}

// ---------------------------------------------------------------------------------------------
// Lines InfluxDB refuses: counted, the others written, the run goes on

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn lines_influxdb_refuses_are_counted_and_every_other_line_is_written() {
    let db = TestDb::created("refused");
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.lp");
    let client = InfluxClient::new(&InfluxConfig {
        rejects_file: rejects.clone(),
        ..config(&influx_url(), &db.name)
    })
    .unwrap();
    // Line 17 does not parse; line 60 conflicts with the integer type of `x`.
    let body: String = (0..100)
        .map(|i| match i {
            17 => "m x=1i,y 1000\n".to_owned(),
            60 => format!("m,k=60 x=\"text\" {}\n", T + 60),
            i => format!("m,k={i} x={i}i {}\n", T + i),
        })
        .collect();
    client
        .write(body.as_bytes())
        .expect("refused lines do not fail the write");
    let stats = client.stats().snapshot();
    assert_eq!(
        (stats.failed, stats.rejected_lines, stats.lines_written),
        (0, 2, 98)
    );
    let points: Vec<(u64, i64)> = rows(&db.name, "SELECT x FROM m")
        .iter()
        .map(|r| (r["time"].as_u64().unwrap(), r["x"].as_i64().unwrap()))
        .collect();
    let expected: Vec<(u64, i64)> = (0..100u64)
        .filter(|i| ![17, 60].contains(i))
        .map(|i| (T + i, i as i64))
        .collect();
    assert_eq!(points, expected);
    let refused = std::fs::read_to_string(&rejects).unwrap();
    let entries: Vec<&str> = refused.lines().collect();
    assert_eq!(entries.len(), 4, "{refused}");
    assert!(
        entries[0].starts_with("# HTTP 400: unable to parse 'm x=1i,y 1000'"),
        "{refused}"
    );
    assert_eq!(entries[1], "m x=1i,y 1000");
    assert!(
        entries[2].starts_with("# HTTP 400: partial write: field type conflict"),
        "{refused}"
    );
    assert_eq!(entries[3], format!("m,k=60 x=\"text\" {}", T + 60));

    // Through the sink: a `pipeline` field InfluxDB holds as a string refuses the sink's
    // integer; that line is counted, the rest of the batch written, and the run goes on.
    let db = TestDb::created("refused_sink");
    let client = InfluxClient::new(&config(&influx_url(), &db.name)).unwrap();
    client
        .write(format!("pipeline events_in=\"text\" {}\n", T - 1).as_bytes())
        .unwrap();
    let mut sink = db.sink(|_| {});
    let stats = sink.stats();
    let mut first = campaigns(T, 0, 40);
    first.changes.push(counter(Counter::EventsIn, 5));
    let mut second = campaigns(T + 1_000, 40, 40);
    second.changes.push(counter(Counter::EventsIn, 9));
    sink.write_batch(&first).unwrap();
    wait_for("the refusal", || stats.snapshot().rejected_lines == 1);
    sink.write_batch(&second).expect("the run goes on");
    sink.finish().expect("no failure");
    assert_eq!(sink.rejected_lines(), 2);
    assert_eq!(sink.written(), 80);
    assert_eq!(rows(&db.name, "SELECT * FROM campaign").len(), 80);
}

// ---------------------------------------------------------------------------------------------
// The start: one check of InfluxDB, within timeout-ms

/// `shopflow run` against `url`, started; stdout and stderr piped.
fn run_against(url: &str, timeout_ms: u64) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["run", "-w", "1"])
        .env("SHOPFLOW__INFLUX__URL", url)
        .env("SHOPFLOW__INFLUX__TIMEOUT_MS", timeout_ms.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Waits up to `limit` for `child` to end; kills it and fails the test after.
fn ended_within(
    mut child: std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status, stderr);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_unreachable_influxdb_fails_the_start_at_once_with_one_line() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let child = run_against(&format!("http://127.0.0.1:{port}"), 10_000);
    let (status, stderr) = ended_within(child, Duration::from_secs(20));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: InfluxDB at http://127.0.0.1:{port}/ failed the start check: cannot connect"
        )),
        "{stderr}"
    );
}

#[test]
fn sigterm_while_waiting_for_influxdb_at_start_stops_cleanly() {
    // A server that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let child = run_against(&url, 60_000);
    wait_for("the start check's connection", || {
        accepted.load(Ordering::SeqCst) > 0
    });
    std::thread::sleep(Duration::from_millis(200));
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let (status, stderr) = ended_within(child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}: {stderr}");
    assert!(
        stderr.contains("stopped while waiting for InfluxDB"),
        "{stderr}"
    );
}
