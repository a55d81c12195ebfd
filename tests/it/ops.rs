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
