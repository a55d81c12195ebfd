//! The bar to beat: the same aggregates, with the same semantics, as a single-threaded program
//! over hash maps, written the way a careful engineer would without a dataflow engine.
//!
//! It shares the order [`Ledger`] with the dataflow (de-duplication and refunds are the same
//! hash-map work in both) and does the rest by hand: per-user contributions so demographic changes
//! can move them, a retirement schedule for closing windows, and dirty-key tracking to emit each
//! tick's changes. `bench --engine hashmap` measures it; the tests hold it to the reference too.

use std::collections::BTreeMap;

use dataflows::Params;
use dataflows::aggregates::dimensions;
use dataflows::harness::Input;
use dataflows::model::{
    AggregateKey, CampaignId, Counter, Demographic, EventTimeMs, OutputKey, OutputValue, Segment,
    Slot, Tick, Totals, UserId,
};
use dataflows::orders::Ledger;
use dataflows::output::{Batch, Change};
use rustc_hash::FxHashMap;

/// The single-threaded engine.
pub struct Baseline {
    params: Params,
    ledger: Ledger,
    users: FxHashMap<UserId, Segment>,
    contributions: FxHashMap<UserId, FxHashMap<(CampaignId, Slot), Totals>>,
    /// Window starts by closing time, with the users who contributed to them.
    closing: BTreeMap<Tick, Vec<(EventTimeMs, UserId, CampaignId)>>,
    /// Windowed keys by window, to drop them when it closes.
    window_keys: FxHashMap<EventTimeMs, Vec<AggregateKey>>,
    values: FxHashMap<OutputKey, OutputValue>,
    /// Keys touched this tick, with their value before it.
    before: FxHashMap<OutputKey, Option<OutputValue>>,
}

impl Baseline {
    /// An empty engine.
    pub fn new(params: Params) -> Baseline {
        Baseline {
            params,
            ledger: Ledger::new(params.windows, params.order_horizon_ms),
            users: FxHashMap::default(),
            contributions: FxHashMap::default(),
            closing: BTreeMap::new(),
            window_keys: FxHashMap::default(),
            values: FxHashMap::default(),
            before: FxHashMap::default(),
        }
    }

    /// Applies one tick's demographic updates and events; returns the tick's changes.
    pub fn apply_tick(
        &mut self,
        tick: Tick,
        events: &mut [dataflows::model::Event],
        demographics: &[(Demographic, isize)],
    ) -> Batch {
        self.retire(tick);
        self.apply_demographics(demographics);
        let produced = self.ledger.apply_tick(tick, events);
        for (counter, n) in produced.counters {
            self.add_count(counter, n);
        }
        for ((user, (campaign, slot)), totals) in produced.contributions {
            let Slot::Window(start) = slot else { continue };
            let slot = if self.params.windows.is_closed(start, tick) {
                Slot::Retired
            } else {
                self.closing
                    .entry(self.params.windows.closes_at(start))
                    .or_default()
                    .push((start, user, campaign));
                slot
            };
            self.contributions
                .entry(user)
                .or_default()
                .entry((campaign, slot))
                .or_default()
                .add(&totals);
            let segment = self.users.get(&user).cloned();
            self.add_to_dimensions(campaign, slot, segment.as_ref(), &totals);
        }
        self.changes(tick)
    }

    /// Moves contributions of windows closing by `tick` to the remainder; their rows are final.
    fn retire(&mut self, tick: Tick) {
        let due: Vec<Tick> = self.closing.range(..=tick).map(|(t, _)| *t).collect();
        for closes in due {
            for (start, user, campaign) in self.closing.remove(&closes).unwrap_or_default() {
                let Some(slots) = self.contributions.get_mut(&user) else {
                    continue;
                };
                if let Some(totals) = slots.remove(&(campaign, Slot::Window(start))) {
                    slots
                        .entry((campaign, Slot::Retired))
                        .or_default()
                        .add(&totals);
                }
            }
        }
        let closed: Vec<EventTimeMs> = self
            .window_keys
            .keys()
            .filter(|w| self.params.windows.is_closed(**w, tick))
            .copied()
            .collect();
        for window in closed {
            for key in self.window_keys.remove(&window).unwrap_or_default() {
                let key = OutputKey::Aggregate(key);
                self.values.remove(&key);
                self.before.remove(&key);
            }
        }
    }

    fn apply_demographics(&mut self, updates: &[(Demographic, isize)]) {
        // A tick's net change per row, whatever order its updates came in.
        let mut net: BTreeMap<&Demographic, isize> = BTreeMap::new();
        for (row, diff) in updates {
            *net.entry(row).or_default() += diff;
        }
        let mut net: Vec<(&Demographic, isize)> =
            net.into_iter().filter(|(_, diff)| *diff != 0).collect();
        net.sort_by_key(|(_, diff)| *diff);
        let mut old: FxHashMap<UserId, Option<Segment>> = FxHashMap::default();
        for (row, diff) in net {
            old.entry(row.id)
                .or_insert_with(|| self.users.get(&row.id).cloned());
            if diff > 0 {
                self.users.insert(row.id, row.segment());
            } else {
                self.users.remove(&row.id);
            }
        }
        for (user, old) in old {
            let new = self.users.get(&user).cloned();
            if old == new {
                continue;
            }
            let Some(slots) = self.contributions.get(&user) else {
                continue;
            };
            let slots: Vec<_> = slots.iter().map(|(k, v)| (*k, *v)).collect();
            for ((campaign, slot), totals) in slots {
                self.add_to_dimensions(campaign, slot, old.as_ref(), &totals.negated());
                self.add_to_dimensions(campaign, slot, new.as_ref(), &totals);
            }
        }
    }

    fn add_to_dimensions(
        &mut self,
        campaign: CampaignId,
        slot: Slot,
        segment: Option<&Segment>,
        totals: &Totals,
    ) {
        for dimension in dimensions(campaign, segment) {
            if let Slot::Window(start) = slot {
                let key = AggregateKey {
                    dimension: dimension.clone(),
                    window: Some(start),
                };
                self.add_totals(key, totals);
            }
            self.add_totals(
                AggregateKey {
                    dimension,
                    window: None,
                },
                totals,
            );
        }
    }

    fn add_totals(&mut self, key: AggregateKey, totals: &Totals) {
        let key = OutputKey::Aggregate(key);
        let value = self.values.get(&key).copied();
        if !self.before.contains_key(&key) {
            self.before.insert(key.clone(), value);
            if let (None, OutputKey::Aggregate(aggregate)) = (value, &key)
                && let Some(window) = aggregate.window
            {
                self.window_keys
                    .entry(window)
                    .or_default()
                    .push(aggregate.clone());
            }
        }
        let mut sum = match value {
            Some(OutputValue::Totals(t)) => t,
            _ => Totals::default(),
        };
        sum.add(totals);
        if sum.is_empty() {
            self.values.remove(&key);
        } else {
            self.values.insert(key, OutputValue::Totals(sum));
        }
    }

    /// Adds to a counter kept outside the ledger (malformed source messages); it shows in the
    /// next tick's changes.
    pub fn count(&mut self, counter: Counter, n: i64) {
        self.add_count(counter, n);
    }

    fn add_count(&mut self, counter: Counter, n: i64) {
        let key = OutputKey::Counter(counter);
        let value = self.values.get(&key).copied();
        self.before.entry(key.clone()).or_insert(value);
        let now = match value {
            Some(OutputValue::Count(c)) => c + n,
            _ => n,
        };
        self.values.insert(key, OutputValue::Count(now));
    }

    fn changes(&mut self, tick: Tick) -> Batch {
        let mut changes: Vec<Change> = self
            .before
            .drain()
            .filter_map(|(key, before)| {
                let now = self.values.get(&key).copied();
                (now != before).then_some(Change { key, value: now })
            })
            .collect();
        changes.sort();
        Batch {
            time: tick,
            changes,
        }
    }
}

/// Runs the engine over recorded inputs, like [`dataflows::harness::run`]; batches without
/// changes are left out.
pub fn run(inputs: &[(Tick, Input)], params: Params) -> Vec<Batch> {
    type TickInputs = (
        Vec<dataflows::model::Event>,
        Vec<(Demographic, isize)>,
        Vec<(Counter, isize)>,
    );
    let mut by_tick: BTreeMap<Tick, TickInputs> = BTreeMap::new();
    for (tick, input) in inputs {
        let entry = by_tick.entry(*tick).or_default();
        match input {
            Input::Event(e) => entry.0.push(e.clone()),
            Input::Demographic(row, diff) => entry.1.push((row.clone(), *diff)),
            Input::Counter(counter, n) => entry.2.push((*counter, *n)),
        }
    }
    let mut engine = Baseline::new(params);
    let mut batches = Vec::new();
    for (tick, (mut events, demographics, counters)) in by_tick {
        for (counter, n) in counters {
            engine.count(counter, n as i64);
        }
        let batch = engine.apply_tick(tick, &mut events, &demographics);
        if !batch.changes.is_empty() {
            batches.push(batch);
        }
    }
    batches
}
