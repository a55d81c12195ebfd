//! Processes that cannot form a cluster fail at once, or within the connect timeout, with one
//! line saying why and exit code 2.

use super::*;

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
