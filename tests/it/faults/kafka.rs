//! The Kafka broker restarted, once and again and again: nothing lost, nothing counted twice,
//! SIGTERM ends the run during an outage, and a topic made right after a restart is read at once.

use super::*;

/// The Kafka broker restarted mid-run: the reader reconnects and resumes where it was, so no
/// event is lost or counted twice (the producer is idempotent, so the topic holds each once).
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn kafka_restart_loses_nothing_and_counts_nothing_twice() {
    let _services = exclusive();
    let started = Instant::now();
    let (seed, users) = (83, 5_000);
    let scenario = Scenario::new("faults_kafka", seed, users);
    let env = scenario.pipeline_env(timeless(), &[("SHOPFLOW__ENGINE__TICK_MS", "250")]);
    let mut pipeline = Pipeline::start(&env);
    wait_until_running(&scenario, &mut pipeline);
    let events = 40_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 1_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    wait_for("5,000 events written", Duration::from_secs(60), || {
        influx::state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) >= 5_000)
    });
    let restart = Instant::now();
    let broker = Stopped::stop("kafka");
    let stopped = restart.elapsed();
    broker.start();
    let restarted = restart.elapsed();
    pipeline.assert_running();

    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    assert_eq!(
        topic_messages(&scenario.kafka),
        events as i64,
        "the topic holds every event once"
    );
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &BTreeMap::new()),
        timeless(),
    );
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(120));
    assert_eq!(got.counter(Counter::EventsIn), events as i64, "none twice");
    let reassigned = occurrences(&pipeline.log(), "re-assigning the partitions");
    eprintln!(
        "kafka restart: stopped in {stopped:?}, up again after {restarted:?}; stalled \
         partitions re-assigned {reassigned} time(s); {} rows equal the oracle; {:.1}s",
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Kafka down again and again, as the fault campaign saw it break the reader for good: a run
/// started while the broker is down waits for it (instead of exiting at once); after several
/// outages of 10 to 16 s the readers go on (a stuck consumer is re-assigned, then replaced) and
/// every event is counted exactly once against the oracle; and a SIGTERM during an outage ends
/// the process within seconds (it used to hang in a synchronous commit or the consumer's close).
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn repeated_kafka_outages_stall_nothing_and_sigterm_ends_the_run() {
    let _services = exclusive();
    let started = Instant::now();
    let (seed, users) = (89, 5_000);
    let scenario = Scenario::new("faults_outages", seed, users);
    // The run starts with the broker down and waits for it; Kafka's start takes 10 to 40 s here,
    // over a minute when the machine is loaded: the wait must outlast it.
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            ("SHOPFLOW__ENGINE__CONNECT_TIMEOUT_MS", "300000"),
        ],
    );
    let broker = Stopped::stop("kafka");
    let mut pipeline = Pipeline::start(&env);
    std::thread::sleep(Duration::from_secs(4));
    pipeline.assert_running();
    broker.start();
    wait_until_running(&scenario, &mut pipeline);
    let events = 50_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 1_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    // Sent through the outages, at each event's arrival time; the flush waits out the last one
    // (`produce_generated`'s 30 s may not).
    let producer = {
        let (config, generator) = (scenario.kafka.clone(), generator.clone());
        std::thread::spawn(move || {
            let mut producer = EventProducer::new(&config).expect("a producer");
            for n in 0..events {
                let arrival = generator.arrival_ms(n);
                let now = shopflow::runtime::now_ms();
                if arrival > now {
                    std::thread::sleep(Duration::from_millis(arrival - now));
                }
                producer.send(&generator.event(n), arrival).expect("sent");
            }
            producer.flush(Duration::from_secs(180)).expect("flushed");
            producer.sent()
        })
    };
    for outage in [12, 16, 10, 14] {
        std::thread::sleep(Duration::from_secs(4));
        let broker = Stopped::stop("kafka");
        std::thread::sleep(Duration::from_secs(outage));
        broker.start();
        pipeline.assert_running();
    }
    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    assert_eq!(
        topic_messages(&scenario.kafka),
        events as i64,
        "the topic holds every event once"
    );
    let table = source::read_table(&scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, events, &BTreeMap::new()),
        timeless(),
    );
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(90));
    assert_eq!(got.counter(Counter::EventsIn), events as i64, "none twice");
    let log = pipeline.log();
    let (reassigned, replaced) = (
        occurrences(&log, "re-assigning the partitions"),
        occurrences(&log, "replacing the consumer"),
    );

    // Running again (writing runtime points of its own), then SIGTERM while the broker is down.
    let points = || {
        influx::query(
            &scenario.influx_url,
            &scenario.database,
            "SELECT count(consumer_lag) FROM runtime",
        )
        .and_then(|a| a["results"][0]["series"][0]["values"][0][1].as_i64())
        .unwrap_or(0)
    };
    let before = points();
    let mut pipeline = Pipeline::start(&env);
    wait_for("the second run's points", Duration::from_secs(60), || {
        pipeline.assert_running();
        points() > before + 4
    });
    let broker = Stopped::stop("kafka");
    std::thread::sleep(Duration::from_secs(3));
    let term = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &pipeline.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM delivered");
    let status = pipeline.wait(Duration::from_secs(15));
    let stopped_in = term.elapsed();
    broker.start();
    let log = pipeline.log();
    assert!(
        status.success()
            || (status.code() == Some(1) && log.lines().any(|l| l.starts_with("error: "))),
        "a stop during an outage exits 0, or 1 with an error line, not {status}:\n{log}"
    );
    let error = log.lines().find(|l| l.starts_with("error: ")).unwrap_or("");
    eprintln!(
        "kafka outages: re-assigned {reassigned}, replaced {replaced} time(s); {} rows equal the \
         oracle; SIGTERM in an outage ended the run in {stopped_in:?} ({status}) {error}; {:.1}s",
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The HTTP server of `run` through a Kafka broker stop and start: `/metrics`, parsed with a
/// Prometheus parser, counts what the pipeline wrote to InfluxDB; `/ready` answers 503 naming
/// Kafka while the broker is down and 200 again once it is back, while `/health` stays 200 all
/// along (the workers step). Stops the broker: run it only against services of its own.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn http_ready_and_health_through_a_broker_stop_and_start() {
    let _services = exclusive();
    let (seed, users) = (97, 2_000);
    let scenario = Scenario::new("faults_http", seed, users);
    let env = scenario.pipeline_env(
        timeless(),
        &[
            ("SHOPFLOW__ENGINE__TICK_MS", "250"),
            ("SHOPFLOW__HTTP__LISTEN", "127.0.0.1:0"),
            ("SHOPFLOW__HTTP__READY_STALL_MS", "3000"),
        ],
    );
    let mut pipeline = Pipeline::start(&env);
    let url = server_url(&mut pipeline);
    let get = |path: &str| http_get(&format!("{url}{path}"));
    wait_for("ready", Duration::from_secs(60), || get("/ready").0 == 200);

    let events = 3_000u64;
    let generator = EventGenerator::new(
        knobs(seed, users, 1_000.0),
        shopflow::runtime::now_ms() + 500,
    )
    .expect("valid knobs");
    let sent = produce_in_background(&scenario.kafka, &generator, events)
        .join()
        .expect("the producer");
    assert_eq!(sent, events);
    wait_for("every event written", Duration::from_secs(60), || {
        influx::state(&scenario.influx_url, &scenario.database)
            .is_some_and(|s| s.counter(Counter::EventsIn) == events as i64)
    });
    // Every counter, as InfluxDB holds it and as /metrics says.
    let influx = influx::state(&scenario.influx_url, &scenario.database).expect("InfluxDB");
    let (status, body) = get("/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    for counter in Counter::ALL {
        let name = match counter.origin() {
            dataflows::model::CounterOrigin::DemographicsTable => {
                format!("shopflow_pipeline_{}_rows", counter.name())
            }
            _ => format!("shopflow_pipeline_{}_total", counter.name()),
        };
        let value = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => panic!("{name}: not a counter or gauge"),
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"));
        assert_eq!(value, influx.counter(counter) as f64, "{name}");
    }

    let broker = Stopped::stop("kafka");
    wait_for("not ready, naming Kafka", Duration::from_secs(30), || {
        let (status, body) = get("/ready");
        status == 503 && body.contains("Kafka")
    });
    let (status, body) = get("/health");
    assert_eq!(status, 200, "alive while the broker is down: {body}");
    std::thread::sleep(Duration::from_secs(5));
    let (status, body) = get("/health");
    assert_eq!(status, 200, "still alive: {body}");
    broker.start();
    wait_for("ready again", Duration::from_secs(90), || {
        pipeline.assert_running();
        get("/ready").0 == 200
    });
    assert_eq!(get("/health").0, 200);
    pipeline.interrupt();
}

/// A topic `ensure_topic` makes right after the broker restarted is read at once: a reader opened
/// then finds every partition. A freshly started broker listed none for a moment after the
/// create, and a pipeline started then failed with "has no partitions" (twice in the fault
/// campaign, whose rounds make their topic after a broker outage; this test failed in 2 runs of
/// 3 before `ensure_topic` waited for the partitions to be listed).
#[test]
#[ignore = "needs Kafka, and stops it: run scripts/test-all"]
fn a_topic_made_right_after_a_broker_restart_is_read_at_once() {
    let _services = exclusive();
    let brokers = env("SHOPFLOW_TEST_KAFKA_BROKERS");
    for _ in 0..3 {
        Stopped::stop("kafka").start();
        for _ in 0..3 {
            let topic = unique("shopflow-fresh-topic").replace('_', "-");
            let config = crate::support::services::kafka_config(&brokers, &topic, 4);
            writers::kafka::ensure_topic(&config, &topic).expect("the topic");
            let reader = shopflow::sources::kafka::PartitionReader::open(&config, 0, 1, None)
                .unwrap_or_else(|e| panic!("a reader of {topic}, at once: {e}"));
            assert_eq!(reader.positions().len(), 4, "every partition of {topic}");
        }
    }
}
