//! The terminal view: a live summary while a run goes on, and the final aggregates after it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataflows::model::{Counter, Dimension, OutputKey, OutputValue, Totals};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::runtime::{LiveTable, Status, now_ms};
use crate::sinks::line_protocol::measurement_and_tags;

/// How many rows the top lists show.
const TOP: usize = 5;

/// Redraws a few lines on standard error until [`LiveView::finish`].
pub struct LiveView {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveView {
    /// Starts drawing; `total_events` adds a progress bar when the run has an end.
    pub fn start(status: Arc<Status>, total_events: Option<u64>, realtime: bool) -> LiveView {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let bar = multi.add(match total_events {
                Some(total) => ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} events ({percent}%, eta {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner(),
            });
            let text = multi.add(
                ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            );
            let started = Instant::now();
            let mut last = (Instant::now(), 0i64);
            let mut rate = 0.0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let table = status
                    .table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let events_in = counter(&table, Counter::EventsIn);
                let elapsed = last.0.elapsed().as_secs_f64();
                if elapsed >= 1.0 {
                    rate = (events_in - last.1) as f64 / elapsed;
                    last = (Instant::now(), events_in);
                }
                // With Kafka in between, `--events` counts what the producer has sent.
                let produced = status.produced.load(Ordering::Relaxed);
                bar.set_position(produced.max(status.generated.load(Ordering::Relaxed)));
                let reference = if realtime {
                    now_ms()
                } else {
                    status.generated_until.load(Ordering::Relaxed)
                };
                let lag = reference.saturating_sub(status.completed_until.load(Ordering::Relaxed));
                let mut msg = format!(
                    "{:>10.0} events/s   {} produced   {} events in   lag {:.1}s   running {:.0}s\n",
                    rate,
                    produced,
                    events_in,
                    lag as f64 / 1_000.0,
                    started.elapsed().as_secs_f64()
                );
                msg.push_str(&summary(&table));
                text.set_message(msg);
            }
            bar.finish_and_clear();
            text.finish_and_clear();
        });
        LiveView {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops drawing and clears the lines.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn counter(table: &LiveTable, counter: Counter) -> i64 {
    match table.get(&OutputKey::Counter(counter)) {
        Some(OutputValue::Count(n)) => *n,
        _ => 0,
    }
}

/// The top campaigns and segments by revenue, and the counters, as text.
pub fn summary(table: &LiveTable) -> String {
    let mut out = String::new();
    let rows = |family: fn(&Dimension) -> bool| {
        let mut rows: Vec<(&Dimension, &Totals)> = table
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (OutputKey::Aggregate(key), OutputValue::Totals(t))
                    if key.window.is_none() && family(&key.dimension) =>
                {
                    Some((&key.dimension, t))
                }
                _ => None,
            })
            .collect();
        rows.sort_by(|a, b| b.1.revenue_cents.cmp(&a.1.revenue_cents).then(a.0.cmp(b.0)));
        rows.truncate(TOP);
        rows
    };
    let label = |d: &Dimension| {
        let (measurement, tags) = measurement_and_tags(d);
        let tags: Vec<String> = tags.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{measurement} {}", tags.join(","))
    };
    type Family = fn(&Dimension) -> bool;
    let sections: [(&str, Family); 4] = [
        ("top campaigns", |d| matches!(d, Dimension::Campaign(_))),
        ("top age bands x genders", |d| {
            matches!(d, Dimension::AgeGender(_))
        }),
        ("top states", |d| matches!(d, Dimension::State(_))),
        ("top countries", |d| matches!(d, Dimension::Country(_))),
    ];
    for (title, family) in sections {
        let _ = writeln!(out, "{title} (all time, by revenue):");
        for (dimension, t) in rows(family) {
            let _ = writeln!(
                out,
                "  {:<40} revenue {:>12.2}  purchases {:>8}  clicks {:>8}  units {:>8}  conversion {:>5.1}%",
                label(dimension),
                t.revenue_cents as f64 / 100.0,
                t.purchases,
                t.clicks,
                t.units,
                t.conversion_rate().unwrap_or(0.0) * 100.0
            );
        }
    }
    let counters: Vec<String> = Counter::ALL
        .iter()
        .map(|&c| format!("{}={}", c.name(), counter(table, c)))
        .collect();
    let _ = writeln!(out, "pipeline: {}", counters.join(" "));
    out
}
