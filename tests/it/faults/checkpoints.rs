//! The pipeline killed around its checkpoints: before the first one, and after rows it wrote
//! that the restored state no longer supports; and restarted with a refund waiting that empties
//! a row the checkpoint held.

use super::*;

/// Killed before its first checkpoint: the restart has no state, and must count the topic from
/// its start rather than resume at offsets committed for state that is gone (they were committed
/// every tick). Every event counts once.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn a_kill_before_the_first_checkpoint_loses_nothing() {
    let _services = exclusive();
    let (seed, users) = (79, 3_000);
    let scenario = Scenario::new("faults_early_kill", seed, users);
    // The first checkpoint is never reached before the kill.
    let (_checkpoints, env) = scenario.checkpointed_env(timeless(), "3600000", &[]);
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let (rate, events) = (2_000.0, 20_000u64);
    let generator =
        EventGenerator::new(knobs(seed, users, rate), shopflow::runtime::now_ms() + 500)
            .expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    wait_for("3,000 events written", Duration::from_secs(60), || {
        influx::state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) >= 3_000)
    });
    pipeline.kill();
    let committed = committed_total(&scenario.kafka);
    assert_eq!(
        committed, 0,
        "no offset is committed before a checkpoint holds the state it covers"
    );

    let mut pipeline = Pipeline::start(&env);
    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    settle_on_the_oracle(&scenario, &mut pipeline, &generator, events);
}

/// Users moved to a segment of their own after a checkpoint (the pipeline writes its rows), the
/// pipeline killed before the next checkpoint, the users deleted while it is down: the restored
/// state never held that segment, and the re-read table no longer has it, so no later output
/// touches its rows. They must still end as removals, not keep the values the killed run wrote.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn rows_written_after_the_restored_checkpoint_and_no_longer_supported_are_removed() {
    let _services = exclusive();
    let (seed, users) = (83, 2_000);
    let scenario = Scenario::new("faults_stale", seed, users);
    let (checkpoints, env) = scenario.checkpointed_env(timeless(), "20000", &[]);
    let dir = shopflow::checkpoint::pipeline_dir(checkpoints.path(), &scenario.kafka.group_id);
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let events = 6_000u64;
    let generator = produce_all_written(&scenario, (seed, users), 2_000.0, events);
    // Right after a checkpoint, the users of ids below 200 move to a country of their own.
    let boundary = {
        let started = Instant::now();
        loop {
            let found = shopflow::checkpoint::latest(&dir).expect("readable");
            if let Some(found) = found
                && shopflow::runtime::now_ms() < found.tick + 2_000
            {
                break found.tick;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "a checkpoint");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    scenario
        .mysql_conn()
        .query_drop("UPDATE demographics SET country = 'Atlantis', state = 'Deep' WHERE id < 200")
        .expect("moved");
    wait_for(
        "the moved users' rows written",
        Duration::from_secs(10),
        || {
            influx::state(&scenario.influx_url, &scenario.database).is_some_and(|s| {
                s.rows
                    .keys()
                    .any(|k| k.starts_with("country,country=Atlantis,window=all"))
            })
        },
    );
    pipeline.kill();
    let newest = shopflow::checkpoint::latest(&dir)
        .expect("readable")
        .map(|f| f.tick);
    assert_eq!(newest, Some(boundary), "killed before the next checkpoint");
    scenario
        .mysql_conn()
        .query_drop("DELETE FROM demographics WHERE id < 200")
        .expect("deleted");

    let mut pipeline = Pipeline::start(&env);
    let got = settle_on_the_oracle(&scenario, &mut pipeline, &generator, events);
    assert!(
        !got.rows.keys().any(|k| k.contains("Atlantis")),
        "no row of the deleted users' country is left"
    );
}

/// Stopped (SIGTERM) during the first tick after a restore, with the demographics changed while
/// it was down: the run must not end before the table as it is now has entered. It used to end
/// at the first checkpoint boundary, which the stop jumps to, while the re-read demographics
/// still waited for the second tick: its last output rewrote every row as the checkpoint held it,
/// and its last checkpoint kept the old demographics (found by the fault campaign, seed 501, on
/// a loaded machine whose restarts took longer than a tick).
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn a_stop_during_the_first_tick_after_a_restore_writes_the_tables_demographics() {
    let _services = exclusive();
    let (seed, users) = (97, 2_000);
    let scenario = Scenario::new("faults_first_tick_stop", seed, users);
    let (_checkpoints, env) = scenario.checkpointed_env(
        timeless(),
        "2000",
        // "restoring a checkpoint" is the moment the test stops it.
        &[("RUST_LOG", "warn,shopflow::runtime=info")],
    );
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let events = 6_000u64;
    let generator = produce_all_written(&scenario, (seed, users), 3_000.0, events);
    // A graceful stop: its last checkpoint holds every event and the table as it was.
    pipeline.interrupt();
    scenario
        .mysql_conn()
        .query_drop(
            "UPDATE demographics SET country = 'Atlantis', state = 'Deep', age = age + 30 \
             WHERE id < 400",
        )
        .expect("moved");
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &BTreeMap::new()),
        timeless(),
    );

    // Restarted, and stopped as soon as it says it restores: long before its first tick ends.
    let mut pipeline = Pipeline::start(&env);
    wait_for("the restore", Duration::from_secs(60), || {
        pipeline.assert_running();
        pipeline.log().contains("restoring a checkpoint")
    });
    pipeline.interrupt();
    let got = influx::state(&scenario.influx_url, &scenario.database).expect("InfluxDB answers");
    let differences = got.differences(&want, 15);
    assert!(
        differences.is_empty(),
        "{} of {} rows differ after a stop in the first tick after a restore: {differences:#?}",
        differences.len(),
        want.rows.len()
    );
}

/// Produces `events` of the shop of `(seed, users)` at `rate` events a second from now, and waits
/// until the pipeline has written every one; returns their generator.
fn produce_all_written(
    scenario: &Scenario,
    (seed, users): (u64, u32),
    rate: f64,
    events: u64,
) -> EventGenerator {
    let generator =
        EventGenerator::new(knobs(seed, users, rate), shopflow::runtime::now_ms() + 500)
            .expect("valid knobs");
    produce_in_background(&scenario.kafka, &generator, events)
        .join()
        .expect("the producer");
    wait_for("every event written", Duration::from_secs(60), || {
        influx::state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) == events as i64)
    });
    generator
}

/// A row the checkpoint holds, emptied by a refund read right after the restart: the row must
/// end removed. The first tick after a restore used to read events too; the refund there
/// cancelled the checkpoint's row at the first timestamp, so that row was never written again
/// and InfluxDB kept the purchase (found by the fault campaign as one stale window row).
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn a_row_a_refund_empties_right_after_a_restore_is_removed() {
    use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
    use shopflow::sinks::line_protocol::Encoder;

    let _services = exclusive();
    let (seed, users) = (89, 200);
    let scenario = Scenario::new("faults_first_tick_refund", seed, users);
    // Two-second ticks: the refund, in the topic before the restart, is read within the first.
    let (_checkpoints, env) = scenario.checkpointed_env(
        timeless(),
        "10000",
        &[("SHOPFLOW__ENGINE__TICK_MS", "2000")],
    );
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    // An order of a campaign no generated event has: clicked in one window, bought in the
    // next, so the purchase's window row holds nothing else.
    let now = shopflow::runtime::now_ms();
    let clicked = now - now % WINDOW_MS - 3 * WINDOW_MS;
    let event = |tag, units, total, event_time| Event {
        order_id: OrderId(4_000_000_017),
        tag,
        user_id: UserId(7),
        campaign_id: CampaignId(777_777),
        total: Cents(total),
        units,
        event_time: EventTimeMs(event_time),
    };
    let click = event(Tag::Click, 0, 0, clicked + 1_000);
    let purchase = event(Tag::Purchased, 3, 1_542, clicked + WINDOW_MS + 2_000);
    let refund = event(Tag::Refunded, 3, 1_542, clicked + WINDOW_MS + 5_000);
    let mut producer = EventProducer::new(&scenario.kafka).expect("a producer");
    let send = |producer: &mut EventProducer, events: &[&Event]| {
        for event in events {
            producer.send(event, now).expect("sent");
        }
        producer.flush(Duration::from_secs(30)).expect("flushed");
    };
    send(&mut producer, &[&click, &purchase]);
    let label = Encoder::new(WINDOW_MS).window_label().to_owned();
    let bought = influx::row_key(
        "campaign",
        [("campaign", "777777")],
        Some((&label, clicked + WINDOW_MS)),
    );
    wait_for("the purchase written", Duration::from_secs(60), || {
        influx::state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.rows.get(&bought) == Some(&[0, 1, 3, 1_542]))
    });
    // A graceful stop: its checkpoint holds the purchase's row.
    pipeline.interrupt();
    send(&mut producer, &[&refund]);

    let mut pipeline = Pipeline::start(&env);
    let table = source::read_table(&scenario.mysql).expect("the table");
    let mut inputs = table_inputs(&table);
    inputs.extend([click, purchase, refund].map(|e| (now - now % 1_000, Input::Event(e))));
    let want = oracle(&inputs, timeless());
    assert!(
        !want.rows.contains_key(&bought),
        "the refund empties the row"
    );
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(60));
    assert_eq!(got.counter(Counter::EventsIn), 3);
    assert_eq!(got.rows.get(&bought), None, "the emptied row is removed");
}
