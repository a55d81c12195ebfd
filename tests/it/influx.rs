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
fn a_4xx_is_fatal_at_once_and_carries_influxdbs_message() {
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

    // A malformed line, through the client itself.
    let db = TestDb::created("malformed");
    let client = InfluxClient::new(&config(&influx_url(), &db.name)).unwrap();
    let version = client.ping().expect("pong").expect("a version header");
    assert!(version.starts_with('1'), "{version}");
    match client.write(b"m x=1i,y 1000\n").unwrap_err() {
        WriteError::Rejected { status, message } => {
            assert_eq!(status, 400);
            assert!(
                message.starts_with("unable to parse 'm x=1i,y 1000'"),
                "{message}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    client.write(b"m x=1i 1000\n").expect("a good line");
    assert_eq!(
        rows(&db.name, "SELECT * FROM m"),
        [row(json!({"time": 1_000, "x": 1}))]
    );
    let stats = client.stats().snapshot();
    assert_eq!(
        (
            stats.attempts,
            stats.requests,
            stats.failed,
            stats.lines_written
        ),
        (2, 1, 1, 1)
    );
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

/// The answer to request number `n` (0-based): status, JSON body, delay before answering.
type Script = dyn Fn(usize) -> (u16, &'static str, Duration) + Send + Sync;

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
                body,
            });
            seen.len() - 1
        };
        let (status, answer, delay) = script(n);
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
fn a_4xx_from_the_server_is_not_retried() {
    let server = Responder::start(|_| {
        (
            400,
            r#"{"error":"partial write: field type conflict dropped=1"}"#,
            Duration::ZERO,
        )
    });
    let client = InfluxClient::new(&config(&server.url, "shop")).unwrap();
    assert_eq!(
        client.write(b"m x=1i 1\n"),
        Err(WriteError::Rejected {
            status: 400,
            message: "partial write: field type conflict dropped=1".into()
        })
    );
    assert_eq!(server.count(), 1);
    let stats = client.stats().snapshot();
    assert_eq!((stats.attempts, stats.retries, stats.failed), (1, 0, 1));
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
