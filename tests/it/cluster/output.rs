//! A cluster writes what one process writes, each key from exactly one process: from the
//! generator, through the embedded Kafka, and on the real services.

use super::*;

/// Two processes of two workers each, on loopback, write exactly the lines one process of one
/// worker writes: the same changes at the same timestamps, each key by exactly one process.
#[test]
fn two_processes_write_what_one_process_writes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let env = [
        ("SHOPFLOW__GENERATOR__USERS", "400"),
        ("SHOPFLOW__GENERATOR__NEW_USERS", "40"),
        ("SHOPFLOW__GENERATOR__UNKNOWN_USER_SHARE", "0.1"),
        ("SHOPFLOW__GENERATOR__DEMOGRAPHIC_CHANGES_PER_SECOND", "10"),
        ("SHOPFLOW__GENERATOR__LATE_SHARE", "0.2"),
        ("SHOPFLOW__ENGINE__WINDOW_MS", "10000"),
        ("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "20000"),
    ];
    let common = args(
        "demo --source generator --pace unbounded --rate 200 --events 12000 --start-ms 1700000000000 --seed 3 --quiet",
    );
    let output = |name: &str| dir.path().join(name).display().to_string();
    let cluster: Vec<Running> = (0..2)
        .map(|process| {
            let mut words = common.clone();
            words.extend(member(process, 2, 2, &hosts));
            words.extend(["--output".into(), output("cluster.lp")]);
            start(&words, &env)
        })
        .collect();
    let mut single = common.clone();
    single.extend([
        "-w".into(),
        "1".into(),
        "--output".into(),
        output("single.lp"),
    ]);
    let single = start(&single, &env).finish(Duration::from_secs(300));
    assert_eq!(single.code, Some(0), "{single:?}");
    assert!(single.stdout.starts_with("12000 events"), "{single:?}");
    for process in cluster {
        let finished = process.finish(Duration::from_secs(300));
        assert_eq!(finished.code, Some(0), "{finished:?}");
    }

    // Results, without the per-process lines: `pipeline` (counters grouped per process and batch)
    // and `runtime` (wall-clock figures).
    let results = |text: &str| {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("pipeline ") && !l.starts_with("runtime,"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let read = |path: String| std::fs::read_to_string(path).expect("an output file");
    let (part0, part1) = (read(output("cluster.lp.0")), read(output("cluster.lp.1")));
    assert!(
        !results(&part0).is_empty() && !results(&part1).is_empty(),
        "both processes own keys"
    );
    let mut together = results(&part0);
    together.extend(results(&part1));
    together.sort();
    let alone = results(&read(output("single.lp")));
    assert!(
        alone.len() > 1_000,
        "a meaningful run: {} lines",
        alone.len()
    );
    assert_eq!(together, alone);
    let counters = |text: &str| {
        final_state(text)
            .into_iter()
            .filter(|(k, _)| k.starts_with("pipeline"))
            .collect::<BTreeMap<_, _>>()
    };
    let mut cluster_counters = counters(&part0);
    cluster_counters.extend(counters(&part1));
    assert_eq!(cluster_counters, counters(&read(output("single.lp"))));
}

/// The text without terminal colour codes.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Without `--start-ms` every process of a generator run starts its share of the stream at
/// process 0's clock (the handshake carries it): together they write exactly the reference's
/// values for that start, windows, late events and demographic changes included.
#[test]
fn without_start_ms_the_processes_share_process_0s_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let env = [
        ("SHOPFLOW__GENERATOR__USERS", "300"),
        ("SHOPFLOW__GENERATOR__NEW_USERS", "30"),
        ("SHOPFLOW__GENERATOR__UNKNOWN_USER_SHARE", "0.1"),
        ("SHOPFLOW__GENERATOR__DEMOGRAPHIC_CHANGES_PER_SECOND", "5"),
        ("SHOPFLOW__GENERATOR__LATE_SHARE", "0.2"),
        ("SHOPFLOW__ENGINE__WINDOW_MS", "10000"),
        ("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "20000"),
    ];
    let mut logged = env.to_vec();
    logged.push(("RUST_LOG", "shopflow::cluster=info"));
    let output = dir.path().join("shared.lp").display().to_string();
    let members: Vec<Running> = (0..2)
        .map(|process| {
            let mut words = args(
                "demo --source generator --pace unbounded --rate 200 --events 6000 --seed 9 --quiet",
            );
            words.extend(member(process, 2, 2, &hosts));
            words.extend(["--output".into(), output.clone()]);
            start(&words, &logged)
        })
        .collect();
    let starts: Vec<u64> = members
        .into_iter()
        .map(|r| {
            let finished = r.finish(Duration::from_secs(300));
            assert_eq!(finished.code, Some(0), "{finished:?}");
            let log = plain(&finished.stderr);
            let line = log
                .lines()
                .find(|l| l.contains("connected to every process"))
                .unwrap_or_else(|| panic!("no start logged: {log}"));
            let value = line.split("start_ms=").nth(1).unwrap_or("");
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no start in {line}"))
        })
        .collect();
    assert_eq!(starts[0], starts[1], "one start for the whole cluster");

    let read = |p: usize| std::fs::read_to_string(format!("{output}.{p}")).expect("an output file");
    let together: BTreeMap<String, String> = [read(0), read(1)]
        .iter()
        .flat_map(|text| final_state(text))
        .collect();
    let mut config = temp_env_config(&env);
    config.generator.seed = 9;
    config.generator.events_per_second = 200.0;
    let want = final_state(&reference_lines_from(&config, starts[0], 6_000));
    assert!(
        want.len() > 500,
        "a meaningful scenario: {} rows",
        want.len()
    );
    assert_same_state(&together, &want);
}

/// `shopflow run` until caught up with the topic, from its beginning, with the scenario's
/// settings; each run (the cluster's processes together) in its own consumer group.
fn run_args(group: &str, workers: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut words = args("run --until-caught-up --start earliest");
    words.extend(workers.iter().cloned());
    let env = [("SHOPFLOW__KAFKA__GROUP_ID".to_owned(), group.to_owned())];
    (words, env.into_iter().collect())
}

/// How many events a `run` process read, from its last line.
fn events_read(finished: &Finished) -> u64 {
    let last = finished.stderr.lines().last().unwrap_or("");
    last.split(" events in ")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {finished:?}"))
}

/// The malformed-message counters taken out of a final state, summed.
fn take_malformed(state: &mut BTreeMap<String, String>) -> i64 {
    let keys: Vec<String> = state
        .keys()
        .filter(|k| k.starts_with("pipeline malformed_"))
        .cloned()
        .collect();
    keys.iter()
        .filter_map(|k| state.remove(k))
        .map(|v| v.trim_end_matches('i').parse::<i64>().expect("a count"))
        .sum()
}

/// Through the embedded Kafka (librdkafka's mock cluster, in this test process, its brokers on
/// loopback ports): two `shopflow run` processes of two workers, each reading its workers' share
/// of the four partitions, with demographics from the generator read once by worker 0, end with
/// exactly the final values of one process of one worker — and both with those of the reference.
#[test]
fn two_processes_through_embedded_kafka_equal_one_process_and_the_reference() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cluster = MockCluster::new(1).expect("the mock cluster");
    let topic = unique("shopflow-cluster").replace('_', "-");
    cluster.create_topic(&topic, 4, 1).expect("the topic");
    let kafka = crate::support::services::kafka_config(&cluster.bootstrap_servers(), &topic, 4);
    let events = 12_000u64;
    // Ten minutes ago: no window is near closing (a day of allowed lateness).
    let start_ms = shopflow::runtime::now_ms() - 600_000;
    produce_scenario(&kafka, start_ms, events);

    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let output = |name: &str| dir.path().join(name).display().to_string();
    let common = |group: &str, workers: Vec<String>, out: &str| {
        let (mut words, mut env) = run_args(group, &workers);
        words.extend(args(&format!(
            "--demographics generator --sink line-protocol --output {}",
            output(out)
        )));
        env.push(("SHOPFLOW__KAFKA__BROKERS".into(), kafka.brokers.clone()));
        env.push(("SHOPFLOW__KAFKA__TOPIC".into(), topic.clone()));
        start_run(&words, &env)
    };
    let members: Vec<Running> = (0..2)
        .map(|p| {
            common(
                &format!("{topic}-cluster"),
                member(p, 2, 2, &hosts),
                "cluster.lp",
            )
        })
        .collect();
    let single = common(&format!("{topic}-single"), args("-w 1"), "single.lp");
    let single = single.finish(Duration::from_secs(300));
    assert_eq!(single.code, Some(0), "{single:?}");
    let members: Vec<Finished> = members
        .into_iter()
        .map(|r| r.finish(Duration::from_secs(300)))
        .collect();
    for finished in &members {
        assert_eq!(finished.code, Some(0), "{finished:?}");
    }
    // The partitions were divided over both processes, and every event read once.
    let read_by: Vec<u64> = members.iter().map(events_read).collect();
    assert!(read_by.iter().all(|&n| n > 0), "{read_by:?}");
    assert_eq!(read_by.iter().sum::<u64>(), events);
    assert_eq!(events_read(&single), events);

    let read = |name: &str| std::fs::read_to_string(output(name)).expect("an output file");
    let parts = [
        final_state(&read("cluster.lp.0")),
        final_state(&read("cluster.lp.1")),
    ];
    // Each key (aggregate row, window point or counter) comes from exactly one process.
    let keys: Vec<BTreeSet<&String>> = parts.iter().map(|p| p.keys().collect()).collect();
    let shared: Vec<&&String> = keys[0].intersection(&keys[1]).collect();
    assert!(shared.is_empty(), "written by both processes: {shared:?}");
    assert!(
        parts
            .iter()
            .all(|p| p.keys().any(|k| !k.starts_with("pipeline"))),
        "both processes own aggregate rows"
    );
    let mut together: BTreeMap<String, String> = parts.into_iter().flatten().collect();
    let mut alone = final_state(&read("single.lp"));
    assert_same_state(&together, &alone);

    // The reference, from the same generated inputs (it never sees the malformed messages).
    let config = temp_env_config(&KAFKA_SCENARIO);
    let want = final_state(&reference_lines_from(&config, start_ms, events));
    assert!(
        want.len() > 500,
        "a meaningful scenario: {} rows",
        want.len()
    );
    for key in ["unknown", "refunds_applied", "duplicates"] {
        assert!(want.keys().any(|k| k.contains(key)), "{key} took part");
    }
    assert_eq!(take_malformed(&mut together), 4);
    assert_eq!(take_malformed(&mut alone), 4);
    assert_same_state(&alone, &want);
}

/// What InfluxDB holds in `database` at the end, as the rows' final values: the last point of
/// every all-time series, every window point, the newest value of every `pipeline` counter
/// (`runtime`, the engine's wall-clock figures, left out). All-zero rows are removals.
fn influx_state(url: &str, database: &str) -> BTreeMap<String, String> {
    let query = |q: &str| influx::answer(url, database, q);
    let answer = query("SHOW MEASUREMENTS");
    let measurements: Vec<String> = answer["results"][0]["series"][0]["values"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row[0].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut state = BTreeMap::new();
    for measurement in measurements.iter().filter(|m| *m != "runtime") {
        let answer = query(&format!("SELECT * FROM \"{measurement}\" GROUP BY *"));
        let Some(series) = answer["results"][0]["series"].as_array() else {
            continue;
        };
        for s in series {
            let tags: BTreeMap<String, String> = s["tags"]
                .as_object()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let name: Vec<String> = std::iter::once(measurement.clone())
                .chain(tags.iter().map(|(k, v)| format!("{k}={v}")))
                .collect();
            let name = name.join(",");
            let columns: Vec<&str> = s["columns"]
                .as_array()
                .expect("columns")
                .iter()
                .map(|c| c.as_str().unwrap_or(""))
                .collect();
            let rows = s["values"].as_array().expect("values");
            if measurement == "pipeline" {
                // Counters are written when they change, each by the process that owns it.
                for row in rows {
                    for (i, column) in columns.iter().enumerate().skip(1) {
                        if !row[i].is_null() {
                            state.insert(format!("{name} {column}"), row[i].to_string());
                        }
                    }
                }
                continue;
            }
            let fields = |row: &serde_json::Value| -> String {
                let values: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .skip(1)
                    .map(|(i, c)| format!("{c}={}", row[i]))
                    .collect();
                values.join(",")
            };
            let zero = |row: &serde_json::Value| {
                (1..columns.len()).all(|i| row[i].as_f64().is_none_or(|v| v == 0.0))
            };
            if tags.get("window").is_some_and(|w| w == "all") {
                if let Some(last) = rows.last().filter(|r| !zero(r)) {
                    state.insert(name, fields(last));
                }
            } else {
                for row in rows.iter().filter(|r| !zero(r)) {
                    state.insert(format!("{name} @{}", row[0]), fields(row));
                }
            }
        }
    }
    state
}

/// The `process` tag values of the `runtime` points in `database`: which processes wrote.
fn writing_processes(url: &str, database: &str) -> BTreeSet<String> {
    let answer = influx::answer(
        url,
        database,
        "SHOW TAG VALUES FROM runtime WITH KEY = \"process\"",
    );
    answer["results"][0]["series"][0]["values"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row[1].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// On the real services: events in a Kafka topic, demographics in a MariaDB table (snapshot and
/// binlog), results in InfluxDB. Two `shopflow run` processes of two workers write into one
/// database exactly what one process of one worker writes into another.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn two_processes_on_real_services_write_what_one_process_writes() {
    use crate::support::services::{Cleanup, TestDatabase, env};

    let test_database = TestDatabase::create("shopflow_cluster");
    let (mysql_config, influx_url, brokers) = (
        &test_database.mysql,
        &test_database.influx_url,
        &test_database.brokers,
    );
    let database = test_database.name.clone();
    let single_database = format!("{database}_single");
    let _cleanup = Cleanup {
        mysql_admin: env("SHOPFLOW_TEST_MYSQL_URL"),
        database: single_database.clone(),
        influx: influx_url.clone(),
    };
    let knobs = temp_env_config(&KAFKA_SCENARIO).generator;
    test_database.load_demographics(knobs.seed, knobs.users);

    let kafka = test_database.topic("shopflow-cluster", 4);
    let topic = kafka.topic.clone();
    let events = 12_000u64;
    let start_ms = shopflow::runtime::now_ms() - 600_000;
    produce_scenario(&kafka, start_ms, events);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let start_one = |group: &str, workers: Vec<String>, influx_database: &str| {
        let (words, mut env) = run_args(group, &workers);
        for (key, value) in [
            ("SHOPFLOW__KAFKA__BROKERS", brokers.as_str()),
            ("SHOPFLOW__KAFKA__TOPIC", topic.as_str()),
            ("SHOPFLOW__MYSQL__URL", mysql_config.url.as_str()),
            ("SHOPFLOW__INFLUX__URL", influx_url.as_str()),
            ("SHOPFLOW__INFLUX__DATABASE", influx_database),
        ] {
            env.push((key.to_owned(), value.to_owned()));
        }
        start_run(&words, &env)
    };
    let members: Vec<Running> = (0..2)
        .map(|p| {
            start_one(
                &format!("{topic}-cluster"),
                member(p, 2, 2, &hosts),
                &database,
            )
        })
        .collect();
    let single = start_one(&format!("{topic}-single"), args("-w 1"), &single_database)
        .finish(Duration::from_secs(300));
    assert_eq!(single.code, Some(0), "{single:?}");
    let members: Vec<Finished> = members
        .into_iter()
        .map(|r| r.finish(Duration::from_secs(300)))
        .collect();
    for finished in &members {
        assert_eq!(finished.code, Some(0), "{finished:?}");
    }
    let read_by: Vec<u64> = members.iter().map(events_read).collect();
    assert!(read_by.iter().all(|&n| n > 0), "{read_by:?}");
    assert_eq!(read_by.iter().sum::<u64>(), events);
    assert_eq!(events_read(&single), events);

    assert_eq!(
        writing_processes(influx_url, &database),
        BTreeSet::from(["0".to_owned(), "1".to_owned()])
    );
    let together = influx_state(influx_url, &database);
    let alone = influx_state(influx_url, &single_database);
    assert!(
        alone.len() > 500,
        "a meaningful scenario: {} rows",
        alone.len()
    );
    assert_eq!(
        alone.get("pipeline events_in").map(String::as_str),
        Some("12000")
    );
    assert!(alone.keys().any(|k| k.contains("=unknown")));
    assert_same_state(&together, &alone);
}
