//! A steady run: memory flat, no error counter moving, the oracle's values at the end.

use std::collections::BTreeSet;

use dataflows::windows::WindowSpec;

use super::*;

/// How long the steady run produces events: `SHOPFLOW_SOAK_SECONDS` (`scripts/soak` sets it),
/// else 60 s.
fn soak_duration() -> Duration {
    let seconds = std::env::var("SHOPFLOW_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("SHOPFLOW_SOAK_SECONDS={s} is not whole seconds"))
        })
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// RSS may not grow by more than this share between the first and the last third of a steady
/// run after its warm-up (see the steady run's test).
const RSS_GROWTH_ALLOWED: f64 = 0.15;

/// After this long, every state the steady run keeps is at its steady size: windows close 20 s
/// after they start, orders are forgotten 15 s after they open, and (in runs of up to 3 minutes)
/// most of the (user, campaign) pairs whose all-time totals the dataflow keeps have been met.
/// Longer runs warm up for a sixth of their duration (5 minutes of a 30-minute soak), by which
/// time the 1,300 users have met nearly all of the 10 campaigns.
fn warm_up(duration: Duration) -> Duration {
    (duration / 6).max(Duration::from_secs(30))
}

/// The updates that turn table `from` into table `to`, at `tick`.
fn table_changes(from: &[Demographic], to: &[Demographic], tick: Tick) -> Vec<(Tick, Input)> {
    let (from, to): (BTreeSet<&Demographic>, BTreeSet<&Demographic>) =
        (from.iter().collect(), to.iter().collect());
    let deleted = from
        .difference(&to)
        .map(|row| (tick, Input::Demographic((*row).clone(), -1)));
    let inserted = to
        .difference(&from)
        .map(|row| (tick, Input::Demographic((*row).clone(), 1)));
    deleted.chain(inserted).collect()
}

/// A steady stream of events with demographic churn, windows closing and orders expiring, for
/// `soak_duration()` (60 s under `scripts/test-all`): the pipeline's memory stays flat, no error
/// counter moves, nothing is logged as a warning, and at the end InfluxDB equals the oracle.
///
/// Windows of 10 s close 10 s after their end and orders are forgotten after 15 s, so every state
/// the dataflow keeps reaches its steady size after [`warm_up`]. The oracle replays events at
/// their arrival second and the demographic changes at the second they were made; for it to know
/// what the pipeline did, changes are made in bursts 5 s away from the moments windows close
/// (every 10 s), and events are at most 2 s late, so a window closes 8 s after its last event
/// arrived at the latest: the pipeline keeping up within seconds suffices.
///
/// Memory is *flat* when the peak RSS of the last third of the run after the warm-up is within
/// [`RSS_GROWTH_ALLOWED`] (15%) of the peak of the first third. Measured on the development
/// machine (2 cores shared, debug build, 1,000 events/s, sampled every 500 ms): RSS rises to
/// about 115 MiB in the first minute, then stays in a band of 105 to 136 MiB for six minutes
/// (allocator steps and single-sample spikes of up to +12%); the peaks of the thirds differed by
/// -1% to +3% in 60 s runs, +3% in a 6-minute run. With the state never retired instead (lateness
/// and horizon of an hour) RSS grew by about 30 MiB a minute, and a 2-minute run failed at +16%.
/// So in the 60 s of `scripts/test-all` the check catches gross growth only (some 20 MiB in the
/// 20 s between the thirds, such as events buffered while a source outruns the sink); slower
/// leaks are what `scripts/soak` is for: over 30 minutes its thirds are 20 minutes apart, and
/// about 1 MiB a minute fails it.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn steady_run_keeps_memory_flat_and_equals_the_oracle() {
    let _services = exclusive();
    let started = Instant::now();
    let duration = soak_duration();
    // A key space that saturates during the warm-up: 1,000 users (and 300 new ones) and 10
    // campaigns. The all-time totals per (user, campaign) are state the semantics keep (bounded
    // by users × campaigns, not by events), so in a key space still filling up RSS rises for
    // that reason alone; here, growth after the warm-up is a leak.
    let (seed, users, rate) = (131, 1_000, 1_000.0);
    let tick_ms = 1_000;
    let params = Params {
        windows: WindowSpec {
            size_ms: WINDOW_MS,
            allowed_lateness_ms: 10_000,
        },
        order_horizon_ms: 15_000,
    };
    let scenario = Scenario::new("faults_steady", seed, users);
    let mut pipeline = Pipeline::start(&scenario.pipeline_env(params, &[]));
    wait_until_running(&scenario, &mut pipeline);
    let mut rss = RssSampler::start(pipeline.pid(), Duration::from_millis(500));
    let mut knobs = knobs(seed, users, rate);
    knobs.max_lateness_ms = 2_000;
    knobs.refund_share = 0.05;
    knobs.campaigns = 10;
    let events = (rate * duration.as_secs_f64()) as u64;
    let start_ms = shopflow::runtime::now_ms() + 500;
    let generator = EventGenerator::new(knobs, start_ms).expect("valid knobs");
    let producer = produce_in_background(&scenario.kafka, &generator, events);
    let production_end = start_ms + duration.as_millis() as u64;

    // Demographic churn, ten changes every 10 s, 5 s after each moment windows close.
    let mut table = source::read_table(&scenario.mysql).expect("the table");
    let mut inputs = table_inputs(&table);
    let mut changes = demographics::Changes::new(seed, users, 300);
    let mut report_at = Instant::now();
    loop {
        let now = shopflow::runtime::now_ms();
        let burst = now - now % WINDOW_MS
            + WINDOW_MS / 2
            + if now % WINDOW_MS < WINDOW_MS / 2 {
                0
            } else {
                WINDOW_MS
            };
        if burst + WINDOW_MS / 2 > production_end {
            break;
        }
        // Pacing by the wall clock, not synchronisation: the scenario's changes happen then.
        std::thread::sleep(Duration::from_millis(burst - now));
        pipeline.assert_running();
        let tick = burst - burst % tick_ms;
        let report = writers::mysql::apply_changes(
            &scenario.mysql,
            &mut changes,
            200.0,
            Duration::from_secs(5),
            10,
        )
        .expect("changes applied");
        assert_eq!(report.mismatches, 0, "{report:?}");
        let after = source::read_table(&scenario.mysql).expect("the table");
        inputs.extend(table_changes(&table, &after, tick));
        table = after;
        let made = shopflow::runtime::now_ms();
        assert!(
            made < burst + WINDOW_MS / 2 - 2 * tick_ms,
            "the burst took until {made}, close to a window's close"
        );
        if report_at.elapsed()
            >= Duration::from_secs(if duration > Duration::from_secs(300) {
                60
            } else {
                10
            })
        {
            report_at = Instant::now();
            let counters = influx::state(&scenario.influx_url, &scenario.database)
                .map(|s| s.counters)
                .unwrap_or_default();
            eprintln!(
                "steady run at {:>5.0}s: RSS {:.1} MiB, counters {counters:?}",
                started.elapsed().as_secs_f64(),
                mib(rss_kib(pipeline.pid()).unwrap_or(0))
            );
        }
    }
    let sent = producer.join().expect("the producer");
    assert_eq!(sent, events);
    let production_done = Instant::now();
    inputs.extend((0..events).map(|n| {
        let arrival = generator.arrival_ms(n);
        (
            arrival - arrival % tick_ms,
            Input::Event(generator.event(n)),
        )
    }));
    // The (user, campaign) pairs met by the end of the warm-up and by the end: the key space
    // the all-time state grows with.
    let warm_until = start_ms + warm_up(duration).as_millis() as u64;
    let pairs = |until: u64| {
        (0..events)
            .filter(|&n| generator.arrival_ms(n) < until)
            .map(|n| {
                let event = generator.event(n);
                (event.user_id, event.campaign_id)
            })
            .collect::<BTreeSet<_>>()
            .len()
    };
    let (pairs_warm, pairs_end) = (pairs(warm_until), pairs(u64::MAX));
    let want = oracle(&inputs, params);
    let got = settle_and_compare(&scenario, &mut pipeline, &want, Duration::from_secs(120));
    let samples = rss.stop();

    // No error counter moved: nothing malformed, rejected or late, no write retried, no warning.
    for counter in Counter::ALL {
        let expected_zero = !matches!(
            counter,
            Counter::EventsIn
                | Counter::Duplicates
                | Counter::RefundsApplied
                | Counter::RefundsUnmatched
        );
        if expected_zero {
            assert_eq!(got.counter(counter), 0, "{}", counter.name());
        }
    }
    assert_eq!(got.counter(Counter::EventsIn), events as i64);
    let retries = influx::query(
        &scenario.influx_url,
        &scenario.database,
        "SELECT max(sink_retries) FROM runtime",
    )
    .and_then(|a| a["results"][0]["series"][0]["values"][0][1].as_i64());
    assert_eq!(retries, Some(0), "no InfluxDB write retried");
    let log = pipeline.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "warnings: {warnings:#?}");

    // Memory: flat after the warm-up.
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| {
            *at >= production_done - duration + warm_up(duration) && *at <= production_done
        })
        .map(|(_, kib)| *kib)
        .collect();
    let third = steady.len() / 3;
    assert!(third >= 5, "{} steady samples", steady.len());
    let first = steady[..third].iter().copied().max().unwrap_or(0);
    let last = steady[steady.len() - third..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let growth = last as f64 / first as f64 - 1.0;
    // Every 5 s, or at most about 60 of the samples (taken every 500 ms) on a long run.
    let every = (samples.len() / 60).max(10);
    eprintln!(
        "steady run: {events} events in {duration:?}, {} demographic updates; RSS every {:?} \
         (MiB): {:?}; peak of the first third after warm-up {:.1} MiB, of the last {:.1} MiB \
         ({:+.1}%); (user, campaign) pairs met {pairs_warm} by the end of the warm-up, \
         {pairs_end} in all; counters {:?}; {} rows equal the oracle; {:.1}s",
        inputs
            .iter()
            .filter(|(tick, input)| *tick > 0 && matches!(input, Input::Demographic(..)))
            .count(),
        Duration::from_millis(500 * every as u64),
        samples
            .iter()
            .step_by(every)
            .map(|(_, kib)| (mib(*kib) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        mib(first),
        mib(last),
        growth * 100.0,
        got.counters,
        want.rows.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        growth <= RSS_GROWTH_ALLOWED,
        "RSS grew by {:.1}% from {:.1} MiB to {:.1} MiB",
        growth * 100.0,
        mib(first),
        mib(last)
    );
}
