//! Several processes on loopback as one cluster (`-n`, `-p`, `--hostfile`): together they write
//! what one process writes, each key from exactly one of them; and processes that cannot form a
//! cluster fail at once, or within the connect timeout, with one line saying why and exit code 2.
//!
//! Every process runs under a time limit, so a cluster that hangs fails its test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use shopflow::cluster::Handshake;
use shopflow::generators::events::{EventGenerator, Pace};
use shopflow::sources::kafka::{self, EventProducer, KafkaConfig};

use crate::cli::{assert_same_state, final_state, reference_lines_from, temp_env_config};
use crate::support::influx;
use crate::support::services::unique;

/// A `shopflow` process started by a test; killed if the test ends first.
struct Running {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
}

/// What a process said and how it ended.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    /// When it was seen to end.
    ended: Instant,
}

/// Starts the built binary with `args` and `env`, collecting its output as it runs.
fn start(args: &[String], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = child.stdout.take().map(|p| collect(Box::new(p)));
    let stderr = child.stderr.take().map(|p| collect(Box::new(p)));
    Running {
        child: Some(child),
        stdout,
        stderr,
        started: Instant::now(),
    }
}

impl Running {
    /// Waits for the process to end; kills it and fails the test after `limit`.
    fn finish(mut self, limit: Duration) -> Finished {
        let mut child = self.child.take().expect("not finished yet");
        let status = loop {
            if let Some(status) = child.try_wait().expect("the process can be waited for") {
                break Some(status);
            }
            if self.started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ended = Instant::now();
        let elapsed = self.started.elapsed();
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default());
        let stdout = join(self.stdout.take()).unwrap_or_default();
        let stderr = join(self.stderr.take()).unwrap_or_default();
        let Some(status) = status else {
            panic!("still running after {limit:?}, killed; it said:\n{stderr}");
        };
        Finished {
            code: status.code(),
            stdout,
            stderr,
            elapsed,
            ended,
        }
    }

    /// Kills the process now (as SIGKILL does), returning when.
    fn kill(mut self) -> Instant {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Instant::now()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` loopback ports free right now (held together while chosen, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("an address").port())
        .collect()
}

/// A hostfile listing `127.0.0.1:port` for each port, with a comment and a blank line.
fn hostfile(dir: &Path, name: &str, ports: &[u16]) -> String {
    let path = dir.join(name);
    let lines: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    std::fs::write(
        &path,
        format!("# process 0 first\n\n{}\n", lines.join("\n")),
    )
    .expect("the hostfile");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// Words to owned arguments.
fn args(words: &str) -> Vec<String> {
    words.split_whitespace().map(str::to_owned).collect()
}

/// The flags of process `process` of `processes` with `workers` threads each.
fn member(process: usize, processes: usize, workers: usize, hosts: &str) -> Vec<String> {
    args(&format!(
        "-w {workers} -n {processes} -p {process} --hostfile {hosts}"
    ))
}

/// A short generator demo writing to `output` in `dir`.
fn small_demo(dir: &Path, output: &str) -> Vec<String> {
    let mut words = args("demo --source generator --pace unbounded --events 2000 --quiet");
    words.extend(["--output".into(), dir.join(output).display().to_string()]);
    words
}

/// Starts processes 0 and 1 of a two-process cluster, each with its own extra flags and
/// environment, and returns what each said; both must fail with exit code 2, and quickly: well
/// before their 30 s connect timeout.
fn disagree(
    dir: &Path,
    hosts: &str,
    first: (&[String], &[(&str, &str)]),
    second: (&[String], &[(&str, &str)]),
) -> [String; 2] {
    let running: Vec<Running> = [first, second]
        .into_iter()
        .enumerate()
        .map(|(process, (extra, env))| {
            let mut words = small_demo(dir, "disagree.lp");
            words.extend(args(&format!(
                "-p {process} --hostfile {hosts} --connect-timeout 30s"
            )));
            words.extend(extra.iter().cloned());
            start(&words, env)
        })
        .collect();
    let said: Vec<String> = running
        .into_iter()
        .map(|r| {
            let finished = r.finish(Duration::from_secs(60));
            assert_eq!(finished.code, Some(2), "{finished:?}");
            assert!(
                finished.elapsed < Duration::from_secs(15),
                "failed by timeout, not at once: {finished:?}"
            );
            finished.stderr
        })
        .collect();
    [said[0].clone(), said[1].clone()]
}

#[test]
fn processes_that_disagree_fail_at_once_saying_how() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ports = free_ports(3);
    let hosts = hostfile(dir.path(), "hosts.txt", &ports);

    let [zero, one] = disagree(
        dir.path(),
        &hosts,
        (&args("-n 2 -w 1"), &[]),
        (&args("-n 2 -w 2"), &[]),
    );
    assert_eq!(
        zero,
        "error: process 1 runs 2 workers per process but process 0 runs 1\n"
    );
    assert_eq!(
        one,
        "error: process 0 runs 1 worker per process but process 1 runs 2\n"
    );

    // Process 1 of three expects a process 2 too; process 0 of two does not.
    let [zero, one] = disagree(
        dir.path(),
        &hosts,
        (&args("-n 2 -w 2"), &[]),
        (&args("-n 3 -w 2"), &[]),
    );
    assert_eq!(
        zero,
        "error: process 1 was started with --processes 3 but process 0 with --processes 2\n"
    );
    assert_eq!(
        one,
        "error: process 0 was started with --processes 2 but process 1 with --processes 3\n"
    );

    let [zero, one] = disagree(
        dir.path(),
        &hosts,
        (&args("-n 2 -w 2"), &[]),
        (
            &args("-n 2 -w 2"),
            &[("SHOPFLOW__ENGINE__WINDOW_MS", "30000")],
        ),
    );
    assert_eq!(
        zero,
        "error: process 1 has engine.window-ms = 30000 but process 0 has 60000 (the engine settings must agree)\n"
    );
    assert_eq!(
        one,
        "error: process 0 has engine.window-ms = 60000 but process 1 has 30000 (the engine settings must agree)\n"
    );

    // Generator runs: each process generates its share of one stream, so the streams must agree.
    let [zero, _] = disagree(
        dir.path(),
        &hosts,
        (&args("-n 2 -w 2 --seed 1"), &[]),
        (&args("-n 2 -w 2 --seed 2"), &[]),
    );
    assert_eq!(
        zero,
        "error: process 1 reads other events than process 0: the generator settings, --events or \
         --start-ms, or the Kafka topic, group or start position, or the checkpoint it would \
         restore (engine.checkpoint-dir must be shared) differ\n"
    );
}

/// Two `run` processes whose checkpoint directories differ (one holds a complete checkpoint, the
/// other none) would restore different states: they refuse to start.
#[test]
fn processes_that_would_restore_different_checkpoints_refuse_to_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    // Into the directory of the default consumer group's pipeline, which `run` restores from.
    shopflow::checkpoint::write(
        &shopflow::checkpoint::pipeline_dir(&with, "shopflow"),
        &shopflow::checkpoint::WorkerCheckpoint {
            version: shopflow::checkpoint::VERSION,
            pipeline: "any".into(),
            tick: 1_000,
            worker: 0,
            peers: 1,
            offsets: BTreeMap::new(),
            state: dataflows::state::State::default(),
        },
    )
    .expect("a checkpoint");
    let running: Vec<Running> = [&with, &without]
        .into_iter()
        .enumerate()
        .map(|(process, checkpoints)| {
            let output = dir.path().join("checkpoints.lp");
            let words = args(&format!(
                "run --demographics generator --sink line-protocol -o {} -n 2 -w 1 -p {process} \
                 --hostfile {hosts} --connect-timeout 30s",
                output.display()
            ));
            let checkpoints = checkpoints.display().to_string();
            start(
                &words,
                &[
                    ("SHOPFLOW__KAFKA__BROKERS", "127.0.0.1:1"),
                    ("SHOPFLOW__ENGINE__CHECKPOINT_DIR", checkpoints.as_str()),
                ],
            )
        })
        .collect();
    for running in running {
        let finished = running.finish(Duration::from_secs(60));
        assert_eq!(finished.code, Some(2), "{finished:?}");
        assert!(
            finished.stderr.contains("reads other events than")
                && finished
                    .stderr
                    .contains("engine.checkpoint-dir must be shared"),
            "{finished:?}"
        );
    }
}

#[test]
fn a_missing_peer_fails_within_the_timeout_naming_its_address() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Two clusters of which only one process each is started: process 1 alone keeps dialling
    // process 0; process 0 alone keeps waiting for process 1.
    let (dialling, waiting) = (free_ports(2), free_ports(2));
    let mut one = small_demo(dir.path(), "one.lp");
    one.extend(member(1, 2, 2, &hostfile(dir.path(), "a.txt", &dialling)));
    one.extend(args("--connect-timeout 2s"));
    let mut zero = small_demo(dir.path(), "zero.lp");
    zero.extend(member(0, 2, 2, &hostfile(dir.path(), "b.txt", &waiting)));
    let running = [
        start(&one, &[]),
        start(&zero, &[("SHOPFLOW__ENGINE__CONNECT_TIMEOUT_MS", "1500")]),
    ];
    let [one, zero] = running.map(|r| r.finish(Duration::from_secs(30)));

    assert_eq!(one.code, Some(2), "{one:?}");
    assert_eq!(
        one.stderr,
        format!(
            "error: cannot reach process 0 at 127.0.0.1:{} after 2 s (connection refused)\n",
            dialling[0]
        )
    );
    assert!(
        one.elapsed >= Duration::from_secs(2) && one.elapsed < Duration::from_secs(8),
        "{:?}",
        one.elapsed
    );
    assert_eq!(zero.code, Some(2), "{zero:?}");
    assert_eq!(
        zero.stderr,
        format!(
            "error: process 1 at 127.0.0.1:{} did not connect within 1.5 s (is it running, with the same hostfile?)\n",
            waiting[1]
        )
    );
    assert!(
        zero.elapsed >= Duration::from_millis(1_500) && zero.elapsed < Duration::from_secs(8),
        "{:?}",
        zero.elapsed
    );
}

/// Connects to a port until something listens there.
fn dial(port: u16) -> TcpStream {
    let started = Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => return stream,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("nothing listens on {port}: {e}"),
        }
    }
}

#[test]
fn strangers_and_deserters_on_the_cluster_port_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ports = free_ports(2);
    let hosts = hostfile(dir.path(), "hosts.txt", &ports);
    let mut zero = small_demo(dir.path(), "zero.lp");
    zero.extend(member(0, 2, 2, &hosts));
    zero.extend(args("--connect-timeout 20s"));

    // Someone speaks HTTP to process 0's port: it answers with its handshake, then fails.
    let running = start(&zero, &[]);
    let mut stranger = dial(ports[0]);
    let mut request = b"GET / HTTP/1.1\r\nHost: shopflow\r\n\r\n".to_vec();
    request.resize(Handshake::LEN, b' ');
    stranger.write_all(&request).expect("sent");
    let mut answer = [0u8; Handshake::LEN];
    stranger.read_exact(&mut answer).expect("an answer");
    let handshake = Handshake::decode(&answer).expect("process 0's handshake");
    assert_eq!(
        (handshake.process, handshake.processes, handshake.threads),
        (0, 2, 2)
    );
    let finished = running.finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(2), "{finished:?}");
    let from = stranger.local_addr().expect("an address");
    assert_eq!(
        finished.stderr,
        format!(
            "error: a connection from {from} sent something other than a shopflow handshake (another program on this port?)\n"
        )
    );

    // Someone connects and leaves after three bytes.
    let running = start(&zero, &[]);
    let mut stranger = dial(ports[0]);
    stranger.write_all(b"hi\n").expect("sent");
    let from = stranger.local_addr().expect("an address");
    drop(stranger);
    let finished = running.finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert_eq!(
        finished.stderr,
        format!("error: a connection from {from} closed the connection during the handshake\n")
    );

    // A peer that answers like process 1 (process 0's own handshake, renumbered), then leaves
    // instead of confirming that it is connected to everyone.
    let running = start(&zero, &[]);
    let mut impostor = dial(ports[0]);
    let mut theirs = [0u8; Handshake::LEN];
    impostor
        .read_exact(&mut theirs)
        .expect("process 0's handshake");
    let mut mine = Handshake::decode(&theirs).expect("a handshake");
    mine.process = 1;
    impostor.write_all(&mine.encode()).expect("sent");
    // Its control link too: process 0 is ready once both connections of every peer are there.
    let mut control = dial(ports[0]);
    control
        .read_exact(&mut theirs)
        .expect("process 0's handshake");
    mine.control = true;
    control.write_all(&mine.encode()).expect("sent");
    let mut ready = [0u8; 8];
    impostor.read_exact(&mut ready).expect("process 0 is ready");
    assert_eq!(ready, shopflow::cluster::READY);
    drop((impostor, control));
    let finished = running.finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert_eq!(
        finished.stderr,
        format!(
            "error: process 1 at 127.0.0.1:{} left before the cluster was complete (see its own error)\n",
            ports[1]
        )
    );

    // Process 1 dials process 0's address, where something else listens and answers junk.
    let listener = TcpListener::bind(("127.0.0.1", ports[0])).expect("process 0's port");
    let mut one = small_demo(dir.path(), "one.lp");
    one.extend(member(1, 2, 2, &hosts));
    one.extend(args("--connect-timeout 20s"));
    let running = start(&one, &[]);
    let (mut stream, _) = listener.accept().expect("process 1 dials");
    let mut hello = [0u8; Handshake::LEN];
    stream
        .read_exact(&mut hello)
        .expect("process 1's handshake");
    assert_eq!(
        Handshake::decode(&hello).map(|h| h.process),
        Ok(1),
        "the handshake comes first"
    );
    stream.write_all(&[0xAB; Handshake::LEN]).expect("sent");
    let finished = running.finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert_eq!(
        finished.stderr,
        format!(
            "error: process 0 at 127.0.0.1:{} sent something other than a shopflow handshake (another program on this port?)\n",
            ports[0]
        )
    );
}

#[test]
fn a_hostfile_with_too_few_lines_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let mut words = small_demo(dir.path(), "out.lp");
    words.extend(member(0, 3, 1, &hosts));
    let finished = start(&words, &[]).finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert_eq!(
        finished.stderr,
        format!("error: hostfile {hosts} lists 2 hosts but --processes is 3\n")
    );
}

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

/// Once the cluster runs, losing a process (killed here) ends the others with one line that
/// names it, rather than leaving them waiting for it.
#[test]
fn a_process_lost_mid_run_ends_the_others_with_an_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let output = dir.path().join("lost.lp").display().to_string();
    let mut members: Vec<Running> = (0..2)
        .map(|process| {
            let mut words = args("demo --source generator --rate 500 --duration 120s --quiet");
            words.extend(member(process, 2, 2, &hosts));
            words.extend(["--output".into(), output.clone()]);
            start(&words, &[("SHOPFLOW__GENERATOR__USERS", "1000")])
        })
        .collect();
    // Running: process 0 has written results of ticks that both processes completed.
    let started = Instant::now();
    while std::fs::metadata(format!("{output}.0")).map_or(0, |m| m.len()) < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the cluster never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = members.pop().expect("process 1").kill();
    let zero = members
        .pop()
        .expect("process 0")
        .finish(Duration::from_secs(60));
    assert_eq!(zero.code, Some(1), "{zero:?}");
    assert_lost_one(&zero, &hosts);
    let took = zero.ended - killed;
    assert!(
        took <= Duration::from_secs(5),
        "ended {took:?} after the kill"
    );
}

/// Asserts that `finished` (process 0) said, in one line and nothing else, that it lost
/// process 1 of the cluster in `hosts`.
fn assert_lost_one(finished: &Finished, hosts: &str) {
    let hosts = std::fs::read_to_string(hosts).expect("the hostfile");
    let one = hosts.lines().filter(|l| l.starts_with("127.")).nth(1);
    let one = one.expect("process 1's address");
    assert_eq!(
        finished.stderr.lines().last(),
        Some(
            format!(
                "error: lost process 1 at {one}: the connection closed without a goodbye \
                 (the process ended or was killed)"
            )
            .as_str()
        ),
        "{finished:?}"
    );
    let errors = finished.stderr.lines().filter(|l| l.starts_with("error:"));
    assert_eq!(errors.count(), 1, "one error line: {finished:?}");
    assert!(!finished.stderr.contains("panicked"), "{finished:?}");
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

/// The generator's settings for the Kafka runs, as environment variables. The scenario's final
/// values do not depend on when each event arrived, since arrival ticks follow the wall clock:
/// no window closes and no order is forgotten during a run, demographics stay put, and a refund
/// always comes after its purchase's first delivery (its lag, 4 × the funnel span, is at least the
/// 1,000 events a duplicate reaches back), so every refund finds its purchase whatever the ticks.
const KAFKA_SCENARIO: [(&str, &str); 14] = [
    ("SHOPFLOW__GENERATOR__SEED", "17"),
    ("SHOPFLOW__GENERATOR__EVENTS_PER_SECOND", "1000"),
    ("SHOPFLOW__GENERATOR__USERS", "500"),
    ("SHOPFLOW__GENERATOR__NEW_USERS", "30"),
    ("SHOPFLOW__GENERATOR__CAMPAIGNS", "9"),
    ("SHOPFLOW__GENERATOR__UNKNOWN_USER_SHARE", "0.1"),
    ("SHOPFLOW__GENERATOR__DEMOGRAPHIC_CHANGES_PER_SECOND", "0"),
    ("SHOPFLOW__GENERATOR__REFUND_SHARE", "0.2"),
    ("SHOPFLOW__GENERATOR__DUPLICATE_SHARE", "0.05"),
    ("SHOPFLOW__GENERATOR__FUNNEL_SPAN", "250"),
    ("SHOPFLOW__ENGINE__WINDOW_MS", "2000"),
    ("SHOPFLOW__ENGINE__ALLOWED_LATENESS_MS", "86400000"),
    ("SHOPFLOW__ENGINE__ORDER_HORIZON_MS", "86400000"),
    ("SHOPFLOW__ENGINE__TICK_MS", "100"),
];

/// Produces the scenario's first `events` events, from `start_ms`, and the four malformed
/// messages the service tests share, to the topic of `kafka`.
fn produce_scenario(kafka: &KafkaConfig, start_ms: u64, events: u64) {
    let mut knobs = temp_env_config(&KAFKA_SCENARIO).generator;
    knobs.pace = Pace::Unbounded;
    let generator = EventGenerator::new(knobs, start_ms).expect("valid knobs");
    let mut producer = EventProducer::new(kafka).expect("a producer");
    let never = AtomicBool::new(false);
    let sent = kafka::produce_generated(
        &mut producer,
        &generator,
        Some(events),
        None,
        &never,
        |_| {},
    )
    .expect("produced");
    assert_eq!(sent, events);
    assert_eq!(crate::support::services::send_malformed(&mut producer), 4);
    producer.flush(Duration::from_secs(30)).expect("flushed");
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

/// Starts a `run` process with the scenario's environment plus `env`.
fn start_run(words: &[String], env: &[(String, String)]) -> Running {
    let mut all: Vec<(&str, &str)> = KAFKA_SCENARIO.to_vec();
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    start(words, &all)
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
    use crate::support::services::{Cleanup, env};
    use mysql::prelude::Queryable;
    use shopflow::sources::mysql::{self as source, MysqlConfig};

    let (mysql_url, influx_url, brokers) = (
        env("SHOPFLOW_TEST_MYSQL_URL"),
        env("SHOPFLOW_TEST_INFLUX_URL"),
        env("SHOPFLOW_TEST_KAFKA_BROKERS"),
    );
    let database = unique("shopflow_cluster");
    let single_database = format!("{database}_single");
    let _cleanup = [&database, &single_database].map(|name| Cleanup {
        mysql_admin: mysql_url.clone(),
        database: name.clone(),
        influx: influx_url.clone(),
    });
    let pool = mysql::Pool::new(mysql_url.as_str()).expect("MariaDB");
    pool.get_conn()
        .expect("a connection")
        .query_drop(format!("CREATE DATABASE `{database}`"))
        .expect("a database");
    let mysql_config = MysqlConfig::new(format!("{mysql_url}/{database}"));
    let knobs = temp_env_config(&KAFKA_SCENARIO).generator;
    source::load_demographics(
        &mysql_config,
        shopflow::generators::demographics::table(knobs.seed, knobs.users),
        u64::from(knobs.users),
    )
    .expect("loaded");

    let topic = unique("shopflow-cluster").replace('_', "-");
    let kafka = crate::support::services::kafka_config(&brokers, &topic, 4);
    kafka::ensure_topic(&kafka, &topic).expect("the topic");
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
        writing_processes(&influx_url, &database),
        BTreeSet::from(["0".to_owned(), "1".to_owned()])
    );
    let together = influx_state(&influx_url, &database);
    let alone = influx_state(&influx_url, &single_database);
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

/// An InfluxDB 1.x stand-in on a loopback port: answers `/ping` and `/query`, and accepts every
/// write until [`FakeInflux::fail`], then answers 503 to every write.
struct FakeInflux {
    url: String,
    down: Arc<AtomicBool>,
    /// Writes accepted, and writes refused.
    writes: Arc<[AtomicU64; 2]>,
}

impl FakeInflux {
    fn start() -> FakeInflux {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let down = Arc::new(AtomicBool::new(false));
        let writes = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let (serving_down, serving_writes) = (Arc::clone(&down), Arc::clone(&writes));
        // Left running at the end of the test, with its connections: a test process ends soon.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (down, writes) = (Arc::clone(&serving_down), Arc::clone(&serving_writes));
                std::thread::spawn(move || serve_influx(stream, &down, &writes));
            }
        });
        FakeInflux { url, down, writes }
    }

    /// From now on every write is answered 503, as by an InfluxDB that is down.
    fn fail(&self) {
        self.down.store(true, Ordering::Relaxed);
    }

    fn accepted(&self) -> u64 {
        self.writes[0].load(Ordering::Relaxed)
    }

    fn refused(&self) -> u64 {
        self.writes[1].load(Ordering::Relaxed)
    }
}

/// One HTTP/1.1 connection to the [`FakeInflux`]: requests in turn, until it closes.
fn serve_influx(stream: TcpStream, down: &AtomicBool, writes: &[AtomicU64; 2]) {
    let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
    let mut writer = stream;
    loop {
        let mut request = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if request.is_empty() {
                request = line.clone();
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request.split_whitespace().nth(1).unwrap_or("");
        let answer = if path.starts_with("/write") {
            let failing = down.load(Ordering::Relaxed);
            writes[usize::from(failing)].fetch_add(1, Ordering::Relaxed);
            if failing {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_owned()
            } else {
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_owned()
            }
        } else if path.starts_with("/ping") {
            "HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.8.10\r\nContent-Length: 0\r\n\r\n"
                .to_owned()
        } else {
            let json = r#"{"results":[{"statement_id":0}]}"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            )
        };
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Waits until `done`, failing the test after `limit` with `what`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The scenario's events in an embedded Kafka (librdkafka's mock cluster) on a topic of four
/// partitions, and the environment of `shopflow run` processes reading it from the start.
fn embedded_scenario(
    events: u64,
) -> (
    MockCluster<'static, DefaultProducerContext>,
    Vec<(String, String)>,
) {
    let cluster = MockCluster::new(1).expect("the mock cluster");
    let topic = unique("shopflow-cluster").replace('_', "-");
    cluster.create_topic(&topic, 4, 1).expect("the topic");
    let kafka = crate::support::services::kafka_config(&cluster.bootstrap_servers(), &topic, 4);
    produce_scenario(&kafka, shopflow::runtime::now_ms() - 600_000, events);
    let env = vec![
        ("SHOPFLOW__KAFKA__BROKERS".to_owned(), kafka.brokers.clone()),
        ("SHOPFLOW__KAFKA__TOPIC".to_owned(), topic.clone()),
        (
            "SHOPFLOW__KAFKA__GROUP_ID".to_owned(),
            format!("{topic}-group"),
        ),
    ];
    (cluster, env)
}

/// The setting that keeps the processes' checkpoints in `dir`, shared by them.
fn checkpoints_in(dir: &Path) -> (String, String) {
    let state = dir.join("state").display().to_string();
    ("SHOPFLOW__ENGINE__CHECKPOINT_DIR".to_owned(), state)
}

/// A process that loses a peer ends within seconds, with one line naming it, even while its own
/// sink is stuck: here InfluxDB answers every write 503 and the sink would retry for many
/// minutes, its queue full and the workers held back by it. No real InfluxDB is needed.
#[test]
fn a_lost_peer_ends_a_process_within_seconds_while_its_sink_retries() {
    let (_kafka, mut env) = embedded_scenario(20_000);
    let influx = FakeInflux::start();
    env.extend(
        [
            ("SHOPFLOW__INFLUX__URL", influx.url.as_str()),
            ("SHOPFLOW__INFLUX__CREATE_DATABASE", "false"),
            ("SHOPFLOW__INFLUX__MAX_RETRIES", "100"),
            ("SHOPFLOW__INFLUX__INITIAL_BACKOFF_MS", "200"),
            ("SHOPFLOW__INFLUX__MAX_BACKOFF_MS", "2000"),
            ("SHOPFLOW__INFLUX__BATCH_LINES", "50"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    env.push(checkpoints_in(dir.path()));
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let mut members: Vec<Running> = (0..2)
        .map(|p| {
            let mut words = args("run --start earliest --demographics generator --sink influxdb");
            words.extend(member(p, 2, 2, &hosts));
            start_run(&words, &env)
        })
        .collect();
    // Running together: results reach InfluxDB. Then it goes down, and the sinks retry.
    wait_until(Duration::from_secs(60), "writes", || influx.accepted() >= 5);
    influx.fail();
    wait_until(Duration::from_secs(30), "refused writes", || {
        influx.refused() >= 6
    });
    std::thread::sleep(Duration::from_secs(1));
    let killed = members.pop().expect("process 1").kill();
    let zero = members
        .pop()
        .expect("process 0")
        .finish(Duration::from_secs(120));
    let took = zero.ended - killed;
    assert_eq!(zero.code, Some(1), "{zero:?}");
    assert_lost_one(&zero, &hosts);
    assert!(
        took <= Duration::from_secs(5),
        "ended {took:?} after the kill: {zero:?}"
    );
}

/// A process whose demographics source gives up (its MariaDB unreachable for good: the binlog
/// connection goes through a proxy that is cut) exits with its error, and its peer ends within
/// seconds, naming it and why; the shared MariaDB itself is never stopped.
#[test]
#[ignore = "needs MariaDB: run scripts/test-all"]
fn a_process_whose_source_gives_up_ends_the_cluster_naming_it() {
    let db = crate::mysql::TestDb::new();
    crate::mysql::load_small(&db, 29, 200);
    let opts = mysql::Opts::from_url(&db.config.url).expect("a mysql:// URL");
    let mut proxy = crate::mysql::Proxy::to(format!(
        "{}:{}",
        opts.get_ip_or_hostname(),
        opts.get_tcp_port()
    ));
    let url = format!(
        "mysql://{}:{}@127.0.0.1:{}/{}",
        opts.get_user().unwrap_or_default(),
        opts.get_pass().unwrap_or_default(),
        proxy.port,
        db.name
    );
    let (_kafka, mut env) = embedded_scenario(20_000);
    env.extend(
        [
            ("SHOPFLOW__MYSQL__URL", url.as_str()),
            ("SHOPFLOW__MYSQL__CONNECT_RETRIES", "1"),
            ("SHOPFLOW__MYSQL__CONNECT_TIMEOUT_MS", "1000"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    env.push(checkpoints_in(dir.path()));
    let hosts = hostfile(dir.path(), "hosts.txt", &free_ports(2));
    let output = dir.path().join("source.lp").display().to_string();
    let members: Vec<Running> = (0..2)
        .map(|p| {
            let mut words = args("run --start earliest --demographics mysql --sink line-protocol");
            words.extend(member(p, 2, 2, &hosts));
            words.extend(["--output".into(), output.clone()]);
            start_run(&words, &env)
        })
        .collect();
    // Running together: process 0 has written results of ticks both processes completed.
    wait_until(Duration::from_secs(60), "results", || {
        std::fs::metadata(format!("{output}.0")).map_or(0, |m| m.len()) > 2_000
    });
    proxy.cut();
    let cut = Instant::now();
    let [zero, one]: [Finished; 2] = std::thread::scope(|scope| {
        let running: Vec<_> = members
            .into_iter()
            .map(|m| scope.spawn(move || m.finish(Duration::from_secs(120))))
            .collect();
        running
            .into_iter()
            .map(|r| r.join().expect("finished"))
            .collect::<Vec<_>>()
            .try_into()
            .expect("two processes")
    });
    assert_eq!(zero.code, Some(1), "{zero:?}");
    let said = zero.stderr.lines().last().unwrap_or_default();
    assert!(
        said.starts_with("error: ") && said.contains("gave up after 1 reconnection attempt"),
        "{zero:?}"
    );
    assert!(zero.ended - cut < Duration::from_secs(30), "{zero:?}");
    assert_eq!(one.code, Some(1), "{one:?}");
    let told = one.stderr.lines().last().unwrap_or_default();
    assert!(
        told.starts_with("error: process 0 failed: ")
            && told.contains("gave up after 1 reconnection attempt"),
        "{one:?}"
    );
    let apart = one.ended.max(zero.ended) - one.ended.min(zero.ended);
    assert!(
        apart <= Duration::from_secs(5),
        "{apart:?} apart: {zero:?} {one:?}"
    );
}
