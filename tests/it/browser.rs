//! The dashboard page (`GET /`) in a real browser: Debian's `chromium`, driven through its
//! WebDriver (`chromedriver`, package `chromium-driver`) with fantoccini. `shopflow demo` runs
//! with no services; the page must load, draw its charts, show exactly the engine's rows at the
//! completed timestamp it says it shows (`data-time`) — checked against the JSON API and,
//! independently, against the line protocol file the demo writes — and follow the engine when a
//! new timestamp completes, without reloading. Screenshots go to `target/test-output/browser/`.
//!
//! Without Chromium this test fails: it never skips (`.ci/run` installs both packages).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::cli::final_state;
use crate::support::process::free_port;

/// The demo's seed: a fixed workload (its timing still follows the wall clock).
const SEED: &str = "11";
/// The dashboards, by the name in their `#hash` and `nav a[data-dashboard]`.
const DASHBOARDS: [&str; 4] = ["purchases", "campaigns", "demographics", "pipeline"];

/// A child process killed (with its process group) when dropped, so a failing test leaves
/// neither the demo nor a browser behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where this test's screenshots go: `target/test-output/browser`.
fn output_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory");
    let dir = target.join("test-output").join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `shopflow demo` on an ephemeral HTTP port and returns it with its page's URL (the
/// first `http://` its standard error announces).
fn start_demo(output: &Path) -> (Guard, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    command
        .args(["demo", "--http", "127.0.0.1:0", "--seed", SEED])
        .args(["--rate", "300", "--duration", "10m", "-w", "2", "-o"])
        .arg(output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().expect("the binary runs");
    let stderr = child.stderr.take().unwrap();
    let guard = Guard(child);
    let (found, url) = mpsc::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        // Reads to the end, so the demo never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://") {
                let url: String = line[at..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                if let Some(found) = found.take() {
                    let _ = found.send(url);
                }
            }
        }
    });
    let url = url
        .recv_timeout(Duration::from_secs(60))
        .expect("`shopflow demo --http` announces its URL on standard error");
    (guard, url)
}

/// Starts chromedriver on a free port; fails (never skips) when it is not installed.
fn start_chromedriver() -> (Guard, String) {
    let port = free_port();
    let mut command = Command::new("chromedriver");
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .expect("chromedriver runs: install Debian's chromium and chromium-driver (.ci/run does)");
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver does not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, format!("http://127.0.0.1:{port}"))
}

/// The browser, driven synchronously (each step blocks on the WebDriver call).
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
}

impl Browser {
    fn connect(webdriver: &str) -> Browser {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800", "--hide-scrollbars"],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = runtime
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(webdriver),
            )
            .expect("chromedriver starts a headless Chromium");
        Browser {
            runtime,
            client: Some(client),
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap();
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("{e}: {script}"))
    }

    fn click(&self, css: &str) {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap();
    }

    fn screenshot(&self, path: &Path) -> Vec<u8> {
        let png = self.runtime.block_on(self.client().screenshot()).unwrap();
        std::fs::write(path, &png).unwrap();
        png
    }

    fn set_size(&self, width: u32, height: u32) {
        self.runtime
            .block_on(self.client().set_window_size(width, height))
            .unwrap();
    }

    /// Polls `script` until it returns something other than null/false, or fails saying `what`.
    fn wait_for(&self, what: &str, timeout: Duration, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(script, args.clone());
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
    }
}

/// The completed timestamp the page shows, once the visible dashboard is drawn at it (an
/// expression; null before).
const SHOWN_TIME: &str = "(() => {
    const t = document.body.dataset.time;
    const s = document.querySelector('.dashboard.active');
    return t && s && s.dataset.time === t ? Number(t) : null;
  })()";

/// Everything the page shows with a raw value, read in one go (so at one timestamp): the time,
/// the stat tiles and the table rows of the dashboard `arguments[0]`.
const READ_DASHBOARD: &str = "
    const s = document.getElementById('dashboard-' + arguments[0]);
    const stats = {};
    for (const tile of s.querySelectorAll('.stat')) {
      stats[tile.dataset.stat] = [tile.dataset.value ?? null, tile.querySelector('.value').textContent];
    }
    const tables = {};
    for (const t of s.querySelectorAll('[data-table]')) {
      tables[t.dataset.table] = [...t.querySelectorAll('tbody tr')].map((tr) => ({
        key: tr.dataset.key,
        cells: Object.fromEntries([...tr.cells].map((td) => [td.dataset.field, [td.dataset.value ?? null, td.textContent]])),
      }));
    }
    return { time: Number(document.body.dataset.time), drawn: Number(s.dataset.time), stats, tables };";

/// Per chart of the dashboard `arguments[0]`: how many pixels of its canvas are drawn, and how
/// many of them in its first series' colour (a chart with axes but no line has none).
const CHART_PIXELS: &str = "
    const s = document.getElementById('dashboard-' + arguments[0]);
    return [...s.querySelectorAll('[data-chart]')].map((c) => {
      const canvas = c.querySelector('canvas');
      if (!canvas) return { chart: c.dataset.chart, drawn: 0, series: 0 };
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let drawn = 0, series = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] !== 0) drawn++;
        if (data[i] === 0x73 && data[i + 1] === 0xbf && data[i + 2] === 0x69 && data[i + 3] === 255) series++;
      }
      return { chart: c.dataset.chart, drawn, series };
    });";

/// Shows one dashboard (through its tab, as a user would) and waits until it is drawn.
fn show(browser: &Browser, dashboard: &str) -> u64 {
    browser.click(&format!("nav a[data-dashboard=\"{dashboard}\"]"));
    browser
        .wait_for(
            &format!("the {dashboard} dashboard to be drawn"),
            Duration::from_secs(20),
            &format!(
                "return document.getElementById('dashboard-{dashboard}').classList.contains('active') && ({SHOWN_TIME})"
            ),
            vec![],
        )
        .as_u64()
        .unwrap()
}

/// Integer cents as the page writes money.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}${}.{:02}", group(abs / 100), abs % 100)
}

/// A count as the page writes it.
fn count(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", group(n.unsigned_abs()))
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One row's fields, as integers (and the conversion ratio).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Fields {
    clicks: i64,
    purchases: i64,
    units: i64,
    revenue_cents: i64,
    conversion: f64,
}

impl Fields {
    /// The fields the page shows as numbers: each name, value and text as the page writes it.
    fn shown(&self) -> [(&'static str, i64, String); 4] {
        [
            (
                "revenue_cents",
                self.revenue_cents,
                money(self.revenue_cents),
            ),
            ("purchases", self.purchases, count(self.purchases)),
            ("units", self.units, count(self.units)),
            ("clicks", self.clicks, count(self.clicks)),
        ]
    }
}

impl Fields {
    fn from_json(fields: &Value) -> Fields {
        let int = |name: &str| {
            fields[name]
                .as_i64()
                .unwrap_or_else(|| panic!("{name} in {fields}"))
        };
        let (clicks, purchases) = (int("clicks"), int("purchases"));
        // The engine's ratio, computed here: serde_json's default float parsing may be a unit in
        // the last place off the number the API wrote (the browser parses it exactly).
        let conversion = if clicks > 0 {
            purchases as f64 / clicks as f64
        } else {
            0.0
        };
        let parsed = fields["conversion"].as_f64().unwrap();
        assert!(
            (parsed - conversion).abs() <= 1e-12,
            "conversion {parsed} in {fields}"
        );
        Fields {
            clicks,
            purchases,
            units: int("units"),
            revenue_cents: int("revenue_cents"),
            conversion,
        }
    }

    /// From line protocol fields: `clicks=4i,purchases=1i,...,conversion=0.25`.
    fn from_line_protocol(fields: &str) -> Fields {
        let mut out = Fields::default();
        for field in fields.split(',') {
            let (name, value) = field.split_once('=').unwrap();
            let int = || value.trim_end_matches('i').parse::<i64>().unwrap();
            match name {
                "clicks" => out.clicks = int(),
                "purchases" => out.purchases = int(),
                "units" => out.units = int(),
                "revenue_cents" => out.revenue_cents = int(),
                "conversion" => out.conversion = value.parse().unwrap(),
                other => panic!("unknown field {other}"),
            }
        }
        out
    }
}

/// One measurement's all-time rows, by the page's row key (`name=value` tags joined by commas,
/// in the page's order).
type Rows = BTreeMap<String, Fields>;

/// The JSON body `url` answers with, failing the test on any error.
fn get_json(url: &str) -> Value {
    let text = reqwest::blocking::get(url)
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The all-time rows of `measurement` from the API, with the time they are at.
fn api_rows(base: &str, measurement: &str, key_tags: &[&str]) -> (u64, Rows) {
    let url = format!("{base}api/rows?measurement={measurement}&window=all");
    let body = get_json(&url);
    let rows = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let key = key_tags
                .iter()
                .map(|t| format!("{t}={}", row["tags"][t].as_str().unwrap()))
                .collect::<Vec<_>>()
                .join(",");
            (key, Fields::from_json(&row["fields"]))
        })
        .collect();
    (body["time"].as_u64().expect("the API's time"), rows)
}

/// The all-time rows of `measurement` as the line protocol file has them at completed timestamp
/// `time`: the file up to that timestamp's batch (each batch is flushed whole and ends with its
/// `pipeline` line; all-time rows carry their batch's timestamp).
fn file_rows(path: &Path, time: u64, measurement: &str, key_tags: &[&str]) -> Rows {
    let prefix = file_through(path, time);
    let head = format!("{measurement},");
    final_state(&prefix)
        .into_iter()
        .filter_map(|(series, fields)| {
            let tags = series.strip_prefix(&head)?.strip_suffix(",window=all")?;
            let tags: BTreeMap<&str, &str> = tags
                .split(',')
                .map(|t| t.split_once('=').unwrap())
                .collect();
            let key = key_tags
                .iter()
                .map(|t| format!("{t}={}", tags[t]))
                .collect::<Vec<_>>()
                .join(",");
            Some((key, Fields::from_line_protocol(&fields)))
        })
        .collect()
}

/// The line protocol file up to the end of completed timestamp `time`'s batch, once written.
fn file_through(path: &Path, time: u64) -> String {
    let end = format!(" {time}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let batch_end = text
            .lines()
            .scan(0, |offset, line| {
                *offset += line.len() + 1;
                Some((*offset, line))
            })
            .find(|(_, line)| line.starts_with("pipeline ") && line.ends_with(&end));
        if let Some((offset, _)) = batch_end {
            return text[..offset].to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the line protocol file has no batch at {time} (no `pipeline` line)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One measurement's rows of the window starting at `start`, by their tags (name -> value).
type WindowRows = BTreeMap<BTreeMap<String, String>, Fields>;

/// The rows of `measurement`'s window starting at `start` from the API, with the time they are at.
fn api_window_rows(base: &str, measurement: &str, start: u64) -> (u64, WindowRows) {
    let url = format!("{base}api/rows?measurement={measurement}&window={start}");
    let body = get_json(&url);
    let rows = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            assert_eq!(row["window"].as_u64(), Some(start), "{url}: {row}");
            let tags = row["tags"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (tags, Fields::from_json(&row["fields"]))
        })
        .collect();
    (body["time"].as_u64().expect("the API's time"), rows)
}

/// The rows of `measurement`'s window starting at `start` as the line protocol file has them at
/// completed timestamp `time`: window rows are written at their window's start (tagged with the
/// window's size), a later line of the same series and start replacing an earlier one; a row
/// written with every field zero is a removed one.
fn file_window_rows(path: &Path, time: u64, measurement: &str, start: u64) -> WindowRows {
    let head = format!("{measurement},");
    let mut rows = WindowRows::new();
    for line in file_through(path, time).lines() {
        let (series, rest) = crate::cli::split_unescaped(line, ' ').unwrap();
        let (fields, at) = crate::cli::split_unescaped(rest, ' ').unwrap();
        let Some(tags) = series.strip_prefix(&head) else {
            continue;
        };
        if at.parse::<u64>().unwrap() != start || tags.ends_with(",window=all") {
            continue;
        }
        let tags: BTreeMap<String, String> = tags
            .split(',')
            .map(|t| t.split_once('=').unwrap())
            .filter(|(name, _)| *name != "window")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let fields = Fields::from_line_protocol(fields);
        if fields == Fields::default() {
            rows.remove(&tags);
        } else {
            rows.insert(tags, fields);
        }
    }
    rows
}

/// Checks one table row the page shows against the oracle's fields: each raw value exactly, and
/// its text as the page formats it.
fn check_cells(context: &str, cells: &Value, expected: &Fields) {
    let cell = |field: &str| -> (Option<String>, String) {
        let c = &cells[field];
        (
            c[0].as_str().map(str::to_owned),
            c[1].as_str().unwrap_or_default().to_owned(),
        )
    };
    for (field, value, text) in expected.shown() {
        if cells.get(field).is_none() {
            continue;
        }
        assert_eq!(
            cell(field),
            (Some(value.to_string()), text),
            "{context}: {field}"
        );
    }
    let (raw, text) = cell("conversion");
    let raw: f64 = raw.expect("a conversion").parse().unwrap();
    assert_eq!(raw, expected.conversion, "{context}: conversion");
    let shown: f64 = text.trim_end_matches('%').parse().unwrap();
    assert!(
        (shown - expected.conversion * 100.0).abs() <= 0.05 + 1e-9,
        "{context}: conversion shown {text}, is {}",
        expected.conversion
    );
}

/// Checks what one dashboard shows at `time` against `oracle` (all-time rows per measurement):
/// the top campaigns and totals (campaigns), or every segment, country and state (demographics).
fn check_dashboard(dashboard: &str, page: &Value, oracle: &BTreeMap<&str, Rows>, who: &str) {
    let time = page["time"].as_u64().unwrap();
    let context = |what: &str| format!("{dashboard} at {time} against {who}: {what}");
    let table = |name: &str| page["tables"][name].as_array().unwrap().clone();
    match dashboard {
        "campaigns" => {
            let campaigns = &oracle["campaign"];
            assert!(!campaigns.is_empty(), "{}", context("no campaigns"));
            let mut ranked: Vec<(&String, &Fields)> = campaigns.iter().collect();
            let id = |key: &str| key.trim_start_matches("campaign=").parse::<u64>().unwrap();
            ranked.sort_by(|a, b| {
                b.1.revenue_cents
                    .cmp(&a.1.revenue_cents)
                    .then(id(a.0).cmp(&id(b.0)))
            });
            let shown = table("top");
            let expected: Vec<&String> = ranked.iter().take(10).map(|(k, _)| *k).collect();
            let keys: Vec<&str> = shown.iter().map(|r| r["key"].as_str().unwrap()).collect();
            assert_eq!(keys, expected, "{}", context("the top ten campaigns"));
            for row in &shown {
                let key = row["key"].as_str().unwrap();
                check_cells(&context(key), &row["cells"], &campaigns[key]);
            }
            let total = campaigns.values().fold(Fields::default(), |t, f| Fields {
                clicks: t.clicks + f.clicks,
                purchases: t.purchases + f.purchases,
                units: t.units + f.units,
                revenue_cents: t.revenue_cents + f.revenue_cents,
                conversion: 0.0,
            });
            let stats = &page["stats"];
            for (stat, value, text) in total.shown() {
                assert_eq!(
                    stats[stat],
                    json!([value.to_string(), text]),
                    "{}",
                    context(&format!("the total {stat}"))
                );
            }
        }
        "demographics" => {
            for (name, measurement) in [
                ("segments", "age_gender"),
                ("countries", "country"),
                ("states", "state"),
            ] {
                let rows = &oracle[measurement];
                assert!(
                    !rows.is_empty(),
                    "{}",
                    context(&format!("no {measurement} rows"))
                );
                let shown: BTreeMap<String, Value> = table(name)
                    .into_iter()
                    .map(|r| (r["key"].as_str().unwrap().to_owned(), r["cells"].clone()))
                    .collect();
                assert_eq!(
                    shown.keys().collect::<Vec<_>>(),
                    rows.keys().collect::<Vec<_>>(),
                    "{}",
                    context(&format!("the {name} table's rows"))
                );
                for (key, cells) in &shown {
                    check_cells(&context(&format!("{name} {key}")), cells, &rows[key]);
                }
            }
        }
        other => panic!("no oracle for {other}"),
    }
}

/// The measurements each checked dashboard shows, with the tags of its rows' keys.
fn measurements_of(dashboard: &str) -> &'static [(&'static str, &'static [&'static str])] {
    match dashboard {
        "campaigns" => &[("campaign", &["campaign"])],
        _ => &[
            ("age_gender", &["age_band", "gender"]),
            ("country", &["country"]),
            ("state", &["country", "state"]),
        ],
    }
}

/// Reads what `dashboard` shows and checks it against the API's rows at the same timestamp and
/// against the line protocol file at that timestamp. The page and the API move on every second,
/// so both are read until they agree on the time. Returns that time.
fn check_numbers(browser: &Browser, base: &str, output: &Path, dashboard: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = browser.js(READ_DASHBOARD, vec![json!(dashboard)]);
        let time = page["time"].as_u64().unwrap();
        assert_eq!(
            page["drawn"].as_u64(),
            Some(time),
            "{dashboard} is drawn at the time shown"
        );
        let mut api = BTreeMap::new();
        let mut agree = true;
        for (measurement, tags) in measurements_of(dashboard) {
            let (at, rows) = api_rows(base, measurement, tags);
            agree &= at == time;
            api.insert(*measurement, rows);
        }
        if agree {
            check_dashboard(dashboard, &page, &api, "the API");
            let file = measurements_of(dashboard)
                .iter()
                .map(|(m, tags)| (*m, file_rows(output, time, m, tags)))
                .collect();
            check_dashboard(dashboard, &page, &file, "the line protocol file");
            return time;
        }
        assert!(
            Instant::now() < deadline,
            "the page and the API never showed the same timestamp"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the charts of the dashboard `arguments[0]` draw (their `data-series`), with the time.
const READ_CHARTS: &str = "
    const s = document.getElementById('dashboard-' + arguments[0]);
    const charts = {};
    for (const c of s.querySelectorAll('[data-chart]')) {
      charts[c.dataset.chart] = c.dataset.series ? JSON.parse(c.dataset.series) : null;
    }
    return { time: Number(document.body.dataset.time), drawn: Number(s.dataset.time), charts };";

/// The windowed measurement each chart of `dashboard` draws.
fn chart_measurement(dashboard: &str, chart: &str) -> &'static str {
    match (dashboard, chart) {
        ("purchases" | "campaigns", _) => "campaign",
        ("demographics", "age" | "gender") => "age_gender",
        ("demographics", "countries") => "country",
        other => panic!("no oracle for the chart {other:?}"),
    }
}

/// What a series of a chart of `dashboard` draws at one window, from that window's rows: which
/// rows its label stands for, and which field (in dollars for money), summed as the page sums
/// them; `None` where no row counts (the page draws a gap).
fn expected_point(dashboard: &str, chart: &str, label: &str, rows: &WindowRows) -> Option<String> {
    // The rows the label stands for (by one tag's value, or every row), and the field.
    let (chosen, field): (Option<(&str, &str)>, &str) = match (dashboard, chart, label) {
        ("purchases", "revenue", "revenue") => (None, "dollars"),
        ("purchases", _, field) => (None, field),
        ("campaigns", "revenue", _) => (
            Some((
                "campaign",
                label.strip_prefix("campaign ").expect("a campaign label"),
            )),
            "dollars",
        ),
        ("demographics", "age", _) => (Some(("age_band", label)), "dollars"),
        ("demographics", "gender", _) => (Some(("gender", label)), "purchases"),
        ("demographics", "countries", _) => (Some(("country", label)), "dollars"),
        other => panic!("no oracle for the series {other:?}"),
    };
    let summed = rows
        .iter()
        .filter(|(tags, _)| {
            chosen.is_none_or(|(tag, value)| tags.get(tag).map(String::as_str) == Some(value))
        })
        .map(|(_, f)| *f)
        .reduce(|t, f| Fields {
            clicks: t.clicks + f.clicks,
            purchases: t.purchases + f.purchases,
            units: t.units + f.units,
            revenue_cents: t.revenue_cents + f.revenue_cents,
            conversion: 0.0,
        })?;
    // The shortest text of the number, as JavaScript's String() writes it (and Rust's Display,
    // for numbers of this size): equal texts are equal numbers.
    Some(match field {
        "dollars" => format!("{}", summed.revenue_cents as f64 / 100.0),
        "conversion" if summed.clicks > 0 => {
            format!("{}", summed.purchases as f64 / summed.clicks as f64)
        }
        "conversion" => return None,
        "purchases" => summed.purchases.to_string(),
        "units" => summed.units.to_string(),
        "clicks" => summed.clicks.to_string(),
        other => panic!("no field {other}"),
    })
}

/// The newest windows of each chart compared.
const COMPARED_WINDOWS: usize = 4;

/// Reads what the windowed charts of `dashboard` draw and checks every point of their newest
/// [`COMPARED_WINDOWS`] windows the engine still keeps (`http.recent-windows`) against the rows
/// the engine wrote of that window by the page's timestamp (the line protocol file holds every
/// timestamp's), and the API's rows of each such window against the file's at the API's own
/// timestamp. No two reads need to land in the same second: the page's and each API answer's
/// timestamps are each checked against the file at that timestamp (a loaded machine took longer
/// than a tick for the requests of one dashboard, which an earlier version needed). Returns the
/// page's time and how many windows were compared.
fn check_charts(browser: &Browser, base: &str, output: &Path, dashboard: &str) -> (u64, usize) {
    let page = browser.js(READ_CHARTS, vec![json!(dashboard)]);
    let time = page["time"].as_u64().unwrap();
    assert_eq!(
        page["drawn"].as_u64(),
        Some(time),
        "{dashboard} drawn at the time shown"
    );
    let charts = page["charts"].as_object().unwrap();
    assert!(!charts.is_empty(), "{dashboard} has charts");
    let mut compared = std::collections::BTreeSet::new();
    // The API's answer for each window a chart draws, checked against the file once.
    let mut kept: BTreeMap<(&str, u64), bool> = BTreeMap::new();
    for (chart, drawn) in charts {
        assert!(!drawn.is_null(), "{dashboard}/{chart} draws nothing");
        let measurement = chart_measurement(dashboard, chart);
        let starts = drawn["starts"].as_array().unwrap();
        let newest = starts.len().saturating_sub(COMPARED_WINDOWS);
        for (i, start) in starts.iter().enumerate().skip(newest) {
            let start = start.as_u64().unwrap();
            let engine_keeps = *kept.entry((measurement, start)).or_insert_with(|| {
                let (at, api) = api_window_rows(base, measurement, start);
                assert!(at >= time, "the API at {at}, before the page's {time}");
                assert_eq!(
                    api,
                    file_window_rows(output, at, measurement, start),
                    "{measurement} window {start} at {at}: the API against the file"
                );
                !api.is_empty()
            });
            if !engine_keeps {
                // A window the engine no longer keeps (older than its recent windows) that
                // the page still draws: nothing to compare it with.
                continue;
            }
            let rows = file_window_rows(output, time, measurement, start);
            for series in drawn["series"].as_array().unwrap() {
                let label = series["label"].as_str().unwrap();
                let shown = series["values"][i].as_str().map(str::to_owned);
                assert_eq!(
                    shown,
                    expected_point(dashboard, chart, label, &rows),
                    "{dashboard}/{chart} {label} at window {start}, timestamp {time}"
                );
            }
            compared.insert(start);
        }
    }
    assert!(!compared.is_empty(), "{dashboard}: no window compared");
    (time, compared.len())
}

/// Checks a screenshot is a PNG of the window's size with something on it.
fn check_png(png: &[u8], what: &str) {
    let decoder = png::Decoder::new(png);
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert!(info.width >= 300 && info.height >= 300, "{what}: {info:?}");
    let pixel = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        buffer[..info.buffer_size()].chunks(pixel).collect();
    assert!(
        colours.len() >= 16,
        "{what} is blank ({} colours)",
        colours.len()
    );
}

/// The page of `shopflow demo`, in Chromium: loads, draws the four dashboards, shows exactly the
/// engine's rows at its timestamp, and follows the engine without reloading.
#[test]
#[ignore = "runs a headless Chromium: Debian packages chromium and chromium-driver"]
fn the_dashboard_shows_the_engines_rows_live() {
    let out = output_dir();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("demo.lp");
    let (_demo, base) = start_demo(&output);
    let (_driver, webdriver) = start_chromedriver();
    let browser = Browser::connect(&webdriver);

    browser.goto(&base);
    let loaded = browser
        .wait_for(
            "the page's first timestamp",
            Duration::from_secs(60),
            &format!("return {SHOWN_TIME}"),
            vec![],
        )
        .as_u64()
        .unwrap();
    let title = browser.js("return document.title", vec![]);
    assert_eq!(title, json!("shopflow"));
    let tabs = browser.js(
        "return [...document.querySelectorAll('nav a')].map((a) => a.dataset.dashboard)",
        vec![],
    );
    assert_eq!(tabs, json!(DASHBOARDS));
    // Marks this document: a reload would lose the mark.
    browser.js("window.shopflowTestMark = 1; return null", vec![]);

    // Every dashboard draws its charts, each with its line, and has a screenshot.
    for dashboard in DASHBOARDS {
        show(&browser, dashboard);
        if dashboard == "pipeline" {
            // Its throughput chart needs two timestamps seen by the page.
            browser.wait_for(
                "a second timestamp",
                Duration::from_secs(20),
                &format!("return ({SHOWN_TIME}) > {loaded}"),
                vec![],
            );
        }
        let charts = browser.wait_for(
            &format!("the {dashboard} charts"),
            Duration::from_secs(20),
            &format!(
                "const c = (() => {{ {CHART_PIXELS} }})(); return c.every((x) => x.series > 0) && c"
            ),
            vec![json!(dashboard)],
        );
        let charts = charts.as_array().unwrap();
        assert!(!charts.is_empty(), "{dashboard} has charts");
        for chart in charts {
            assert!(
                chart["drawn"].as_u64().unwrap() > 1_000,
                "{dashboard}: {chart}"
            );
        }
        let png = browser.screenshot(&out.join(format!("{dashboard}-1280x800.png")));
        check_png(&png, &format!("the {dashboard} screenshot"));
    }

    // The numbers are the engine's at the timestamp shown, and follow it as timestamps complete.
    let mut seen = Vec::new();
    for dashboard in ["campaigns", "demographics", "campaigns"] {
        show(&browser, dashboard);
        let time = check_numbers(&browser, &base, &output, dashboard);
        if let Some(&before) = seen.last() {
            assert!(time >= before, "time went back: {seen:?} then {time}");
        }
        seen.push(time);
        // Waits for the next timestamp, so the next check is at a later one.
        browser.wait_for(
            "a new completed timestamp",
            Duration::from_secs(20),
            &format!("return ({SHOWN_TIME}) > {time}"),
            vec![],
        );
    }
    assert!(seen[2] > seen[0], "the page never moved on: {seen:?}");

    // The windowed charts draw the engine's window rows, point for point.
    for dashboard in ["purchases", "campaigns", "demographics"] {
        show(&browser, dashboard);
        let (time, windows) = check_charts(&browser, &base, &output, dashboard);
        eprintln!(
            "{dashboard}: the charts' points of {windows} window(s) equal the rows at {time}"
        );
    }
    let mark = browser.js("return window.shopflowTestMark ?? null", vec![]);
    assert_eq!(mark, json!(1), "the page reloaded instead of updating");

    // A phone's width: nothing wider than the screen.
    browser.set_size(390, 844);
    show(&browser, "demographics");
    let overflow = browser.js(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
        vec![],
    );
    assert_eq!(overflow, json!(0), "the page scrolls sideways on a phone");
    let png = browser.screenshot(&out.join("demographics-phone.png"));
    check_png(&png, "the phone screenshot");
}
