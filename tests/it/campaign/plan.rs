//! A round's plan, from its seed alone: the faults allowed, the schedule of steps, the events
//! and the worker counts.

use super::*;

/// A service the campaign stops and starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Service {
    Influxdb,
    Kafka,
    Mariadb,
}

impl Service {
    /// Its name for `scripts/services.sh`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Service::Influxdb => "influxdb",
            Service::Kafka => "kafka",
            Service::Mariadb => "mariadb",
        }
    }
}

/// One step of a round's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Let the round go on for this long.
    Wait(Duration),
    /// SIGKILL the pipeline.
    Kill,
    /// SIGTERM the pipeline and wait for it to stop.
    Term,
    /// Start the pipeline with this many workers.
    Start(u8),
    /// Stop a service.
    Stop(Service),
    /// Start a stopped service again.
    Resume(Service),
    /// Apply this many generated demographic changes to MariaDB.
    Changes(u64),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Wait(d) => write!(f, "wait {:.1}s", d.as_secs_f64()),
            Step::Kill => f.write_str("SIGKILL"),
            Step::Term => f.write_str("SIGTERM"),
            Step::Start(w) => write!(f, "start -w {w}"),
            Step::Stop(s) => write!(f, "stop {}", s.name()),
            Step::Resume(s) => write!(f, "start {}", s.name()),
            Step::Changes(n) => write!(f, "{n} demographic changes"),
        }
    }
}

/// The kinds of fault a schedule is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fault {
    /// The first run SIGKILLed before its first checkpoint can be complete.
    EarlyKill,
    /// SIGKILL at a random moment; restarted.
    Kill,
    /// SIGKILL, a restart, and SIGKILL again before that run's first checkpoint.
    KillAfterRestart,
    /// SIGTERM (a graceful stop); restarted.
    Term,
    /// InfluxDB stopped for 3 to 15 s.
    InfluxOutage,
    /// InfluxDB stopped, the pipeline SIGKILLed meanwhile and restarted before or after it is back.
    KillInInfluxOutage,
    /// Kafka stopped for 1 to 6 s (and the time it takes to start).
    KafkaOutage,
    /// MariaDB stopped for 1 to 6 s.
    MariadbOutage,
    /// A burst of demographic changes while the pipeline runs.
    Changes,
}

impl Fault {
    const ALL: [Fault; 9] = [
        Fault::EarlyKill,
        Fault::Kill,
        Fault::KillAfterRestart,
        Fault::Term,
        Fault::InfluxOutage,
        Fault::KillInInfluxOutage,
        Fault::KafkaOutage,
        Fault::MariadbOutage,
        Fault::Changes,
    ];

    /// Its name in `SHOPFLOW_CAMPAIGN_FAULTS`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Fault::EarlyKill => "early-kill",
            Fault::Kill => "kill",
            Fault::KillAfterRestart => "kill-after-restart",
            Fault::Term => "term",
            Fault::InfluxOutage => "influx",
            Fault::KillInInfluxOutage => "influx-kill",
            Fault::KafkaOutage => "kafka",
            Fault::MariadbOutage => "mariadb",
            Fault::Changes => "changes",
        }
    }

    /// How often a schedule's fault is of this kind, relative to the others (the early kill is
    /// drawn apart, in about a third of the rounds).
    pub(super) fn weight(self) -> u32 {
        match self {
            Fault::EarlyKill => 0,
            Fault::Kill => 20,
            Fault::KillAfterRestart => 10,
            Fault::Term => 15,
            Fault::InfluxOutage => 13,
            Fault::KillInInfluxOutage => 14,
            Fault::KafkaOutage => 10,
            Fault::MariadbOutage => 10,
            Fault::Changes => 8,
        }
    }
}

/// The faults `SHOPFLOW_CAMPAIGN_FAULTS` allows (comma-separated names; all by default).
pub(super) fn allowed_faults() -> BTreeSet<Fault> {
    let Ok(list) = std::env::var("SHOPFLOW_CAMPAIGN_FAULTS") else {
        return Fault::ALL.into_iter().collect();
    };
    let allowed: BTreeSet<Fault> = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            Fault::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| {
                    panic!(
                        "SHOPFLOW_CAMPAIGN_FAULTS: no fault {name:?}; the faults are {:?}",
                        Fault::ALL.map(Fault::name)
                    )
                })
        })
        .collect();
    assert!(
        allowed.iter().any(|f| f.weight() > 0),
        "SHOPFLOW_CAMPAIGN_FAULTS={list} allows no fault but the early kill"
    );
    allowed
}

/// A round, drawn from its seed.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub(super) seed: u64,
    /// Events per second.
    pub(super) rate: f64,
    /// Events produced in all.
    pub(super) events: u64,
    pub(super) duplicate_share: f64,
    pub(super) refund_share: f64,
    pub(super) late_share: f64,
    pub(super) checkpoint_interval_ms: u64,
    /// Workers of the first run.
    pub(super) workers: u8,
    /// The faults, in order (the steps carry them out).
    pub(super) faults: Vec<Fault>,
    pub(super) steps: Vec<Step>,
}

/// The round of `seed` with faults of the `allowed` kinds: a pure function of both.
pub(super) fn plan(seed: u64, allowed: &BTreeSet<Fault>) -> Plan {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xC4A3_9A16_0F4E_5EED);
    let ms = |rng: &mut SmallRng, range: std::ops::Range<u64>| {
        Step::Wait(Duration::from_millis(rng.random_range(range)))
    };
    let checkpoint_interval_ms = [1_000, 2_000, 3_000][rng.random_range(0..3usize)];
    let workers = rng.random_range(1..=3u8);
    let mut steps = Vec::new();
    let mut faults = Vec::new();
    // Changes while the pipeline is down, sometimes.
    let while_down = |rng: &mut SmallRng, steps: &mut Vec<Step>| {
        if rng.random_bool(0.5) {
            steps.push(Step::Changes(rng.random_range(20..120)));
        }
    };
    if rng.random_bool(0.35) && allowed.contains(&Fault::EarlyKill) {
        faults.push(Fault::EarlyKill);
        steps.push(ms(&mut rng, 200..checkpoint_interval_ms));
        steps.push(Step::Kill);
        while_down(&mut rng, &mut steps);
        steps.push(ms(&mut rng, 0..1_500));
        steps.push(Step::Start(rng.random_range(1..=3)));
    }
    let mut allowed = allowed.clone();
    for _ in 0..rng.random_range(2..=5u32) {
        steps.push(ms(&mut rng, 500..5_000));
        let total: u32 = allowed.iter().map(|f| f.weight()).sum();
        let mut draw = rng.random_range(0..total);
        let fault = *allowed
            .iter()
            .find(|f| {
                let hit = draw < f.weight();
                draw = draw.saturating_sub(f.weight());
                hit
            })
            .expect("a draw below the total weight");
        faults.push(fault);
        // Kafka takes 10 to 40 s to start: one outage a round, to keep rounds short.
        if fault == Fault::KafkaOutage && allowed.len() > 1 {
            allowed.remove(&Fault::KafkaOutage);
        }
        match fault {
            Fault::EarlyKill => unreachable!("drawn apart"),
            Fault::Kill => {
                steps.push(Step::Kill);
                while_down(&mut rng, &mut steps);
                steps.push(ms(&mut rng, 0..2_000));
                steps.push(Step::Start(rng.random_range(1..=3)));
            }
            Fault::KillAfterRestart => {
                steps.push(Step::Kill);
                steps.push(ms(&mut rng, 0..1_000));
                steps.push(Step::Start(rng.random_range(1..=3)));
                steps.push(ms(&mut rng, 200..checkpoint_interval_ms));
                steps.push(Step::Kill);
                while_down(&mut rng, &mut steps);
                steps.push(ms(&mut rng, 0..1_500));
                steps.push(Step::Start(rng.random_range(1..=3)));
            }
            Fault::Term => {
                steps.push(Step::Term);
                while_down(&mut rng, &mut steps);
                steps.push(ms(&mut rng, 0..2_000));
                steps.push(Step::Start(rng.random_range(1..=3)));
            }
            Fault::InfluxOutage => {
                steps.push(Step::Stop(Service::Influxdb));
                steps.push(ms(&mut rng, 3_000..15_000));
                steps.push(Step::Resume(Service::Influxdb));
            }
            Fault::KillInInfluxOutage => {
                steps.push(Step::Stop(Service::Influxdb));
                steps.push(ms(&mut rng, 1_000..10_000));
                steps.push(Step::Kill);
                let workers = rng.random_range(1..=3);
                if rng.random_bool(0.5) {
                    // Restarted while InfluxDB is still down.
                    steps.push(ms(&mut rng, 0..1_000));
                    steps.push(Step::Start(workers));
                    steps.push(ms(&mut rng, 1_000..5_000));
                    steps.push(Step::Resume(Service::Influxdb));
                } else {
                    while_down(&mut rng, &mut steps);
                    steps.push(ms(&mut rng, 500..3_000));
                    steps.push(Step::Resume(Service::Influxdb));
                    steps.push(Step::Start(workers));
                }
            }
            Fault::KafkaOutage => {
                steps.push(Step::Stop(Service::Kafka));
                steps.push(ms(&mut rng, 1_000..6_000));
                steps.push(Step::Resume(Service::Kafka));
            }
            Fault::MariadbOutage => {
                steps.push(Step::Stop(Service::Mariadb));
                steps.push(ms(&mut rng, 1_000..6_000));
                steps.push(Step::Resume(Service::Mariadb));
            }
            Fault::Changes => steps.push(Step::Changes(rng.random_range(50..300))),
        }
        if rng.random_bool(0.5) {
            steps.push(Step::Changes(rng.random_range(10..100)));
        }
    }
    let rate = rng.random_range(500.0..1_500.0f64).round();
    // Events flow for about as long as the schedule takes: its waits, and the time each service
    // takes to stop and start (Kafka's JVM about 13 s, the others about 3 s).
    let expected: f64 = steps
        .iter()
        .map(|step| match step {
            Step::Wait(d) => d.as_secs_f64(),
            Step::Resume(Service::Kafka) => 13.0,
            Step::Stop(_) | Step::Resume(_) => 1.5,
            Step::Changes(n) => *n as f64 / 200.0,
            Step::Term => 2.0,
            _ => 0.3,
        })
        .sum();
    let seconds = expected.clamp(15.0, 50.0);
    Plan {
        seed,
        rate,
        events: (rate * seconds) as u64,
        duplicate_share: rng.random_range(0.0..0.08),
        refund_share: rng.random_range(0.0..0.15),
        late_share: rng.random_range(0.0..0.2),
        checkpoint_interval_ms,
        workers,
        faults,
        steps,
    }
}

#[test]
fn a_round_is_a_function_of_its_seed() {
    let all: BTreeSet<Fault> = Fault::ALL.into_iter().collect();
    let some = BTreeSet::from([Fault::InfluxOutage, Fault::Changes]);
    for seed in 0..200 {
        let only = plan(seed, &some);
        assert!(
            only.faults.iter().all(|f| some.contains(f)),
            "{:?}",
            only.faults
        );
        assert!(
            !only
                .steps
                .iter()
                .any(|s| matches!(s, Step::Kill | Step::Term)),
            "{:?}",
            only.steps
        );
        let (a, b) = (plan(seed, &all), plan(seed, &all));
        assert_eq!(a.steps, b.steps);
        assert_eq!((a.events, a.workers), (b.events, b.workers));
        // Every stop is followed by a start of the same service, every kill by a start, and
        // nothing touches a service that is down but the start that brings it back.
        let mut down = BTreeSet::new();
        let mut running = true;
        for step in &a.steps {
            match step {
                Step::Stop(s) => assert!(down.insert(*s), "{seed}: {:?}", a.steps),
                Step::Resume(s) => assert!(down.remove(s), "{seed}: {:?}", a.steps),
                Step::Kill | Step::Term => {
                    assert!(running, "{seed}: {:?}", a.steps);
                    assert!(!down.contains(&Service::Kafka) && !down.contains(&Service::Mariadb));
                    running = false;
                }
                Step::Start(w) => {
                    assert!(!running && (1..=3).contains(w), "{seed}: {:?}", a.steps);
                    assert!(!down.contains(&Service::Kafka) && !down.contains(&Service::Mariadb));
                    running = true;
                }
                Step::Changes(_) => assert!(!down.contains(&Service::Mariadb)),
                Step::Wait(_) => {}
            }
        }
        assert!(down.is_empty() && running, "{seed}: {:?}", a.steps);
        assert!((2..=8).contains(&a.faults.len()));
        assert!(a.events >= 7_500, "{seed}: {} events", a.events);
        let kafka = a
            .faults
            .iter()
            .filter(|f| **f == Fault::KafkaOutage)
            .count();
        assert!(kafka <= 1, "{seed}: {:?}", a.faults);
    }
    assert_ne!(plan(1, &all).steps, plan(2, &all).steps);
    let drawn: BTreeSet<Fault> = (0..200).flat_map(|seed| plan(seed, &all).faults).collect();
    assert_eq!(drawn, all, "every kind of fault is drawn");
}
