//! What an operator meets: log lines on a pipe, cluster flags from the environment.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::process::{command, free_ports, hostfile};

/// Runs `shopflow run` against a broker that refuses connections, with piped standard error and
/// `extra` arguments: it logs a warning of its own (checkpoints off), librdkafka's connection
/// failures, and ends with an error within seconds, without any service.
fn run_against_no_broker(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("out.lp");
    // Give up on the broker within seconds (librdkafka's connect timeout bounds the retries).
    let config = dir.path().join("fast.toml");
    std::fs::write(
        &config,
        "[kafka.properties]\n\"socket.connection.setup.timeout.ms\" = \"2000\"\n",
    )
    .expect("written");
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    command
        .arg("--config")
        .arg(&config)
        .args([
            "run",
            "--sink",
            "line-protocol",
            "--demographics",
            "generator",
            "--duration",
            "5s",
            "-o",
        ])
        .arg(&output)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("SHOPFLOW__ENGINE__CHECKPOINT_DIR", "off")
        // An unreachable broker is retried this long before the run fails.
        .env("SHOPFLOW__ENGINE__CONNECT_TIMEOUT_MS", "3000")
        // Port 1 on the loopback: nothing listens, the connection is refused at once.
        .env("SHOPFLOW__KAFKA__BROKERS", "127.0.0.1:1")
        // Whether colour is wanted must follow from the pipe alone.
        .env_remove("NO_COLOR")
        .env_remove("SHOPFLOW__LOG__FORMAT")
        .stdin(Stdio::null());
    command.output().expect("the binary runs")
}

/// Piped logs once carried ANSI colour codes (`\x1b[2m2026-...\x1b[0m \x1b[33m WARN`): every
/// reader of a log file or collector had to strip them.
#[test]
fn piped_text_logs_carry_no_ansi_codes() {
    let output = run_against_no_broker(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("WARN"), "a warning was logged: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no escape codes: {stderr:?}");
}

/// `--log-format json`: every line on standard error is one JSON object, the command's own final
/// error included (and librdkafka's connection failures, when they are delivered before the run
/// ends: librdkafka hands them over only when the client is polled), each with a level and a
/// message.
#[test]
fn json_logs_are_one_object_per_line() {
    let output = run_against_no_broker(&["--log-format", "json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let mut targets = Vec::new();
    for line in stderr.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"));
        assert!(value.is_object(), "{line}");
        for key in ["timestamp", "level", "message", "target"] {
            assert!(value[key].is_string(), "{key} in {line}");
        }
        targets.push((
            value["target"].as_str().unwrap_or_default().to_owned(),
            value["level"].as_str().unwrap_or_default().to_owned(),
            value["message"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    assert!(
        targets
            .iter()
            .any(|(t, l, m)| t == "shopflow::commands" && l == "WARN" && m.contains("checkpoints")),
        "{stderr}"
    );
    let (_, level, last) = targets.last().expect("lines");
    assert_eq!(level, "ERROR", "{stderr}");
    assert!(last.starts_with("error: "), "{stderr}");
}

/// The config key and its environment variable choose the format as the flag does; a bad value
/// is a usage error naming the key.
#[test]
fn the_log_format_comes_from_config_too() {
    let output = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .arg("check-config")
        .env("SHOPFLOW__LOG__FORMAT", "json")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("[log]\nformat = \"json\""), "{stdout}");

    let output = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .arg("check-config")
        .env("SHOPFLOW__LOG__FORMAT", "xml")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("log.format"), "{stderr}");

    // A configuration error is reported in the format the flag asks for.
    let output = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["--log-format", "json", "check-config"])
        .env("SHOPFLOW__LOG__FORMAT", "xml")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let value: serde_json::Value = serde_json::from_str(stderr.trim_end()).expect("one object");
    assert!(
        value["message"]
            .as_str()
            .is_some_and(|m| m.contains("log.format")),
        "{stderr}"
    );
}

/// Runs the built binary with only `env` set for shopflow (none of the caller's `SHOPFLOW*`).
fn shopflow_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut command = command(args, env);
    for (key, _) in std::env::vars() {
        if key.starts_with("SHOPFLOW") && !env.iter().any(|(set, _)| *set == key) {
            command.env_remove(key);
        }
    }
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Two processes configured by their environment alone, as a StatefulSet's pods are: the same
/// command, `SHOPFLOW_PROCESS=auto` with the pod names `shopflow-0` and `shopflow-1` as
/// `HOSTNAME`, the process count, hostfile and workers from `SHOPFLOW_PROCESSES`,
/// `SHOPFLOW_HOSTFILE` and `SHOPFLOW_WORKERS`. Each writes its own file (`.0`, `.1`): had either
/// taken the wrong index, they would not form a cluster (or would both write `.0`).
#[test]
fn a_cluster_is_configured_from_the_environment_and_pod_names() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts", &free_ports(2));
    let hosts = hosts.as_str();
    let output = dir.path().join("out.lp");
    let output = output.to_str().expect("UTF-8");
    let args = [
        "demo",
        "--source",
        "generator",
        "--pace",
        "unbounded",
        "--events",
        "3000",
        "--start-ms",
        "1700000000000",
        "--quiet",
        "--connect-timeout",
        "60s",
        "--output",
        output,
    ];
    let pods: Vec<std::process::Child> = ["shopflow-1", "shopflow-0"]
        .into_iter()
        .map(|pod| {
            shopflow_with_env(
                &args,
                &[
                    ("HOSTNAME", pod),
                    ("SHOPFLOW_PROCESS", "auto"),
                    ("SHOPFLOW_PROCESSES", "2"),
                    ("SHOPFLOW_HOSTFILE", hosts),
                    ("SHOPFLOW_WORKERS", "2"),
                ],
            )
        })
        .collect();
    // Each process generates and reports its own workers' share of the events.
    let mut events = 0;
    for pod in pods {
        let finished = pod.wait_with_output().expect("it ends");
        assert!(
            finished.status.success(),
            "{}",
            String::from_utf8_lossy(&finished.stderr)
        );
        let said = String::from_utf8_lossy(&finished.stdout);
        let (count, _) = said.split_once(" events").expect("a summary");
        events += count.parse::<u64>().expect("a count");
    }
    assert_eq!(events, 3000);
    for process in 0..2 {
        let written = std::fs::read_to_string(format!("{output}.{process}"))
            .unwrap_or_else(|e| panic!("process {process} wrote its own file: {e}"));
        assert!(!written.is_empty());
    }
    assert!(!std::path::Path::new(output).exists());
}

/// `auto` with a host name that is no pod name, or an ordinal beyond the process count, is a
/// usage error naming the problem, at once.
#[test]
fn a_hostile_host_name_is_a_clear_usage_error() {
    let run = |hostname: Option<&str>, processes: &str| {
        let mut env = vec![
            ("SHOPFLOW_PROCESS", "auto"),
            ("SHOPFLOW_PROCESSES", processes),
        ];
        if let Some(name) = hostname {
            env.push(("HOSTNAME", name));
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command.env_remove("HOSTNAME");
        let output = command
            .args(["demo", "--source", "generator", "--events", "10", "--quiet"])
            .args(["--output", "/dev/null"])
            .envs(env)
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for (name, says) in [
        (Some("shopflow"), "does not end in -<ordinal>"),
        (Some("shopflow-x"), "not a decimal number"),
        (Some("shopflow-007"), "leading zero"),
        (Some("shopflow-99999999999"), "too large"),
        (None, "HOSTNAME is not set"),
    ] {
        let (code, stderr) = run(name, "2");
        assert_eq!(code, Some(2), "{name:?}: {stderr}");
        assert!(stderr.contains(says), "{name:?}: {stderr}");
        assert!(
            stderr.contains("SHOPFLOW_PROCESS") || stderr.contains("--process"),
            "{stderr}"
        );
    }
    let (code, stderr) = run(Some("shopflow-2"), "2");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--process 2 is out of range for --processes 2"),
        "{stderr}"
    );
}

/// The Kubernetes manifests, each document parsed.
fn manifests() -> Vec<(String, yaml_rust2::Yaml)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            for document in yaml_rust2::YamlLoader::load_from_str(&text).expect("YAML") {
                documents.push((path.display().to_string(), document));
            }
        }
    }
    documents
}

/// The one document of `kind`.
fn manifest(kind: &str) -> yaml_rust2::Yaml {
    let mut found: Vec<yaml_rust2::Yaml> = manifests()
        .into_iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found.remove(0)
}

/// What the schemas cannot check: the process count said twice agrees (`replicas` and every
/// container's `SHOPFLOW_PROCESSES`), the config the ConfigMap holds is one shopflow accepts,
/// and the files it names are the Secret's keys where the Secret is mounted.
#[test]
fn the_kubernetes_manifests_agree_with_themselves_and_with_shopflow() {
    let set = manifest("StatefulSet");
    let replicas = set["spec"]["replicas"].as_i64().expect("replicas");
    let pod = &set["spec"]["template"]["spec"];
    let containers: Vec<&yaml_rust2::Yaml> = pod["containers"]
        .as_vec()
        .into_iter()
        .chain(pod["initContainers"].as_vec())
        .flatten()
        .collect();
    assert_eq!(containers.len(), 2);
    for container in &containers {
        let processes = container["env"]
            .as_vec()
            .expect("env")
            .iter()
            .find(|e| e["name"].as_str() == Some("SHOPFLOW_PROCESSES"))
            .and_then(|e| e["value"].as_str())
            .expect("SHOPFLOW_PROCESSES");
        assert_eq!(processes, replicas.to_string(), "{:?}", container["name"]);
    }

    // The ConfigMap's file, layered over the defaults as the container does (--config).
    let config_map = manifest("ConfigMap");
    let toml = config_map["data"]["shopflow.toml"]
        .as_str()
        .expect("shopflow.toml");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("shopflow.toml");
    std::fs::write(&path, toml).expect("written");
    let output = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env_remove("SHOPFLOW__LOG__FORMAT")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let config = shopflow::config::Config::load(Some(&path)).expect("valid");
    assert_eq!(config.log.format, shopflow::logging::LogFormat::Json);

    // Every password file is a key of the Secret, mounted where the config looks.
    let secret = manifest("Secret");
    let mount = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("shopflow"))
        .and_then(|c| c["volumeMounts"].as_vec())
        .and_then(|mounts| {
            mounts
                .iter()
                .find(|m| m["name"].as_str() == Some("secrets"))
                .and_then(|m| m["mountPath"].as_str())
        })
        .expect("the secrets mount");
    let files: Vec<&str> = toml
        .lines()
        .filter_map(|l| l.strip_prefix("password-file = "))
        .map(|v| v.trim_matches('"'))
        .collect();
    assert_eq!(files.len(), 2, "{toml}");
    for file in files {
        let key = file
            .strip_prefix(&format!("{mount}/"))
            .unwrap_or_else(|| panic!("{file} is under {mount}"));
        assert!(
            secret["stringData"][key].as_str().is_some(),
            "the Secret holds {key}"
        );
    }
}

/// The init container's hostfile script, run by `sh` as in the pod: one line per process, this
/// pod's own as 0.0.0.0 (it only listens there), the others by their stable DNS names under the
/// headless service, in process order; and the hostfile is one shopflow reads.
#[test]
fn the_init_container_writes_the_hostfile_shopflow_reads() {
    let set = manifest("StatefulSet");
    let init = &set["spec"]["template"]["spec"]["initContainers"][0];
    let command = init["command"].as_vec().expect("a command");
    let script = command.last().and_then(|s| s.as_str()).expect("a script");
    let service = set["spec"]["serviceName"].as_str().expect("serviceName");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = dir.path().join("hosts");
    let script = script.replace("/var/run/shopflow/hosts", hosts.to_str().expect("UTF-8"));
    let written = |pod: &str, processes: &str| {
        let output = Command::new("sh")
            .args(["-c", &script])
            .env("HOSTNAME", pod)
            .env("NAMESPACE", "prod")
            .env("SHOPFLOW_PROCESSES", processes)
            .output()
            .expect("sh runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(&hosts).expect("the hostfile")
    };
    assert_eq!(
        written("shopflow-1", "3"),
        format!(
            "shopflow-0.{service}.prod.svc.cluster.local:2101\n0.0.0.0:2101\n\
             shopflow-2.{service}.prod.svc.cluster.local:2101\n"
        )
    );
    assert_eq!(written("my-flow-0", "1"), "0.0.0.0:2101\n");
    let lines = written("shopflow-3", "4");
    assert_eq!(lines.lines().count(), 4);
    assert_eq!(lines.lines().last(), Some("0.0.0.0:2101"));

    // Each process's hostfile lists itself as 0.0.0.0 and the others by name: shopflow listens
    // on its own line and dials the others', so the files may differ there. Two such processes
    // form a cluster.
    let ports = free_ports(2);
    let pods: Vec<std::process::Child> = (0..2)
        .map(|me: usize| {
            let lines: Vec<String> = ports
                .iter()
                .enumerate()
                .map(|(i, port)| {
                    let host = if i == me { "0.0.0.0" } else { "localhost" };
                    format!("{host}:{port}\n")
                })
                .collect();
            let file = dir.path().join(format!("hosts.{me}"));
            std::fs::write(&file, lines.concat()).expect("written");
            shopflow_with_env(
                &[
                    "demo",
                    "--source",
                    "generator",
                    "--pace",
                    "unbounded",
                    "--events",
                    "500",
                    "--quiet",
                    "--output",
                    "/dev/null",
                ],
                &[
                    ("HOSTNAME", &format!("shopflow-{me}")),
                    ("SHOPFLOW_PROCESS", "auto"),
                    ("SHOPFLOW_PROCESSES", "2"),
                    ("SHOPFLOW_HOSTFILE", file.to_str().expect("UTF-8")),
                ],
            )
        })
        .collect();
    for pod in pods {
        let finished = pod.wait_with_output().expect("it ends");
        assert!(
            finished.status.success(),
            "{}",
            String::from_utf8_lossy(&finished.stderr)
        );
    }
}

/// How the two producer runs reach the topic.
enum Producing {
    /// `shopflow produce`, the binary, against a real broker.
    Binary,
    /// In this process, as `produce` does it (`commands::resumed_generator`, then
    /// `writers::kafka::produce_generated`): librdkafka's mock cluster refuses the topic creation
    /// `produce` starts with.
    InProcess,
}

/// `produce` restarted with the same seed once sent the stream's beginning again: the same order
/// ids, which the pipeline dropped as duplicates for the order horizon, so the second run's
/// purchases never counted. Now a producer goes on where the topic ends. Two runs into one topic
/// on librdkafka's mock cluster (which `run`, the binary, reaches over TCP), then the pipeline: it
/// counts every purchase of both, against the generator's stream read as a reference.
#[test]
fn a_restarted_producer_sends_new_orders_and_every_purchase_counts() {
    let kafka = shopflow::sources::kafka::KafkaConfig {
        topic: "restarted-producer".into(),
        partitions: 3,
        ..crate::cli::temp_env_config(&[]).kafka
    };
    let embedded = shopflow::commands::embedded::EmbeddedKafka::start(&kafka).expect("a cluster");
    restarted_producer_scenario(
        &embedded.config().brokers,
        "restarted-producer",
        Producing::InProcess,
    );
}

/// The same with `shopflow produce` itself, twice, against the shared Kafka.
#[test]
#[ignore = "needs Kafka: run scripts/test-all"]
fn a_restarted_produce_command_sends_new_orders_and_every_purchase_counts() {
    let brokers = crate::support::services::env("SHOPFLOW_TEST_KAFKA_BROKERS");
    let topic = crate::support::services::unique("shopflow-restarted-producer").replace('_', "-");
    restarted_producer_scenario(&brokers, &topic, Producing::Binary);
}

fn restarted_producer_scenario(brokers: &str, topic: &str, producing: Producing) {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;

    use dataflows::model::Tag;
    use shopflow::generators::events::EventGenerator;

    let env = [
        ("SHOPFLOW__KAFKA__BROKERS", format!("\"{brokers}\"")),
        ("SHOPFLOW__KAFKA__TOPIC", format!("\"{topic}\"")),
        ("SHOPFLOW__KAFKA__GROUP_ID", format!("\"{topic}\"")),
        ("SHOPFLOW__KAFKA__PARTITIONS", "3".into()),
        ("SHOPFLOW__KAFKA__MAX_EVENT_AGE_MS", "0".into()),
        ("SHOPFLOW__KAFKA__MAX_FUTURE_SKEW_MS", "0".into()),
        ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", "\"off\"".into()),
        ("SHOPFLOW__GENERATOR__SEED", "9".into()),
        ("SHOPFLOW__GENERATOR__EVENTS_PER_SECOND", "1000.0".into()),
        ("SHOPFLOW__GENERATOR__PACE", "\"unbounded\"".into()),
        ("SHOPFLOW__GENERATOR__USERS", "300".into()),
        ("SHOPFLOW__GENERATOR__CAMPAIGNS", "20".into()),
        ("SHOPFLOW__GENERATOR__FUNNEL_SPAN", "5".into()),
        ("SHOPFLOW__GENERATOR__DUPLICATE_SHARE", "0.05".into()),
        ("SHOPFLOW__GENERATOR__REFUND_SHARE", "0.05".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = crate::cli::temp_env_config(&env);
    let per_run = 1_500u64;
    for _ in 0..2 {
        match producing {
            Producing::Binary => {
                let events = per_run.to_string();
                let output = Command::new(env!("CARGO_BIN_EXE_shopflow"))
                    .args(["produce", "--events", &events])
                    .envs(env.iter().copied())
                    .stdin(Stdio::null())
                    .output()
                    .expect("produce runs");
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Producing::InProcess => {
                let generator =
                    shopflow::commands::resumed_generator(&config, shopflow::runtime::now_ms())
                        .expect("a generator");
                let mut producer = shopflow::writers::kafka::EventProducer::new(&config.kafka)
                    .expect("a producer");
                let sent = shopflow::writers::kafka::produce_generated(
                    &mut producer,
                    &generator,
                    Some(per_run),
                    None,
                    &AtomicBool::new(false),
                    |_| {},
                )
                .expect("sent");
                assert_eq!(sent, per_run);
            }
        }
    }
    // The binary, as the values above are TOML: unquoted for its environment.
    let plain: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.trim_matches('"'))).collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let lines = dir.path().join("out.lp");
    let output = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args([
            "run",
            "--sink",
            "line-protocol",
            "--demographics",
            "generator",
        ])
        .args(["--until-caught-up", "-w", "2", "--start", "earliest", "-o"])
        .arg(&lines)
        .envs(plain)
        .stdin(Stdio::null())
        .output()
        .expect("run runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let state = crate::cli::final_state(&std::fs::read_to_string(&lines).expect("written"));
    let counter = |name: &str| -> u64 {
        state
            .get(&format!("pipeline {name}"))
            .map_or(0, |v| v.trim_end_matches('i').parse().expect("a count"))
    };
    let purchases: u64 = state
        .iter()
        .filter(|(k, _)| k.starts_with("campaign,") && k.ends_with(",window=all"))
        .map(|(_, fields)| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix("purchases="))
                .map_or(0, |v| {
                    v.trim_end_matches('i').parse::<u64>().expect("a count")
                })
        })
        .sum();

    // The reference: one stream of both runs' events, as one producer would have sent it.
    let stream = EventGenerator::new(config.generator.clone(), 0).expect("valid knobs");
    let events: Vec<_> = (0..2 * per_run).map(|n| stream.event(n)).collect();
    let distinct: BTreeSet<_> = events.iter().map(|e| (e.order_id, e.tag)).collect();
    let bought = distinct
        .iter()
        .filter(|(_, tag)| *tag == Tag::Purchased)
        .count() as u64;
    let duplicates = events.len() as u64 - distinct.len() as u64;
    assert!(bought > 200 && duplicates > 50, "a meaningful stream");

    assert_eq!(counter("events_in"), 2 * per_run);
    assert_eq!(counter("duplicates"), duplicates, "only the stream's own");
    assert_eq!(
        purchases + counter("refunds_applied"),
        bought,
        "every purchase of both runs counts (those refunded are taken back)"
    );
}

/// `run` on a terminal shows the demo's live view and prints its summary at the end; piped, it
/// shows neither (the terminal is `script`'s pseudo-terminal, 80x24).
#[test]
fn run_shows_the_live_view_on_a_terminal_only() {
    let kafka = shopflow::sources::kafka::KafkaConfig {
        topic: "run-on-a-terminal".into(),
        partitions: 2,
        ..crate::cli::temp_env_config(&[]).kafka
    };
    let embedded = shopflow::commands::embedded::EmbeddedKafka::start(&kafka).expect("a cluster");
    let config = shopflow::config::Config {
        kafka: embedded.config().clone(),
        ..crate::cli::temp_env_config(&[])
    };
    let mut knobs = config.generator.clone();
    knobs.events_per_second = 1_000.0;
    let now = shopflow::runtime::now_ms();
    let generator =
        shopflow::generators::events::EventGenerator::new(knobs, now - 1_000).expect("a generator");
    let mut producer =
        shopflow::writers::kafka::EventProducer::new(&config.kafka).expect("a producer");
    for n in 0..500 {
        producer.send(&generator.event(n), now).expect("sent");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let lines = dir.path().join("out.lp");
    let args = format!(
        "run --sink line-protocol --demographics generator --until-caught-up -w 1 -o {}",
        lines.display()
    );
    let env = [
        (
            "SHOPFLOW__KAFKA__BROKERS",
            embedded.config().brokers.clone(),
        ),
        ("SHOPFLOW__KAFKA__TOPIC", "run-on-a-terminal".to_owned()),
        ("SHOPFLOW__KAFKA__GROUP_ID", "run-on-a-terminal".to_owned()),
        ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", "off".to_owned()),
        ("SHOPFLOW__ENGINE__TICK_MS", "100".to_owned()),
        (
            "SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS",
            "1000".to_owned(),
        ),
    ];
    let binary = env!("CARGO_BIN_EXE_shopflow");
    let on_terminal = Command::new("script")
        .args([
            "-qec",
            &format!("stty cols 80 rows 24; {binary} {args}"),
            "/dev/null",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let seen = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{seen}");
    assert!(seen.contains("events/s"), "the live view: {seen}");
    assert!(
        seen.contains("top campaigns (all time, by revenue):"),
        "the summary: {seen}"
    );

    let piped = Command::new(binary)
        .args(args.split(' '))
        .args(["--start", "earliest"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SHOPFLOW__KAFKA__GROUP_ID", "run-piped")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    let stdout = String::from_utf8_lossy(&piped.stdout);
    assert!(piped.status.success(), "{stderr}");
    assert!(stderr.contains("events in"), "{stderr}");
    assert!(!stderr.contains("events/s"), "{stderr}");
    assert!(!stdout.contains("top campaigns"), "{stdout}");
}

/// `run --duration 5s` with no broker to reach: the run's duration bounds its wait for the
/// brokers at start too (not only `engine.connect-timeout-ms`, a minute by default), so it ends
/// by about then, exit 1, with an error naming the brokers. Eight workers give up together: the
/// error is the cause (not reachable), not the stop the first failure caused in the others.
#[test]
fn a_run_duration_bounds_the_wait_for_brokers_at_start() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("out.lp");
    let brokers = format!("127.0.0.1:{closed}");
    let started = std::time::Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["run", "-w", "8", "--duration", "5s", "--http", "off"])
        .args([
            "--demographics",
            "generator",
            "--sink",
            "line-protocol",
            "-o",
        ])
        .arg(&output)
        .env("SHOPFLOW__KAFKA__BROKERS", &brokers)
        .env("SHOPFLOW__ENGINE__CHECKPOINT_DIR", "off")
        .env_remove("SHOPFLOW__ENGINE__CONNECT_TIMEOUT_MS")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{took:?}:\n{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line:\n{stderr}"));
    assert!(
        error.contains(&brokers) && error.contains("not reachable"),
        "{error}"
    );
    assert!(
        took < Duration::from_secs(10),
        "ended after {took:?}, not by about 5 s:\n{stderr}"
    );
}
