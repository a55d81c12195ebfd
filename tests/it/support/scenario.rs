//! A scenario on the real services and its oracle: a test's own MariaDB and InfluxDB database
//! with generated demographics and its own Kafka topic, the `shopflow run` environment that reads
//! them, generator knobs, and the reference implementation's final values over the inputs.

use std::collections::BTreeMap;

use dataflows::Params;
use dataflows::harness::Input;
use dataflows::model::{Counter, Demographic, OutputKey, OutputValue, Tick};
use dataflows::windows::WindowSpec;
use mysql::prelude::Queryable;
use shopflow::generators::demographics;
use shopflow::generators::events::{EventGenerator, GeneratorKnobs, Pace};
use shopflow::sinks::line_protocol::{Encoder, measurement_and_tags};
use shopflow::sources::avro;
use shopflow::sources::kafka::{KafkaConfig, StartPosition};
use shopflow::sources::mysql::MysqlConfig;
use shopflow::writers;

use super::influx::{State, WINDOW_MS, row_key};
use super::services::{Cleanup, env, unique};

/// An hour: the lateness and order horizon under which nothing closes during a test.
pub const HOUR_MS: u64 = 3_600_000;

// The real services: set-up, the pipeline process, InfluxDB's contents and the oracle
// ---------------------------------------------------------------------------------------------

/// A test's own MariaDB and InfluxDB database and Kafka topic, dropped at the end.
pub struct Scenario {
    pub mysql_url: String,
    pub influx_url: String,
    pub database: String,
    pub mysql: MysqlConfig,
    pub kafka: KafkaConfig,
    _cleanup: Cleanup,
}

impl Scenario {
    /// Creates the database and topic and loads `users` generated demographics rows.
    pub fn new(name: &str, seed: u64, users: u32) -> Scenario {
        let (mysql_url, influx_url, brokers) = (
            env("SHOPFLOW_TEST_MYSQL_URL"),
            env("SHOPFLOW_TEST_INFLUX_URL"),
            env("SHOPFLOW_TEST_KAFKA_BROKERS"),
        );
        let database = unique(&format!("shopflow_{name}"));
        let cleanup = Cleanup {
            mysql_admin: mysql_url.clone(),
            database: database.clone(),
            influx: influx_url.clone(),
        };
        mysql::Pool::new(mysql_url.as_str())
            .and_then(|pool| pool.get_conn())
            .and_then(|mut conn| conn.query_drop(format!("CREATE DATABASE `{database}`")))
            .expect("a MariaDB database");
        let mysql = MysqlConfig::new(format!("{mysql_url}/{database}"));
        writers::mysql::load_demographics(
            &mysql,
            demographics::table(seed, users),
            u64::from(users),
        )
        .expect("demographics loaded");
        let topic = database.replace('_', "-");
        let kafka = KafkaConfig {
            brokers,
            topic: topic.clone(),
            partitions: 4,
            group_id: topic.clone(),
            start: StartPosition::Earliest,
            schema_id: avro::DEFAULT_SCHEMA_ID,
            schema_registry_url: String::new(),
            dead_letter_topic: String::new(),
            max_poll_messages: 10_000,
            max_message_bytes: 65_536,
            max_event_age_ms: 30 * 86_400_000,
            max_future_skew_ms: 300_000,
            max_order_cents: 1_000_000_000,
            max_units: 1_000_000,
            // No duplicates from producer retries when a broker goes away.
            properties: BTreeMap::from([("enable.idempotence".into(), "true".into())]),
        };
        writers::kafka::ensure_topic(&kafka, &topic).expect("the topic");
        Scenario {
            mysql_url,
            influx_url,
            database,
            mysql,
            kafka,
            _cleanup: cleanup,
        }
    }

    /// The environment of a `shopflow run` on this scenario, with `params`' windows and horizon
    /// and `extra` settings on top.
    pub fn pipeline_env(&self, params: Params, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("SHOPFLOW__KAFKA__BROKERS", self.kafka.brokers.as_str()),
            ("SHOPFLOW__KAFKA__TOPIC", &self.kafka.topic),
            ("SHOPFLOW__KAFKA__GROUP_ID", &self.kafka.group_id),
            ("SHOPFLOW__MYSQL__URL", &self.mysql.url),
            ("SHOPFLOW__INFLUX__URL", &self.influx_url),
            ("SHOPFLOW__INFLUX__DATABASE", &self.database),
            ("RUST_LOG", "warn"),
            ("NO_COLOR", "1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (key, value) in [
            ("SHOPFLOW__ENGINE__WINDOW_MS", params.windows.size_ms),
            (
                "SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS",
                params.windows.allowed_lateness_ms,
            ),
            (
                "SHOPFLOW__ENGINE__ORDER_HORIZON_MS",
                params.order_horizon_ms,
            ),
        ] {
            env.push((key.to_owned(), value.to_string()));
        }
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), (*value).to_owned()));
        }
        env
    }

    /// [`Scenario::pipeline_env`] of a run at 250 ms ticks that checkpoints every `interval_ms`
    /// into a directory of its own, which lives as long as the returned `TempDir`; `extra` on top.
    pub fn checkpointed_env(
        &self,
        params: Params,
        interval_ms: &str,
        extra: &[(&str, &str)],
    ) -> (tempfile::TempDir, Vec<(String, String)>) {
        let checkpoints = tempfile::tempdir().expect("a checkpoint directory");
        let root = checkpoints.path().display().to_string();
        let mut settings = vec![
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            ("SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS", interval_ms),
            ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", root.as_str()),
        ];
        settings.extend_from_slice(extra);
        (checkpoints, self.pipeline_env(params, &settings))
    }

    /// A connection to the scenario's database.
    pub fn mysql_conn(&self) -> mysql::PooledConn {
        mysql::Pool::new(format!("{}/{}", self.mysql_url, self.database).as_str())
            .and_then(|pool| pool.get_conn())
            .expect("a MariaDB connection")
    }
}

/// Parameters under which the final values do not depend on processing times: no window closes
/// and no order is forgotten during a test.
pub fn timeless() -> Params {
    Params {
        windows: WindowSpec {
            size_ms: WINDOW_MS,
            allowed_lateness_ms: HOUR_MS,
        },
        order_horizon_ms: HOUR_MS,
    }
}

/// Generator knobs for a test: the usual mix of late, duplicate, refunded and unknown-user events.
pub fn knobs(seed: u64, users: u32, rate: f64) -> GeneratorKnobs {
    GeneratorKnobs {
        seed,
        events_per_second: rate,
        users,
        new_users: 300,
        campaigns: 20,
        campaign_zipf_exponent: 1.1,
        conversion_share: 0.3,
        funnel_span: 20,
        median_order_cents: 4_000,
        late_share: 0.1,
        max_lateness_ms: 120_000,
        refund_share: 0.1,
        duplicate_share: 0.03,
        unknown_user_share: 0.05,
        demographic_changes_per_second: 0.0,
        pace: Pace::Realtime,
    }
}

/// The oracle: the reference implementation's final values over `inputs`.
pub fn oracle(inputs: &[(Tick, Input)], params: Params) -> State {
    let label = Encoder::new(params.windows.size_ms)
        .window_label()
        .to_owned();
    let mut state = State::default();
    for (key, value) in dataflows::reference::evaluate(inputs, params, u64::MAX) {
        match (key, value) {
            (OutputKey::Aggregate(key), OutputValue::Totals(t)) => {
                let (measurement, tags) = measurement_and_tags(&key.dimension);
                let window = key.window.map(|start| (label.as_str(), start.0));
                let tags = tags.iter().map(|(name, value)| (*name, value.as_str()));
                let (units, revenue_cents, _) = t.clamped();
                let values = [t.clicks, t.purchases, units, revenue_cents];
                if values != [0; 4] {
                    state
                        .rows
                        .insert(row_key(measurement, tags, window), values);
                }
            }
            (OutputKey::Counter(counter), OutputValue::Count(n)) => {
                state.counters.insert(counter.name().to_owned(), n);
            }
            _ => {}
        }
    }
    state
}

/// The oracle's inputs of a demographics table: each row, at time 0.
pub fn table_inputs(table: &[Demographic]) -> Vec<(Tick, Input)> {
    table
        .iter()
        .map(|row| (0, Input::Demographic(row.clone(), 1)))
        .collect()
}

/// The oracle's inputs for a timeless scenario: the final table, the generator's events `0..n` at
/// their arrival times, and source-side counters.
pub fn timeless_inputs(
    table: &[Demographic],
    generator: &EventGenerator,
    events: u64,
    counters: &BTreeMap<Counter, isize>,
) -> Vec<(Tick, Input)> {
    let mut inputs = table_inputs(table);
    inputs.extend(
        counters
            .iter()
            .map(|(counter, n)| (0, Input::Counter(*counter, *n))),
    );
    // Whole seconds: the reference replays tick by tick, and nothing here depends on the tick.
    inputs.extend((0..events).map(|n| {
        let arrival = generator.arrival_ms(n);
        (arrival - arrival % 1_000, Input::Event(generator.event(n)))
    }));
    inputs
}
