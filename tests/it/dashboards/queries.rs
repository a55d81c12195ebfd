//! Every panel's query, after a real run: with Grafana's macros and variables expanded as Grafana
//! expands them, it returns rows from the real InfluxDB or MariaDB.

use super::*;

/// Grafana's `roundInterval`: the interval a panel gets for `range / resolution`.
fn round_interval(ms: u64) -> u64 {
    const STEPS: &[(u64, u64)] = &[
        (15, 10),
        (35, 20),
        (75, 50),
        (150, 100),
        (350, 200),
        (750, 500),
        (1_500, 1_000),
        (3_500, 2_000),
        (7_500, 5_000),
        (12_500, 10_000),
        (17_500, 15_000),
        (25_000, 20_000),
        (45_000, 30_000),
        (90_000, 60_000),
        (210_000, 120_000),
        (450_000, 300_000),
        (750_000, 600_000),
        (1_050_000, 900_000),
        (1_500_000, 1_200_000),
        (2_700_000, 1_800_000),
        (5_400_000, 3_600_000),
        (9_000_000, 7_200_000),
        (16_200_000, 10_800_000),
        (32_400_000, 21_600_000),
        (86_400_000, 43_200_000),
    ];
    STEPS
        .iter()
        .find(|(below, _)| ms < *below)
        .map_or(86_400_000, |(_, step)| *step)
}

/// An interval as Grafana writes it: `500ms`, `2s`, `1m`, `1h`, `1d`.
fn format_interval(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn parse_interval(text: &str) -> u64 {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits]
        .parse()
        .unwrap_or_else(|_| panic!("an interval: {text}"));
    n * match &text[digits..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => panic!("an interval unit: {other}"),
    }
}

/// What a dashboard's variables resolved to on the real data.
struct Variable {
    values: Vec<String>,
    /// Multi-value or with "All": Grafana escapes (InfluxQL) or quotes (SQL) its values.
    formatted: bool,
    /// The dashboard opens with "All" selected.
    all: bool,
    all_value: Option<String>,
}

impl Variable {
    fn interpolate(&self, kind: &str) -> String {
        let escape = |v: &str| {
            let mut out = String::new();
            for c in v.chars() {
                if "\\^$*+?.()|[]{}/".contains(c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        };
        let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
        if self.all
            && let Some(all) = &self.all_value
        {
            return all.clone();
        }
        let chosen: &[String] = if self.all {
            &self.values
        } else {
            &self.values[..1]
        };
        match (kind, self.formatted) {
            (_, false) => chosen[0].clone(),
            ("influxdb", true) if chosen.len() == 1 && !self.all => escape(&chosen[0]),
            ("influxdb", true) => {
                format!(
                    "({})",
                    chosen
                        .iter()
                        .map(|v| escape(v))
                        .collect::<Vec<_>>()
                        .join("|")
                )
            }
            (_, true) => chosen
                .iter()
                .map(|v| quote(v))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The time range and the per-panel interval a Grafana would query with.
struct Range {
    from_ms: u64,
    to_ms: u64,
}

/// Expands Grafana's variables and macros in `query` for a data source of type `kind`.
fn grafana_expand(
    query: &str,
    kind: &str,
    range: &Range,
    interval_ms: u64,
    variables: &BTreeMap<String, Variable>,
) -> Result<String, String> {
    let (from_s, to_s) = (range.from_ms / 1_000, range.to_ms / 1_000);
    expand(query, |reference| match reference {
        Reference::Variable { name, format } => {
            if let Some(format) = format {
                return Err(format!("${{{name}:{format}}} is not expanded by this test"));
            }
            Ok(match name.as_str() {
                "timeFilter" if kind == "influxdb" => {
                    format!("time >= {}ms and time <= {}ms", range.from_ms, range.to_ms)
                }
                "__interval" => format_interval(interval_ms),
                "__interval_ms" => interval_ms.to_string(),
                "__from" => range.from_ms.to_string(),
                "__to" => range.to_ms.to_string(),
                _ => match variables.get(name.as_str()) {
                    Some(v) => v.interpolate(kind),
                    None => return Err(format!("${name}: unknown here")),
                },
            })
        }
        Reference::Macro { name, args } if kind == "mysql" => {
            let column = args.first().cloned().unwrap_or_default();
            let seconds = |arg: Option<&String>| {
                let text = arg.map(|a| a.trim_matches(['\'', '"'])).unwrap_or("");
                let text = if text == "$__interval" {
                    format_interval(interval_ms)
                } else {
                    text.to_owned()
                };
                parse_interval(&text) / 1_000
            };
            Ok(match name.as_str() {
                "__timeFilter" => {
                    format!("{column} BETWEEN FROM_UNIXTIME({from_s}) AND FROM_UNIXTIME({to_s})")
                }
                "__timeFrom" => format!("FROM_UNIXTIME({from_s})"),
                "__timeTo" => format!("FROM_UNIXTIME({to_s})"),
                "__timeGroup" | "__timeGroupAlias" => {
                    let s = seconds(args.get(1));
                    let group = format!("UNIX_TIMESTAMP({column}) DIV {s} * {s}");
                    if name == "__timeGroupAlias" {
                        format!("{group} AS \"time\"")
                    } else {
                        group
                    }
                }
                "__unixEpochFilter" => format!("{column} >= {from_s} AND {column} <= {to_s}"),
                other => return Err(format!("${other}(…) is not expanded by this test")),
            })
        }
        Reference::Macro { name, .. } => Err(format!("${name}(…) in a {kind} query")),
    })
}

/// Runs an InfluxQL query; rows that hold at least one value other than the time.
fn influx_rows(
    client: &reqwest::blocking::Client,
    url: &str,
    database: &str,
    query: &str,
) -> Result<usize, String> {
    let params = [("db", database), ("q", query), ("epoch", "ms")];
    let url = reqwest::Url::parse_with_params(&format!("{url}/query"), &params)
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if let Some(error) = json["error"].as_str() {
        return Err(error.to_owned());
    }
    let mut rows = 0;
    for result in json["results"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(error) = result["error"].as_str() {
            return Err(error.to_owned());
        }
        let mut statement_rows = 0;
        for series in result["series"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let columns = series["columns"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for row in series["values"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let values = row.as_array().map(Vec::as_slice).unwrap_or(&[]);
                let has_value = values
                    .iter()
                    .zip(columns)
                    .any(|(v, c)| c != "time" && !v.is_null());
                if has_value {
                    statement_rows += 1;
                }
            }
        }
        if statement_rows == 0 {
            return Ok(0);
        }
        rows += statement_rows;
    }
    Ok(rows)
}

/// Runs a SQL query; rows with at least one non-NULL value. Time series need a `time` column.
fn mysql_rows(
    conn: &mut mysql::PooledConn,
    query: &str,
    time_series: bool,
) -> Result<usize, String> {
    use mysql::prelude::Queryable;
    let mut result = conn.query_iter(query).map_err(|e| e.to_string())?;
    let columns: Vec<String> = result
        .columns()
        .as_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    if time_series && !columns.iter().any(|c| c == "time") {
        return Err(format!(
            "a time series needs a column named time: {columns:?}"
        ));
    }
    let mut rows = 0;
    for row in result.by_ref() {
        let row = row.map_err(|e| e.to_string())?;
        if row.unwrap().iter().any(|v| *v != mysql::Value::NULL) {
            rows += 1;
        }
    }
    Ok(rows)
}

#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn every_panel_query_returns_rows_after_a_real_run() {
    use mysql::prelude::Queryable;
    use shopflow::writers::{self, kafka::EventProducer};

    let started_ms = shopflow::runtime::now_ms();
    let db = crate::support::services::TestDatabase::create("shopflow_dash");
    let (influx_url, brokers, database, pool, mysql) = db.parts();
    let topic = database.replace('_', "-");

    // The stack's services, as docker-compose.yml runs them, on the integration services.
    let shopflow = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command
            .args(args)
            .env("SHOPFLOW__GENERATOR__USERS", "5000")
            .env("SHOPFLOW__KAFKA__BROKERS", &brokers)
            .env("SHOPFLOW__KAFKA__TOPIC", &topic)
            .env("SHOPFLOW__KAFKA__GROUP_ID", &topic)
            .env("SHOPFLOW__MYSQL__URL", &mysql.url)
            .env("SHOPFLOW__INFLUX__URL", &influx_url)
            .env("SHOPFLOW__INFLUX__DATABASE", &database);
        command
    };
    let status = shopflow(&["load-demographics"])
        .status()
        .expect("shopflow runs");
    assert!(status.success(), "load-demographics");

    // The topic, and malformed messages of each kind for the pipeline-health panels.
    // The built-in configuration's Kafka settings, pointed at the test's broker and topic.
    let mut kafka = shopflow::config::Config::load(None)
        .expect("the built-in configuration")
        .kafka;
    kafka.brokers = brokers.clone();
    kafka.topic = topic.clone();
    kafka.group_id = topic.clone();
    writers::kafka::ensure_topic(&kafka, &topic).expect("the topic");
    let mut producer = EventProducer::new(&kafka).expect("a producer");
    crate::support::services::send_malformed(&mut producer);
    producer.flush(Duration::from_secs(10)).expect("flushed");

    // The pipeline, while the producer sends events in real time (one batch per tick).
    let pipeline = shopflow(&["run", "-w", "2", "--start", "earliest", "--duration", "14s"])
        .spawn()
        .expect("shopflow runs");
    std::thread::sleep(Duration::from_secs(1));
    let produced = shopflow(&[
        "produce",
        "--rate",
        "2000",
        "--pace",
        "realtime",
        "--duration",
        "8s",
    ])
    .status()
    .expect("shopflow runs");
    assert!(produced.success(), "produce");
    let output = pipeline.wait_with_output().expect("the pipeline ends");
    assert!(output.status.success(), "the pipeline failed");

    let client = reqwest::blocking::Client::new();
    // `shopflow run` writes `runtime` points; should it not, this test writes what it would.
    let measurements = influx_rows(
        &client,
        &influx_url,
        &database,
        "SHOW MEASUREMENTS WITH MEASUREMENT = \"runtime\"",
    )
    .expect("SHOW MEASUREMENTS");
    if measurements == 0 {
        let now = shopflow::runtime::now_ms();
        let lines: String = (0..5u64)
            .map(|i| {
                format!(
                    "runtime,process=0 consumer_lag={}i,freshness_ms={}i,sink_retries={}i,events_per_second={} {}\n",
                    100 - i * 20,
                    900 + i * 10,
                    i / 3,
                    1_500.0 + i as f64,
                    now - 4_000 + i * 1_000
                )
            })
            .collect();
        let url = reqwest::Url::parse_with_params(
            &format!("{influx_url}/write"),
            &[("db", database.as_str()), ("precision", "ms")],
        )
        .expect("a URL");
        let response = client
            .post(url)
            .body(lines)
            .send()
            .expect("InfluxDB answers");
        assert!(response.status().is_success(), "runtime points written");
    }

    let range = Range {
        from_ms: started_ms - 15 * 60_000,
        to_ms: shopflow::runtime::now_ms() + 60_000,
    };
    let datasources = provisioned_datasources();
    let mut conn = pool.get_conn().expect("a connection");
    conn.query_drop(format!("USE `{database}`")).expect("use");

    let mut checked = 0;
    let mut failures = Vec::new();
    for (file, dashboard) in dashboards() {
        let kind_of = |ds: &Value| {
            let uid = ds["uid"].as_str().unwrap_or("");
            datasources
                .get(uid)
                .map(|d| d.kind.clone())
                .unwrap_or_else(|| panic!("{file}: data source {uid}"))
        };
        let min_interval_of = |ds: &Value| {
            let uid = ds["uid"].as_str().unwrap_or("");
            datasources[uid]
                .yaml
                .get("jsonData")
                .and_then(|j| j.str("timeInterval"))
                .map_or(0, parse_interval)
        };

        // Variables first, in order, as the dashboard loads them.
        let mut variables = BTreeMap::new();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let name = variable["name"].as_str().unwrap_or("").to_owned();
            assert_eq!(
                variable["type"], "query",
                "{file}: {name}: only query variables are expanded here"
            );
            let kind = kind_of(&variable["datasource"]);
            let query = grafana_expand(
                variable_query(variable).unwrap_or(""),
                &kind,
                &range,
                1_000,
                &variables,
            )
            .unwrap_or_else(|e| panic!("{file}: variable {name}: {e}"));
            let values: Vec<String> = match kind.as_str() {
                "influxdb" => {
                    let params = [("db", database.as_str()), ("q", query.as_str())];
                    let url =
                        reqwest::Url::parse_with_params(&format!("{influx_url}/query"), &params)
                            .expect("a URL");
                    let body = client
                        .get(url)
                        .send()
                        .and_then(|r| r.text())
                        .expect("InfluxDB answers");
                    let json: Value = serde_json::from_str(&body).expect("JSON");
                    let mut values = Vec::new();
                    for series in json["results"][0]["series"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or(&[])
                    {
                        let columns = series["columns"]
                            .as_array()
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        let index = columns.iter().position(|c| c == "value").unwrap_or(0);
                        for row in series["values"]
                            .as_array()
                            .map(Vec::as_slice)
                            .unwrap_or(&[])
                        {
                            if let Some(v) = row[index].as_str() {
                                values.push(v.to_owned());
                            }
                        }
                    }
                    values
                }
                _ => conn
                    .query_map(&query, |row: mysql::Row| {
                        row.get::<String, _>(0).unwrap_or_default()
                    })
                    .unwrap_or_else(|e| panic!("{file}: variable {name}: {e}")),
            };
            checked += 1;
            if values.is_empty() {
                failures.push(format!("{file}: variable {name}: no values for {query}"));
                continue;
            }
            let current = &variable["current"]["value"];
            let all = variable["includeAll"] == true
                && (current == "$__all"
                    || current
                        .as_array()
                        .is_some_and(|a| a.iter().any(|v| v == "$__all")));
            variables.insert(
                name,
                Variable {
                    values,
                    formatted: variable["multi"] == true || variable["includeAll"] == true,
                    all,
                    all_value: variable["allValue"]
                        .as_str()
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned),
                },
            );
        }

        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("");
            for target in panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let Some((_, query)) = target_query(target) else {
                    continue;
                };
                let kind = kind_of(&target["datasource"]);
                // $__interval: the range over the panel's width in pixels, rounded as Grafana
                // rounds it, at least the panel's and the data source's minimum interval.
                let width_px = panel["gridPos"]["w"].as_u64().unwrap_or(24) * 1_920 / 24;
                let low = panel["interval"]
                    .as_str()
                    .map_or(0, parse_interval)
                    .max(min_interval_of(&target["datasource"]));
                let interval = round_interval((range.to_ms - range.from_ms) / width_px).max(low);
                let expanded = match grafana_expand(query, &kind, &range, interval, &variables) {
                    Ok(q) => q,
                    Err(e) => {
                        failures.push(format!("{file}: {title}: {e}"));
                        continue;
                    }
                };
                let time_series = target["format"] == "time_series";
                checked += 1;
                let rows = match kind.as_str() {
                    "influxdb" => influx_rows(&client, &influx_url, &database, &expanded),
                    _ => mysql_rows(&mut conn, &expanded, time_series),
                };
                match rows {
                    Ok(0) => failures.push(format!("{file}: {title}: no rows from {expanded}")),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{file}: {title}: {e}: {expanded}")),
                }
            }
        }
    }
    assert!(checked > 40, "{checked} queries checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} queries failed: {failures:#?}",
        failures.len()
    );
}
