//! A round carried out: the pipeline runs, the services it stops, the schedule executed, the
//! catch-up, and the comparison with the oracle.

use super::*;

/// One `shopflow run` process of a round.
pub(super) struct Run {
    pub(super) child: Child,
    /// Its number in the round, from 1.
    pub(super) number: usize,
    pub(super) log: PathBuf,
    pub(super) started: Instant,
    /// When it started, in ms since the epoch.
    pub(super) started_ms: u64,
    /// The services that were down when it started.
    pub(super) started_without: BTreeSet<Service>,
}

impl Run {
    pub(super) fn start(
        env: &[(String, String)],
        workers: u8,
        number: usize,
        logs: &Path,
        down: &BTreeSet<Service>,
    ) -> Run {
        let log = logs.join(format!("run-{number}.log"));
        let stderr = File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command
            .args(["run", "-w", &workers.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let started_ms = shopflow::runtime::now_ms();
        Run {
            child: command.spawn().expect("shopflow runs"),
            number,
            log,
            started: Instant::now(),
            started_ms,
            started_without: down.clone(),
        }
    }

    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the pipeline's status")
    }

    pub(super) fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIG{signal} delivered");
    }

    /// Waits up to `within` for the process to exit.
    pub(super) fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of its log.
    pub(super) fn tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The services a round has stopped: started again however the round ends.
#[derive(Default)]
pub(super) struct Outages {
    pub(super) down: BTreeSet<Service>,
}

impl Outages {
    pub(super) fn stop(&mut self, service: Service) {
        self.down.insert(service);
        services(&["stop", service.name()]);
    }

    pub(super) fn resume(&mut self, service: Service) {
        services(&["start", service.name()]);
        self.down.remove(&service);
    }
}

impl Drop for Outages {
    fn drop(&mut self) {
        for service in std::mem::take(&mut self.down) {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
            let _ = Command::new(script)
                .args(["start", service.name()])
                .status();
        }
    }
}

/// What a round found.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) seed: u64,
    /// Faults injected, by kind (as executed, not as planned).
    pub(super) injected: BTreeMap<&'static str, u64>,
    pub(super) rows_compared: usize,
    pub(super) rows_equal: usize,
    pub(super) counters_compared: usize,
    pub(super) counters_equal: usize,
    /// The differing rows and counters, described.
    pub(super) differences: Vec<String>,
    /// The differing rows by kind: stale, missing, lower, higher, different.
    pub(super) kinds: BTreeMap<&'static str, usize>,
    /// What the pipeline did that it should not have.
    pub(super) anomalies: Vec<String>,
    /// The round could not be carried out: not a finding about the pipeline.
    pub(super) harness_error: Option<String>,
    /// The round's report, with the schedule as executed.
    pub(super) report: String,
    pub(super) seconds: f64,
}

impl Outcome {
    pub(super) fn passed(&self) -> bool {
        self.harness_error.is_none() && self.anomalies.is_empty() && self.differences.is_empty()
    }
}

/// A round being carried out.
pub(super) struct Round {
    pub(super) plan: Plan,
    pub(super) scenario: Scenario,
    pub(super) env: Vec<(String, String)>,
    pub(super) logs: PathBuf,
    pub(super) _checkpoints: tempfile::TempDir,
    pub(super) checkpoint_dir: PathBuf,
    pub(super) pipeline: Option<Run>,
    /// The pipeline exited by itself: a supervisor restarts it once every service is up.
    pub(super) exited_by_itself: bool,
    pub(super) runs: usize,
    /// The worker count of the last run started.
    pub(super) workers: u8,
    pub(super) outages: Outages,
    pub(super) changes: demographics::Changes,
    pub(super) started: Instant,
    pub(super) outcome: Outcome,
}

impl Round {
    pub(super) fn new(plan: Plan) -> Round {
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("campaign")
            .join(format!("seed-{}", plan.seed));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("the round's log directory");
        let scenario = Scenario::new("campaign", plan.seed, USERS);
        let checkpoints = tempfile::tempdir().expect("a checkpoint directory");
        let checkpoint_dir = checkpoints.path().to_owned();
        let interval = plan.checkpoint_interval_ms.to_string();
        let env = scenario.pipeline_env(
            timeless(),
            &[
                ("SHOPFLOW__ENGINE__TICK_MS", "250"),
                (
                    "SHOPFLOW__ENGINE__CHECKPOINT_DIR",
                    checkpoint_dir.to_str().expect("a UTF-8 temporary path"),
                ),
                ("SHOPFLOW__ENGINE__CHECKPOINT_INTERVAL_MS", &interval),
                // The follower rides out a MariaDB restart (about a minute of backoff).
                ("SHOPFLOW__MYSQL__CONNECT_RETRIES", "15"),
                ("RUST_LOG", "warn,shopflow=info"),
            ],
        );
        let outcome = Outcome {
            seed: plan.seed,
            ..Outcome::default()
        };
        Round {
            workers: plan.workers,
            changes: demographics::Changes::new(plan.seed, USERS, NEW_USERS),
            plan,
            scenario,
            env,
            logs,
            _checkpoints: checkpoints,
            checkpoint_dir,
            pipeline: None,
            exited_by_itself: false,
            runs: 0,
            outages: Outages::default(),
            started: Instant::now(),
            outcome,
        }
    }

    pub(super) fn count(&mut self, kind: &'static str, n: u64) {
        *self.outcome.injected.entry(kind).or_default() += n;
    }

    /// A line of the round's report, stamped with the time since the round began.
    pub(super) fn note(&mut self, line: impl AsRef<str>) {
        let line = format!(
            "  {:>6.1}s  {}",
            self.started.elapsed().as_secs_f64(),
            line.as_ref()
        );
        // As it happens, for whoever watches a long campaign (with --nocapture).
        eprintln!("seed {}: {}", self.plan.seed, line.trim_start());
        self.outcome.report.push_str(&line);
        self.outcome.report.push('\n');
    }

    pub(super) fn anomaly(&mut self, what: String) {
        self.note(format!("ANOMALY: {what}"));
        self.outcome.anomalies.push(what);
    }

    /// The checkpoints on disk (entries of the checkpoint directory, whatever their layout,
    /// but files being written): whether a kill came before the first.
    pub(super) fn checkpoints(&self) -> usize {
        std::fs::read_dir(&self.checkpoint_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        !name.starts_with('.') && !name.ends_with(".tmp")
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    pub(super) fn start(&mut self, workers: u8) {
        if self.runs > 0 {
            self.count("restarts", 1);
            if self.workers != workers {
                self.count("worker count changed at a restart", 1);
            }
        }
        self.runs += 1;
        self.exited_by_itself = false;
        let checkpoints = self.checkpoints();
        let run = Run::start(
            &self.env,
            workers,
            self.runs,
            &self.logs,
            &self.outages.down,
        );
        self.workers = workers;
        self.note(format!(
            "run {}: start -w {workers} ({checkpoints} checkpoint(s) on disk, services down: {:?})",
            run.number, self.outages.down
        ));
        self.pipeline = Some(run);
    }

    /// Notices a pipeline that exited by itself, which a supervisor restarts once every service
    /// is up. The pipeline is configured to ride out every outage of a round (MySQL reconnection
    /// for about 50 s, InfluxDB retries for minutes, Kafka for ever), so an exit is an anomaly,
    /// unless the run started while a service was down that is still down: refusing to start
    /// without a service is a documented answer.
    pub(super) fn watch(&mut self) {
        if let Some(run) = &mut self.pipeline
            && let Some(status) = run.exited()
        {
            let (number, up, tail) = (run.number, run.started.elapsed(), run.tail(8));
            let what = format!(
                "run {number} exited by itself with {status} after {:.1}s (services down: {:?}); \
                 its log ends:\n{tail}",
                up.as_secs_f64(),
                self.outages.down
            );
            if run
                .started_without
                .intersection(&self.outages.down)
                .next()
                .is_some()
            {
                self.note(format!("(started without a service) {what}"));
            } else {
                self.anomaly(what);
            }
            self.pipeline = None;
            self.exited_by_itself = true;
            self.count("(the pipeline exited by itself)", 1);
        }
        if self.exited_by_itself && self.outages.down.is_empty() {
            let workers = self.workers;
            self.note("restarting the pipeline as a supervisor would");
            self.start(workers);
        }
    }

    /// Waits (30 s at most) until the current run has written a `runtime` point: it is past
    /// its start-up. Kafka and MariaDB outages hit a running pipeline, which is configured to
    /// ride them out; at start-up, failing without them is a documented answer.
    pub(super) fn until_running(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(run) = &self.pipeline {
            let q = format!(
                "SELECT count(consumer_lag) FROM runtime WHERE time >= {}ms",
                run.started_ms
            );
            let written = influx::query(&self.scenario.influx_url, &self.scenario.database, &q)
                .and_then(|a| a["results"][0]["series"][0]["values"][0][1].as_i64())
                .is_some_and(|n| n > 0);
            if written {
                return;
            }
            if Instant::now() >= deadline {
                let number = run.number;
                self.note(format!("run {number}: not writing after 30 s; going on"));
                return;
            }
            self.pause(Duration::from_millis(200));
        }
    }

    /// Sleeps `duration`, watching the pipeline.
    pub(super) fn pause(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
            self.watch();
        }
    }

    pub(super) fn step(&mut self, step: &Step) {
        match step {
            Step::Wait(duration) => self.pause(*duration),
            Step::Kill => {
                let Some(mut run) = self.pipeline.take() else {
                    self.note("SIGKILL: the pipeline is not running");
                    return;
                };
                let checkpoints = self.checkpoints();
                run.signal("KILL");
                let _ = run.wait(Duration::from_secs(10));
                self.count("SIGKILL", 1);
                if checkpoints == 0 {
                    self.count("SIGKILL before any checkpoint", 1);
                }
                if self.outages.down.contains(&Service::Influxdb) {
                    self.count("SIGKILL during an InfluxDB outage", 1);
                }
                self.note(format!(
                    "run {}: SIGKILL after {:.1}s ({checkpoints} checkpoint(s) on disk, services \
                     down: {:?})",
                    run.number,
                    run.started.elapsed().as_secs_f64(),
                    self.outages.down
                ));
            }
            Step::Term => {
                let Some(mut run) = self.pipeline.take() else {
                    self.note("SIGTERM: the pipeline is not running");
                    return;
                };
                let up = run.started.elapsed();
                run.signal("TERM");
                let asked = Instant::now();
                let status = run.wait(STOP_WITHIN);
                self.count("SIGTERM", 1);
                self.note(format!(
                    "run {}: SIGTERM after {:.1}s: {} in {:.1}s",
                    run.number,
                    up.as_secs_f64(),
                    status.map_or("still running".to_owned(), |s| s.to_string()),
                    asked.elapsed().as_secs_f64()
                ));
                match status {
                    Some(status) if status.success() => {}
                    Some(status) => self.anomaly(format!(
                        "run {}: SIGTERM (a graceful stop) ended it with {status}; its log \
                         ends:\n{}",
                        run.number,
                        run.tail(8)
                    )),
                    None => {
                        self.anomaly(format!(
                            "run {}: SIGTERM did not stop it within {STOP_WITHIN:?}; killed",
                            run.number
                        ));
                        run.signal("KILL");
                        let _ = run.wait(Duration::from_secs(10));
                    }
                }
            }
            Step::Start(workers) => {
                if self.pipeline.is_some() {
                    self.note(format!("start -w {workers}: already running (restarted)"));
                    return;
                }
                self.start(*workers);
            }
            Step::Stop(service) => {
                if *service != Service::Influxdb {
                    self.until_running();
                }
                self.outages.stop(*service);
                self.count(
                    match service {
                        Service::Influxdb => "InfluxDB outage",
                        Service::Kafka => "Kafka outage",
                        Service::Mariadb => "MariaDB outage",
                    },
                    1,
                );
                self.note(format!("stopped {}", service.name()));
            }
            Step::Resume(service) => {
                self.outages.resume(*service);
                self.note(format!("started {}", service.name()));
            }
            Step::Changes(n) => {
                let report = writers::mysql::apply_changes(
                    &self.scenario.mysql,
                    &mut self.changes,
                    200.0,
                    Duration::from_secs(60),
                    *n,
                )
                .expect("changes applied");
                assert_eq!(
                    report.mismatches, 0,
                    "the table follows the generator: {report:?}"
                );
                let kind = if self.pipeline.is_some() {
                    "demographic bursts while running"
                } else {
                    "demographic bursts while the pipeline is down"
                };
                self.count(kind, 1);
                self.count(
                    "demographic changes",
                    report.inserts + report.updates + report.deletes,
                );
                self.note(format!(
                    "{n} demographic changes: {} inserts, {} updates, {} deletes{}",
                    report.inserts,
                    report.updates,
                    report.deletes,
                    if self.pipeline.is_some() {
                        ""
                    } else {
                        " (pipeline down)"
                    }
                ));
            }
        }
    }
}

/// A panic's message.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Sends generated events `0..events` to Kafka on a thread, each at its arrival time, and waits
/// until the broker has them all: through a Kafka outage of any length up to librdkafka's message
/// timeout (5 minutes), unlike `faults::produce_in_background` (a 30 s flush).
pub(super) fn produce(
    config: &KafkaConfig,
    generator: &EventGenerator,
    events: u64,
) -> std::thread::JoinHandle<Result<u64, String>> {
    let (config, generator) = (config.clone(), generator.clone());
    std::thread::spawn(move || {
        let mut producer = EventProducer::new(&config).map_err(|e| e.to_string())?;
        for n in 0..events {
            let arrival = generator.arrival_ms(n);
            let now = shopflow::runtime::now_ms();
            if arrival > now {
                std::thread::sleep(Duration::from_millis(arrival - now));
            }
            producer
                .send(&generator.event(n), arrival)
                .map_err(|e| e.to_string())?;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match producer.flush(Duration::from_secs(10)) {
                Ok(()) => return Ok(producer.sent()),
                Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => {}
            }
        }
    })
}

/// Whether MariaDB's binlog dump thread has sent the pipeline's follower everything.
pub(super) fn binlog_read_to_end(mysql_url: &str) -> bool {
    let Ok(mut conn) = mysql::Pool::new(mysql_url).and_then(|pool| pool.get_conn()) else {
        return false;
    };
    conn.query_first::<i64, _>(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump' \
         AND STATE LIKE '%sent all binlog%'",
    )
    .ok()
    .flatten()
    .is_some_and(|n| n > 0)
}

/// The source-side rejections a pipeline counted: with `events_in`, every message it read.
pub(super) fn rejections(state: &State) -> i64 {
    Counter::ALL
        .iter()
        .filter(|c| c.name().starts_with("malformed_") || c.name().starts_with("rejected_"))
        .map(|c| state.counter(*c))
        .sum()
}

/// Runs one round, returning what it found; a harness failure (a panic) is recorded as such.
pub(super) fn run_round(plan: Plan) -> Outcome {
    let seed = plan.seed;
    let mut round = Round::new(plan);
    let steps = round.plan.steps.clone();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        carry_out(&mut round, &steps);
    }));
    let mut outcome = std::mem::take(&mut round.outcome);
    outcome.seed = seed;
    if let Err(panic) = result {
        outcome.harness_error = Some(panic_message(&*panic));
    }
    outcome.seconds = round.started.elapsed().as_secs_f64();
    if !outcome.passed() {
        // The checkpoints and the journal of rows written, kept with the logs to look at.
        let kept = round.logs.join("checkpoints");
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&round.checkpoint_dir)
            .arg(&kept)
            .status();
        if !copied.is_ok_and(|status| status.success()) {
            eprintln!(
                "campaign: could not keep the checkpoints in {}",
                kept.display()
            );
        }
    }
    // The pipeline first, then the services, then the databases (InfluxDB's needs it up).
    round.pipeline = None;
    drop(std::mem::take(&mut round.outages));
    drop(round);
    outcome
}

/// The round's schedule, the catch-up, the stop and the comparison.
pub(super) fn carry_out(round: &mut Round, steps: &[Step]) {
    let plan = round.plan.clone();
    let mut knobs = knobs(plan.seed, USERS, plan.rate);
    knobs.new_users = NEW_USERS;
    knobs.duplicate_share = plan.duplicate_share;
    knobs.refund_share = plan.refund_share;
    knobs.late_share = plan.late_share;
    round.note(format!(
        "{} events at {}/s (duplicates {:.1}%, refunds {:.1}%, late {:.1}%), checkpoint every \
         {} ms, faults planned: {:?}",
        plan.events,
        plan.rate,
        plan.duplicate_share * 100.0,
        plan.refund_share * 100.0,
        plan.late_share * 100.0,
        plan.checkpoint_interval_ms,
        plan.faults.iter().map(|f| f.name()).collect::<Vec<_>>()
    ));
    round.start(plan.workers);
    let generator =
        EventGenerator::new(knobs, shopflow::runtime::now_ms() + 500).expect("valid knobs");
    let producer = produce(&round.scenario.kafka, &generator, plan.events);
    for step in steps {
        round.watch();
        round.step(step);
    }
    round.note("schedule done; waiting for the producer");
    while !producer.is_finished() {
        round.pause(Duration::from_millis(500));
    }
    let sent = producer
        .join()
        .unwrap_or_else(|panic| panic!("the producer failed: {}", panic_message(&*panic)))
        .unwrap_or_else(|e| panic!("the producer failed: {e}"));
    assert_eq!(sent, plan.events, "events produced");
    let in_topic = topic_messages(&round.scenario.kafka);
    assert_eq!(
        in_topic, plan.events as i64,
        "the topic holds every event produced exactly once"
    );
    round.note(format!(
        "produced {sent} events; the topic holds {in_topic}"
    ));
    round.watch();
    if round.pipeline.is_none() {
        round.note("the pipeline is not running: restarting it for the catch-up");
        let workers = round.workers;
        round.start(workers);
    }

    let table = source::read_table(&round.scenario.mysql).expect("the table");
    let want = oracle(
        &timeless_inputs(&table, &generator, plan.events, &BTreeMap::new()),
        timeless(),
    );
    round.note(format!(
        "the oracle: {} rows over {} users, counters {:?}",
        want.rows.len(),
        table.len(),
        want.counters_with_refunds_summed()
    ));
    catch_up(round, &want, plan.events);

    // Stopped as a user stops it: everything read is written.
    if let Some(mut run) = round.pipeline.take() {
        run.signal("TERM");
        match run.wait(STOP_WITHIN) {
            Some(status) if status.success() => {
                round.note(format!("run {}: stopped (SIGTERM), {status}", run.number));
            }
            Some(status) => round.anomaly(format!(
                "run {}: the final SIGTERM ended it with {status}; its log ends:\n{}",
                run.number,
                run.tail(8)
            )),
            None => {
                round.anomaly(format!(
                    "run {}: the final SIGTERM did not stop it within {STOP_WITHIN:?}",
                    run.number
                ));
                run.signal("KILL");
            }
        }
    }
    let lag = committed_lag(&round.scenario.kafka);
    let mut got = None;
    for _ in 0..20 {
        got = influx::state(&round.scenario.influx_url, &round.scenario.database);
        if got.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = got.expect("InfluxDB answers at the end");
    round.note(format!(
        "after the stop: committed lag {lag:?}, events_in {} + rejected {} of {} produced",
        got.counter(Counter::EventsIn),
        rejections(&got),
        plan.events
    ));
    compare(round, &got, &want);
}

/// Waits until the pipeline has caught up: InfluxDB equals the oracle, or the group's committed
/// lag is 0, the binlog is read to its end and InfluxDB has not changed for [`QUIET`].
pub(super) fn catch_up(round: &mut Round, want: &State, events: u64) {
    let started = Instant::now();
    let mut last: Option<State> = None;
    let mut unchanged_since = Instant::now();
    loop {
        round.pause(Duration::from_millis(500));
        let got = influx::state(&round.scenario.influx_url, &round.scenario.database);
        if got.as_ref().is_some_and(|got| got.matches(want)) {
            round.note(format!(
                "caught up: InfluxDB equals the oracle after {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            return;
        }
        if got != last {
            unchanged_since = Instant::now();
            last = got;
        }
        let lag = committed_lag(&round.scenario.kafka);
        let binlog = binlog_read_to_end(&round.scenario.mysql_url);
        let accounted = last
            .as_ref()
            .map(|s| s.counter(Counter::EventsIn) + rejections(s));
        if lag == Some(0) && binlog && unchanged_since.elapsed() >= QUIET {
            round.note(format!(
                "caught up after {:.1}s: committed lag 0, binlog read, InfluxDB unchanged for \
                 {QUIET:?}; events_in + rejected = {accounted:?} of {events} produced",
                started.elapsed().as_secs_f64()
            ));
            return;
        }
        if started.elapsed() >= CATCH_UP || unchanged_since.elapsed() >= STUCK {
            round.anomaly(format!(
                "not caught up after {:.1}s: committed lag {lag:?}, binlog read to its end: \
                 {binlog}, events_in + rejected = {accounted:?} of {events} produced, InfluxDB \
                 unchanged for {:.1}s",
                started.elapsed().as_secs_f64(),
                unchanged_since.elapsed().as_secs_f64()
            ));
            return;
        }
    }
}

/// Compares every row and counter; records the differences, classified.
pub(super) fn compare(round: &mut Round, got: &State, want: &State) {
    let outcome = &mut round.outcome;
    let keys: BTreeSet<&String> = got.rows.keys().chain(want.rows.keys()).collect();
    outcome.rows_compared = keys.len();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for key in keys {
        let (g, w) = (got.rows.get(key), want.rows.get(key));
        if g == w {
            outcome.rows_equal += 1;
            continue;
        }
        let measurement = key.split(',').next().unwrap_or("");
        let window = if key.contains(",window=all") {
            "all-time"
        } else {
            "window"
        };
        let (kind, short) = match (g, w) {
            (Some(_), None) => ("in InfluxDB only (stale)", "stale"),
            (None, Some(_)) => ("missing from InfluxDB", "missing"),
            (Some(g), Some(w)) if g.iter().zip(w).all(|(g, w)| g <= w) => {
                ("InfluxDB lower", "lower")
            }
            (Some(g), Some(w)) if g.iter().zip(w).all(|(g, w)| g >= w) => {
                ("InfluxDB higher", "higher")
            }
            _ => ("different", "different"),
        };
        *outcome.kinds.entry(short).or_default() += 1;
        *kinds
            .entry(format!("{measurement} {window}: {kind}"))
            .or_default() += 1;
        outcome.differences.push(format!(
            "{key}: influx {g:?}, oracle {w:?} [clicks, purchases, units, revenue_cents]"
        ));
    }
    let (g, w) = (
        got.counters_with_refunds_summed(),
        want.counters_with_refunds_summed(),
    );
    let names: BTreeSet<&String> = g.keys().chain(w.keys()).collect();
    outcome.counters_compared = names.len();
    for name in names {
        if g.get(name) == w.get(name) {
            outcome.counters_equal += 1;
        } else {
            outcome.differences.push(format!(
                "counter {name}: influx {:?}, oracle {:?}",
                g.get(name),
                w.get(name)
            ));
        }
    }
    let summary = format!(
        "{} of {} rows equal, {} of {} counters; differing rows by kind: {kinds:?}",
        outcome.rows_equal,
        outcome.rows_compared,
        outcome.counters_equal,
        outcome.counters_compared
    );
    round.note(summary);
}
