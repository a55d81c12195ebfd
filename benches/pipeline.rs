//! The engine benchmark: `cargo bench --bench pipeline`.
//!
//! Runs `shopflow bench` once per configuration, each in its own process so its peak RSS is its
//! own: the single-threaded HashMap engine, the dataflow at 1 and 2 workers on the same input, and
//! a long dataflow run that reports its peak RSS after 10M and after 30M events. Prints a table
//! with the ratio to the HashMap engine. `SHOPFLOW_BENCH_EVENTS` and `SHOPFLOW_BENCH_LONG_EVENTS`
//! shorten it (defaults 10,000,000 and 30,000,000).

use std::process::Command;

struct Run {
    engine: String,
    workers: u64,
    events: u64,
    events_per_second: f64,
    peak_rss: u64,
    rss_at_events: u64,
    peak_rss_at: u64,
}

fn run(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .arg("bench")
        .args(args)
        .output()
        .expect("shopflow runs");
    assert!(
        output.status.success(),
        "shopflow bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON line");
    let number = |key: &str| {
        json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    Run {
        engine: json["engine"].as_str().unwrap_or("?").to_owned(),
        workers: number("workers") as u64,
        events: number("events") as u64,
        events_per_second: number("events_per_second"),
        peak_rss: number("peak_rss_bytes") as u64,
        rss_at_events: number("rss_at_events") as u64,
        peak_rss_at: number("peak_rss_bytes_at") as u64,
    }
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means "not this bench".
    if std::env::args().skip(1).any(|a| !a.starts_with("--"))
        && !std::env::args().any(|a| a == "pipeline")
    {
        return;
    }
    let events = env_or("SHOPFLOW_BENCH_EVENTS", 10_000_000).to_string();
    let long = env_or("SHOPFLOW_BENCH_LONG_EVENTS", 30_000_000);
    let third = (long / 3).to_string();
    let long = long.to_string();

    let runs = [
        run(&["--engine", "hashmap", "--events", &events]),
        run(&["--engine", "dataflow", "-w", "1", "--events", &events]),
        run(&["--engine", "dataflow", "-w", "2", "--events", &events]),
    ];
    let baseline = runs[0].events_per_second;
    println!(
        "\n{:<10} {:>7} {:>12} {:>14} {:>10} {:>14}",
        "engine", "workers", "events", "events/s", "vs hashmap", "peak RSS MiB"
    );
    for r in &runs {
        println!(
            "{:<10} {:>7} {:>12} {:>14.0} {:>9.2}x {:>14.0}",
            r.engine,
            r.workers,
            r.events,
            r.events_per_second,
            r.events_per_second / baseline,
            mib(r.peak_rss)
        );
    }

    let growth = run(&[
        "--engine", "dataflow", "-w", "2", "--events", &long, "--rss-at", &third,
    ]);
    let percent = (growth.peak_rss as f64 / growth.peak_rss_at as f64 - 1.0) * 100.0;
    println!(
        "\nRSS growth, dataflow 2 workers: peak {:.0} MiB after {} events, {:.0} MiB after {} events: {:+.1}% ({:.0} events/s)",
        mib(growth.peak_rss_at),
        growth.rss_at_events,
        mib(growth.peak_rss),
        growth.events,
        percent,
        growth.events_per_second
    );
}
