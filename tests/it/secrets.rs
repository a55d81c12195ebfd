//! The built binary, attacked for its secrets: recognisable secrets in every place one can go,
//! every failure provoked that can be (bad types, malformed values, unreachable hosts, wrong
//! passwords), and every line of output searched for them. Also the log of an unreachable
//! broker, which must stay short, and the partial configuration files and worker flags that the
//! command line must take or refuse with one line.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::process::{Running, free_port, shopflow, text};
use crate::support::services;

/// What one run of the binary printed, and how it ended.
pub(crate) struct Run {
    /// What was run, for messages.
    pub(crate) name: String,
    /// The exit code; `None` when it had to be killed.
    pub(crate) code: Option<i32>,
    /// Standard output and standard error, one after the other.
    pub(crate) output: String,
}

/// A run to make: its name, its arguments, its environment.
type Scenario = (String, Vec<String>, Vec<(String, String)>);

/// Runs the binary with `args` and `env` (on top of a clean `SHOPFLOW__*`-free environment),
/// killed after `timeout` if it has not ended by then.
pub(crate) fn run(name: &str, args: &[String], env: &[(String, String)], timeout: Duration) -> Run {
    // Its own working directory: whatever a run leaves there (a state directory) goes with it.
    let cwd = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    command.args(args).current_dir(cwd.path());
    for (key, _) in std::env::vars() {
        if key.starts_with("SHOPFLOW") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let finished = Running::spawn(command).end_within(timeout);
    Run {
        name: name.to_owned(),
        code: finished.code,
        output: finished.stdout + &finished.stderr,
    }
}

/// `keys` over the shipped defaults, as one whole file: the attack must reach the same code
/// whether or not a partial file is layered over the defaults.
fn complete(keys: &str) -> String {
    let mut all: toml::Table = toml::from_str(shopflow::config::DEFAULT_TOML).expect("defaults");
    let keys: toml::Table = toml::from_str(keys).expect("TOML");
    for (section, values) in keys {
        let Some(values) = values.as_table() else {
            continue;
        };
        let target = all
            .get_mut(&section)
            .and_then(toml::Value::as_table_mut)
            .expect("a known section");
        for (key, value) in values {
            match (target.get_mut(key), value) {
                (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => {
                    inner.extend(more.clone());
                }
                _ => {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
    }
    toml::to_string(&all).expect("TOML")
}

/// A recognisable secret: `S3CRET-` and random hex.
pub(crate) fn secret() -> String {
    format!("S3CRET-{:016x}", rand::random::<u64>())
}

/// Owned pairs from borrowed ones.
fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Runs every scenario at once (they mostly wait on the network), then checks that none printed
/// any of `secrets`.
fn assert_no_secret(scenarios: Vec<Scenario>, secrets: &[&str]) -> Vec<Run> {
    // A few at a time: they mostly wait on the network, but the machine has few cores.
    let mut runs: Vec<Run> = Vec::new();
    for chunk in scenarios.chunks(8) {
        runs.extend(std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(name, args, env)| {
                    scope.spawn(move || run(name, args, env, Duration::from_secs(45)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a scenario thread"))
                .collect::<Vec<_>>()
        }));
    }
    let mut leaks = Vec::new();
    for run in &runs {
        for line in run.output.lines() {
            if secrets.iter().any(|s| line.contains(s)) {
                leaks.push(format!("{}: {line}", run.name));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets printed ({} lines):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    runs
}

/// The commands that read the configuration and reach a service, with arguments that keep each
/// short; `check-config` last.
fn commands(dir: &std::path::Path) -> Vec<Vec<String>> {
    let output = dir.join("out.lp").display().to_string();
    let commands: [&[&str]; 6] = [
        &["run", "-w", "1", "--duration", "4s"],
        &[
            "run",
            "-w",
            "1",
            "--duration",
            "4s",
            "--demographics",
            "generator",
            "--sink",
            "line-protocol",
            "-o",
            &output,
        ],
        &["verify"],
        &["produce", "--events", "10", "--pace", "unbounded"],
        &["load-demographics", "--users", "10"],
        &["check-config"],
    ];
    commands
        .iter()
        .map(|c| c.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}

/// Every place a secret can go, every way the configuration can be refused, every service
/// unreachable (closed local ports): no output of `run`, `verify`, `produce`,
/// `load-demographics` or `check-config` shows a secret, and `check-config` shows `***`.
#[test]
fn no_failure_prints_a_secret() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let [
        mysql_password,
        file_password,
        url_password,
        influx_password,
        influx_token,
    ] = std::array::from_fn::<String, 5, _>(|_| secret());
    let [registry_password, sasl_password, key_password, numeric] =
        std::array::from_fn::<String, 4, _>(|_| secret());
    // A secret of digits, which the environment layer would read as a number.
    let numeric = format!(
        "9{}",
        u64::from_str_radix(&numeric[7..16], 16).unwrap_or(7) % 1_000_000_000
    );
    let password_file = dir.path().join("mysql-password");
    std::fs::write(&password_file, format!("{file_password}\n")).expect("a password file");
    let token_file = dir.path().join("influx-token");
    std::fs::write(&token_file, format!("{influx_token}\n")).expect("a token file");

    // Secrets in every place, all valid, every service on a closed port: each command fails on
    // the network, check-config succeeds.
    let config = format!(
        r#"
[engine]
connect-timeout-ms = 2000

[kafka]
brokers = "127.0.0.1:{port}"
topic = "secrets"
schema-registry-url = "http://registry:{registry_password}@127.0.0.1:{port}"

[kafka.properties]
"sasl.username" = "shop"
"sasl.password" = "{sasl_password}"
"ssl.key.password" = "{key_password}"
"socket.connection.setup.timeout.ms" = "2000"

[mysql]
url = "mysql://shopflow:{url_password}@127.0.0.1:{port}/shop"
connect-timeout-ms = 500
connect-retries = 0

[influx]
url = "http://127.0.0.1:{port}"
username = "shop"
password = "{influx_password}"
timeout-ms = 500
max-retries = 0
"#
    );
    let config = complete(&config);
    let path = dir.path().join("secrets.toml");
    std::fs::write(&path, &config).expect("a config file");
    let with_file = |env: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut env = owned(env);
        env.push(("RUST_LOG".into(), "info".into()));
        env
    };
    let mut scenarios = Vec::new();
    let mut add = |name: &str, config: &std::path::Path, env: Vec<(String, String)>| {
        for command in commands(dir.path()) {
            let mut args = vec!["--config".to_owned(), config.display().to_string()];
            args.extend(command.iter().cloned());
            scenarios.push((format!("{name}: {}", command.join(" ")), args, env.clone()));
        }
    };
    let file = password_file.display().to_string();
    add(
        "unreachable",
        &path,
        with_file(&[("SHOPFLOW__MYSQL__PASSWORD_FILE", &file)]),
    );
    // The password as digits, which the environment layer would read as a number.
    add(
        "numeric password",
        &path,
        with_file(&[("SHOPFLOW__MYSQL__PASSWORD", &numeric)]),
    );
    add(
        "mysql password",
        &path,
        with_file(&[("SHOPFLOW__MYSQL__PASSWORD", &mysql_password)]),
    );
    // Malformed values around the secrets.
    let influx_url = format!("http://shop:{influx_password}@127.0.0.1:{port}");
    add(
        "influx url with credentials",
        &path,
        with_file(&[("SHOPFLOW__INFLUX__URL", &influx_url)]),
    );
    let bad_port = format!("http://shop:{influx_password}@127.0.0.1:99999");
    add(
        "influx url that does not parse",
        &path,
        with_file(&[("SHOPFLOW__INFLUX__URL", &bad_port)]),
    );
    let registry = format!("http://registry:{registry_password}@127.0.0.1:99999");
    add(
        "registry url that does not parse",
        &path,
        with_file(&[("SHOPFLOW__KAFKA__SCHEMA_REGISTRY_URL", &registry)]),
    );
    let mysql_url = format!("mysql://shopflow:{url_password}@127.0.0.1:99999/shop");
    add(
        "mysql url that does not parse",
        &path,
        with_file(&[("SHOPFLOW__MYSQL__URL", &mysql_url)]),
    );
    let properties = format!("{{\"sasl.password\"=\"{sasl_password}\"");
    add(
        "malformed properties",
        &path,
        with_file(&[("SHOPFLOW__KAFKA__PROPERTIES", &properties)]),
    );
    let properties = format!("[\"{sasl_password}\", \"{key_password}\"]");
    add(
        "properties of the wrong type",
        &path,
        with_file(&[("SHOPFLOW__KAFKA__PROPERTIES", &properties)]),
    );
    add(
        "refused sasl mechanism",
        &path,
        with_file(&[(
            "SHOPFLOW__KAFKA__PROPERTIES",
            &format!(
                "{{\"security.protocol\"=\"SASL_PLAINTEXT\",\"sasl.mechanisms\"=\"{sasl_password}\",\"sasl.password\"=\"{sasl_password}\"}}"
            ),
        )]),
    );
    add(
        "password and password-file",
        &path,
        with_file(&[
            ("SHOPFLOW__MYSQL__PASSWORD", &mysql_password),
            ("SHOPFLOW__MYSQL__PASSWORD_FILE", &file),
        ]),
    );
    add(
        "influx password as a table",
        &path,
        with_file(&[(
            "SHOPFLOW__INFLUX",
            &format!("{{password=\"{influx_password}\""),
        )]),
    );
    add(
        "influx token file",
        &path,
        with_file(&[
            ("SHOPFLOW__INFLUX__USERNAME", ""),
            (
                "SHOPFLOW__INFLUX__TOKEN_FILE",
                &token_file.display().to_string(),
            ),
        ]),
    );
    // Files the configuration layer refuses: a password that is a number, a syntax error on a
    // password's line, a password that is a table.
    for (name, replacement) in [
        ("password as a number", format!("password = {numeric}")),
        ("syntax error", format!("password = {influx_password} x")),
        (
            "password as a table",
            format!("password = {{ p = \"{influx_password}\" }}"),
        ),
    ] {
        let broken = config.replace(&format!("password = \"{influx_password}\""), &replacement);
        let file = dir.path().join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&file, broken).expect("a config file");
        add(name, &file, with_file(&[]));
    }
    let secrets = [
        mysql_password.as_str(),
        &file_password,
        &url_password,
        &influx_password,
        &influx_token,
        &registry_password,
        &sasl_password,
        &key_password,
        &numeric,
    ];
    let runs = assert_no_secret(scenarios, &secrets);
    let check = runs
        .iter()
        .find(|r| r.name == "unreachable: check-config")
        .expect("check-config ran");
    assert_eq!(check.code, Some(0), "{}", check.output);
    assert!(
        check.output.matches("***").count() >= 5,
        "every secret shows as ***:\n{}",
        check.output
    );
    let numeric_check = runs
        .iter()
        .find(|r| r.name == "numeric password: check-config")
        .expect("check-config ran");
    assert_eq!(
        numeric_check.code,
        Some(0),
        "a password of digits is a string: {}",
        numeric_check.output
    );
    for run in &runs {
        if !run.name.ends_with("check-config") {
            assert_ne!(
                run.code,
                Some(0),
                "{} should fail: {}",
                run.name,
                run.output
            );
        }
    }
}

/// The same attack against the real services: wrong passwords for MariaDB (which checks them),
/// SASL credentials for a broker that does not speak SASL, credentials for InfluxDB.
#[test]
#[ignore = "needs MariaDB, InfluxDB and Kafka: scripts/test-all"]
fn wrong_passwords_against_the_real_services_print_no_secret() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mysql = services::env("SHOPFLOW_TEST_MYSQL_URL");
    let influx = services::env("SHOPFLOW_TEST_INFLUX_URL");
    let brokers = services::env("SHOPFLOW_TEST_KAFKA_BROKERS");
    let mysql_host = mysql
        .rsplit_once('@')
        .map(|(_, host)| host.to_owned())
        .expect("user@host in the MariaDB URL");
    let database = services::unique("secrets");
    let _cleanup = services::Cleanup {
        mysql_admin: mysql.clone(),
        database: database.clone(),
        influx: influx.clone(),
    };
    let [mysql_password, url_password, influx_password, sasl_password] =
        std::array::from_fn::<String, 4, _>(|_| secret());
    let password_file = dir.path().join("mysql-password");
    std::fs::write(&password_file, format!("{mysql_password}\n")).expect("a password file");
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
topic = "{database}"
group-id = "{database}"

[mysql]
url = "mysql://shopflow:{url_password}@{mysql_host}/{database}"
connect-timeout-ms = 2000
connect-retries = 0

[influx]
url = "{influx}"
database = "{database}"
username = "shop"
password = "{influx_password}"
timeout-ms = 2000
max-retries = 0
"#
    );
    let path = dir.path().join("secrets.toml");
    std::fs::write(&path, complete(&config)).expect("a config file");
    let sasl = format!(
        "{{\"security.protocol\"=\"SASL_PLAINTEXT\",\"sasl.mechanisms\"=\"PLAIN\",\"sasl.username\"=\"shop\",\"sasl.password\"=\"{sasl_password}\",\"socket.connection.setup.timeout.ms\"=\"3000\"}}"
    );
    let file = password_file.display().to_string();
    let variants: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("password in the url", vec![]),
        (
            "password-file",
            vec![("SHOPFLOW__MYSQL__PASSWORD_FILE", &file)],
        ),
        (
            "password",
            vec![("SHOPFLOW__MYSQL__PASSWORD", &mysql_password)],
        ),
        ("sasl", vec![("SHOPFLOW__KAFKA__PROPERTIES", &sasl)]),
    ];
    let mut scenarios = Vec::new();
    for (name, env) in &variants {
        let mut env = owned(env);
        env.push(("RUST_LOG".into(), "info".into()));
        for command in commands(dir.path()) {
            let mut args = vec!["--config".to_owned(), path.display().to_string()];
            args.extend(command.iter().cloned());
            scenarios.push((format!("{name}: {}", command.join(" ")), args, env.clone()));
        }
    }
    let runs = assert_no_secret(
        scenarios,
        &[
            &mysql_password,
            &url_password,
            &influx_password,
            &sasl_password,
        ],
    );
    // MariaDB refused the password: the failure was provoked, not skipped.
    let load = runs
        .iter()
        .find(|r| r.name.starts_with("password: load-demographics"))
        .expect("load-demographics ran");
    assert_ne!(load.code, Some(0), "{}", load.output);
    assert!(load.output.contains("Access denied"), "{}", load.output);
}

/// `-w` is bounded like `engine.workers`: one line, exit 2, not an allocation failure.
/// What containers do: SASL properties one environment variable each and the password from a
/// mounted file. They reach librdkafka under its own names (it refuses the unknown mechanism,
/// not an unknown property), `check-config` shows the SASL settings as `***`, and nothing prints the
/// password.
#[test]
fn kafka_properties_from_variables_and_files_reach_librdkafka_without_printing_the_secret() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sasl_password = secret();
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{sasl_password}\n")).expect("a password file");
    let port = free_port().to_string();
    let env = owned(&[
        ("SHOPFLOW__KAFKA__BROKERS", &format!("127.0.0.1:{port}")),
        (
            "SHOPFLOW__KAFKA__PROPERTIES__SECURITY_PROTOCOL",
            "SASL_PLAINTEXT",
        ),
        (
            "SHOPFLOW__KAFKA__PROPERTIES__SASL_MECHANISMS",
            "NOT-A-MECHANISM",
        ),
        ("SHOPFLOW__KAFKA__PROPERTIES__SASL_USERNAME", "shop"),
        (
            "SHOPFLOW__KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
            &password_file.display().to_string(),
        ),
        (
            "SHOPFLOW__KAFKA__PROPERTIES__SOCKET_CONNECTION_SETUP_TIMEOUT_MS",
            "2000",
        ),
        ("SHOPFLOW__ENGINE__CONNECT_TIMEOUT_MS", "2000"),
    ]);
    let scenarios: Vec<Scenario> = [
        vec!["check-config"],
        vec!["produce", "--events", "10", "--pace", "unbounded"],
    ]
    .into_iter()
    .map(|args| {
        (
            args.join(" "),
            args.into_iter().map(str::to_owned).collect(),
            env.clone(),
        )
    })
    .collect();
    let runs = assert_no_secret(scenarios, &[&sasl_password]);
    let (check, produce) = (&runs[0], &runs[1]);
    assert_eq!(check.code, Some(0), "{}", check.output);
    for line in [
        "\"security.protocol\" = \"SASL_PLAINTEXT\"",
        // Every SASL setting prints as ***.
        "\"sasl.mechanisms\" = \"***\"",
        "\"sasl.password\" = \"***\"",
        "\"socket.connection.setup.timeout.ms\" = \"2000\"",
    ] {
        assert!(check.output.contains(line), "{line} in:\n{}", check.output);
    }
    assert_ne!(produce.code, Some(0), "{}", produce.output);
    // librdkafka took the mechanism as its own `sasl.mechanisms` (its value masked, as every
    // SASL setting's is), not as an unknown `sasl-mechanisms`.
    assert!(
        produce.output.contains("Unsupported SASL mechanism: ***")
            && !produce.output.contains("No such configuration property"),
        "{}",
        produce.output
    );
}

#[test]
fn too_many_workers_is_a_usage_error() {
    for args in [
        &["demo", "-w", "100000", "--events", "10"][..],
        &["run", "--workers", "1025"],
        &["bench", "-w", "100000", "--events", "10"],
    ] {
        let run = shopflow(args, &[]);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains("1024"), "{args:?}: {stderr}");
    }
    let run = shopflow(
        &["check-config"],
        &[("SHOPFLOW__ENGINE__WORKERS", "100000")],
    );
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        text(&run.stderr).trim(),
        "error: invalid configuration: engine.workers: at most 1024 workers per process \
         (from environment variable SHOPFLOW__ENGINE__WORKERS)"
    );
}

/// A file with a few keys layers over the defaults; its errors name the file, the environment's
/// name the variable.
#[test]
fn a_partial_config_file_layers_over_the_defaults() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("partial.toml");
    std::fs::write(&path, "[engine]\ntick-ms = 250\n").expect("a config file");
    let path = path.to_str().expect("a UTF-8 path");
    let run = shopflow(&["--config", path, "check-config"], &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let printed: shopflow::config::Config = toml::from_str(&text(&run.stdout)).expect("TOML");
    assert_eq!(printed.engine.tick_ms, 250);
    assert_eq!(printed.engine.window_ms, 60_000, "a default");
    let run = shopflow(
        &["--config", path, "check-config"],
        &[("SHOPFLOW__ENGINE__TICK_MS", "0")],
    );
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        text(&run.stderr).trim(),
        "error: invalid configuration: engine.tick-ms: must be at least 1 \
         (from environment variable SHOPFLOW__ENGINE__TICK_MS)"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[engine]\ntick-ms = \"soon\"\n").expect("a config file");
    let bad = bad.to_str().expect("a UTF-8 path");
    let run = shopflow(&["--config", bad, "check-config"], &[]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = text(&run.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("engine.tick-ms"), "{stderr}");
    assert!(stderr.contains(&format!("(in {bad})")), "{stderr}");
    assert!(!stderr.contains("environment"), "{stderr}");
}

/// An unreachable broker: librdkafka reports every failed connection of every client (here 16
/// workers' consumers, reconnecting every 10 ms), but the log holds at most one line per kind per
/// second.
#[test]
fn an_unreachable_broker_logs_a_bounded_number_of_lines() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let output = dir.path().join("out.lp").display().to_string();
    let brokers = format!("127.0.0.1:{port}");
    let env = owned(&[
        ("SHOPFLOW__KAFKA__BROKERS", &brokers),
        (
            "SHOPFLOW__KAFKA__PROPERTIES",
            "{\"reconnect.backoff.ms\"=\"10\",\"reconnect.backoff.max.ms\"=\"10\"}",
        ),
        // `run` waits this long for brokers it cannot reach at start, then fails.
        ("SHOPFLOW__ENGINE__CONNECT_TIMEOUT_MS", "5000"),
    ]);
    let args = [
        "run",
        "-w",
        "16",
        "--duration",
        "5s",
        "--demographics",
        "generator",
        "--sink",
        "line-protocol",
        "-o",
        &output,
    ]
    .map(String::from);
    let started = Instant::now();
    let run = run("unreachable broker", &args, &env, Duration::from_secs(60));
    let took = started.elapsed();
    let librdkafka = run
        .output
        .lines()
        .filter(|l| l.contains("librdkafka"))
        .count();
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(
        librdkafka > 0,
        "the failure is reported ({took:?}):\n{}",
        run.output
    );
    // Unlimited, each consumer logs its failed connection and both of librdkafka's errors.
    assert!(
        librdkafka <= 10,
        "{librdkafka} lines from librdkafka in {took:?}:\n{}",
        run.output
    );
}

/// A normal run against the real Kafka logs no `PartitionEOF` error: the end of a partition is an
/// event. `verify` reads with end-of-partition events on.
#[test]
#[ignore = "needs Kafka and InfluxDB: scripts/test-all"]
fn a_normal_run_logs_no_partition_eof_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let brokers = services::env("SHOPFLOW_TEST_KAFKA_BROKERS");
    let topic = services::unique("eof");
    let output = dir.path().join("out.lp").display().to_string();
    let env = owned(&[
        ("SHOPFLOW__KAFKA__BROKERS", &brokers),
        ("SHOPFLOW__KAFKA__TOPIC", &topic),
        ("SHOPFLOW__KAFKA__GROUP_ID", &topic),
        ("SHOPFLOW__KAFKA__PARTITIONS", "2"),
        ("SHOPFLOW__GENERATOR__USERS", "100"),
    ]);
    let produce = run(
        "produce",
        &["produce", "--events", "200", "--pace", "unbounded"].map(String::from),
        &env,
        Duration::from_secs(60),
    );
    assert_eq!(produce.code, Some(0), "{}", produce.output);
    let args = [
        "run",
        "-w",
        "2",
        "--until-caught-up",
        "--demographics",
        "generator",
        "--sink",
        "line-protocol",
        "-o",
        &output,
    ]
    .map(String::from);
    let run_ = run("run", &args, &env, Duration::from_secs(60));
    assert_eq!(run_.code, Some(0), "{}", run_.output);
    for run in [&produce, &run_] {
        assert!(
            !run.output.contains("PartitionEOF") && !run.output.contains("Partition EOF"),
            "{}:\n{}",
            run.name,
            run.output
        );
    }
}
