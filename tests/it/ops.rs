//! What an operator meets: log lines on a pipe, cluster flags from the environment.

use std::process::{Command, Output, Stdio};

/// Runs `shopflow run` against a broker that refuses connections, with piped standard error and
/// `extra` arguments: it logs a warning of its own (checkpoints off), librdkafka's connection
/// failures, and ends with an error (within about 10 s, librdkafka's metadata timeout), without
/// any service.
fn run_against_no_broker(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("out.lp");
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    command
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SHOPFLOW") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
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
    let ports: Vec<u16> = {
        let held: Vec<std::net::TcpListener> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        held.iter()
            .map(|l| l.local_addr().expect("an address").port())
            .collect()
    };
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]),
    )
    .expect("the hostfile");
    let output = dir.path().join("out.lp");
    let output = output.to_str().expect("UTF-8");
    let hosts = hosts.to_str().expect("UTF-8");
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
