//! What the tests that need real services share: their endpoints, unique names, and cleanup.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use mysql::prelude::Queryable;

/// An endpoint the service tests read from the environment (`scripts/services.sh env`).
pub fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set: run scripts/test-all"))
}

/// A unique name per test run, so runs never share a topic, database or table.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>())
}

/// Drops the test's MariaDB and InfluxDB databases however the test ends.
pub struct Cleanup {
    /// A MariaDB URL with the rights to drop the database.
    pub mysql_admin: String,
    /// The database's name, the same in MariaDB and InfluxDB.
    pub database: String,
    /// The InfluxDB base URL.
    pub influx: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(pool) = mysql::Pool::new(self.mysql_admin.as_str())
            && let Ok(mut conn) = pool.get_conn()
        {
            let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.database));
        }
        let drop = format!("DROP DATABASE \"{}\"", self.database);
        if let Ok(url) = reqwest::Url::parse_with_params(
            &format!("{}/query", self.influx),
            &[("q", drop.as_str())],
        ) {
            let _ = reqwest::blocking::Client::new().post(url).send();
        }
    }
}

/// The malformed messages the service tests send, one per reason a source counts: a wrong magic
/// byte, a truncated body, an unknown schema id, an empty message. Returns how many.
pub fn send_malformed(producer: &mut shopflow::writers::kafka::EventProducer) -> i64 {
    let messages: [&[u8]; 4] = [
        b"\x07junk",
        b"\x00\x00\x00\x00\x01\x02",
        b"\x00\x00\x00\x00\x09abc",
        b"",
    ];
    for message in messages {
        producer
            .send_raw(b"k", message, shopflow::runtime::now_ms())
            .expect("sent");
    }
    messages.len() as i64
}

/// The Kafka settings the service tests use: `topic`, also the consumer group, with `partitions`,
/// read from the start with the bundled schema and the shipped limits.
pub fn kafka_config(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> shopflow::sources::kafka::KafkaConfig {
    shopflow::sources::kafka::KafkaConfig {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        partitions,
        group_id: topic.to_owned(),
        start: shopflow::sources::kafka::StartPosition::Earliest,
        schema_id: 1,
        schema_registry_url: String::new(),
        dead_letter_topic: String::new(),
        max_poll_messages: 10_000,
        max_message_bytes: 65_536,
        max_event_age_ms: 2_592_000_000,
        max_future_skew_ms: 300_000,
        max_order_cents: 1_000_000_000,
        max_units: 1_000_000,
        properties: Default::default(),
    }
}

/// A test's own database, the same name in MariaDB and InfluxDB, created empty in MariaDB and
/// dropped from both when the value goes.
pub struct TestDatabase {
    /// The database's name.
    pub name: String,
    /// A connection pool to MariaDB (no database selected).
    pub pool: mysql::Pool,
    /// The source configuration pointing at the database.
    pub mysql: shopflow::sources::mysql::MysqlConfig,
    /// The InfluxDB base URL.
    pub influx_url: String,
    /// The Kafka bootstrap servers.
    pub brokers: String,
    _cleanup: Cleanup,
}

impl TestDatabase {
    /// Creates `<prefix>_<unique>` on the services of `scripts/services.sh env`.
    pub fn create(prefix: &str) -> TestDatabase {
        let mysql_url = env("SHOPFLOW_TEST_MYSQL_URL");
        let influx_url = env("SHOPFLOW_TEST_INFLUX_URL");
        let name = unique(prefix);
        let cleanup = Cleanup {
            mysql_admin: mysql_url.clone(),
            database: name.clone(),
            influx: influx_url.clone(),
        };
        let pool = mysql::Pool::new(mysql_url.as_str()).expect("MariaDB");
        pool.get_conn()
            .expect("a connection")
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .expect("a database");
        TestDatabase {
            mysql: shopflow::sources::mysql::MysqlConfig::new(format!("{mysql_url}/{name}")),
            name,
            pool,
            influx_url,
            brokers: env("SHOPFLOW_TEST_KAFKA_BROKERS"),
            _cleanup: cleanup,
        }
    }

    /// Loads `users` generated demographics rows (`demographics::table(seed, users)`).
    pub fn load_demographics(&self, seed: u64, users: u32) {
        shopflow::writers::mysql::load_demographics(
            &self.mysql,
            shopflow::generators::demographics::table(seed, users),
            u64::from(users),
        )
        .expect("loaded");
    }

    /// A topic of the test's own, `<prefix>-<unique>` with `partitions`, created: its settings
    /// as [`kafka_config`] makes them.
    pub fn topic(&self, prefix: &str, partitions: i32) -> shopflow::sources::kafka::KafkaConfig {
        let topic = unique(prefix).replace('_', "-");
        let kafka = kafka_config(&self.brokers, &topic, partitions);
        shopflow::writers::kafka::ensure_topic(&kafka, &topic).expect("the topic");
        kafka
    }

    /// The InfluxDB URL, the brokers, the name, the pool and the MySQL configuration, owned.
    pub fn parts(
        &self,
    ) -> (
        String,
        String,
        String,
        mysql::Pool,
        shopflow::sources::mysql::MysqlConfig,
    ) {
        (
            self.influx_url.clone(),
            self.brokers.clone(),
            self.name.clone(),
            self.pool.clone(),
            self.mysql.clone(),
        )
    }
}

/// The tests that stop and restart the shared services (`faults`, `campaign`): one at a time.
static SERVICES: Mutex<()> = Mutex::new(());

/// Holds the services for a test that stops and restarts them, until dropped.
pub fn exclusive() -> MutexGuard<'static, ()> {
    SERVICES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `scripts/services.sh` with the test's environment (the same state dir and ports).
pub fn services(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let output = Command::new(&script)
        .args(args)
        .output()
        .expect("scripts/services.sh runs");
    assert!(
        output.status.success(),
        "scripts/services.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A service the test stopped: started again when the test is done with it, or when it fails
/// first, so that a failing test leaves the services as it found them.
pub struct Stopped {
    service: &'static str,
    started: bool,
}

impl Stopped {
    /// Stops `service` (`mariadb`, `influxdb`, `kafka`).
    pub fn stop(service: &'static str) -> Stopped {
        services(&["stop", service]);
        Stopped {
            service,
            started: false,
        }
    }

    /// Starts the service again.
    pub fn start(mut self) {
        self.started = true;
        services(&["start", self.service]);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
            let _ = Command::new(script).args(["start", self.service]).status();
        }
    }
}
