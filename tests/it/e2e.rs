//! End to end against real services: MariaDB, Apache Kafka and InfluxDB (`scripts/test-all`).
//!
//! 100,000 demographics are loaded into MariaDB; events with late, refunded, duplicate,
//! unknown-user and malformed messages go to a Kafka topic while demographics change; the built
//! `shopflow run` reads both with 2 workers and writes InfluxDB. Every final aggregate InfluxDB
//! holds is then compared, exactly, with an oracle that knows nothing of the dataflow: SQL
//! `GROUP BY` in MariaDB over the same events and the final table.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use dataflows::model::Event;
use mysql::prelude::Queryable;
use shopflow::generators::demographics;
use shopflow::generators::events::{EventGenerator, GeneratorKnobs};
use shopflow::writers;
use shopflow::writers::kafka::EventProducer;

use crate::support::influx;
use crate::support::scenario::knobs;

const AGE_BAND: &str = "CASE WHEN d.id IS NULL THEN 'unknown' WHEN d.age < 18 THEN '<18' WHEN d.age <= 24 THEN '18-24' \
     WHEN d.age <= 34 THEN '25-34' WHEN d.age <= 44 THEN '35-44' WHEN d.age <= 54 THEN '45-54' \
     WHEN d.age <= 64 THEN '55-64' ELSE '65+' END";

/// Each measurement and its tags as SQL expressions over `counted c LEFT JOIN demographics d`.
pub(crate) fn families() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let campaign = ("campaign", "CAST(c.campaign_id AS CHAR)".to_owned());
    let country = ("country", "COALESCE(d.country, 'unknown')".to_owned());
    let state = ("state", "COALESCE(d.state, 'unknown')".to_owned());
    let band = ("age_band", AGE_BAND.to_owned());
    let gender = ("gender", "COALESCE(d.gender, 'unknown')".to_owned());
    vec![
        ("campaign", vec![campaign.clone()]),
        ("country", vec![country.clone()]),
        ("state", vec![country.clone(), state]),
        ("age_gender", vec![band.clone(), gender.clone()]),
        ("campaign_country", vec![campaign.clone(), country]),
        ("campaign_age_gender", vec![band, campaign, gender]),
    ]
}

/// `measurement,tag=value,...,window=w @time` -> `clicks,purchases,units,revenue_cents`.
pub(crate) type Rows = BTreeMap<String, String>;

pub(crate) fn oracle(conn: &mut mysql::PooledConn, window_ms: u64) -> Rows {
    let mut rows = Rows::new();
    for (measurement, tags) in families() {
        let tag_sql: Vec<&str> = tags.iter().map(|(_, sql)| sql.as_str()).collect();
        for windowed in [false, true] {
            let window_sql = if windowed {
                format!("c.event_time DIV {window_ms} * {window_ms}")
            } else {
                "0".to_owned()
            };
            let query = format!(
                "SELECT CONCAT_WS('\\t', {tags}, {window_sql}), SUM(c.clicks), SUM(c.purchases), SUM(c.units), SUM(c.total) \
                 FROM counted c LEFT JOIN demographics d ON d.id = c.user_id GROUP BY 1",
                tags = tag_sql.join(", ")
            );
            let result: Vec<(String, i64, i64, i64, i64)> =
                conn.query(query).expect("the oracle query runs");
            for (key, clicks, purchases, units, cents) in result {
                let mut parts: Vec<&str> = key.split('\t').collect();
                let window = parts.pop().expect("the window column");
                let tags: Vec<String> = tags
                    .iter()
                    .zip(parts)
                    .map(|((name, _), v)| format!("{name}={v}"))
                    .collect();
                let label = if windowed {
                    format!("window=60s @{window}")
                } else {
                    "window=all".to_owned()
                };
                rows.insert(
                    format!("{measurement},{},{label}", tags.join(",")),
                    format!("{clicks},{purchases},{units},{cents}"),
                );
            }
        }
    }
    rows.retain(|_, v| v != "0,0,0,0");
    rows
}

/// The first `events` events of `generator`.
pub(crate) fn all_events(generator: &EventGenerator, events: u64) -> Vec<Event> {
    (0..events).map(|n| generator.event(n)).collect()
}

/// Loads `all` into an `events` table of the current database, with the `counted` view the
/// [`oracle`] groups: each order's click and purchase once, refunded purchases not at all.
pub(crate) fn load_events(conn: &mut mysql::PooledConn, all: &[Event]) {
    conn.query_drop(
        "CREATE TABLE events (order_id BIGINT, tag VARCHAR(16), user_id INT UNSIGNED, campaign_id INT, \
         total BIGINT, units INT, event_time BIGINT)",
    )
    .expect("events table");
    for chunk in all.chunks(1_000) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let params: Vec<mysql::Value> = chunk
            .iter()
            .flat_map(|e| {
                [
                    e.order_id.0.into(),
                    e.tag.symbol().into(),
                    e.user_id.0.into(),
                    e.campaign_id.0.into(),
                    e.total.0.into(),
                    e.units.into(),
                    e.event_time.0.into(),
                ]
            })
            .collect();
        conn.exec_drop(format!("INSERT INTO events VALUES {values}"), params)
            .expect("inserted");
    }
    // Each order's click and purchase count once; a refunded purchase does not count.
    conn.query_drop(
        "CREATE VIEW counted AS \
         SELECT DISTINCT order_id, user_id, campaign_id, 1 AS clicks, 0 AS purchases, 0 AS units, 0 AS total, event_time \
           FROM events WHERE tag = 'click' \
         UNION ALL \
         SELECT DISTINCT order_id, user_id, campaign_id, 0, 1, units, total, event_time FROM events p \
           WHERE tag = 'purchased' AND NOT EXISTS (SELECT 1 FROM events r WHERE r.tag = 'refunded' AND r.order_id = p.order_id)",
    )
    .expect("the counted view");
}

/// The same rows as InfluxDB holds them: the last point of each all-time series, every window point.
pub(crate) fn influx_rows(url: &str, database: &str) -> (Rows, BTreeMap<String, i64>) {
    let query = |q: String| influx::answer(url, database, &q);
    let mut rows = Rows::new();
    for (measurement, _) in families() {
        for windowed in [false, true] {
            let q = if windowed {
                format!(
                    "SELECT clicks, purchases, units, revenue_cents FROM \"{measurement}\" WHERE \"window\" = '60s' GROUP BY *"
                )
            } else {
                format!(
                    "SELECT last(clicks), last(purchases), last(units), last(revenue_cents) FROM \"{measurement}\" \
                     WHERE \"window\" = 'all' GROUP BY *"
                )
            };
            let answer = query(q);
            let Some(series) = answer["results"][0]["series"].as_array() else {
                continue;
            };
            for s in series {
                let tags = s["tags"].as_object().expect("tags");
                let tag_text: Vec<String> = tags
                    .iter()
                    .filter(|(k, _)| *k != "window")
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                for value in s["values"].as_array().expect("values") {
                    let v: Vec<i64> = value.as_array().expect("a row")[1..]
                        .iter()
                        .map(|x| x.as_i64().expect("an integer"))
                        .collect();
                    let label = if windowed {
                        format!("window=60s @{}", value[0].as_u64().expect("epoch ms"))
                    } else {
                        "window=all".to_owned()
                    };
                    rows.insert(
                        format!("{measurement},{},{label}", tag_text.join(",")),
                        format!("{},{},{},{}", v[0], v[1], v[2], v[3]),
                    );
                }
            }
        }
    }
    rows.retain(|_, v| v != "0,0,0,0");
    let mut counters = BTreeMap::new();
    let answer = query("SELECT * FROM pipeline ORDER BY time DESC".to_owned());
    if let Some(series) = answer["results"][0]["series"].as_array() {
        for s in series {
            let columns = s["columns"].as_array().expect("columns");
            // Counters are written when they change; the newest non-null value of each is current.
            for value in s["values"].as_array().expect("values") {
                for (i, column) in columns.iter().enumerate().skip(1) {
                    if let Some(n) = value[i].as_i64() {
                        counters
                            .entry(column.as_str().unwrap_or("").to_owned())
                            .or_insert(n);
                    }
                }
            }
        }
    }
    (rows, counters)
}

/// Fails the test, naming the first differing rows, unless InfluxDB's rows equal the SQL oracle's.
pub(crate) fn assert_same_rows(expected: &Rows, got: &Rows) {
    let differing: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .map(|k| format!("{k}: influx {:?}, sql {:?}", got.get(k), expected.get(k)))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} rows differ: {:#?}",
        differing.len(),
        expected.len(),
        &differing[..differing.len().min(15)]
    );
}

#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn pipeline_on_real_services_equals_sql_group_by() {
    let test_database = crate::support::services::TestDatabase::create("shopflow_e2e");
    let (influx_url, brokers, database, pool, mysql_config) = test_database.parts();

    // 100,000 users, plus 500 that events name before their rows exist.
    let (seed, users, new_users) = (23, 100_000u32, 500u32);
    test_database.load_demographics(seed, users);

    let kafka = test_database.topic("shopflow-e2e", 4);
    let topic = kafka.topic.clone();

    // The pipeline, as a user runs it.
    let pipeline = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["run", "-w", "2", "--duration", "30s", "--start", "earliest"])
        .env("SHOPFLOW__KAFKA__BROKERS", &brokers)
        .env("SHOPFLOW__KAFKA__TOPIC", &topic)
        .env("SHOPFLOW__KAFKA__GROUP_ID", &topic)
        .env("SHOPFLOW__MYSQL__URL", &mysql_config.url)
        .env("SHOPFLOW__INFLUX__URL", &influx_url)
        .env("SHOPFLOW__INFLUX__DATABASE", &database)
        .env("SHOPFLOW__ENGINE__TICK_MS", "250")
        // No window closes and no order is forgotten during the run, so the result does not
        // depend on when each event happened to arrive: the SQL oracle can know it.
        .env("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "100000000000")
        .env("SHOPFLOW__ENGINE__ORDER_HORIZON_MS", "100000000000")
        .spawn()
        .expect("shopflow runs");

    // Events at 4,000/s for 7 s while 300 demographic changes happen.
    let knobs = GeneratorKnobs {
        new_users,
        campaigns: 30,
        max_lateness_ms: 180_000,
        ..knobs(seed, users, 4_000.0)
    };
    let events = 28_000u64;
    let start_ms = shopflow::runtime::now_ms() + 1_000;
    let generator = EventGenerator::new(knobs.clone(), start_ms).expect("valid knobs");
    let changer = {
        let config = mysql_config.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let mut changes = demographics::Changes::new(seed, users, new_users);
            writers::mysql::apply_changes(
                &config,
                &mut changes,
                100.0,
                Duration::from_secs(10),
                300,
            )
            .expect("changes applied")
        })
    };
    let mut producer = EventProducer::new(&kafka).expect("a producer");
    let sent = crate::support::kafka::produce(&mut producer, &generator, events);
    assert_eq!(sent, events);
    // Malformed messages: counted, and nothing else changes.
    crate::support::services::send_malformed(&mut producer);
    producer.flush(Duration::from_secs(10)).expect("flushed");
    let applied = changer.join().expect("the changer thread");
    assert_eq!(applied.changes, 300);

    let started = Instant::now();
    let status = pipeline.wait_with_output().expect("the pipeline ends");
    assert!(
        status.status.success(),
        "the pipeline failed after {:?}",
        started.elapsed()
    );

    // The oracle: the same events and the final table, in SQL.
    let mut conn = pool.get_conn().expect("a connection");
    conn.query_drop(format!("USE `{database}`")).expect("use");
    load_events(&mut conn, &all_events(&generator, events));
    let expected = oracle(&mut conn, 60_000);
    let (got, counters) = influx_rows(&influx_url, &database);

    assert!(
        expected.len() > 1_000,
        "a meaningful scenario: {} rows",
        expected.len()
    );
    assert!(
        expected.keys().any(|k| k.contains("=unknown")),
        "unknown users took part"
    );
    assert_same_rows(&expected, &got);

    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert_eq!(count("events_in"), events as i64, "{counters:?}");
    let malformed: i64 = [
        "malformed_framing",
        "malformed_unknown_schema",
        "malformed_truncated",
        "malformed_invalid_value",
    ]
    .iter()
    .map(|c| count(c))
    .sum();
    assert_eq!(malformed, 4, "{counters:?}");

    // The engine's own figures: read to the end, written without retries, fresh.
    let params = [
        ("db", database.as_str()),
        (
            "q",
            "SELECT last(consumer_lag), last(sink_retries), max(freshness_ms) FROM runtime",
        ),
    ];
    let url =
        reqwest::Url::parse_with_params(&format!("{influx_url}/query"), &params).expect("a URL");
    let body = reqwest::blocking::get(url)
        .and_then(|r| r.text())
        .expect("InfluxDB answers");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let row = &answer["results"][0]["series"][0]["values"][0];
    assert_eq!(
        (row[1].as_i64(), row[2].as_i64()),
        (Some(0), Some(0)),
        "lag and retries: {body}"
    );
    // Late events carry event times up to 3 minutes old; fresh ones are seconds behind.
    assert!(
        row[3].as_i64().is_some_and(|f| f < 200_000),
        "freshness: {body}"
    );
}
