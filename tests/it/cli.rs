//! The built binary, run as a user would.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use dataflows::output::{Batch, Change};
use shopflow::config::Config;
use shopflow::sinks::line_protocol::Encoder;

use crate::support::process::{free_port, shopflow, text};

/// The final state a line protocol file describes: the last fields written per series (and per
/// timestamp for window rows, whose points are the windows); all-zero rows are removals.
pub(crate) fn final_state(lines: &str) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for line in lines.lines() {
        let (series, rest) = split_unescaped(line, ' ').expect("series and fields");
        let (fields, time) = split_unescaped(rest, ' ').expect("fields and time");
        time.parse::<u64>().expect("an integer timestamp");
        if series.starts_with("runtime,") {
            // The engine's own figures (lag, freshness), not results.
            continue;
        }
        if series == "pipeline" {
            for field in fields.split(',') {
                let (name, value) = field.split_once('=').expect("name=value");
                state.insert(format!("pipeline {name}"), value.to_owned());
            }
            continue;
        }
        let key = if series.ends_with(",window=all") {
            series.to_owned()
        } else {
            format!("{series} @{time}")
        };
        let removed = fields
            .split(',')
            .all(|f| f.ends_with("=0i") || f.ends_with("=0"));
        if removed {
            state.remove(&key);
        } else {
            state.insert(key, fields.to_owned());
        }
    }
    state
}

/// Splits at the first separator not escaped by a backslash.
pub(crate) fn split_unescaped(s: &str, separator: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            return Some((&s[..i], &s[i + 1..]));
        }
    }
    None
}

/// A reproducible demo run through the whole binary (generators, two workers, the sink thread,
/// line protocol) ends with exactly the values the reference computes from the same inputs, tick
/// for tick: windows close, orders expire, and demographics change during the run.
#[test]
fn demo_output_equals_the_reference() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("demo.lp");
    let env = [
        ("SHOPFLOW__GENERATOR__USERS", "300"),
        ("SHOPFLOW__GENERATOR__NEW_USERS", "40"),
        ("SHOPFLOW__GENERATOR__CAMPAIGNS", "12"),
        ("SHOPFLOW__GENERATOR__UNKNOWN_USER_SHARE", "0.1"),
        ("SHOPFLOW__GENERATOR__DEMOGRAPHIC_CHANGES_PER_SECOND", "20"),
        ("SHOPFLOW__GENERATOR__REFUND_SHARE", "0.2"),
        ("SHOPFLOW__GENERATOR__DUPLICATE_SHARE", "0.05"),
        ("SHOPFLOW__GENERATOR__LATE_SHARE", "0.2"),
        ("SHOPFLOW__ENGINE__WINDOW_MS", "10000"),
        ("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "30000"),
    ];
    let run = shopflow(
        &[
            "demo",
            "--pace",
            "unbounded",
            "--rate",
            "100",
            "--events",
            "20000",
            "--start-ms",
            "1700000000000",
            "--seed",
            "11",
            "-w",
            "2",
            "--quiet",
            "--source",
            "generator",
            "--output",
            output.to_str().unwrap(),
        ],
        &env,
    );
    assert!(run.status.success(), "demo failed: {}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("20000 events"), "{stdout}");
    assert!(stdout.contains("top campaigns"), "{stdout}");

    // The same inputs, replayed through the reference.
    let lines = reference_lines(&env, 11, 100.0, 20_000);
    let written = std::fs::read_to_string(&output).expect("the line protocol file");
    let (got, want) = (final_state(&written), final_state(&lines));
    assert!(
        want.len() > 100,
        "a meaningful scenario: {} rows",
        want.len()
    );
    assert!(
        want.keys().any(|k| k.contains("unknown")),
        "unknown users took part"
    );
    assert!(
        written.lines().any(|l| l.contains("refunds_applied=")),
        "refunds took part"
    );
    assert_same_state(&got, &want);
}

/// The line protocol of the reference's final values for a demo run of `events` generated events
/// (seed, rate, and `env` as the binary saw them, starting at 1,700,000,000,000 ms).
fn reference_lines(env: &[(&str, &str)], seed: u64, rate: f64, events: u64) -> String {
    let mut config = temp_env_config(env);
    config.generator.seed = seed;
    config.generator.events_per_second = rate;
    reference_lines_from(&config, 1_700_000_000_000, events)
}

/// The line protocol of the reference's final values for the first `events` events `config`'s
/// generator makes from `start_ms`, with its demographics table (and changes, if any).
pub(crate) fn reference_lines_from(config: &Config, start_ms: u64, events: u64) -> String {
    let inputs = shopflow::generators::recorded_run(
        &config.generator,
        start_ms,
        config.engine.tick_ms,
        events,
    )
    .expect("valid knobs");
    let expected = dataflows::reference::evaluate(&inputs, config.params(), u64::MAX);
    let changes = expected
        .into_iter()
        .map(|(key, value)| Change {
            key,
            value: Some(value),
        })
        .collect();
    let mut lines = String::new();
    Encoder::new(config.engine.window_ms).encode(&Batch { time: 0, changes }, &mut lines);
    lines
}

/// The configuration the binary sees under `env`.
pub(crate) fn temp_env_config(env: &[(&str, &str)]) -> Config {
    let mut toml: toml::Table =
        toml::from_str(shopflow::config::DEFAULT_TOML).expect("the shipped config");
    for (key, value) in env {
        let path: Vec<String> = key
            .trim_start_matches("SHOPFLOW__")
            .split("__")
            .map(|p| p.to_lowercase().replace('_', "-"))
            .collect();
        let section = toml[&path[0]].as_table_mut().expect("a section");
        let parsed: toml::Value = toml::from_str(&format!("v = {value}"))
            .map(|t: toml::Table| t["v"].clone())
            .expect("a value");
        section.insert(path[1].clone(), parsed);
    }
    let config: Config = toml::from_str(&toml.to_string()).expect("valid");
    config.validate().expect("valid");
    config
}

#[test]
fn demo_for_a_few_seconds_prints_aggregates() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("live.lp");
    let run = shopflow(
        &[
            "demo",
            "--duration",
            "3s",
            "--rate",
            "500",
            "-w",
            "2",
            "--output",
            output.to_str().unwrap(),
        ],
        &[("SHOPFLOW__GENERATOR__USERS", "5000")],
    );
    assert!(run.status.success(), "demo failed: {}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("top campaigns (all time, by revenue):"),
        "{stdout}"
    );
    assert!(stdout.contains("pipeline: events_in="), "{stdout}");
    let written = std::fs::read_to_string(&output).expect("the line protocol file");
    assert!(written.lines().count() > 10, "{written}");
}

#[test]
fn bad_flags_and_configuration_give_one_clear_error() {
    let run = shopflow(&["demo", "--workers", "many"], &[]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = text(&run.stderr);
    assert!(
        stderr.starts_with("error: invalid value 'many' for '--workers <WORKERS>'"),
        "{stderr}"
    );

    let run = shopflow(&["demo", "--processes", "2", "--process", "2"], &[]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        text(&run.stderr).trim(),
        "error: --process 2 is out of range for --processes 2 (processes are numbered from 0)"
    );

    let run = shopflow(&["demo", "--processes", "2", "--process", "1"], &[]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    assert!(
        stderr.starts_with("error: the embedded Kafka lives in one process"),
        "{stderr}"
    );

    let run = shopflow(
        &["--config", "/nonexistent/shopflow.toml", "check-config"],
        &[],
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).starts_with("error: cannot read config file /nonexistent/shopflow.toml")
    );

    let run = shopflow(&["check-config"], &[("SHOPFLOW__ENGINE__TICK_MS", "0")]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        text(&run.stderr).trim(),
        "error: invalid configuration: engine.tick-ms: must be at least 1 \
         (from environment variable SHOPFLOW__ENGINE__TICK_MS)"
    );

    let run = shopflow(&["check-config"], &[("SHOPFLOW__ENGINE__TICK_MS", "soon")]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = text(&run.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("tick-ms"), "{stderr}");
}

#[test]
fn check_config_prints_a_configuration_that_parses_back() {
    let run = shopflow(&["check-config"], &[("SHOPFLOW__GENERATOR__SEED", "99")]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let printed: Config = toml::from_str(&text(&run.stdout)).expect("TOML");
    assert_eq!(printed.generator.seed, 99);
    assert_eq!(printed.engine, Config::load(None).expect("defaults").engine);
}

/// The default demo goes through the embedded Kafka cluster (producer, Avro, consumer, offsets).
/// Arrival ticks then follow the wall clock, so the scenario is one whose final values do not
/// depend on them: no window closes, no order is forgotten, demographics stay put.
#[test]
fn embedded_kafka_demo_equals_the_reference() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("kafka.lp");
    let env = [
        ("SHOPFLOW__GENERATOR__USERS", "500"),
        ("SHOPFLOW__GENERATOR__NEW_USERS", "30"),
        ("SHOPFLOW__GENERATOR__CAMPAIGNS", "9"),
        ("SHOPFLOW__GENERATOR__UNKNOWN_USER_SHARE", "0.1"),
        ("SHOPFLOW__GENERATOR__DEMOGRAPHIC_CHANGES_PER_SECOND", "0"),
        ("SHOPFLOW__GENERATOR__REFUND_SHARE", "0.2"),
        ("SHOPFLOW__GENERATOR__DUPLICATE_SHARE", "0.05"),
        ("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "100000000000"),
        ("SHOPFLOW__ENGINE__ORDER_HORIZON_MS", "100000000000"),
        ("SHOPFLOW__ENGINE__TICK_MS", "100"),
    ];
    let args = "demo --pace unbounded --rate 1000 --events 15000 --start-ms 1700000000000 --seed 5 -w 2 --quiet";
    let mut args: Vec<&str> = args.split(' ').collect();
    args.extend(["--output", output.to_str().unwrap()]);
    let run = shopflow(&args, &env);
    assert!(run.status.success(), "demo failed: {}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("15000 events"),
        "{}",
        text(&run.stdout)
    );

    let lines = reference_lines(&env, 5, 1000.0, 15_000);
    let written = std::fs::read_to_string(&output).expect("the line protocol file");
    let (got, want) = (final_state(&written), final_state(&lines));
    assert!(
        want.len() > 100,
        "a meaningful scenario: {} rows",
        want.len()
    );
    // Whether a refund found its purchase already counted depends on which arrived in an earlier
    // tick: the refund counters split differently, their sum and every aggregate may not.
    let refunds = |state: &mut BTreeMap<String, String>| {
        let n = |v: Option<String>| {
            v.map_or(0, |v| {
                v.trim_end_matches('i').parse::<i64>().expect("a count")
            })
        };
        n(state.remove("pipeline refunds_applied")) + n(state.remove("pipeline refunds_unmatched"))
    };
    let (mut got, mut want) = (got, want);
    assert_eq!(refunds(&mut got), refunds(&mut want), "refunds seen");
    assert_same_state(&got, &want);
}

/// Equality of two final states, reporting only the rows that differ.
pub(crate) fn assert_same_state(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    let keys: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| {
            format!(
                "{k}\n    output:   {:?}\n    expected: {:?}",
                got.get(k),
                want.get(k)
            )
        })
        .collect();
    let first: Vec<&String> = differing.iter().take(20).collect();
    assert!(
        differing.is_empty(),
        "{} rows differ, the first ones:\n{first:#?}",
        differing.len()
    );
}

/// Secrets set in the configuration and the environment appear in no output of a run that logs
/// everything and fails on every service, nor in `check-config`.
#[test]
fn secrets_never_reach_the_output() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let closed = free_port();
    let config = shopflow::config::DEFAULT_TOML
        .replace("[kafka.properties]", "[kafka.properties]\n\"sasl.password\" = \"kafka-secret-4711\"\n\"sasl.username\" = \"shop\"")
        .replace("brokers = \"127.0.0.1:9092\"", &format!("brokers = \"127.0.0.1:{closed}\""));
    let path = dir.path().join("secret.toml");
    std::fs::write(&path, config).expect("a config file");
    let path = path.to_str().expect("a UTF-8 path");
    let env = [
        ("RUST_LOG", "trace"),
        (
            "SHOPFLOW__MYSQL__URL",
            &format!("mysql://shopflow:mysql-secret-4711@127.0.0.1:{closed}/shop") as &str,
        ),
        ("SHOPFLOW__MYSQL__CONNECT_RETRIES", "1"),
        (
            "SHOPFLOW__INFLUX__URL",
            &format!("http://127.0.0.1:{closed}") as &str,
        ),
        ("SHOPFLOW__INFLUX__USERNAME", "shop"),
        ("SHOPFLOW__INFLUX__PASSWORD", "influx-secret-4711"),
        ("SHOPFLOW__INFLUX__MAX_RETRIES", "1"),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, *v)).collect();
    let check = shopflow(&["--config", path, "check-config"], &env);
    assert!(check.status.success(), "{}", text(&check.stderr));
    // First the InfluxDB sink (refused at start), then Kafka and MySQL (line protocol sink).
    let influx = shopflow(
        &["--config", path, "run", "-w", "1", "--duration", "3s"],
        &env,
    );
    assert!(
        !influx.status.success(),
        "nothing is reachable, so the run fails"
    );
    let output = dir.path().join("out.lp");
    let output = output.to_str().expect("a UTF-8 path");
    let args = [
        "--config",
        path,
        "run",
        "-w",
        "1",
        "--duration",
        "3s",
        "--sink",
        "line-protocol",
        "-o",
        output,
    ];
    let run = shopflow(&args, &env);
    assert!(
        !run.status.success(),
        "nothing is reachable, so the run fails"
    );
    // It got as far as the sources: Kafka's metadata request or MySQL's connection failed.
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{closed}")) || stderr.contains("kafka"),
        "{stderr}"
    );
    for output in [
        &check.stdout,
        &check.stderr,
        &influx.stdout,
        &influx.stderr,
        &run.stdout,
        &run.stderr,
    ] {
        let output = text(output);
        assert!(
            !output.contains("secret-4711"),
            "a secret leaked:\n{output}"
        );
    }
    assert!(
        text(&check.stdout).contains("***"),
        "secrets are shown masked"
    );
}

/// The last value of each `pipeline` counter in a line protocol file: the sink's own account of
/// what went through the dataflow (read line by line: the file can be large).
fn pipeline_counters(path: &std::path::Path) -> BTreeMap<String, i64> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).expect("the line protocol file");
    let mut counters = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.expect("a line");
        let Some(rest) = line.strip_prefix("pipeline ") else {
            continue;
        };
        let (fields, _time) = rest.split_once(' ').expect("fields and time");
        for field in fields.split(',') {
            let (name, value) = field.split_once('=').expect("name=value");
            let value = value.trim_end_matches('i').parse().expect("an integer");
            counters.insert(name.to_owned(), value);
        }
    }
    counters
}

/// The README's own demo, through the embedded Kafka at an unbounded pace: every event the
/// generator made is counted in `events_in`, exactly, by the line protocol written, and nothing
/// is malformed or rejected (the generator makes only valid events). The mock cluster keeps about
/// 5 MiB of each partition: a producer that ran ahead of the pipeline lost the difference.
fn embedded_demo_counts_every_event(events: u64) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("demo.lp");
    let started = std::time::Instant::now();
    let run = shopflow(
        &[
            "demo",
            "--pace",
            "unbounded",
            "--events",
            &events.to_string(),
            "--quiet",
            "--output",
            output.to_str().expect("a UTF-8 path"),
        ],
        &[],
    );
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "demo failed: {stderr}");
    eprintln!("{events} events in {:?}", started.elapsed());
    assert!(
        !stderr.contains("Offset out of range") && !stderr.contains("offset reset"),
        "{stderr}"
    );
    let counters = pipeline_counters(&output);
    assert_eq!(
        counters.get("events_in"),
        Some(&(events as i64)),
        "{counters:?}"
    );
    let rejected: Vec<(&String, &i64)> = counters
        .iter()
        .filter(|(name, n)| {
            (name.starts_with("malformed_") || name.starts_with("rejected_")) && **n != 0
        })
        .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert!(
        text(&run.stdout).contains(&format!("{events} events in ")),
        "{}",
        text(&run.stdout)
    );
}

#[test]
fn embedded_demo_counts_all_of_5m_events() {
    embedded_demo_counts_every_event(5_000_000);
}

/// Four times the README's run: the producer stays held back by the pipeline throughout. A debug
/// build needs about 5 minutes of CPU for it (against about 80 s for 5M), so it runs with the
/// ignored tests (`scripts/test-all`).
#[test]
#[ignore = "minutes in a debug build: run by scripts/test-all"]
fn embedded_demo_counts_all_of_20m_events() {
    embedded_demo_counts_every_event(20_000_000);
}

/// A rate of zero, below zero or not a number is refused by the flag's parser: one line, exit 2.
#[test]
fn demo_refuses_a_rate_that_is_not_positive() {
    for rate in [
        "--rate=0",
        "--rate=-5",
        "--rate=0.0",
        "--rate=NaN",
        "--rate=inf",
        "--rate=fast",
    ] {
        let run = shopflow(
            &["demo", rate, "--events", "10", "--quiet", "-o", "/dev/null"],
            &[],
        );
        assert_eq!(run.status.code(), Some(2), "{rate}: {}", text(&run.stderr));
        let stderr = text(&run.stderr);
        let value = rate.trim_start_matches("--rate=");
        assert!(
            stderr.starts_with(&format!(
                "error: invalid value '{value}' for '--rate <RATE>': "
            )),
            "{rate}: {stderr}"
        );
    }
    let run = shopflow(&["produce", "--rate=0", "--events", "1"], &[]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
}

/// Waits for `child` at most `limit`; kills it and fails if it has not ended by then.
fn wait_at_most(child: &mut std::process::Child, limit: std::time::Duration, what: &str) -> Output {
    let started = std::time::Instant::now();
    while child.try_wait().expect("a child").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut output = Output {
        status: child.wait().expect("a status"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read as _;
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut output.stdout).expect("stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut output.stderr).expect("stderr");
    }
    output
}

/// The demo at its own flags, with pipes for standard output and error.
fn spawn_demo(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .arg("demo")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// At a low rate, `--duration` and Ctrl-C end the demo promptly, with every event sent counted
/// (the producer looked at its stop flag every 256 events: at 1 event/s, minutes later).
#[test]
fn a_slow_demo_stops_when_asked() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("slow.lp");
    let output = output.to_str().expect("a UTF-8 path");
    let started = std::time::Instant::now();
    let mut child = spawn_demo(&["--rate", "2", "--duration", "2s", "--quiet", "-o", output]);
    let run = wait_at_most(
        &mut child,
        std::time::Duration::from_secs(30),
        "demo --duration 2s",
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    let events_in = pipeline_counters(std::path::Path::new(output))["events_in"];
    assert!((1..=6).contains(&events_in), "{events_in}");

    // Ctrl-C: the producer stops at once, the pipeline reads what it sent, and the demo ends.
    let mut child = spawn_demo(&["--rate", "2", "--quiet", "-o", output]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let run = wait_at_most(
        &mut child,
        std::time::Duration::from_secs(20),
        "demo after Ctrl-C",
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let events_in = pipeline_counters(std::path::Path::new(output))["events_in"];
    assert!(events_in >= 1, "{events_in}");
    assert!(
        text(&run.stdout).contains(&format!("{events_in} events in ")),
        "{}",
        text(&run.stdout)
    );
}

/// A reader of the line protocol that stops reading (`| head`) ends the demo quietly: exit 0,
/// nothing on standard error.
#[test]
fn demo_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead as _;
    for source in ["embedded-kafka", "generator"] {
        let mut child = spawn_demo(&[
            "--pace",
            "unbounded",
            "--events",
            "2000000",
            "--quiet",
            "--source",
            source,
            "--output",
            "-",
        ]);
        let stdout = child.stdout.take().expect("a pipe");
        let first: Vec<String> = std::io::BufReader::new(stdout)
            .lines()
            .take(10)
            .map(|l| l.expect("a line"))
            .collect();
        assert_eq!(first.len(), 10);
        // The reader is gone: dropping the pipe closed it.
        let run = wait_at_most(
            &mut child,
            std::time::Duration::from_secs(120),
            "demo | head",
        );
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(0), "{source}: {stderr}");
        assert!(stderr.trim().is_empty(), "{source}: {stderr}");
    }
}
