//! A process lost while the others run: they end within seconds with an error naming it, also
//! while a sink retries, and when a source gives up.

use super::*;

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
