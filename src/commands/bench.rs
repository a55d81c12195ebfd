//! `shopflow bench`: one measured run of an engine, printed as a JSON line.
//!
//! The events replay a shop at `--sim-rate` events per simulated second, as fast as the engine
//! takes them; the figures are wall-clock events per second and the process's peak RSS. Run one
//! engine per process so the peak RSS is that engine's; `cargo bench --bench pipeline` does.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::baseline::Baseline;
use crate::cli::{BenchArgs, Engine};
use crate::commands::bench_dataflow;
use crate::config::Config;
use crate::generators::demographics;
use crate::generators::events::{EventGenerator, Pace};
use crate::runtime::Status;

/// The start of simulated time in benchmarks, fixed so runs are identical.
const START_MS: u64 = 1_700_000_000_000;

/// Runs the benchmark and prints its JSON line.
pub fn run(mut config: Config, args: BenchArgs) -> anyhow::Result<()> {
    config.generator.pace = Pace::Unbounded;
    config.generator.events_per_second = args.sim_rate;
    config.validate()?;
    let status = Arc::new(Status::default());
    let watcher = args.rss_at.map(|at| {
        let status = Arc::clone(&status);
        std::thread::spawn(move || {
            while status.generated.load(Ordering::Relaxed) < at {
                std::thread::sleep(Duration::from_millis(5));
            }
            peak_rss_bytes()
        })
    });
    let started = Instant::now();
    match args.engine {
        Engine::Dataflow => bench_dataflow(config, args.workers, args.events, Arc::clone(&status))?,
        Engine::Hashmap => hashmap(&config, args.events, &status)?,
        Engine::Generate => generate(&config, args.events)?,
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_at = match watcher {
        Some(w) => w
            .join()
            .map_err(|_| anyhow::anyhow!("the RSS watcher panicked"))?,
        None => None,
    };
    println!(
        "{{\"engine\":\"{}\",\"workers\":{},\"events\":{},\"seconds\":{:.3},\"events_per_second\":{:.0},\"peak_rss_bytes\":{},\"rss_at_events\":{},\"peak_rss_bytes_at\":{}}}",
        match args.engine {
            Engine::Dataflow => "dataflow",
            Engine::Hashmap => "hashmap",
            Engine::Generate => "generate",
        },
        if args.engine == Engine::Dataflow {
            args.workers
        } else {
            1
        },
        args.events,
        seconds,
        args.events as f64 / seconds,
        peak_rss_bytes().unwrap_or(0),
        args.rss_at.unwrap_or(0),
        rss_at.unwrap_or(0),
    );
    Ok(())
}

/// The same input, tick by tick, through the single-threaded HashMap engine.
fn hashmap(config: &Config, events: u64, status: &Status) -> anyhow::Result<()> {
    let knobs = config.generator.clone();
    let generator = EventGenerator::new(knobs.clone(), START_MS).map_err(anyhow::Error::msg)?;
    let tick_ms = config.engine.tick_ms;
    let mut engine = Baseline::new(config.params());
    let mut changes = demographics::Changes::new(knobs.seed, knobs.users, knobs.new_users);
    let change_ms =
        |k: u64| START_MS + (k as f64 * 1_000.0 / knobs.demographic_changes_per_second) as u64;
    let mut updates: Vec<_> = demographics::table(knobs.seed, knobs.users)
        .map(|row| (row, 1))
        .collect();
    let mut tick = START_MS - START_MS % tick_ms;
    let mut batch = Vec::new();
    let mut written = 0usize;
    let mut n = generator.first_at_or_after(tick);
    while n < events {
        let end = tick + tick_ms;
        let last = generator.first_at_or_after(end).min(events);
        batch.clear();
        batch.extend((n..last).map(|i| generator.event(i)));
        while knobs.demographic_changes_per_second > 0.0 && change_ms(changes.position()) < end {
            updates.extend(changes.next_change());
        }
        written += engine.apply_tick(tick, &mut batch, &updates).changes.len();
        updates.clear();
        status.generated.fetch_add(last - n, Ordering::Relaxed);
        n = last;
        tick = end;
    }
    tracing::info!(written, "hashmap engine done");
    Ok(())
}

/// Generates the events and drops them.
fn generate(config: &Config, events: u64) -> anyhow::Result<()> {
    let generator =
        EventGenerator::new(config.generator.clone(), START_MS).map_err(anyhow::Error::msg)?;
    let units: u64 = (0..events)
        .map(|n| u64::from(std::hint::black_box(generator.event(n)).units))
        .sum();
    tracing::info!(units, "generated");
    Ok(())
}

/// The process's peak resident set size so far (Linux's VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1_024)
}
