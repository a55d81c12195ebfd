//! The ledger's state: per order, what was counted for it, applied one complete tick at a time.

use std::collections::VecDeque;
use std::sync::LazyLock;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::order_table::OrderTable;
use crate::model::{
    CampaignId, Cents, Contribution, Counter, Event, EventTimeMs, OrderId, Slot, Tag, Tick, Totals,
    UserId,
};
use crate::windows::WindowSpec;

/// What one order has contributed so far, as checkpoints keep it.
///
/// The ledger itself holds it in a compact form (see [`Remembered`]); this is the form exported and
/// imported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// The tick its first event arrived; it is forgotten at `first_seen + horizon`.
    first_seen: Tick,
    clicked: bool,
    /// The purchase as counted (or, after a refund arrived first, as ignored).
    purchase: Option<Counted>,
    refunded: bool,
}

/// A counted contribution: where it went and what it added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Counted {
    user: UserId,
    campaign: CampaignId,
    window: EventTimeMs,
    totals: Totals,
}

/// A remembered purchase: a [`Counted`] whose totals are one purchase of `units` for `cents`,
/// in 32 bytes instead of 56.
#[derive(Clone, Copy, Debug)]
struct Purchase {
    window: EventTimeMs,
    cents: Cents,
    user: UserId,
    campaign: CampaignId,
    units: u32,
}

impl Purchase {
    fn of(counted: &Counted) -> Purchase {
        Purchase {
            window: counted.window,
            // One purchase's totals: its cents came from a `Cents`, so they fit.
            cents: Cents(i64::try_from(counted.totals.revenue_cents).unwrap_or(i64::MAX)),
            user: counted.user,
            campaign: counted.campaign,
            units: u32::try_from(counted.totals.units).unwrap_or(u32::MAX),
        }
    }

    fn counted(&self) -> Counted {
        Counted {
            user: self.user,
            campaign: self.campaign,
            window: self.window,
            totals: Totals::purchase(self.cents, self.units),
        }
    }
}

/// An order's entry in the ledger's maps: two flags and the index of its purchase, if any, in
/// [`Purchases`], in one word.
///
/// Most orders are a click and nothing else; keeping a whole [`OrderState`] (72 bytes) for each
/// made the ledger the engine's largest and least cache-friendly state. An entry is now 16 bytes
/// with its key, and only purchases take 32 more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Remembered(u64);

impl Default for Remembered {
    /// Nothing counted yet.
    fn default() -> Remembered {
        Remembered(Remembered::HELD)
    }
}

impl Remembered {
    const CLICKED: u64 = 1 << 63;
    const REFUNDED: u64 = 1 << 62;
    /// Set in every entry, so that none is zero: zero marks a vacant entry of [`OrderTable`].
    const HELD: u64 = 1 << 61;
    const PURCHASE: u64 = Remembered::HELD - 1;

    fn clicked(self) -> bool {
        self.0 & Remembered::CLICKED != 0
    }

    fn refunded(self) -> bool {
        self.0 & Remembered::REFUNDED != 0
    }

    /// The purchase's index in [`Purchases`].
    fn purchase(self) -> Option<usize> {
        match self.0 & Remembered::PURCHASE {
            0 => None,
            n => Some(n as usize - 1),
        }
    }

    fn set_clicked(&mut self) {
        self.0 |= Remembered::CLICKED;
    }

    fn set_refunded(&mut self) {
        self.0 |= Remembered::REFUNDED;
    }

    fn set_purchase(&mut self, index: usize) {
        self.0 = (self.0 & !Remembered::PURCHASE) | (index as u64 + 1);
    }
}

/// The remembered purchases, their places reused once their orders are forgotten.
#[derive(Default)]
struct Purchases {
    all: Vec<Purchase>,
    free: Vec<usize>,
}

impl Purchases {
    fn insert(&mut self, purchase: Purchase) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.all[index] = purchase;
                index
            }
            None => {
                self.all.push(purchase);
                self.all.len() - 1
            }
        }
    }

    fn get(&self, index: usize) -> Purchase {
        self.all[index]
    }

    fn remove(&mut self, index: usize) {
        self.free.push(index);
    }
}

/// What one event did.
enum Outcome {
    Counted(Counted),
    Duplicate,
    /// A purchase already refunded, or a refund with no purchase to retract.
    Ignored,
}

/// The per-worker ledger, applied one complete tick at a time.
pub struct Ledger {
    spec: WindowSpec,
    horizon_ms: u64,
    orders: Shards,
    purchases: Purchases,
    /// Orders in the order they were first seen, a list per tick, to forget them when their
    /// horizon passes. Every remembered order is in exactly one list: the one of its first tick.
    expiry: VecDeque<(Tick, Vec<OrderId>)>,
}

/// The remembered orders, in [`SHARDS`] tables ([`OrderTable`]) of unequal shares.
///
/// At 100,000 events/s and the default 10-minute horizon a worker remembers tens of millions of
/// orders. One map that large doubles in one step, rehashing every entry into newly zeroed memory:
/// that stalled the whole pipeline for 4 to 9 s each time (measured end to end, `perf` showing
/// the rehash). Equal shards would all double at the same moment, so shard `i` takes a share
/// proportional to `2^(i / SHARDS)`: the shards' sizes span a factor of two, and they cross their
/// power-of-two capacities one after another over each doubling of the total, each step
/// rehashing about a sixty-fourth of the orders.
struct Shards(Vec<OrderTable>);

/// How many tables hold the orders.
const SHARDS: usize = 64;

/// See [`Shards::of`]: the shard whose range of [`SHARD_STARTS`] holds the order's hash.
fn shard_of(order: OrderId) -> usize {
    let u = order.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    SHARD_STARTS.partition_point(|&start| start <= u) - 1
}

/// Where each shard's range of 53-bit hashes `u` starts: at `(2^(i / SHARDS) - 1) * 2^53`, so
/// shard `i` is `floor(SHARDS * log2(1 + u / 2^53))`, found by a binary search rather than a
/// logarithm per order (which took 1–2% of the engine's time).
static SHARD_STARTS: LazyLock<[u64; SHARDS]> = LazyLock::new(|| {
    std::array::from_fn(|i| {
        let share = (i as f64 / SHARDS as f64).exp2() - 1.0;
        (share * (1u64 << 53) as f64).ceil() as u64
    })
});

impl Shards {
    fn new() -> Shards {
        Shards((0..SHARDS).map(|_| OrderTable::default()).collect())
    }

    /// The table of `order`: shard `floor(SHARDS * log2(1 + u))` for `u` uniform in `[0, 1)`,
    /// which has the density `2^(i / SHARDS)`. `u` is taken from a multiplicative hash (its top
    /// 53 bits, independent of the low bits that [`super::route`] spreads over the workers).
    fn of(&mut self, order: OrderId) -> &mut OrderTable {
        &mut self.0[shard_of(order)]
    }

    fn get(&self, order: OrderId) -> Option<Remembered> {
        self.0[shard_of(order)].get(order.0).map(Remembered)
    }

    /// Asks the processor to load `order`'s entry, without waiting for it.
    fn prefetch(&self, order: OrderId) {
        self.0[shard_of(order)].prefetch(order.0);
    }

    fn remove(&mut self, order: OrderId) -> Option<Remembered> {
        self.of(order).remove(order.0).map(Remembered)
    }

    fn len(&self) -> usize {
        self.0.iter().map(OrderTable::len).sum()
    }
}

/// What applying a tick produced: contributions (summed per order) and counter increments.
#[derive(Debug, Default)]
pub struct TickOutput {
    /// Contributions, none zero, in order of their orders; an order's events in one tick (a
    /// click and its purchase, a purchase and its refund) are summed into one where they share a
    /// window. Two orders of one user and campaign are not summed: downstream sums them anyway.
    pub contributions: Vec<(Contribution, Totals)>,
    /// Counter increments, none zero.
    pub counters: Vec<(Counter, i64)>,
}

/// How many events ahead [`Ledger::apply_tick`] looks up the order.
const LOOK_AHEAD: usize = 8;

impl Ledger {
    /// An empty ledger.
    pub fn new(spec: WindowSpec, horizon_ms: u64) -> Ledger {
        Ledger {
            spec,
            horizon_ms,
            orders: Shards::new(),
            purchases: Purchases::default(),
            expiry: VecDeque::new(),
        }
    }

    /// The number of orders remembered.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// Whether no order is remembered.
    pub fn is_empty(&self) -> bool {
        self.orders.len() == 0
    }

    /// Every remembered order, for a checkpoint.
    pub fn export(&self) -> Vec<(OrderId, OrderState)> {
        self.expiry
            .iter()
            .flat_map(|(first_seen, orders)| orders.iter().map(move |order| (*first_seen, *order)))
            .filter_map(|(first_seen, order)| {
                let remembered = self.orders.get(order)?;
                Some((
                    order,
                    OrderState {
                        first_seen,
                        clicked: remembered.clicked(),
                        purchase: remembered
                            .purchase()
                            .map(|index| self.purchases.get(index).counted()),
                        refunded: remembered.refunded(),
                    },
                ))
            })
            .collect()
    }

    /// Takes back orders a checkpoint remembered; they are forgotten when their own horizon
    /// passes, as if they had never left. An order already remembered takes the imported state.
    pub fn import(&mut self, orders: impl IntoIterator<Item = (OrderId, OrderState)>) {
        // An order given twice takes its last state, and one place in the expiry lists.
        let orders: FxHashMap<OrderId, OrderState> = orders.into_iter().collect();
        // Kept orders keep their place in the expiry lists; imported ones take the place of
        // their own first tick.
        let mut expiry: Vec<(Tick, OrderId)> = self
            .expiry
            .drain(..)
            .flat_map(|(first_seen, kept)| kept.into_iter().map(move |order| (first_seen, order)))
            .filter(|(_, order)| !orders.contains_key(order))
            .collect();
        for (&order, state) in &orders {
            self.forget(order);
            let mut remembered = Remembered::default();
            if state.clicked {
                remembered.set_clicked();
            }
            if state.refunded {
                remembered.set_refunded();
            }
            if let Some(counted) = &state.purchase {
                remembered.set_purchase(self.purchases.insert(Purchase::of(counted)));
            }
            *self.orders.of(order).get_or_insert(order.0, remembered.0).0 = remembered.0;
            expiry.push((state.first_seen, order));
        }
        expiry.sort_unstable();
        for (first_seen, order) in expiry {
            match self.expiry.back_mut() {
                Some((tick, orders)) if *tick == first_seen => orders.push(order),
                _ => self.expiry.push_back((first_seen, vec![order])),
            }
        }
    }

    /// Drops what is remembered of `order`, if anything (its expiry entry stays).
    fn forget(&mut self, order: OrderId) {
        if let Some(remembered) = self.orders.remove(order)
            && let Some(index) = remembered.purchase()
        {
            self.purchases.remove(index);
        }
    }

    /// Applies all events of a complete tick; `tick` must not decrease between calls.
    pub fn apply_tick(&mut self, tick: Tick, events: &mut [Event]) -> TickOutput {
        self.forget_before(tick);
        events.sort_unstable();

        let mut contributions: Vec<(Contribution, Totals)> = Vec::with_capacity(events.len());
        let mut counters = [0i64; Counter::ALL.len()];
        let mut count = |counter: Counter| counters[counter as usize] += 1;

        for at in 0..events.len() {
            // Loading an order's entry some events ahead overlaps its cache miss (the orders
            // are random, millions of them) with the work on this one.
            if let Some(ahead) = events.get(at + LOOK_AHEAD) {
                self.orders.prefetch(ahead.order_id);
            }
            let event = &events[at];
            count(Counter::EventsIn);
            let (word, new) = self
                .orders
                .of(event.order_id)
                .get_or_insert(event.order_id.0, Remembered::default().0);
            if new {
                match self.expiry.back_mut() {
                    Some((first_seen, orders)) if *first_seen == tick => {
                        orders.push(event.order_id)
                    }
                    _ => self.expiry.push_back((tick, vec![event.order_id])),
                }
            }
            let state = &mut Remembered(*word);
            let window = self.spec.window_of(event.event_time);
            let outcome = match event.tag {
                Tag::Click if state.clicked() => Outcome::Duplicate,
                Tag::Click => {
                    state.set_clicked();
                    Outcome::Counted(Counted {
                        user: event.user_id,
                        campaign: event.campaign_id,
                        window,
                        totals: Totals::click(),
                    })
                }
                Tag::Purchased if state.purchase().is_some() => Outcome::Duplicate,
                Tag::Purchased => {
                    let purchase = Purchase {
                        window,
                        cents: event.total,
                        user: event.user_id,
                        campaign: event.campaign_id,
                        units: event.units,
                    };
                    state.set_purchase(self.purchases.insert(purchase));
                    // A refund that came first cancels the purchase before it counts.
                    if state.refunded() {
                        Outcome::Ignored
                    } else {
                        Outcome::Counted(purchase.counted())
                    }
                }
                Tag::Refunded if state.refunded() => Outcome::Duplicate,
                Tag::Refunded => {
                    state.set_refunded();
                    match state.purchase() {
                        Some(index) => {
                            count(Counter::RefundsApplied);
                            let counted = self.purchases.get(index).counted();
                            Outcome::Counted(Counted {
                                totals: counted.totals.negated(),
                                ..counted
                            })
                        }
                        None => {
                            count(Counter::RefundsUnmatched);
                            Outcome::Ignored
                        }
                    }
                }
            };
            *word = state.0;
            match outcome {
                Outcome::Counted(counted) => {
                    if self.spec.is_closed(counted.window, tick) {
                        count(Counter::LateForWindow);
                    }
                    let key = (
                        counted.user,
                        (counted.campaign, Slot::Window(counted.window)),
                    );
                    // An order's events are adjacent, and summing them is nearly all the summing
                    // a tick's contributions allow: a hash map over the whole tick summed 0.14%
                    // more of them, at 5% of the engine's time (`perf`, `shopflow bench -w 2`).
                    match contributions.last_mut() {
                        Some((last, totals)) if *last == key => totals.add(&counted.totals),
                        _ => contributions.push((key, counted.totals)),
                    }
                }
                Outcome::Duplicate => count(Counter::Duplicates),
                Outcome::Ignored => {}
            }
        }

        contributions.retain(|(_, totals)| !totals.is_empty());
        let counters = Counter::ALL
            .iter()
            .map(|&c| (c, counters[c as usize]))
            .filter(|&(_, n)| n != 0)
            .collect();
        TickOutput {
            contributions,
            counters,
        }
    }

    /// Forgets the orders whose horizon has passed at `tick`.
    fn forget_before(&mut self, tick: Tick) {
        while let Some(&(first_seen, _)) = self.expiry.front() {
            if first_seen.saturating_add(self.horizon_ms) > tick {
                break;
            }
            let (_, orders) = self.expiry.pop_front().expect("a front entry");
            // Loaded ahead, as in `apply_tick`: forgotten orders are as random as new ones.
            for at in 0..orders.len() {
                if let Some(&ahead) = orders.get(at + LOOK_AHEAD) {
                    self.orders.prefetch(ahead);
                }
                self.forget(orders[at]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(order: u64, tag: Tag, time: u64) -> Event {
        Event {
            order_id: OrderId(order),
            tag,
            user_id: UserId(1),
            campaign_id: CampaignId(2),
            total: Cents(if tag == Tag::Click { 0 } else { 500 }),
            units: if tag == Tag::Click { 0 } else { 2 },
            event_time: EventTimeMs(time),
        }
    }

    fn spec() -> WindowSpec {
        WindowSpec {
            size_ms: 1_000,
            allowed_lateness_ms: 1_000,
        }
    }

    /// Orders forgotten as fast as they come (first in, first out, as the horizon forgets them)
    /// leave each shard's table at the size its live orders need, and every live order findable.
    #[test]
    fn steady_churn_keeps_the_shards_capacity() {
        let live = 100_000u64;
        let scattered = |n: u64| OrderId(n.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let remembered = |n: u64| Remembered(Remembered::HELD | n);
        let mut shards = Shards::new();
        for n in 0..live * 40 {
            shards
                .of(scattered(n))
                .get_or_insert(scattered(n).0, remembered(n).0);
            if n >= live {
                assert_eq!(
                    shards.remove(scattered(n - live)),
                    Some(remembered(n - live))
                );
            }
        }
        assert_eq!(shards.len() as u64, live);
        // A table grown by its orders has at most 8/3 the room they need (it doubles at 3/4).
        for (i, shard) in shards.0.iter().enumerate() {
            let (capacity, len) = (shard.capacity(), shard.len());
            assert!(
                3 * capacity <= 8 * len,
                "shard {i}: {len} orders, capacity {capacity}"
            );
        }
        for n in 0..live * 40 {
            let want = (n >= live * 39).then_some(remembered(n));
            assert_eq!(shards.get(scattered(n)), want);
        }
    }

    /// The shards take unequal shares (the last about twice the first), so while orders pour
    /// in, the shards double one after another rather than all at once.
    #[test]
    fn ledger_shards_grow_one_after_another() {
        let mut shards = Shards::new();
        let orders = 1u64 << 21;
        let mut capacities: Vec<usize> = vec![0; SHARDS];
        // When each shard's table grew to at least 8,192 entries: (insert index, shard).
        let mut growths: Vec<(u64, usize)> = Vec::new();
        for n in 0..orders {
            // Sequential ids, as the generator's, and scattered ones.
            let order = OrderId(if n % 2 == 0 {
                n
            } else {
                n.wrapping_mul(0xD1B5_4A32_D192_ED03)
            });
            let shard = shard_of(order);
            let table = shards.of(order);
            table.get_or_insert(order.0, Remembered::default().0);
            if table.capacity() != capacities[shard] {
                capacities[shard] = table.capacity();
                if table.capacity() >= 8_192 {
                    growths.push((n, shard));
                }
            }
        }
        let sizes: Vec<usize> = shards.0.iter().map(OrderTable::len).collect();
        assert_eq!(sizes.iter().sum::<usize>() as u64, orders);
        let ratio = sizes[SHARDS - 1] as f64 / sizes[0] as f64;
        assert!(
            (1.8..2.2).contains(&ratio),
            "last / first shard: {ratio}: {sizes:?}"
        );
        assert!(
            sizes.windows(8).all(|w| w[0] < w[7]),
            "shares increase: {sizes:?}"
        );
        // Few shards grow while the orders grow by 1% (equal shares: all 64 of them).
        let crowded = growths
            .iter()
            .map(|&(at, _)| {
                let window = at..at + at / 100;
                growths.iter().filter(|(b, _)| window.contains(b)).count()
            })
            .max()
            .unwrap_or(0);
        assert!(growths.len() >= SHARDS, "{} growths", growths.len());
        assert!(crowded <= 6, "{crowded} shards grew within 1% more orders");
    }

    #[test]
    fn duplicates_count_once_and_refunds_retract_in_the_purchase_window() {
        let mut ledger = Ledger::new(spec(), 10_000);
        let out = ledger.apply_tick(
            100,
            &mut [
                event(7, Tag::Purchased, 50),
                event(7, Tag::Click, 10),
                event(7, Tag::Purchased, 50),
            ],
        );
        let key = (UserId(1), (CampaignId(2), Slot::Window(EventTimeMs(0))));
        let mut expected = Totals::click();
        expected.add(&Totals::purchase(Cents(500), 2));
        assert_eq!(out.contributions, vec![(key, expected)]);
        assert_eq!(
            out.counters,
            vec![(Counter::EventsIn, 3), (Counter::Duplicates, 1)]
        );

        // The refund's own time is 3 000; it retracts from the purchase's window 0, now closed.
        let out = ledger.apply_tick(
            2_500,
            &mut [
                event(7, Tag::Refunded, 3_000),
                event(7, Tag::Refunded, 3_000),
            ],
        );
        assert_eq!(
            out.contributions,
            vec![(key, Totals::purchase(Cents(500), 2).negated())]
        );
        assert_eq!(
            out.counters,
            vec![
                (Counter::EventsIn, 2),
                (Counter::Duplicates, 1),
                (Counter::LateForWindow, 1),
                (Counter::RefundsApplied, 1)
            ]
        );
    }

    #[test]
    fn refund_before_purchase_cancels_it_and_horizon_forgets() {
        let mut ledger = Ledger::new(spec(), 1_000);
        let out = ledger.apply_tick(0, &mut [event(9, Tag::Refunded, 0)]);
        assert!(out.contributions.is_empty());
        assert_eq!(
            out.counters,
            vec![(Counter::EventsIn, 1), (Counter::RefundsUnmatched, 1)]
        );
        let out = ledger.apply_tick(500, &mut [event(9, Tag::Purchased, 0)]);
        assert!(out.contributions.is_empty());
        assert_eq!(out.counters, vec![(Counter::EventsIn, 1)]);
        assert_eq!(ledger.len(), 1);
        // At 1 000 the order is forgotten: the same purchase counts as new.
        let out = ledger.apply_tick(1_000, &mut [event(9, Tag::Purchased, 900)]);
        assert_eq!(out.contributions.len(), 1);
        assert_eq!(ledger.len(), 1);
    }

    /// A ledger exported at a tick boundary and imported into a new one goes on exactly as the
    /// original: same contributions, same counters, same orders forgotten at the same ticks.
    #[test]
    fn exported_ledger_imports_to_the_same_ledger() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut tick_events = |tick: u64| -> Vec<Event> {
            (0..200)
                .map(|_| {
                    let tag = [Tag::Click, Tag::Purchased, Tag::Refunded][next(3) as usize];
                    let mut e = event(next(150), tag, tick.saturating_sub(next(1_500)));
                    e.user_id = UserId(next(5) as u32);
                    e.units = if tag == Tag::Click { 0 } else { next(4) as u32 };
                    e
                })
                .collect()
        };
        let mut original = Ledger::new(spec(), 3_000);
        for tick in (0..5_000).step_by(250) {
            original.apply_tick(tick, &mut tick_events(tick));
        }
        let exported = original.export();
        assert_eq!(exported.len(), original.len());
        assert!(
            exported
                .iter()
                .any(|(_, s)| s.purchase.is_some() && s.refunded)
        );
        let mut imported = Ledger::new(spec(), 3_000);
        // In two parts, as restored batches arrive.
        let (first, second) = exported.split_at(exported.len() / 2);
        imported.import(first.to_vec());
        imported.import(second.to_vec());
        // Given again, even twice in one import, an order is still remembered once.
        imported.import(second.iter().take(3).chain(second.iter().take(3)).cloned());
        let sorted = |mut orders: Vec<(OrderId, OrderState)>| {
            orders.sort_by_key(|(order, _)| *order);
            orders
        };
        assert_eq!(sorted(imported.export()), sorted(exported));
        for tick in (5_000..10_000).step_by(250) {
            let mut events = tick_events(tick);
            let mut a = original.apply_tick(tick, &mut events.clone());
            let mut b = imported.apply_tick(tick, &mut events);
            a.contributions.sort();
            b.contributions.sort();
            assert_eq!(a.contributions, b.contributions, "tick {tick}");
            assert_eq!(a.counters, b.counters, "tick {tick}");
            assert_eq!(original.len(), imported.len(), "tick {tick}");
        }
    }
}
