//! How fast a demographic change reaches InfluxDB (`scripts/test-all`): a user who moved country
//! in MariaDB must move their purchases between the two country rows in InfluxDB within 5 s,
//! with the default tick.

use std::process::Command;
use std::time::{Duration, Instant};

use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
use mysql::prelude::Queryable;
use shopflow::writers::kafka::EventProducer;

/// The last all-time `purchases` of a country in InfluxDB, if it has a point.
fn country_purchases(influx: &str, database: &str, country: &str) -> Option<i64> {
    let q = format!(
        "SELECT last(purchases) FROM country WHERE \"country\" = '{country}' AND \"window\" = 'all'"
    );
    let answer = crate::support::influx::query(influx, database, &q)?;
    answer["results"][0]["series"][0]["values"][0][1].as_i64()
}

/// Polls until `check` holds; returns how long it took, or fails after `deadline`.
fn until(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn a_demographic_change_reaches_influxdb_within_five_seconds() {
    let test_database = crate::support::services::TestDatabase::create("shopflow_latency");
    let (influx_url, brokers, database, pool, mysql_config) = test_database.parts();
    test_database.load_demographics(5, 100);
    let mut conn = pool.get_conn().expect("a connection");
    conn.query_drop(format!("USE `{database}`")).expect("use");
    let user = 7u32;
    let country: String = conn
        .exec_first("SELECT country FROM demographics WHERE id = ?", (user,))
        .expect("a query")
        .expect("the user's row");

    let kafka = test_database.topic("shopflow-latency", 2);
    let topic = kafka.topic.clone();
    let mut producer = EventProducer::new(&kafka).expect("a producer");
    let now = shopflow::runtime::now_ms();
    for order in 0..50u64 {
        let event = Event {
            order_id: OrderId(order),
            tag: Tag::Purchased,
            user_id: UserId(user),
            campaign_id: CampaignId(1),
            total: Cents(1_000),
            units: 1,
            event_time: EventTimeMs(now),
        };
        producer.send(&event, now).expect("sent");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    // The pipeline with the shipped defaults (1 s ticks), as a user runs it.
    let mut pipeline = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["run", "-w", "2", "--start", "earliest"])
        .env("SHOPFLOW__KAFKA__BROKERS", &brokers)
        .env("SHOPFLOW__KAFKA__TOPIC", &topic)
        .env("SHOPFLOW__KAFKA__GROUP_ID", &topic)
        .env("SHOPFLOW__MYSQL__URL", &mysql_config.url)
        .env("SHOPFLOW__INFLUX__URL", &influx_url)
        .env("SHOPFLOW__INFLUX__DATABASE", &database)
        .spawn()
        .expect("shopflow runs");
    until(
        Duration::from_secs(60),
        "the purchases reach InfluxDB",
        || country_purchases(&influx_url, &database, &country) == Some(50),
    );

    let moved_to = "ZZ";
    conn.exec_drop(
        "UPDATE demographics SET country = ?, state = ? WHERE id = ?",
        (moved_to, "zz", user),
    )
    .expect("updated");
    let arrived = until(Duration::from_secs(5), "the move reaches InfluxDB", || {
        country_purchases(&influx_url, &database, moved_to) == Some(50)
            && country_purchases(&influx_url, &database, &country) == Some(0)
    });
    eprintln!("a committed demographic change reached InfluxDB in {arrived:?}");

    Command::new("kill")
        .args(["-TERM", &pipeline.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(pipeline.wait().expect("the pipeline ends").success());
}
