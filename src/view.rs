//! The terminal view: a live summary while a run goes on, and the final aggregates after it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataflows::model::{Counter, CounterOrigin, Dimension, OutputKey, OutputValue, Totals};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::clock::now_ms;
use crate::runtime::{LiveTable, Status};
use crate::sinks::line_protocol::measurement_and_tags;

/// How many rows the top lists show.
const TOP: usize = 5;

/// Redraws the live view ([`render`]) on standard error until [`LiveView::finish`], sized to the
/// terminal and coloured where it takes colour.
pub struct LiveView {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveView {
    /// Starts drawing; `total_events` adds a progress bar when the run has an end; `realtime`
    /// adds how far the written output trails the clock.
    pub fn start(status: Arc<Status>, total_events: Option<u64>, realtime: bool) -> LiveView {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            // One bar whose message is the whole view: no spinner, so nothing stays behind.
            let view = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
                .with_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
            let terminal = console::Term::stderr();
            let colour = console::colors_enabled_stderr();
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
                let consumer_lag: u64 = status
                    .consumer_lags
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .sum();
                let snapshot = Snapshot {
                    table: &table,
                    processed: progress.processed,
                    produced: (progress.produced > 0).then_some(progress.produced),
                    lag: if progress.produced > 0 {
                        progress.lag()
                    } else {
                        consumer_lag
                    },
                    rate,
                    total: total_events,
                    // Until a first timestamp completes, there is nothing to trail by.
                    behind_ms: match status.completed_until.load(Ordering::Relaxed) {
                        0 => None,
                        completed if realtime => Some(now_ms().saturating_sub(completed)),
                        _ => None,
                    },
                    running: started.elapsed(),
                };
                let (rows, columns) = terminal.size();
                // One line spare: the cursor's, below the view.
                let text = render(
                    &snapshot,
                    usize::from(columns),
                    usize::from(rows).saturating_sub(1),
                    colour,
                );
                view.set_message(text);
            }
            view.finish_and_clear();
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

/// What the live view shows at one moment: a pure input to [`render`].
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    /// The rows the sink has written.
    pub table: &'a LiveTable,
    /// Events through the dataflow and written ([`events_processed`]).
    pub processed: u64,
    /// Events sent towards the dataflow, when this process sends them (`demo`).
    pub produced: Option<u64>,
    /// Events waiting: produced but not processed, or the Kafka consumers' lag.
    pub lag: u64,
    /// Events per second processed lately.
    pub rate: f64,
    /// The run's end in events, if it has one: a progress bar.
    pub total: Option<u64>,
    /// How far the written output trails the wall clock, in real time.
    pub behind_ms: Option<u64>,
    /// How long the run has gone on.
    pub running: Duration,
}

/// The smallest view drawn: narrower or shorter terminals get it cut.
const MIN_WIDTH: usize = 40;

/// The live view as text for a terminal of `width` columns and `height` lines: every line at most
/// `width` columns (names are truncated, never wrapped) and at most `height` lines (fewer rows per
/// list), with ANSI styles when `colour`. A pure function of the snapshot.
pub fn render(snapshot: &Snapshot<'_>, width: usize, height: usize, colour: bool) -> String {
    let width = width.max(MIN_WIDTH);
    // (text, style) per line; styles apply to whole lines, after truncation.
    let mut lines: Vec<(String, Style)> = Vec::new();
    let mut status = format!(
        "{} events/s  {} processed",
        grouped(snapshot.rate.max(0.0).round() as u64),
        grouped(snapshot.processed)
    );
    if let Some(produced) = snapshot.produced {
        let _ = write!(status, " of {}", grouped(produced));
    }
    let _ = write!(status, "  lag {}", grouped(snapshot.lag));
    lines.push((status, Style::Status));
    let mut clock = format!("running {}", seconds(snapshot.running.as_millis() as u64));
    if let Some(behind) = snapshot.behind_ms {
        let _ = write!(clock, "  output {} behind the clock", seconds(behind));
    }
    lines.push((clock, Style::Plain));
    if let Some(total) = snapshot.total {
        lines.push((bar(snapshot.processed, total, width), Style::Plain));
    }
    let counters = counter_lines(snapshot.table, width);
    // What is left for the four lists: a title and the same number of rows each.
    let left = height.saturating_sub(lines.len() + counters.len());
    let per_list = (left / FAMILIES.len()).saturating_sub(1).clamp(1, TOP);
    let label_width = width.saturating_sub(ROW_NUMBERS).max(8);
    for (title, family) in FAMILIES {
        lines.push((
            format!(
                "{:<label_width$} {:>12} {:>9} {:>9} {:>6}",
                title, "revenue", "purchases", "clicks", "conv."
            ),
            Style::Title,
        ));
        for (dimension, totals) in top(snapshot.table, family, per_list) {
            lines.push((row(&label(dimension), totals, label_width), Style::Plain));
        }
    }
    lines.extend(counters.into_iter().map(|l| (l, Style::Dim)));
    lines.truncate(height.max(1));
    let mut out = String::new();
    for (i, (text, style)) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let text = truncate(text, width);
        if colour {
            let styled = match style {
                Style::Status => console::style(text).bold(),
                Style::Title => console::style(text).cyan().bold(),
                Style::Dim => console::style(text).dim(),
                Style::Plain => console::style(text),
            };
            let _ = write!(out, "{}", styled.force_styling(true));
        } else {
            out.push_str(&text);
        }
    }
    out
}

/// How a line of the view is drawn.
#[derive(Clone, Copy, Debug)]
enum Style {
    Status,
    Title,
    Dim,
    Plain,
}

/// The columns a list row takes besides its label: revenue, purchases, clicks, conversion.
const ROW_NUMBERS: usize = 1 + 12 + 1 + 9 + 1 + 9 + 1 + 6;

/// The lists, each a family of aggregate rows.
type Family = fn(&Dimension) -> bool;
const FAMILIES: [(&str, Family); 4] = [
    ("top campaigns", |d| matches!(d, Dimension::Campaign(_))),
    ("top age bands, genders", |d| {
        matches!(d, Dimension::AgeGender(_))
    }),
    ("top states", |d| matches!(d, Dimension::State(_))),
    ("top countries", |d| matches!(d, Dimension::Country(_))),
];

/// The `n` all-time rows of `family` with the most revenue.
fn top(table: &LiveTable, family: Family, n: usize) -> Vec<(&Dimension, &Totals)> {
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
    rows.truncate(n);
    rows
}

/// A row's name, each thing said once: `campaign 7`, `35-44 F`, `US CA`, `US`. Control
/// characters in names (which come from the demographics table) are drawn as `?`: an escape
/// sequence would otherwise restyle or move the terminal's cursor.
fn label(dimension: &Dimension) -> String {
    let (measurement, tags) = measurement_and_tags(dimension);
    let values: Vec<String> = tags.into_iter().map(|(_, v)| v).collect();
    let text = match dimension {
        Dimension::Campaign(_) => format!("{measurement} {}", values.join(" ")),
        _ => values.join(" "),
    };
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One list row: the label cut to `label_width`, revenue in dollars (the dashboards' unit).
fn row(label: &str, t: &Totals, label_width: usize) -> String {
    format!(
        "{:<label_width$} {:>12} {:>9} {:>9} {:>5.1}%",
        truncate(label, label_width),
        dollars(t.revenue_cents),
        grouped(t.purchases.max(0) as u64),
        grouped(t.clicks.max(0) as u64),
        t.conversion_rate().unwrap_or(0.0) * 100.0
    )
}

/// The non-zero counters as `name=value`, wrapped to `width`, at most two lines.
fn counter_lines(table: &LiveTable, width: usize) -> Vec<String> {
    let words: Vec<String> = Counter::ALL
        .iter()
        .filter(|&&c| counter(table, c) != 0)
        .map(|&c| format!("{}={}", c.name(), counter(table, c)))
        .collect();
    let mut lines = vec![String::from("pipeline:")];
    for word in words {
        let last = lines.last_mut().expect("one line at least");
        if last.chars().count() + 1 + word.chars().count() <= width {
            last.push(' ');
            last.push_str(&word);
        } else if lines.len() < 2 {
            lines.push(format!("  {word}"));
        } else {
            let last = lines.last_mut().expect("two lines");
            if last.chars().count() + 2 <= width {
                last.push_str(" …");
            }
            break;
        }
    }
    lines
}

/// `text` cut to `width` columns, its last kept column an ellipsis when cut.
fn truncate(text: &str, width: usize) -> String {
    if console::measure_text_width(text) <= width {
        return text.to_owned();
    }
    console::truncate_str(text, width, "…").into_owned()
}

/// A progress bar of `done` out of `total` that fills `width` columns with its counts.
fn bar(done: u64, total: u64, width: usize) -> String {
    let counts = format!(" {}/{} events", grouped(done.min(total)), grouped(total));
    let cells = width.saturating_sub(counts.chars().count() + 2).max(1);
    let filled = if total == 0 {
        cells
    } else {
        ((done.min(total) as f64 / total as f64) * cells as f64) as usize
    };
    format!(
        "[{}{}]{counts}",
        "#".repeat(filled),
        "-".repeat(cells - filled)
    )
}

/// `n` with thousands separators: `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Cents as dollars: `$1,234.56` (`-$0.50` when negative).
fn dollars(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    let whole = u64::try_from(cents / 100).unwrap_or(u64::MAX);
    format!("{sign}${}.{:02}", grouped(whole), cents % 100)
}

/// Milliseconds as seconds with one decimal: `12.3s`.
fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1_000.0)
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
        for (dimension, t) in top(table, family, TOP) {
            let _ = writeln!(
                out,
                "  {:<24} revenue {:>14}  purchases {:>8}  clicks {:>8}  units {:>8}  conversion {:>5.1}%",
                label(dimension),
                dollars(t.revenue_cents),
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

    /// A table with every family full of rows, names long and hostile, numbers at their widest,
    /// every counter set: the worst the view has to fit.
    fn crowded_table() -> LiveTable {
        use dataflows::model::{AgeBand, AggregateKey, CampaignId, Gender};
        let mut table = LiveTable::default();
        let mut add = |dimension: Dimension, scale: i64| {
            table.insert(
                OutputKey::Aggregate(AggregateKey {
                    dimension,
                    window: None,
                }),
                OutputValue::Totals(Totals {
                    clicks: i64::MAX / scale,
                    purchases: i64::MAX / scale / 2,
                    units: i128::MAX / i128::from(scale),
                    revenue_cents: i128::MAX / i128::from(scale),
                }),
            );
        };
        for n in 1..=12i64 {
            add(Dimension::Campaign(CampaignId(u32::MAX - n as u32)), n);
            let long = "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch\u{1b}[31m名前";
            add(
                Dimension::State(Some((
                    format!("{long}-{n}").into(),
                    format!("{long}-state-{n}").into(),
                ))),
                n,
            );
            add(Dimension::Country(Some(format!("{long}{n}").into())), n);
        }
        add(
            Dimension::AgeGender(Some((AgeBand::Under18, Gender::Female))),
            3,
        );
        add(Dimension::AgeGender(None), 5);
        for counter in Counter::ALL {
            table.insert(OutputKey::Counter(counter), OutputValue::Count(i64::MIN));
        }
        table
    }

    /// The live view fits the terminal it is drawn for: at 80x24 (and smaller, and larger),
    /// every line within the width, never more lines than the height, with colour or without.
    /// It once wrapped at 80 columns (rows of 130) and ran to 26 lines.
    #[test]
    fn the_live_view_fits_80_by_24_and_smaller() {
        let table = crowded_table();
        let snapshot = Snapshot {
            table: &table,
            processed: u64::MAX - 1,
            produced: Some(u64::MAX),
            lag: u64::MAX,
            rate: 1e300,
            total: Some(u64::MAX),
            behind_ms: Some(u64::MAX),
            running: Duration::from_secs(u64::MAX / 2_000),
        };
        for (width, height) in [(80, 24), (80, 23), (100, 40), (40, 12), (20, 5), (200, 60)] {
            for colour in [false, true] {
                let text = render(&snapshot, width, height, colour);
                let lines: Vec<&str> = text.split('\n').collect();
                assert!(
                    lines.len() <= height,
                    "{width}x{height}: {} lines\n{text}",
                    lines.len()
                );
                for line in &lines {
                    let plain = console::strip_ansi_codes(line);
                    assert!(
                        console::measure_text_width(line) <= width.max(MIN_WIDTH),
                        "{width}x{height}: {} columns: {plain}",
                        console::measure_text_width(line)
                    );
                    assert!(!plain.contains('\u{1b}'), "a name's escape is not drawn");
                }
                assert_eq!(text.contains('\u{1b}'), colour, "colour only when asked");
            }
        }
        // At 80x24 all four lists show at least three rows.
        let text = render(&snapshot, 80, 24, false);
        for title in [
            "top campaigns",
            "top age bands",
            "top states",
            "top countries",
        ] {
            assert!(text.contains(title), "{text}");
        }
        assert!(text.matches("campaign 42949").count() >= 3, "{text}");
    }

    /// Each thing is said once (`campaign 7`, not `campaign campaign=7`), revenue carries its
    /// unit, and the counters say their names.
    #[test]
    fn rows_say_each_thing_once_with_revenue_in_dollars() {
        use dataflows::model::{AgeBand, AggregateKey, CampaignId, Gender};
        let mut table = LiveTable::default();
        let mut add = |dimension: Dimension, cents: i128| {
            table.insert(
                OutputKey::Aggregate(AggregateKey {
                    dimension,
                    window: None,
                }),
                OutputValue::Totals(Totals {
                    clicks: 40,
                    purchases: 10,
                    units: 12,
                    revenue_cents: cents,
                }),
            );
        };
        add(Dimension::Campaign(CampaignId(7)), 123_456_789);
        add(
            Dimension::AgeGender(Some((AgeBand::From35To44, Gender::Female))),
            5_05,
        );
        add(Dimension::State(Some(("US".into(), "CA".into()))), -50);
        add(Dimension::Country(None), 0);
        table.insert(
            OutputKey::Counter(Counter::Duplicates),
            OutputValue::Count(3),
        );
        let snapshot = Snapshot {
            table: &table,
            processed: 1_234_567,
            produced: None,
            lag: 0,
            rate: 999.6,
            total: None,
            behind_ms: None,
            running: Duration::from_millis(12_345),
        };
        let text = render(&snapshot, 80, 24, false);
        for want in [
            "1,000 events/s  1,234,567 processed  lag 0",
            "running 12.3s",
            "campaign 7 ",
            "$1,234,567.89",
            "35-44 F ",
            "$5.05",
            "US CA ",
            "-$0.50",
            "pipeline: duplicates=3",
            " 25.0%",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        for unwanted in ["campaign=", "age_band=", "country=", "state="] {
            assert!(!text.contains(unwanted), "{unwanted:?} in\n{text}");
        }
        let summary = summary(&table);
        assert!(summary.contains("campaign 7 "), "{summary}");
        assert!(!summary.contains("campaign="), "{summary}");
        assert!(summary.contains("$1,234,567.89"), "{summary}");
    }

    #[test]
    fn numbers_are_grouped_and_dollars_signed() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(-1), "-$0.01");
        assert_eq!(dollars(100_000), "$1,000.00");
        assert_eq!(dollars(i128::MIN), format!("-${}.28", grouped(u64::MAX)));
    }
}
