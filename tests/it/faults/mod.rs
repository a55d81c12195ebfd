//! Faults and bad input: nothing lost, nothing counted twice, clear errors.
//!
//! Every test here that needs the real services (`scripts/test-all`) runs the built `shopflow run`
//! against MariaDB, Kafka and InfluxDB, injects a fault — bad messages, InfluxDB stopped for 30 s,
//! the Kafka broker restarted, the binlog connection killed and MariaDB restarted, MySQL
//! unreachable at start — and then compares everything InfluxDB holds with an independent oracle:
//! [`dataflows::reference::evaluate`] over the events produced and the final demographics table.
//! A steady run checks that memory stays flat and no error counter moves (`scripts/soak` runs it
//! for longer).
//!
//! Windows are 10 s; the allowed lateness and the order horizon are processing-time bounds, so the
//! fault tests set both to an hour: no window closes and no order is forgotten while they run, and
//! the final values depend only on what was delivered, not on when. The steady run lets windows
//! close and orders expire, and times its demographic changes away from the moments windows close.
//!
//! The tests stop and start services with `scripts/services.sh`, so they need services started by
//! it, with the same environment (`SHOPFLOW_SERVICES_DIR`, ports). They hold one lock, so they run
//! one at a time, and `scripts/test-all` runs them after the rest of the suite, alone.
//!
//! By what they break: bad input (`bad_input`, on the embedded Kafka and on the real services),
//! InfluxDB (`influxdb`), Kafka (`kafka`), MariaDB (`mariadb`), the pipeline killed around its
//! checkpoints (`checkpoints`), and a steady run (`soak`). What they share with the other tests
//! (the scenario and its oracle, the pipeline process, InfluxDB's contents, the services) is in
//! `crate::support`; what only they share is here.

mod bad_input;
mod checkpoints;
mod influxdb;
mod kafka;
mod mariadb;
mod soak;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dataflows::Params;
use dataflows::harness::Input;
use dataflows::model::{Counter, Demographic, Tick};
use mysql::prelude::Queryable;
use shopflow::generators::demographics;
use shopflow::generators::events::EventGenerator;
use shopflow::sources::kafka::KafkaConfig;
use shopflow::sources::mysql::{self as source};
use shopflow::writers;
use shopflow::writers::kafka::EventProducer;

use crate::support::influx::{self, State, WINDOW_MS};
use crate::support::kafka::{
    committed_lag, committed_total, produce_in_background, topic_messages,
};
use crate::support::process::{Pipeline, RssSampler, rss_kib, wait_for};
use crate::support::scenario::{Scenario, knobs, oracle, table_inputs, timeless, timeless_inputs};
use crate::support::services::{Cleanup, Stopped, env, exclusive, unique};

/// Waits until InfluxDB holds exactly the oracle's values (the pipeline has read and written
/// everything), then stops the pipeline as a user would and checks again: equal, exactly.
fn settle_and_compare(
    scenario: &Scenario,
    pipeline: &mut Pipeline,
    want: &State,
    within: Duration,
) -> State {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        pipeline.assert_running();
        if let Some(got) = influx::state(&scenario.influx_url, &scenario.database) {
            if got.matches(want) {
                break;
            }
            last = Some(got);
        }
        if Instant::now() >= deadline {
            let differences = last.map(|got| got.differences(want, 15));
            panic!(
                "InfluxDB did not reach the oracle's values within {within:?}: {differences:#?}\n{}",
                pipeline.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    pipeline.interrupt();
    let got = influx::state(&scenario.influx_url, &scenario.database)
        .expect("InfluxDB answers at the end");
    let differences = got.differences(want, 15);
    assert!(
        differences.is_empty(),
        "{} of {} rows differ after the stop: {differences:#?}",
        differences.len(),
        want.rows.len()
    );
    got
}

/// Waits until the pipeline has written something: its first `runtime` point.
fn wait_until_running(scenario: &Scenario, pipeline: &mut Pipeline) {
    wait_for(
        "the pipeline's first runtime point",
        Duration::from_secs(60),
        || {
            pipeline.assert_running();
            influx::query(
                &scenario.influx_url,
                &scenario.database,
                "SELECT count(consumer_lag) FROM runtime",
            )
            .and_then(|a| a["results"][0]["series"][0]["values"][0][1].as_i64())
            .is_some_and(|n| n > 0)
        },
    );
}

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Once every event produced is in the topic, waits until InfluxDB equals the oracle over them
/// and the table as it is now, then stops the pipeline and compares again (see
/// [`settle_and_compare`]); every event counted once.
fn settle_on_the_oracle(
    scenario: &Scenario,
    pipeline: &mut Pipeline,
    generator: &EventGenerator,
    events: u64,
) -> State {
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, generator, events, &BTreeMap::new()),
        timeless(),
    );
    let got = settle_and_compare(scenario, pipeline, &want, Duration::from_secs(120));
    assert_eq!(got.counter(Counter::EventsIn), events as i64);
    got
}

/// The base URL of the running pipeline's HTTP server (it must listen: `http.listen`), from the
/// line it prints first.
fn server_url(pipeline: &mut Pipeline) -> String {
    let mut url = String::new();
    wait_for("the server's URL", Duration::from_secs(30), || {
        pipeline.assert_running();
        let log = pipeline.log();
        let said = log
            .lines()
            .find(|l| l.starts_with("dashboard, metrics and API at "))
            .unwrap_or("");
        match said.split_whitespace().find(|w| w.starts_with("http://")) {
            Some(found) => {
                url = found.trim_end_matches('/').to_owned();
                true
            }
            None => false,
        }
    });
    url
}

/// A GET of `url`: the status and the body (status 0 when nothing answered).
fn http_get(url: &str) -> (u16, String) {
    match reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
    {
        Ok(response) => (
            response.status().as_u16(),
            response.text().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}
