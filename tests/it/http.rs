//! The HTTP server of `demo` and `run`, through the built binary: its rows, metrics and stream
//! against the line protocol file the same run writes (an independent account: the sink's
//! encoder, read back), health and readiness, and bad requests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::final_state;
use crate::support::process::{command, free_ports, hostfile, text};

/// A running demo and its server's base URL.
struct Demo {
    child: Child,
    url: String,
    /// The first line it printed.
    announcement: String,
    stderr: mpsc::Receiver<String>,
}

impl Demo {
    /// `shopflow demo` with `args` and `--http 127.0.0.1:0` (unless `env` sets `http.listen`),
    /// once it has said where it listens.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Demo {
        Demo::start_command("demo", args, env)
    }

    /// [`start`](Demo::start) for another long-running command (`run`).
    fn start_command(subcommand: &str, args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut command = command(&[&[subcommand], args].concat(), env);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        if !env.iter().any(|(key, _)| *key == "SHOPFLOW__HTTP__LISTEN") {
            command.args(["--http", "127.0.0.1:0"]);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stderr = child.stderr.take().expect("a pipe");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a first line on standard error");
        // The first thing the demo prints: where its server is.
        let url = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in the first line: {first}"))
            .trim_end_matches('/')
            .to_owned();
        Demo {
            child,
            url,
            announcement: first,
            stderr: lines,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        get(&format!("{}{path}", self.url))
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// Polls `path` until `condition` holds of its JSON, at most `within`.
    fn wait_for(&self, path: &str, within: Duration, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(path);
            if let Ok(value) = serde_json::from_str::<Value>(&body)
                && condition(&value)
            {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: not within {within:?}: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the demo to end by itself, successfully.
    fn finish(mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("a status") {
                let log: Vec<String> = self.stderr.try_iter().collect();
                assert!(status.success(), "demo failed: {}", log.join("\n"));
                return;
            }
            assert!(Instant::now() < deadline, "the demo did not end");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A GET: the status and the body (status 0 when nothing answered).
fn get(url: &str) -> (u16, String) {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    match CLIENT
        .get_or_init(reqwest::blocking::Client::new)
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
    {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The line protocol file's lines up to the end of the batch at `time`: the file's own account
/// of every row as of that timestamp. A batch's lines are contiguous and end with its `pipeline`
/// line (every batch of a demo with events changes `events_in`).
fn lines_through(path: &Path, time: u64) -> Option<String> {
    let text = std::fs::read_to_string(path).expect("the line protocol file");
    let end = format!(" {time}");
    let mut prefix = String::new();
    for line in text.lines() {
        prefix.push_str(line);
        prefix.push('\n');
        if line.starts_with("pipeline ") && line.ends_with(&end) {
            return Some(prefix);
        }
    }
    None
}

/// A tag value as the line protocol writes what InfluxDB stores.
fn escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if matches!(c, ',' | '=' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An API row as `final_state` keys and values it.
fn state_entry(row: &Value, window_label: &str) -> (String, String) {
    let mut series = row["measurement"]
        .as_str()
        .expect("a measurement")
        .to_owned();
    for (name, value) in row["tags"].as_object().expect("tags") {
        series.push_str(&format!(
            ",{name}={}",
            escape(value.as_str().expect("a string"))
        ));
    }
    let f = &row["fields"];
    // A removed row: the line protocol writes it with every field zero.
    let fields = if f.is_null() {
        "clicks=0i,purchases=0i,units=0i,revenue_cents=0i,conversion=0".to_owned()
    } else {
        let clicks = f["clicks"].as_i64().expect("clicks");
        let purchases = f["purchases"].as_i64().expect("purchases");
        // The writer's conversion, recomputed: JSON floats are read back within an ulp.
        let conversion = if clicks > 0 {
            purchases as f64 / clicks as f64
        } else {
            0.0
        };
        let served = f["conversion"].as_f64().expect("a number");
        assert!((served - conversion).abs() <= 1e-12, "{row}");
        format!(
            "clicks={clicks}i,purchases={purchases}i,units={}i,revenue_cents={}i,conversion={conversion}",
            f["units"], f["revenue_cents"],
        )
    };
    match row["window"].as_u64() {
        None => (format!("{series},window=all"), fields),
        Some(start) => (format!("{series},window={window_label} @{start}"), fields),
    }
}

/// While a demo runs, `/api/rows` equals, field for field, every row of the line protocol the
/// same demo wrote through the timestamp the API says its rows are at: all-time totals of every
/// measurement, the latest window and every window the API keeps; and `/metrics`, parsed with a
/// Prometheus parser, counts what the `pipeline` lines say at the timestamp it reports.
#[test]
fn rows_and_metrics_equal_the_line_protocol_at_their_timestamp() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("demo.lp");
    let demo = Demo::start(
        &[
            "--source",
            "generator",
            "--rate",
            "400",
            "--duration",
            "300s",
            "-w",
            "2",
            "-o",
            output.to_str().expect("UTF-8"),
        ],
        &[
            ("SHOPFLOW__GENERATOR__USERS", "5000"),
            ("SHOPFLOW__ENGINE__TICK_MS", "200"),
            ("SHOPFLOW__ENGINE__WINDOW_MS", "1000"),
            ("SHOPFLOW__HTTP__RECENT_WINDOWS", "4"),
        ],
    );
    let measurements = demo.json("/api/measurements");
    let names: Vec<&str> = measurements
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["measurement"].as_str().expect("a name"))
        .collect();
    assert_eq!(
        names,
        [
            "campaign",
            "age_gender",
            "state",
            "country",
            "campaign_country",
            "campaign_age_gender"
        ]
    );
    demo.wait_for(
        "/api/rows?measurement=campaign",
        Duration::from_secs(30),
        |v| v["rows"].as_array().is_some_and(|r| !r.is_empty()),
    );
    let mut compared = 0;
    let mut window_rows = 0;
    for _ in 0..2 {
        for name in &names {
            for window in ["all", "latest"] {
                let got = demo.json(&format!("/api/rows?measurement={name}&window={window}"));
                let time = got["time"].as_u64().expect("a timestamp");
                let lines = lines_through(&output, time).expect("the batch the rows are at");
                let want: BTreeMap<String, String> = final_state(&lines)
                    .into_iter()
                    .filter(|(key, _)| {
                        key.starts_with(&format!("{name},"))
                            && (window == "all") == key.ends_with(",window=all")
                    })
                    .collect();
                let rows = got["rows"].as_array().expect("rows");
                let got: BTreeMap<String, String> =
                    rows.iter().map(|row| state_entry(row, "1s")).collect();
                assert_eq!(got.len(), rows.len(), "one row per key");
                if window == "all" {
                    assert_eq!(got, want, "{name} at {time}");
                } else {
                    // The latest window is the newest start among the file's rows.
                    let latest = want
                        .keys()
                        .filter_map(|k| k.rsplit_once(" @").map(|(_, s)| s.to_owned()))
                        .max_by_key(|s| s.parse::<u64>().expect("a start"));
                    let want: BTreeMap<String, String> = want
                        .into_iter()
                        .filter(|(k, _)| {
                            latest
                                .as_ref()
                                .is_some_and(|l| k.ends_with(&format!(" @{l}")))
                        })
                        .collect();
                    assert_eq!(got, want, "{name}, latest window, at {time}");
                    window_rows += got.len();
                }
                compared += rows.len();
            }
        }
        // Every window the API keeps, by its start.
        let series = demo.json("/api/windows?measurement=country&field=clicks");
        let time = series["time"].as_u64().expect("a timestamp");
        let lines = lines_through(&output, time).expect("the batch");
        let state = final_state(&lines);
        let mut starts = BTreeSet::new();
        for s in series["series"].as_array().expect("series") {
            for point in s["points"].as_array().expect("points") {
                let start = point[0].as_u64().expect("a start");
                starts.insert(start);
                let tags = s["tags"].as_object().expect("tags");
                let country = escape(tags["country"].as_str().expect("a country"));
                let key = format!("country,country={country},window=1s @{start}");
                let fields = state.get(&key).unwrap_or_else(|| panic!("{key} at {time}"));
                assert!(
                    fields.starts_with(&format!("clicks={}i,", point[1])),
                    "{key}: {fields} vs {point}"
                );
            }
        }
        assert!(
            starts.len() <= 4,
            "http.recent-windows bounds the windows kept"
        );

        // The metrics, parsed, at the timestamp they report.
        let (status, body) = demo.get("/metrics");
        assert_eq!(status, 200);
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("the Prometheus text format");
        let value = |name: &str| -> f64 {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => panic!("{name} is not a number"),
                })
                .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
        };
        let time = (value("shopflow_last_completed_timestamp_seconds") * 1e3).round() as u64;
        let lines = lines_through(&output, time).expect("the batch of the metrics");
        let state = final_state(&lines);
        for counter in dataflows::model::Counter::ALL {
            let name = counter.name();
            let want: f64 = state.get(&format!("pipeline {name}")).map_or(0.0, |v| {
                v.trim_end_matches('i').parse().expect("an integer")
            });
            let metric = if counter.origin() == dataflows::model::CounterOrigin::DemographicsTable {
                format!("shopflow_pipeline_{name}_rows")
            } else {
                format!("shopflow_pipeline_{name}_total")
            };
            assert_eq!(value(&metric), want, "{metric} at {time}");
            let expected_type = scrape
                .samples
                .iter()
                .find(|s| s.metric == metric)
                .map(|s| matches!(s.value, prometheus_parse::Value::Counter(_)));
            assert_eq!(
                expected_type,
                Some(counter.origin() != dataflows::model::CounterOrigin::DemographicsTable),
                "{metric}'s type"
            );
        }
        assert!(value("shopflow_pipeline_events_in_total") > 0.0);
        assert!(value("shopflow_sink_lines_total") > 0.0);
        assert!(value("shopflow_sink_bytes_total") > 0.0);
        assert_eq!(value("shopflow_workers"), 2.0);
        for metric in [
            "shopflow_consumer_lag_messages",
            "shopflow_freshness_seconds",
            "shopflow_events_per_second",
            "shopflow_sink_retries_total",
            "shopflow_sink_rejected_lines_total",
            "shopflow_input_events_total",
        ] {
            value(metric);
        }
        let histograms: BTreeSet<&str> = scrape
            .samples
            .iter()
            .filter(|s| matches!(s.value, prometheus_parse::Value::Histogram(_)))
            .map(|s| s.metric.as_str())
            .collect();
        assert!(
            histograms.contains("shopflow_worker_busy_seconds")
                && histograms.contains("shopflow_tick_processing_seconds"),
            "{histograms:?}"
        );
        let workers: BTreeSet<String> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "shopflow_worker_busy_seconds")
            .filter_map(|s| s.labels.get("worker").map(str::to_owned))
            .collect();
        assert_eq!(workers, BTreeSet::from(["0".to_owned(), "1".to_owned()]));
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(compared > 50, "{compared} rows compared");
    assert!(window_rows > 0, "window rows compared");
}

/// One `tick` event per completed timestamp, in order, none missed: exactly the timestamps of the
/// line protocol's batches while the client listened, each with the rows that batch wrote.
#[test]
fn the_stream_sends_each_completed_timestamp_once_with_its_changes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("demo.lp");
    let demo = Demo::start(
        &[
            "--source",
            "generator",
            "--rate",
            "1000",
            "--duration",
            "6s",
            "-w",
            "2",
            "-o",
            output.to_str().expect("UTF-8"),
        ],
        &[
            ("SHOPFLOW__GENERATOR__USERS", "5000"),
            ("SHOPFLOW__ENGINE__TICK_MS", "200"),
        ],
    );
    let response = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .expect("a client")
        .get(format!("{}/api/stream", demo.url))
        .send()
        .expect("the stream");
    assert_eq!(response.status().as_u16(), 200);
    let mut ticks: Vec<Value> = Vec::new();
    let mut event = String::new();
    // The stream ends when the demo does.
    for line in BufReader::new(response).lines() {
        let Ok(line) = line else { break };
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            assert_eq!(event, "tick", "no reset for a client that keeps up: {data}");
            ticks.push(serde_json::from_str(data).expect("JSON"));
        }
    }
    demo.finish();
    assert!(ticks.len() >= 10, "{} ticks", ticks.len());
    let times: Vec<u64> = ticks
        .iter()
        .map(|t| t["time"].as_u64().expect("a time"))
        .collect();
    let (first, last) = (times[0], times[times.len() - 1]);
    let written = std::fs::read_to_string(&output).expect("the file");
    let mut batches: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    for line in written.lines() {
        if line.starts_with("runtime,") {
            continue;
        }
        let time: u64 = line
            .rsplit_once(' ')
            .expect("a time")
            .1
            .parse()
            .expect("ms");
        if line.starts_with("pipeline ") || line.contains(",window=all ") {
            batches.entry(time).or_default();
        }
    }
    let want: Vec<u64> = batches.range(first..=last).map(|(t, _)| *t).collect();
    assert_eq!(times, want, "a tick per batch, in order");
    // Each tick's all-time changes are that batch's all-time lines.
    for tick in &ticks {
        let time = tick["time"].as_u64().expect("a time");
        let mut got: BTreeMap<String, String> = BTreeMap::new();
        for change in tick["changes"].as_array().expect("changes") {
            if change["window"].is_null() {
                let (key, fields) = state_entry(change, "60s");
                got.insert(key, fields);
            }
        }
        let want: BTreeMap<String, String> = written
            .lines()
            .filter(|l| l.ends_with(&format!(" {time}")) && l.contains(",window=all "))
            .map(|l| {
                let (series, rest) = l.split_once(",window=all ").expect("a series");
                let fields = rest.rsplit_once(' ').expect("fields").0;
                (format!("{series},window=all"), fields.to_owned())
            })
            .collect();
        assert_eq!(got, want, "the changes of {time}");
        assert!(tick["pipeline"]["counters"]["events_in"].as_i64().is_some());
    }
}

/// `/health` and `/ready` of a demo through the embedded Kafka: alive at once, ready once the
/// first timestamp is complete and Kafka answered, with a one-line JSON reason either way.
#[test]
fn health_and_readiness_of_a_demo() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("demo.lp");
    let demo = Demo::start(
        &[
            "--rate",
            "500",
            "--duration",
            "6s",
            "-w",
            "1",
            "-o",
            output.to_str().expect("UTF-8"),
        ],
        &[("SHOPFLOW__GENERATOR__USERS", "2000")],
    );
    let (status, body) = demo.get("/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");
    let ready = demo.wait_for("/ready", Duration::from_secs(30), |v| v["status"] == "ok");
    assert!(
        ready["reason"]
            .as_str()
            .is_some_and(|r| r.contains("caught up")),
        "{ready}"
    );
    let pipeline = demo.json("/api/pipeline");
    assert_eq!(pipeline["process"]["workers"], 1);
    assert!(
        pipeline["counters"]["events_in"].as_i64().is_some(),
        "{pipeline}"
    );
    demo.finish();
}

/// Bad requests get a 400 (or 404, 405) with a one-line JSON error, never a 500 or a dropped
/// connection; hundreds of random query strings included; the server answers well afterwards.
#[test]
fn bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("demo.lp");
    let demo = Demo::start(
        &[
            "--source",
            "generator",
            "--rate",
            "200",
            "--duration",
            "300s",
            "-w",
            "1",
            "-o",
            output.to_str().expect("UTF-8"),
        ],
        &[("SHOPFLOW__GENERATOR__USERS", "1000")],
    );
    for (path, status, says) in [
        ("/api/rows", 400, "`measurement` is required"),
        (
            "/api/rows?measurement=nope",
            400,
            "unknown measurement `nope`",
        ),
        (
            "/api/rows?measurement=campaign&window=yesterday",
            400,
            "`window`",
        ),
        (
            "/api/rows?measurement=campaign&tag.country=US",
            400,
            "no tag `country`",
        ),
        (
            "/api/rows?measurement=campaign&sort=price",
            400,
            "unknown field `price`",
        ),
        ("/api/rows?measurement=campaign&order=up", 400, "`order`"),
        ("/api/rows?measurement=campaign&limit=-1", 400, "`limit`"),
        (
            "/api/rows?measurement=campaign&colour=red",
            400,
            "unknown parameter `colour`",
        ),
        (
            "/api/rows?measurement=campaign&measurement=state",
            400,
            "twice",
        ),
        (
            "/api/windows?measurement=campaign",
            400,
            "`field` is required",
        ),
        (
            "/api/windows?measurement=campaign&field=revenue",
            400,
            "unknown field",
        ),
        ("/api/rows?measurement=%FF%FE", 400, "unknown measurement"),
        ("/nothing/here", 404, "no such path"),
    ] {
        let (got, body) = demo.get(path);
        assert_eq!(got, status, "{path}: {body}");
        let error: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains(says)),
            "{path}: {body}"
        );
        assert_eq!(body.lines().count(), 1, "{path}: {body}");
    }
    let posted = reqwest::blocking::Client::new()
        .post(format!("{}/api/rows?measurement=campaign", demo.url))
        .send()
        .expect("an answer");
    assert_eq!(posted.status().as_u16(), 405);

    // Random query strings: from a small alphabet of the parameters' own pieces and hostile bytes.
    use rand::{RngExt as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let pieces = [
        "measurement",
        "window",
        "tag.",
        "campaign",
        "state",
        "country",
        "sort",
        "order",
        "limit",
        "field",
        "=",
        "&",
        "%",
        "%00",
        "%E2%82",
        "+",
        "latest",
        "all",
        "asc",
        "desc",
        "clicks",
        "conversion",
        "18446744073709551616",
        "-3",
        "..",
        "%2F",
        "\u{1F600}",
        "[]",
    ];
    for _ in 0..300 {
        let n = rng.random_range(0..8);
        let query: String = (0..n)
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        for endpoint in ["/api/rows", "/api/windows"] {
            let (status, body) = demo.get(&format!("{endpoint}?{query}"));
            assert!(
                status == 200 || status == 400,
                "{endpoint}?{query}: {status} {body}"
            );
            serde_json::from_str::<Value>(&body)
                .unwrap_or_else(|e| panic!("{endpoint}?{query}: {e}: {body}"));
        }
    }
    let (status, body) = demo.get("/api/rows?measurement=campaign&sort=revenue_cents&limit=3");
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body).expect("JSON");
    let revenue: Vec<i64> = rows["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["fields"]["revenue_cents"].as_i64().expect("cents"))
        .collect();
    assert!(
        revenue.len() <= 3 && revenue.windows(2).all(|w| w[0] >= w[1]),
        "{revenue:?}"
    );
}

/// `--http off` starts no server and prints no URL; a bad address is a usage error naming the
/// flag's form.
#[test]
fn http_off_and_a_bad_address() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("demo.lp");
    let run = crate::support::process::shopflow(
        &[
            "demo",
            "--source",
            "generator",
            "--pace",
            "unbounded",
            "--events",
            "1000",
            "--http",
            "off",
            "-o",
            output.to_str().expect("UTF-8"),
        ],
        &[("SHOPFLOW__GENERATOR__USERS", "1000")],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        !text(&run.stderr).contains("http://"),
        "{}",
        text(&run.stderr)
    );
    let run = crate::support::process::shopflow(&["demo", "--http", "localhost"], &[]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("127.0.0.1:8080"),
        "{}",
        text(&run.stderr)
    );
    let run = crate::support::process::shopflow(
        &["check-config"],
        &[("SHOPFLOW__HTTP__LISTEN", "nowhere")],
    );
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("http.listen"),
        "{}",
        text(&run.stderr)
    );
}

/// Each process of a cluster serves its own: two processes on one host, each asked for the same
/// busy port, each get a server of their own, say which, and report their own place in the
/// cluster and their own workers.
#[test]
fn each_process_of_a_cluster_serves_its_own() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    // A port both are told to use, held busy here: both fall back to one of their own.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let busy = busy.local_addr().expect("an address");
    let demos: Vec<Demo> = (0..2)
        .map(|process| {
            let output = dir.path().join("cluster.lp");
            let process = process.to_string();
            Demo::start(
                &[
                    "--source",
                    "generator",
                    "--rate",
                    "200",
                    "--duration",
                    "300s",
                    "-w",
                    "1",
                    "-n",
                    "2",
                    "-p",
                    &process,
                    "--hostfile",
                    &hosts,
                    "-o",
                    output.to_str().expect("UTF-8"),
                ],
                &[
                    ("SHOPFLOW__GENERATOR__USERS", "1000"),
                    ("SHOPFLOW__HTTP__LISTEN", &busy.to_string()),
                ],
            )
        })
        .collect();
    assert_ne!(demos[0].url, demos[1].url);
    for demo in &demos {
        assert!(
            demo.announcement.contains(&format!("({busy} was busy)")),
            "{}",
            demo.announcement
        );
    }
    for (process, demo) in demos.iter().enumerate() {
        let pipeline = demo.wait_for("/api/pipeline", Duration::from_secs(60), |v| {
            v["time"].is_u64()
        });
        let p = &pipeline["process"];
        assert_eq!(
            (
                p["process"].as_u64(),
                p["processes"].as_u64(),
                p["workers"].as_u64()
            ),
            (Some(process as u64), Some(2), Some(1)),
            "{pipeline}"
        );
        let (_, metrics) = demo.get("/metrics");
        assert!(
            metrics.contains(&format!("process=\"{process}\"")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "shopflow_worker_busy_seconds_count{{worker=\"{process}\"}}"
            )),
            "each process its own worker (global index {process})"
        );
    }
}

/// The newest complete checkpoint under `root` as the disk holds it, found without the engine's
/// code: the tick directory with the greatest number whose `peers` files `worker-<i>-of-<peers>`
/// are all there; its tick, the sum of their sizes and the newest modification time.
fn newest_checkpoint_on_disk(
    root: &Path,
    peers: usize,
) -> Option<(u64, u64, std::time::SystemTime)> {
    let mut found = None;
    for pipeline in std::fs::read_dir(root).ok()?.flatten() {
        for entry in std::fs::read_dir(pipeline.path()).ok()?.flatten() {
            let Some(tick) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let files: Option<Vec<std::fs::Metadata>> = (0..peers)
                .map(|i| {
                    std::fs::metadata(entry.path().join(format!("worker-{i}-of-{peers}"))).ok()
                })
                .collect();
            let Some(files) = files else { continue };
            if found.as_ref().is_some_and(|(newest, _, _)| *newest >= tick) {
                continue;
            }
            let size = files.iter().map(std::fs::Metadata::len).sum();
            let modified = files
                .iter()
                .filter_map(|m| m.modified().ok())
                .max()
                .expect("modification times");
            found = Some((tick, size, modified));
        }
    }
    found
}

/// The value of the gauge `name` in a `/metrics` scrape, parsed with a Prometheus parser.
fn gauge(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name}: not a gauge: {other:?}"),
        })
}

/// `run` with checkpoints every second, scraped for several checkpoints: the checkpoint size
/// `/metrics` gives equals the bytes of the newest complete checkpoint's files on disk (found
/// without the engine's code), and its age is the time since they were written: it grows between
/// checkpoints and drops when a new one completes.
#[test]
fn checkpoint_metrics_follow_the_checkpoints_on_disk() {
    let topic = "checkpoint-metrics";
    let kafka = shopflow::sources::kafka::KafkaConfig {
        topic: topic.into(),
        partitions: 2,
        ..crate::cli::temp_env_config(&[]).kafka
    };
    let embedded = shopflow::commands::embedded::EmbeddedKafka::start(&kafka).expect("a cluster");
    let mut producer =
        shopflow::writers::kafka::EventProducer::new(embedded.config()).expect("a producer");
    let now = shopflow::runtime::now_ms();
    let mut knobs = crate::cli::temp_env_config(&[]).generator;
    knobs.users = 500;
    let generator =
        shopflow::generators::events::EventGenerator::new(knobs, now - 1_000).expect("a generator");
    for n in 0..2_000 {
        producer.send(&generator.event(n), now).expect("sent");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("state");
    let output = dir.path().join("out.lp");
    let brokers = embedded.config().brokers.clone();
    let root_text = root.display().to_string();
    let run = Demo::start_command(
        "run",
        &[
            "-w",
            "2",
            "--demographics",
            "generator",
            "--sink",
            "line-protocol",
            "--start",
            "earliest",
            "--duration",
            "60s",
            "-o",
            output.to_str().expect("UTF-8"),
        ],
        &[
            ("SHOPFLOW__KAFKA__BROKERS", &brokers),
            ("SHOPFLOW__KAFKA__TOPIC", topic),
            ("SHOPFLOW__KAFKA__GROUP_ID", topic),
            ("SHOPFLOW__GENERATOR__USERS", "500"),
            ("SHOPFLOW__ENGINE__TICK_MS", "100"),
            ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", &root_text),
            ("SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS", "1000"),
        ],
    );
    // Scrapes until three checkpoints have followed one another under the scraper's eyes.
    let mut seen: Vec<(u64, f64)> = Vec::new();
    let mut compared = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    while seen
        .iter()
        .map(|(tick, _)| tick)
        .collect::<BTreeSet<_>>()
        .len()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "not three new checkpoints in 40 s: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(150));
        let before = newest_checkpoint_on_disk(&root, 2);
        let (status, body) = run.get("/metrics");
        assert_eq!(status, 200, "{body}");
        let scraped_at = std::time::SystemTime::now();
        let after = newest_checkpoint_on_disk(&root, 2);
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("the Prometheus text format");
        let (size, age) = (
            gauge(&scrape, "shopflow_checkpoint_size_bytes"),
            gauge(&scrape, "shopflow_checkpoint_age_seconds"),
        );
        let (Some((tick, bytes, modified)), true) = (before, before == after) else {
            // None yet, or one completed (or was pruned) while scraping: look again.
            continue;
        };
        let (Some(size), Some(age)) = (size, age) else {
            panic!("a checkpoint on disk at {tick} but no checkpoint metrics:\n{body}");
        };
        assert_eq!(size, bytes as f64, "the size of checkpoint {tick}");
        let written_ago = scraped_at
            .duration_since(modified)
            .unwrap_or_default()
            .as_secs_f64();
        assert!(
            age >= 0.0 && (age - written_ago).abs() < 0.5,
            "checkpoint {tick}: age {age} s, written {written_ago:.3} s before the scrape"
        );
        compared += 1;
        seen.push((tick, age));
    }
    // Between checkpoints the age grows; when a newer one completes it drops.
    let (mut grew, mut dropped) = (0, 0);
    for pair in seen.windows(2) {
        let ((tick, age), (next_tick, next_age)) = (pair[0], pair[1]);
        if next_tick == tick {
            assert!(next_age >= age, "the age of {tick} went back: {seen:?}");
            grew += usize::from(next_age > age);
        } else {
            assert!(next_tick > tick, "an older checkpoint came back: {seen:?}");
            assert!(next_age < age, "a new checkpoint, no younger: {seen:?}");
            dropped += 1;
        }
    }
    assert!(
        grew >= 3 && dropped >= 3,
        "{grew} rises, {dropped} drops: {seen:?}"
    );
    eprintln!("checkpoint metrics: {compared} scrapes compared, {grew} rises, {dropped} drops");
}
