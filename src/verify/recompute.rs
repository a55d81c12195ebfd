//! The batch pass: what InfluxDB should hold, recomputed from the sources of record.
//!
//! The events are replayed through the pipeline's own order [`Ledger`] (duplicates, refunds, the
//! order horizon), tick by tick, with each message's arrival taken from its Kafka timestamp; the
//! contributions are summed per user and campaign and then attributed to the demographics table
//! as it is now. That gives every all-time row exactly, since a demographic change moves a user's
//! past contributions, and a deletion moves them to `unknown`.
//!
//! Two things the sources of record do not say are *when* the pipeline read each message (its
//! processing time) and what the table held when a window closed. So:
//!
//! - Arrival: a message is assumed to have been read within `tolerance_ms` of its timestamp (or
//!   of the latest earlier timestamp in its partition, since a partition is read in order). An
//!   outcome that could change for some arrival times within that tolerance is *undetermined*,
//!   and every row it touches is skipped (and said so), never guessed: an order whose events
//!   arrived about `order-horizon-ms` apart ([`Skip::NearOrderHorizon`]); two events of an order
//!   whose effect depends on which came first, arriving too close together to tell
//!   ([`Skip::ArrivalOrder`]); an event arriving about when one of its windows closed
//!   ([`Skip::NearWindowClose`]).
//! - Windows: the `campaign` window rows depend on events only, and are compared for every
//!   window. The segment window rows depend on the demographics when the window closed, so they
//!   are compared only for windows still open when verify started ([`Settings::window_open`]):
//!   those hold every event read and the demographics as they are now.

use std::collections::{BTreeMap, HashMap};

use dataflows::Params;
use dataflows::aggregates::dimensions;
use dataflows::families::FAMILIES;
use dataflows::model::{
    AggregateKey, CampaignId, Counter, CounterOrigin, Demographic, Dimension, Event, EventTimeMs,
    Segment, Slot, Tag, Tick, Totals, UserId,
};
use dataflows::orders::Ledger;
use dataflows::windows::WindowSpec;
use rustc_hash::FxHashMap;

use super::series::SeriesKey;

/// Orders with more events than this are not analysed pair by pair (that is quadratic): their
/// rows are skipped as [`Skip::ArrivalOrder`]. Real orders have a handful.
const MAX_ANALYSED_EVENTS_PER_ORDER: usize = 64;

/// A decoded event as read from the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// The event, its `event_time` as written (`0`: the writer gave none).
    pub event: Event,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The message's Kafka timestamp in ms, if it has one.
    pub timestamp_ms: Option<u64>,
}

/// The semantics' parameters and what verify assumes about arrival times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Window size and allowed lateness, and the order horizon, as the pipeline ran with.
    pub params: Params,
    /// The pipeline's tick (`engine.tick-ms`).
    pub tick_ms: u64,
    /// How far from its Kafka timestamp the pipeline may have read a message, in ms.
    pub tolerance_ms: u64,
    /// When verify started, in ms since the epoch.
    pub now_ms: u64,
}

impl Settings {
    /// Whether the window starting at `start` (ms) was certainly still open when verify started
    /// (it closes later than now plus the tolerance): its rows then hold every event the pipeline
    /// read, in the users' segments as they are now.
    pub fn window_open(&self, start: u64) -> bool {
        self.params.windows.closes_at(EventTimeMs(start))
            > self.now_ms.saturating_add(self.tolerance_ms)
    }
}

/// Why a row or counter is not compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// A segment row of a window that may have closed before verify started.
    ClosedSegmentWindow,
    /// An order whose events arrived about `order-horizon-ms` apart.
    NearOrderHorizon,
    /// What counts for an order (its first click, its first purchase, whether that purchase
    /// came before its first refund) depends on which of two events arrived first, too close to
    /// tell.
    ArrivalOrder,
    /// An event that arrived about when one of its order's windows closed.
    NearWindowClose,
    /// An event without an event time (its window is its arrival tick's), arrival uncertain.
    NoEventTime,
    /// Two rows that InfluxDB keeps in one series once their tag values are escaped.
    SharedSeries,
}

impl Skip {
    /// Every reason, in report order.
    pub const ALL: [Skip; 6] = [
        Skip::ClosedSegmentWindow,
        Skip::NearOrderHorizon,
        Skip::ArrivalOrder,
        Skip::NearWindowClose,
        Skip::NoEventTime,
        Skip::SharedSeries,
    ];

    /// A short name for the report's table.
    pub fn name(self) -> &'static str {
        match self {
            Skip::ClosedSegmentWindow => "closed-window",
            Skip::NearOrderHorizon => "near-horizon",
            Skip::ArrivalOrder => "arrival-order",
            Skip::NearWindowClose => "near-close",
            Skip::NoEventTime => "no-event-time",
            Skip::SharedSeries => "shared-series",
        }
    }

    /// Why rows skipped for this reason cannot be recomputed.
    pub fn explanation(self) -> &'static str {
        match self {
            Skip::ClosedSegmentWindow => {
                "segment rows of a window that may have closed: they hold the demographics of \
                 when it closed, which the table as it is now does not record"
            }
            Skip::NearOrderHorizon => {
                "an order's events arrived about engine.order-horizon-ms apart (within the \
                 arrival tolerance): whether a later one was a duplicate depends on exact \
                 arrival times"
            }
            Skip::ArrivalOrder => {
                "what counts for an order (its first click, its first purchase, whether that \
                 purchase came before its first refund) depends on which of two of its events \
                 arrived first, and they arrived too close together to tell"
            }
            Skip::NearWindowClose => {
                "an event arrived within the arrival tolerance of when a window of its order \
                 closed: whether the window counted it depends on exact arrival times"
            }
            Skip::NoEventTime => {
                "an event without an event time is windowed by its arrival tick, which is only \
                 known within the arrival tolerance"
            }
            Skip::SharedSeries => {
                "two rows whose tag values InfluxDB stores alike (after escaping) share one \
                 series: which was written last cannot be known"
            }
        }
    }
}

/// Figures about the recomputation, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events replayed.
    pub events: u64,
    /// Distinct orders.
    pub orders: u64,
    /// Orders with an undetermined outcome, by the first reason found.
    pub undetermined_orders: BTreeMap<Skip, u64>,
    /// Messages without a Kafka timestamp (their arrival is unknown).
    pub missing_timestamps: u64,
    /// Messages timestamped later than verify's start plus the tolerance: the pipeline cannot
    /// have read them then, so the arrival assumption does not hold for them.
    pub future_timestamps: u64,
    /// Demographics rows.
    pub users: u64,
}

/// What InfluxDB should hold, as far as the sources of record determine it.
#[derive(Clone, Debug)]
pub struct Expected {
    /// The settings it was computed with.
    pub settings: Settings,
    /// Every determined row with a nonzero value; a determined row not here should be zero or
    /// absent.
    pub rows: HashMap<SeriesKey, Totals>,
    /// Rows whose value is not determined, and why.
    pub undetermined: HashMap<SeriesKey, Skip>,
    /// When set, no window row is determined: an event without an event time arrived at a tick
    /// too uncertain to list the windows it may count in (its message has no timestamp). An
    /// event without an event time whose arrival is known within the tolerance leaves only the
    /// windows it may fall in undetermined, and none when they are one.
    pub windows_undetermined: Option<Skip>,
    /// Every counter's value, or why it is not determined.
    pub counters: BTreeMap<Counter, Result<i64, Skip>>,
    /// Figures for the report.
    pub stats: Stats,
}

impl Expected {
    /// Why the row at `key` is not compared, or `None` when its value is determined.
    pub fn skip_reason(&self, key: &SeriesKey) -> Option<Skip> {
        if let Some(start) = key.window {
            if let Some(skip) = self.windows_undetermined {
                return Some(skip);
            }
            if key.measurement != "campaign" && !self.settings.window_open(start) {
                return Some(Skip::ClosedSegmentWindow);
            }
        }
        self.undetermined.get(key).copied()
    }
}

/// An event placed in processing time: its estimated tick and the range its true tick lies in.
struct Placed {
    event: Event,
    partition: i32,
    offset: i64,
    /// The tick of the message's (partition-monotone) timestamp.
    est: Tick,
    /// The earliest and latest tick the pipeline may have read it at.
    lo: Tick,
    hi: Tick,
    /// Whether the writer gave no event time (it was filled in from `est`).
    no_event_time: bool,
}

/// The most windows an event without an event time is marked undetermined in, one by one; an
/// arrival less certain than that (no timestamp at all) leaves every window row undetermined.
const MAX_POSSIBLE_WINDOWS: u64 = 1_000;

impl Placed {
    /// The windows the pipeline may have counted this event in: its event time's, or for an
    /// event without one, every window an arrival tick between `lo` and `hi` falls in (`None`
    /// when those are too many to list).
    fn possible_windows(&self, spec: WindowSpec) -> Option<impl Iterator<Item = EventTimeMs>> {
        let (first, last) = if self.no_event_time {
            (
                spec.window_of(EventTimeMs(self.lo)),
                spec.window_of(EventTimeMs(self.hi)),
            )
        } else {
            let window = spec.window_of(self.event.event_time);
            (window, window)
        };
        let size = spec.size_ms.max(1);
        ((last.0 - first.0) / size < MAX_POSSIBLE_WINDOWS)
            .then(|| (first.0..=last.0).step_by(size as usize).map(EventTimeMs))
    }

    /// Whether this event has no event time and its arrival leaves its window uncertain.
    fn window_uncertain(&self, spec: WindowSpec) -> bool {
        self.no_event_time
            && spec.window_of(EventTimeMs(self.lo)) != spec.window_of(EventTimeMs(self.hi))
    }
}

/// How far apart two events of an order arrived, relative to the order horizon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gap {
    /// Certainly less than the horizon apart.
    Near,
    /// Certainly at least the horizon apart.
    Far,
    /// Either, depending on exact arrival times.
    Unsure,
}

fn gap(a: &Placed, b: &Placed, horizon: u64) -> Gap {
    let min_gap = b.lo.saturating_sub(a.hi).max(a.lo.saturating_sub(b.hi));
    let max_gap = b.hi.saturating_sub(a.lo).max(a.hi.saturating_sub(b.lo));
    if max_gap < horizon {
        Gap::Near
    } else if min_gap >= horizon {
        Gap::Far
    } else {
        Gap::Unsure
    }
}

/// Whether the pipeline may have applied `a` before `b`: read at an earlier tick (a partition is
/// read in offset order), or at the same tick and first in the ledger's canonical order.
fn could_precede(a: &Placed, b: &Placed) -> bool {
    let earlier = a.lo < b.hi && !(a.partition == b.partition && b.offset < a.offset);
    let together = a.lo <= b.hi && b.lo <= a.hi && a.event <= b.event;
    earlier || together
}

/// What one order's analysis found undetermined.
#[derive(Default)]
struct OrderFlags {
    /// Its counted totals (all-time rows and windows).
    totals: Option<Skip>,
    /// Only its closed windows' rows.
    windows: Option<Skip>,
    /// Its effect on the refund counters.
    refunds: bool,
}

/// Recomputes every row and counter from the events (in offset order within each partition, any
/// interleaving of partitions), what the sources counted and never handed on (`sources`: the
/// messages rejected by reason, the demographics rows that do not convert), and the
/// demographics table as it is now.
pub fn recompute(
    arrivals: Vec<Arrival>,
    sources: &BTreeMap<Counter, i64>,
    demographics: &[Demographic],
    settings: Settings,
) -> Expected {
    let mut stats = Stats {
        events: arrivals.len() as u64,
        users: demographics.len() as u64,
        ..Stats::default()
    };
    let placed = place(arrivals, settings, &mut stats);
    let params = settings.params;
    let spec = params.windows;

    // Which outcomes the arrival times leave open, order by order.
    let mut totals_undetermined: FxHashMap<(UserId, CampaignId), Skip> = FxHashMap::default();
    let mut campaign_windows_undetermined: FxHashMap<(CampaignId, EventTimeMs), Skip> =
        FxHashMap::default();
    let mut open_windows_undetermined: FxHashMap<(UserId, CampaignId, EventTimeMs), Skip> =
        FxHashMap::default();
    let mut counter_skips: BTreeMap<Counter, Skip> = BTreeMap::new();
    let mut windows_undetermined = None;
    let mut by_order: Vec<u32> = (0..placed.len() as u32).collect();
    by_order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&placed[a as usize], &placed[b as usize]);
        (a.event.order_id, a.est, &a.event, a.partition, a.offset).cmp(&(
            b.event.order_id,
            b.est,
            &b.event,
            b.partition,
            b.offset,
        ))
    });
    let mut order: Vec<&Placed> = Vec::new();
    let mut start = 0;
    while start < by_order.len() {
        let id = placed[by_order[start] as usize].event.order_id;
        order.clear();
        let mut end = start;
        while end < by_order.len() && placed[by_order[end] as usize].event.order_id == id {
            order.push(&placed[by_order[end] as usize]);
            end += 1;
        }
        start = end;
        stats.orders += 1;
        let flags = analyse_order(&order, settings);
        let Some(reason) = flags.totals.or(flags.windows) else {
            continue;
        };
        *stats.undetermined_orders.entry(reason).or_default() += 1;
        // An event without an event time may be in any window its arrival may be in.
        let mut windows: Vec<EventTimeMs> = Vec::new();
        for p in &order {
            match p.possible_windows(spec) {
                Some(range) => windows.extend(range),
                None => windows_undetermined = Some(Skip::NoEventTime),
            }
        }
        windows.sort_unstable();
        windows.dedup();
        for p in &order {
            let (user, campaign) = (p.event.user_id, p.event.campaign_id);
            if let Some(skip) = flags.totals {
                totals_undetermined.entry((user, campaign)).or_insert(skip);
                for &window in &windows {
                    campaign_windows_undetermined
                        .entry((campaign, window))
                        .or_insert(skip);
                    if settings.window_open(window.0) {
                        open_windows_undetermined
                            .entry((user, campaign, window))
                            .or_insert(skip);
                    }
                }
            }
            if let Some(skip) = flags.windows {
                for &window in windows.iter().filter(|w| !settings.window_open(w.0)) {
                    campaign_windows_undetermined
                        .entry((campaign, window))
                        .or_insert(skip);
                }
            }
        }
        if let Some(skip) = flags.totals {
            for counter in [
                Counter::Duplicates,
                Counter::RefundsApplied,
                Counter::RefundsUnmatched,
                Counter::LateForWindow,
            ] {
                counter_skips.entry(counter).or_insert(skip);
            }
        }
        if let Some(skip) = flags.windows {
            counter_skips.entry(Counter::LateForWindow).or_insert(skip);
            if flags.refunds {
                counter_skips.entry(Counter::RefundsApplied).or_insert(skip);
                counter_skips
                    .entry(Counter::RefundsUnmatched)
                    .or_insert(skip);
            }
        }
    }
    drop(order);
    drop(by_order);

    // The replay: the pipeline's ledger, tick by tick in estimated arrival order.
    let mut by_arrival: Vec<u32> = (0..placed.len() as u32).collect();
    by_arrival.sort_unstable_by_key(|&i| placed[i as usize].est);
    let mut ledger = Ledger::new(spec, params.order_horizon_ms);
    let mut all_time: FxHashMap<(UserId, CampaignId), Totals> = FxHashMap::default();
    let mut campaign_windows: FxHashMap<(CampaignId, EventTimeMs), Totals> = FxHashMap::default();
    let mut open_windows: FxHashMap<(UserId, CampaignId, EventTimeMs), Totals> =
        FxHashMap::default();
    let mut counted: BTreeMap<Counter, i64> = BTreeMap::new();
    let mut tick_events: Vec<Event> = Vec::new();
    let mut i = 0;
    while i < by_arrival.len() {
        let tick = placed[by_arrival[i] as usize].est;
        tick_events.clear();
        while i < by_arrival.len() && placed[by_arrival[i] as usize].est == tick {
            tick_events.push(placed[by_arrival[i] as usize].event.clone());
            i += 1;
        }
        let produced = ledger.apply_tick(tick, &mut tick_events);
        for ((user, (campaign, slot)), totals) in produced.contributions {
            let Slot::Window(window) = slot else {
                continue;
            };
            all_time.entry((user, campaign)).or_default().add(&totals);
            if settings.window_open(window.0) {
                open_windows
                    .entry((user, campaign, window))
                    .or_default()
                    .add(&totals);
            }
            if !spec.is_closed(window, tick) {
                campaign_windows
                    .entry((campaign, window))
                    .or_default()
                    .add(&totals);
            }
        }
        for (counter, n) in produced.counters {
            *counted.entry(counter).or_default() += n;
        }
    }
    drop(placed);

    // Attribution to the table as it is now.
    let segments: FxHashMap<UserId, Segment> = demographics
        .iter()
        .map(|row| (row.id, row.segment()))
        .collect();
    let segment = |user: &UserId| segments.get(user);
    let mut rows: FxHashMap<AggregateKey, Totals> = FxHashMap::default();
    let mut add = |dimension: Dimension, window: Option<EventTimeMs>, totals: &Totals| {
        rows.entry(AggregateKey { dimension, window })
            .or_default()
            .add(totals);
    };
    for ((user, campaign), totals) in &all_time {
        for dimension in dimensions(*campaign, segment(user)) {
            add(dimension, None, totals);
        }
    }
    for ((campaign, window), totals) in &campaign_windows {
        for dimension in windowed_dimensions(*campaign, None, false) {
            add(dimension, Some(*window), totals);
        }
    }
    for ((user, campaign, window), totals) in &open_windows {
        for dimension in windowed_dimensions(*campaign, segment(user), true) {
            add(dimension, Some(*window), totals);
        }
    }
    let mut undetermined: FxHashMap<AggregateKey, Skip> = FxHashMap::default();
    let mut mark = |dimension: Dimension, window: Option<EventTimeMs>, skip: Skip| {
        undetermined
            .entry(AggregateKey { dimension, window })
            .or_insert(skip);
    };
    for ((user, campaign), skip) in &totals_undetermined {
        for dimension in dimensions(*campaign, segment(user)) {
            mark(dimension, None, *skip);
        }
    }
    for ((campaign, window), skip) in &campaign_windows_undetermined {
        for dimension in windowed_dimensions(*campaign, None, false) {
            mark(dimension, Some(*window), *skip);
        }
    }
    for ((user, campaign, window), skip) in &open_windows_undetermined {
        for dimension in windowed_dimensions(*campaign, segment(user), true) {
            mark(dimension, Some(*window), *skip);
        }
    }

    // InfluxDB's view: series keys, two rows in one series being undetermined.
    let mut origin: HashMap<SeriesKey, AggregateKey> = HashMap::new();
    let mut series_undetermined: HashMap<SeriesKey, Skip> = HashMap::new();
    let mut series_rows: HashMap<SeriesKey, Totals> = HashMap::new();
    let keys = undetermined
        .iter()
        .map(|(key, skip)| (key, Some(*skip), Totals::default()))
        .chain(rows.iter().map(|(key, totals)| (key, None, *totals)));
    for (key, skip, totals) in keys {
        let series = SeriesKey::of(key);
        match origin.get(&series) {
            Some(first) if first != key => {
                series_undetermined.insert(series.clone(), Skip::SharedSeries);
            }
            Some(_) => {}
            None => {
                origin.insert(series.clone(), key.clone());
            }
        }
        if let Some(skip) = skip {
            series_undetermined.entry(series).or_insert(skip);
        } else if !totals.is_empty() {
            series_rows.insert(series, totals);
        }
    }
    series_rows.retain(|key, _| !series_undetermined.contains_key(key));

    let counters = Counter::ALL
        .iter()
        .map(|&counter| {
            let value = match counter.origin() {
                CounterOrigin::Ledger => counted.get(&counter).copied().unwrap_or(0),
                CounterOrigin::RejectedMessage | CounterOrigin::DemographicsTable => {
                    sources.get(&counter).copied().unwrap_or(0)
                }
            };
            let value = match counter_skips.get(&counter) {
                Some(skip) => Err(*skip),
                None => Ok(value),
            };
            (counter, value)
        })
        .collect();
    Expected {
        settings,
        rows: series_rows,
        undetermined: series_undetermined,
        windows_undetermined,
        counters,
        stats,
    }
}

/// The dimensions a window of `campaign`'s contributions by a user of `segment` counts in, in
/// the families that keep part of the segment (`keeps_segment`) or in those that keep none: the
/// first are windowed per user while the window is open, the others per campaign until it closes.
fn windowed_dimensions(
    campaign: CampaignId,
    segment: Option<&Segment>,
    keeps_segment: bool,
) -> impl Iterator<Item = Dimension> {
    dimensions(campaign, segment)
        .into_iter()
        .zip(FAMILIES)
        .filter(move |(_, family)| family.keeps.segment() == keeps_segment)
        .map(|(dimension, _)| dimension)
}

/// Places every event in processing time: the tick of its message's timestamp, made monotone
/// within its partition, and the ticks within the tolerance either side.
fn place(mut arrivals: Vec<Arrival>, settings: Settings, stats: &mut Stats) -> Vec<Placed> {
    let tick_ms = settings.tick_ms.max(1);
    let floor = |ms: u64| ms - ms % tick_ms;
    let tolerance = settings.tolerance_ms;
    let latest_possible = settings.now_ms.saturating_add(tolerance);
    arrivals.sort_unstable_by_key(|a| (a.partition, a.offset));
    let mut placed = Vec::with_capacity(arrivals.len());
    let mut partition = None;
    let mut running: Option<u64> = None;
    for arrival in arrivals {
        if partition != Some(arrival.partition) {
            partition = Some(arrival.partition);
            running = None;
        }
        let (est, lo, hi) = match arrival.timestamp_ms {
            Some(ms) => {
                if ms > latest_possible {
                    stats.future_timestamps += 1;
                }
                let ms = running.map_or(ms, |r| r.max(ms));
                running = Some(ms);
                (
                    floor(ms),
                    floor(ms.saturating_sub(tolerance)),
                    floor(ms.saturating_add(tolerance)),
                )
            }
            None => {
                stats.missing_timestamps += 1;
                (floor(running.unwrap_or(0)), 0, floor(u64::MAX))
            }
        };
        let mut event = arrival.event;
        let no_event_time = event.event_time.0 == 0;
        if no_event_time {
            // As the pipeline does: an event without a time is timed by its arrival tick.
            event.event_time = EventTimeMs(est);
        }
        placed.push(Placed {
            event,
            partition: arrival.partition,
            offset: arrival.offset,
            est,
            lo,
            hi,
            no_event_time,
        });
    }
    placed
}

/// Which of an order's outcomes exact arrival times could change. `order` is sorted by
/// estimated tick, then canonically: the order the ledger applies them in with estimated ticks.
fn analyse_order(order: &[&Placed], settings: Settings) -> OrderFlags {
    let mut flags = OrderFlags::default();
    let horizon = settings.params.order_horizon_ms;
    let spec = settings.params.windows;
    // An event without an event time is windowed by its arrival tick: certain unless the
    // ticks it may have arrived at lie in different windows.
    if order.iter().any(|p| p.window_uncertain(spec)) {
        flags.totals = Some(Skip::NoEventTime);
    }
    let k = order.len();
    if k > MAX_ANALYSED_EVENTS_PER_ORDER {
        flags.totals.get_or_insert(Skip::ArrivalOrder);
    } else if k > 1 {
        // The order's generations (forgotten after the horizon, then new) must be the same for
        // every possible arrival: each pair certainly within or beyond the horizon, and two
        // events that may come in either order placed alike relative to every other.
        let mut gaps = vec![Gap::Near; k * k];
        for i in 0..k {
            for j in i + 1..k {
                let g = gap(order[i], order[j], horizon);
                gaps[i * k + j] = g;
                gaps[j * k + i] = g;
                if g == Gap::Unsure {
                    flags.totals.get_or_insert(Skip::NearOrderHorizon);
                }
            }
        }
        let swappable = |i: usize, j: usize| {
            could_precede(order[i], order[j]) && could_precede(order[j], order[i])
        };
        if flags.totals.is_none() {
            'pairs: for i in 0..k {
                for j in i + 1..k {
                    if swappable(i, j)
                        && (0..k).any(|z| z != i && z != j && gaps[i * k + z] != gaps[j * k + z])
                    {
                        flags.totals = Some(Skip::NearOrderHorizon);
                        break 'pairs;
                    }
                }
            }
        }
        // Within a generation, what counts is the first click, the first purchase, and
        // whether the first purchase came before the first refund; later ones are duplicates.
        let mut generation = vec![0usize; k];
        let mut first = 0;
        for i in 1..k {
            generation[i] = generation[i - 1];
            if order[i].est.saturating_sub(order[first].est) >= horizon {
                generation[i] += 1;
                first = i;
            }
        }
        for g in 0..=generation[k - 1] {
            let members = |tag: Tag| -> Vec<&Placed> {
                (0..k)
                    .filter(|&i| generation[i] == g && order[i].event.tag == tag)
                    .map(|i| order[i])
                    .collect()
            };
            let (clicks, purchases, refunds) = (
                members(Tag::Click),
                members(Tag::Purchased),
                members(Tag::Refunded),
            );
            // Every event that may have come first among those of its tag says the same: a
            // refund's own fields never count.
            for events in [&clicks, &purchases] {
                let firsts: Vec<&Placed> = events
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| {
                        events
                            .iter()
                            .enumerate()
                            .all(|(j, q)| *i == j || could_precede(p, q))
                    })
                    .map(|(_, p)| *p)
                    .collect();
                if firsts.windows(2).any(|w| w[0].event != w[1].event) {
                    flags.totals.get_or_insert(Skip::ArrivalOrder);
                }
            }
            let certainly_before = |a: &[&Placed], b: &[&Placed]| {
                a.iter().any(|p| b.iter().all(|q| !could_precede(q, p)))
            };
            if !purchases.is_empty()
                && !refunds.is_empty()
                && !certainly_before(&purchases, &refunds)
                && !certainly_before(&refunds, &purchases)
            {
                flags.windows.get_or_insert(Skip::ArrivalOrder);
                flags.refunds = true;
            }
        }
    }
    // A window that was closed when verify started counted only what arrived before it closed.
    // (Undetermined totals skip every window row of the order already.)
    if flags.totals.is_some() {
        return flags;
    }
    for p in order {
        for q in order {
            let window = spec.window_of(q.event.event_time);
            if settings.window_open(window.0) {
                continue;
            }
            let closes = spec.closes_at(window);
            if p.lo < closes && closes <= p.hi {
                flags.windows.get_or_insert(Skip::NearWindowClose);
            }
        }
    }
    flags
}
