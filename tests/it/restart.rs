//! Crashes and stops against real services (`scripts/test-all`): the pipeline is killed with
//! SIGKILL mid-run, demographics change while it is down, it is restarted, stopped with SIGTERM
//! mid-run, restarted again to the end of the topic — and InfluxDB then holds exactly what the
//! SQL oracle computes over every event once, with the final table.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use shopflow::checkpoint;
use shopflow::generators::demographics;
use shopflow::generators::events::{EventGenerator, GeneratorKnobs};
use shopflow::writers;
use shopflow::writers::kafka::EventProducer;

use crate::e2e::{all_events, assert_same_rows, influx_rows, load_events, oracle};
use crate::support::scenario::knobs;

/// `shopflow run` on the test's topic, database and checkpoint directory.
fn pipeline(
    brokers: &str,
    topic: &str,
    mysql: &str,
    influx: &str,
    database: &str,
    checkpoints: &Path,
    extra: &[&str],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["run", "-w", "2", "--start", "earliest"])
        .args(extra)
        .env("SHOPFLOW__KAFKA__BROKERS", brokers)
        .env("SHOPFLOW__KAFKA__TOPIC", topic)
        .env("SHOPFLOW__KAFKA__GROUP_ID", topic)
        .env("SHOPFLOW__MYSQL__URL", mysql)
        .env("SHOPFLOW__INFLUX__URL", influx)
        .env("SHOPFLOW__INFLUX__DATABASE", database)
        .env("SHOPFLOW__ENGINE__TICK_MS", "250")
        .env("SHOPFLOW__ENGINE__CHECKPOINT_DIR", checkpoints)
        .env("SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS", "1000")
        // No window closes and no order is forgotten during the test, so the result does not
        // depend on when each event happened to arrive: the SQL oracle can know it.
        .env("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "100000000000")
        .env("SHOPFLOW__ENGINE__ORDER_HORIZON_MS", "100000000000")
        .spawn()
        .expect("shopflow runs")
}

/// Waits until a complete checkpoint newer than `after` exists; returns its boundary.
fn checkpoint_after(dir: &Path, after: u64, deadline: Duration) -> u64 {
    let started = Instant::now();
    loop {
        if let Some(found) = checkpoint::latest(dir).expect("the directory is readable")
            && found.tick > after
        {
            return found.tick;
        }
        assert!(
            started.elapsed() < deadline,
            "no checkpoint after {after} within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn killed_stopped_and_restarted_pipeline_counts_every_event_once() {
    let test_database = crate::support::services::TestDatabase::create("shopflow_restart");
    let (influx_url, brokers, database, pool, mysql_config) = test_database.parts();
    let (seed, users, new_users) = (31, 20_000u32, 200u32);
    test_database.load_demographics(seed, users);

    let kafka = test_database.topic("shopflow-restart", 4);
    let topic = kafka.topic.clone();
    let checkpoints = tempfile::tempdir().expect("a checkpoint directory");
    let run = |extra: &[&str]| {
        pipeline(
            &brokers,
            &topic,
            &mysql_config.url,
            &influx_url,
            &database,
            checkpoints.path(),
            extra,
        )
    };

    // Events at 2,000/s for 12 s, produced while the pipeline runs, dies and comes back.
    let knobs = GeneratorKnobs {
        new_users,
        duplicate_share: 0.05,
        ..knobs(seed, users, 2_000.0)
    };
    let events = 24_000u64;
    let generator = EventGenerator::new(knobs, shopflow::runtime::now_ms() + 500).expect("knobs");
    let producer = {
        let (kafka, generator) = (kafka.clone(), generator.clone());
        std::thread::spawn(move || {
            let mut producer = EventProducer::new(&kafka).expect("a producer");
            let sent = crate::support::kafka::produce(&mut producer, &generator, events);
            producer.flush(Duration::from_secs(10)).expect("flushed");
            sent
        })
    };

    // 1. Killed without warning once a checkpoint is complete.
    let mut first = run(&[]);
    // The pipeline's own directory under the configured one: one per consumer group.
    let pipeline_dir = checkpoint::pipeline_dir(checkpoints.path(), &topic);
    let killed_after = checkpoint_after(&pipeline_dir, 0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(700));
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    // Demographics change while nothing runs: the restart must move these users' past
    // contributions, including out of segments the sink holds from before.
    let mut changes = demographics::Changes::new(seed, users, new_users);
    let applied = writers::mysql::apply_changes(
        &mysql_config,
        &mut changes,
        500.0,
        Duration::from_secs(10),
        200,
    )
    .expect("changes applied");
    assert_eq!(applied.changes, 200);

    // 2. Restarted from the checkpoint, then stopped with SIGTERM mid-run: a graceful stop
    //    checkpoints at the next boundary and exits 0.
    let mut second = run(&[]);
    let restored_then = checkpoint_after(&pipeline_dir, killed_after, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1_500));
    let terminated = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = second.wait().expect("the pipeline ends");
    assert!(status.success(), "SIGTERM is a graceful stop: {status:?}");
    assert!(
        terminated.elapsed() < Duration::from_secs(15),
        "stopped in {:?}",
        terminated.elapsed()
    );
    let stopped_at = checkpoint::latest(&pipeline_dir)
        .expect("readable")
        .expect("a checkpoint")
        .tick;
    assert!(
        stopped_at > restored_then,
        "the stop wrote its own checkpoint ({stopped_at} after {restored_then})"
    );

    // 3. Restarted once more, to the end of the topic.
    assert_eq!(producer.join().expect("the producer thread"), events);
    let third = run(&["--until-caught-up"]);
    let output = third.wait_with_output().expect("the pipeline ends");
    assert!(output.status.success(), "{output:?}");

    let mut conn = pool.get_conn().expect("a connection");
    conn.query_drop(format!("USE `{database}`")).expect("use");
    load_events(&mut conn, &all_events(&generator, events));
    let expected = oracle(&mut conn, 60_000);
    let (got, counters) = influx_rows(&influx_url, &database);
    assert!(expected.len() > 1_000, "{} rows", expected.len());
    assert_same_rows(&expected, &got);
    // Every event counted once, though the restarts re-read what followed their checkpoints.
    assert_eq!(
        counters.get("events_in"),
        Some(&(events as i64)),
        "{counters:?}"
    );
}
