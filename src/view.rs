//! The terminal view: a live summary while a run goes on, and the final aggregates after it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataflows::model::{Counter, CounterOrigin, Dimension, OutputKey, OutputValue, Totals};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::clock::now_ms;
use crate::runtime::{LiveTable, Status};
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
            let mut last = (Instant::now(), 0u64);
            let mut rate = 0.0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let table = status
                    .table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let progress = Progress::of(&status, &table);
                let elapsed = last.0.elapsed().as_secs_f64();
                if elapsed >= 1.0 {
                    rate = progress.processed.saturating_sub(last.1) as f64 / elapsed;
                    last = (Instant::now(), progress.processed);
                }
                bar.set_position(progress.processed);
                let mut msg = format!(
                    "{:>10.0} events/s   {} processed of {} produced   lag {} events",
                    rate,
                    progress.processed,
                    progress.produced,
                    progress.lag(),
                );
                if realtime {
                    // In real time, how far the written output trails the clock, too.
                    let behind =
                        now_ms().saturating_sub(status.completed_until.load(Ordering::Relaxed));
                    let _ = write!(msg, " ({:.1}s)", behind as f64 / 1_000.0);
                }
                let _ = writeln!(msg, "   running {:.0}s", started.elapsed().as_secs_f64());
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

/// A run's progress as the live view shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Events through the dataflow and written: see [`events_processed`].
    pub processed: u64,
    /// Events sent towards the dataflow: by the in-process producer to Kafka, or by the
    /// generators straight into the dataflow.
    pub produced: u64,
}

impl Progress {
    /// The progress `status` and the sink's `table` show.
    pub fn of(status: &Status, table: &LiveTable) -> Progress {
        Progress {
            processed: events_processed(table),
            produced: status
                .produced
                .load(Ordering::Relaxed)
                .max(status.generated.load(Ordering::Relaxed)),
        }
    }

    /// Events produced but not processed yet.
    pub fn lag(&self) -> u64 {
        self.produced.saturating_sub(self.processed)
    }
}

/// Events the dataflow has taken in, as the sink has written them: those counted in `events_in`
/// and the source's messages counted as malformed or rejected, each message exactly once.
pub fn events_processed(table: &LiveTable) -> u64 {
    Counter::ALL
        .iter()
        .filter(|&&c| counts_a_message(c))
        .map(|&c| counter(table, c).max(0) as u64)
        .sum()
}

/// Whether `counter` counts source messages (each in exactly one such counter), as opposed to
/// what happened to events already counted in `events_in`.
fn counts_a_message(counter: Counter) -> bool {
    counter == Counter::EventsIn || counter.origin() == CounterOrigin::RejectedMessage
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bar and the lag count what the sink has written, not what was sent: the view once
    /// showed the producer's count while millions of events waited unread.
    #[test]
    fn progress_counts_processed_events_and_lags_by_the_rest() {
        let status = Status::default();
        status.produced.store(5_000_000, Ordering::Relaxed);
        status.generated.store(3_000_000, Ordering::Relaxed);
        let mut table = LiveTable::default();
        for (counter, n) in [
            (Counter::EventsIn, 2_000_000),
            (Counter::Duplicates, 90_000),
            (Counter::LateForWindow, 70_000),
            (Counter::RefundsApplied, 5_000),
            (Counter::RefundsUnmatched, 1_000),
            (Counter::MalformedFraming, 3),
            (Counter::MalformedOversize, 2),
            (Counter::RejectedFuture, 1),
        ] {
            table.insert(OutputKey::Counter(counter), OutputValue::Count(n));
        }
        let progress = Progress::of(&status, &table);
        assert_eq!(progress.processed, 2_000_006);
        assert_eq!(progress.produced, 5_000_000);
        assert_eq!(progress.lag(), 2_999_994);

        // Straight from the generators, what entered the dataflow is what was produced.
        status.produced.store(0, Ordering::Relaxed);
        assert_eq!(Progress::of(&status, &table).lag(), 999_994);
        // Every source counter is a message counted once; the others count events again.
        for counter in Counter::ALL {
            let name = counter.name();
            let source = name == "events_in"
                || name.starts_with("malformed_")
                || name.starts_with("rejected_");
            assert_eq!(counts_a_message(counter), source, "{name}");
        }
    }
}
