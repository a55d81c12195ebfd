//! The aggregate families: per campaign, per segment, per campaign and segment, each all-time and
//! per window, maintained by one operator that keeps every key's total.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use differential_dataflow::operators::CountTotal;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::{AsCollection, VecCollection};
use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap};
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};

use crate::interned::{CountryId, Interned, SegmentId, Segments, StateId};
use crate::model::{
    AgeBand, AggregateKey, CampaignId, Counter, Dimension, EventTimeMs, Gender, OutputKey,
    OutputRow, OutputValue, Segment, Slot, Tick, Totals,
};
use crate::pending::by_time;
use crate::windows::WindowSpec;

/// The dimensions a contribution of `campaign` by a user of `segment` (or of no known segment)
/// counts in.
pub fn dimensions(campaign: CampaignId, segment: Option<&Segment>) -> [Dimension; 6] {
    let age_gender = segment.map(|s| (s.age_band, s.gender));
    let country = segment.map(|s| s.country.clone());
    [
        Dimension::Campaign(campaign),
        Dimension::AgeGender(age_gender),
        Dimension::State(segment.map(|s| (s.country.clone(), s.state.clone()))),
        Dimension::Country(country.clone()),
        Dimension::CampaignCountry(campaign, country),
        Dimension::CampaignAgeGender(campaign, age_gender),
    ]
}

/// The hash by which [`aggregate`] routes a key to the worker that keeps its row.
fn route_hash(key: &AggregateKey) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The worker, of `peers`, that keeps `key`'s row: where [`aggregate`] routes it (timely's
/// exchange takes the hash masked by `peers - 1` for a power of two, else modulo `peers`). Its
/// rows reach the sink of that worker's process; a restarted run uses this to know which of
/// the keys written before a crash its own process must clear.
pub fn owner(key: &AggregateKey, peers: usize) -> usize {
    let (hash, peers) = (route_hash(key), peers.max(1) as u64);
    let index = if peers.is_power_of_two() {
        hash & (peers - 1)
    } else {
        hash % peers
    };
    index as usize
}

/// Maintains every aggregate from the sums of attributed contributions: output rows of `(key,
/// total)`, one per key, a change being the old total retracted and the new one inserted, and a
/// key whose total returns to zero retracted (its row forgotten at the next sweep of closed
/// windows, see [`Rows`]). This is what `arrange_by_self().count_total()` computes, for a totally
/// ordered time; it holds one total per key in a hash table instead of the arrangement's history.
///
/// The keys are few (thousands) and nearly all change at every tick, so the arrangement's costs
/// came at every tick whatever its size: sorting the keys (comparing segment names), sealing a
/// batch, merging the spine's batches and seeking each key through them. At 10,000 events a
/// tick that was a large part of the engine's time (perf, `shopflow bench -w 2`).
///
/// Keys are routed by hash, so each lives on one worker and a timestamp's changes of it are in
/// one batch, as with the arrangement. Updates are applied a whole timestamp at a time, once the
/// frontier has passed it, in time order.
///
/// Changes to a closed window's rows (a demographic change moving a user's contributions to it
/// before the window is folded) are not changes of the aggregate and are dropped, so a closed
/// window's last value is its final value; its totals are forgotten at the first timestamp at
/// which it is closed. (A window has about as many keys as the all-time totals, and every
/// window's were once kept for the whole run.)
pub fn aggregate<'scope>(
    updates: VecCollection<'scope, Tick, AggregateKey, Totals>,
    spec: WindowSpec,
) -> VecCollection<'scope, Tick, OutputRow, isize> {
    let route = Exchange::new(|(key, _, _): &(AggregateKey, Tick, Totals)| route_hash(key));
    updates
        .inner
        .unary_frontier(route, "Aggregate: totals", |_capability, _info| {
            let mut pending: BTreeMap<Tick, (Capability<Tick>, Updates)> = BTreeMap::new();
            let mut rows = Rows::default();
            // When the earliest window with totals held closes.
            let mut next_close: Option<Tick> = None;
            // Emptied lists of applied timestamps, reused rather than grown afresh each tick.
            let mut spare: Vec<Updates> = Vec::new();
            move |(input, frontier), output| {
                let port = output.output_index();
                input.for_each_stamp(|capability, data| {
                    for batch in data {
                        by_time(
                            batch.drain(..),
                            &mut pending,
                            |time| {
                                let list = spare.pop().unwrap_or_default();
                                (capability.delayed(&time, port), list)
                            },
                            |(_, deltas), key, delta| deltas.push((key, delta)),
                        );
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (time, (capability, mut deltas)) = entry.remove_entry();
                    let closed = |key: &AggregateKey| {
                        key.window.is_some_and(|start| spec.is_closed(start, time))
                    };
                    if next_close.is_some_and(|close| time >= close) {
                        rows.retain(|key, total| !closed(key) && !total.is_empty());
                        next_close = rows
                            .keys()
                            .filter_map(|key| key.window)
                            .map(|start| spec.closes_at(start))
                            .min();
                    }
                    for (key, delta) in deltas.drain(..) {
                        if delta.is_empty() || closed(&key) {
                            continue;
                        }
                        // A new row's window may close first; the others' were counted when
                        // they were new, or at the last sweep.
                        let window = key.window;
                        if rows.add(time, key, &delta)
                            && let Some(start) = window
                        {
                            let close = spec.closes_at(start);
                            next_close = Some(next_close.map_or(close, |c| c.min(close)));
                        }
                    }
                    spare.push(deltas);
                    let mut session = output.session(&capability);
                    rows.changed(|key, old, new| {
                        let row = |totals: &Totals| {
                            (
                                OutputKey::Aggregate(key.clone()),
                                OutputValue::Totals(*totals),
                            )
                        };
                        if !old.is_empty() {
                            session.give((row(old), time, -1));
                        }
                        if !new.is_empty() {
                            session.give((row(new), time, 1));
                        }
                    });
                }
            }
        })
        .as_collection()
}

/// A timestamp's updates, as they arrived.
type Updates = Vec<(AggregateKey, Totals)>;

/// The totals of one worker's keys, with what each was before the timestamp being applied.
///
/// One hash table finds a key's row, which remembers its total at the timestamp's start the first
/// time the timestamp changes it; the rows changed are listed by place. A timestamp's updates of
/// a key (one from each worker's join) thus cost one lookup each, where summing them per
/// timestamp in a map and then applying the sums to the totals cost two lookups per update and
/// one more per key (`perf`, `shopflow bench -w 2`). A key whose total returns to zero keeps a
/// zero row, which counts as no row, until the next sweep of closed windows.
#[derive(Default)]
struct Rows {
    /// Places in `rows`, by the hash of their keys.
    table: HashTable<u32>,
    rows: Vec<Row>,
    /// Places of the rows changed at the timestamp being applied, each once.
    changed: Vec<u32>,
}

struct Row {
    hash: u64,
    key: AggregateKey,
    total: Totals,
    /// The total before the timestamp `stamp`, the latest that changed it.
    before: Totals,
    stamp: Tick,
}

impl Rows {
    /// Adds `delta` to `key`'s total at `time`, which must not decrease between calls; whether
    /// the key had no row.
    fn add(&mut self, time: Tick, key: AggregateKey, delta: &Totals) -> bool {
        let hash = FxBuildHasher.hash_one(&key);
        let rows = &mut self.rows;
        let found = self
            .table
            .find(hash, |&at| {
                let row = &rows[at as usize];
                row.hash == hash && row.key == key
            })
            .copied();
        match found {
            Some(at) => {
                let row = &mut rows[at as usize];
                if row.stamp != time {
                    row.before = row.total;
                    row.stamp = time;
                    self.changed.push(at);
                }
                row.total.add(delta);
                false
            }
            None => {
                let at = u32::try_from(rows.len()).expect("fewer than 2^32 aggregate keys");
                rows.push(Row {
                    hash,
                    key,
                    total: *delta,
                    before: Totals::default(),
                    stamp: time,
                });
                self.table
                    .insert_unique(hash, at, |&at| rows[at as usize].hash);
                self.changed.push(at);
                true
            }
        }
    }

    /// Hands out each row changed since the last call, with its total before and after, and
    /// forgets which rows changed.
    fn changed(&mut self, mut give: impl FnMut(&AggregateKey, &Totals, &Totals)) {
        for at in self.changed.drain(..) {
            let row = &self.rows[at as usize];
            if row.before != row.total {
                give(&row.key, &row.before, &row.total);
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = &AggregateKey> {
        self.rows.iter().map(|row| &row.key)
    }

    /// Keeps the rows `keep` accepts, and rebuilds the table of places.
    fn retain(&mut self, mut keep: impl FnMut(&AggregateKey, &Totals) -> bool) {
        self.rows.retain(|row| keep(&row.key, &row.total));
        self.table.clear();
        let rows = &self.rows;
        for (at, row) in rows.iter().enumerate() {
            self.table
                .insert_unique(row.hash, at as u32, |&at| rows[at as usize].hash);
        }
    }
}

/// The counters arranged: their totals so far, which a checkpoint reads.
pub type CounterTrace = TraceAgent<KeySpine<Counter, Tick, isize>>;

/// Keeps the engine's counters: `(counter, value)` rows, and the arrangement they are kept in.
pub fn count_counters<'scope>(
    counters: VecCollection<'scope, Tick, Counter, isize>,
) -> (
    VecCollection<'scope, Tick, (Counter, isize), isize>,
    CounterTrace,
) {
    let arranged = counters.arrange_by_self_named("Arrange: counters");
    let trace = arranged.trace.clone();
    (arranged.count_total(), trace)
}

/// Sums of attributed contributions per family, on the family's own columns, before anything is
/// exchanged: [`crate::segments::attribute`] adds a tick's contributions and drains the sums.
///
/// Contributions are many and keys few (a handful of age bands, fifty states), so summing in hash
/// maps first shrinks what the totals receive by orders of magnitude. Each family is summed on just
/// the columns it keeps, so a contribution costs a few small-key hash updates, and the segment-only
/// families forget the campaign before they meet the many segments. Segments and countries are
/// keyed by their numbers in the join's [`Segments`], which give back their names when the sums
/// are drained.
#[derive(Default)]
pub(crate) struct PartialSums {
    /// Per campaign: every contribution (each counted once, by its unknown copy), and what is
    /// left in the unknown segment once the rows the join found have taken theirs out.
    campaign: FxHashMap<(Tick, Slot, CampaignId), CampaignSums>,
    segment: FxHashMap<(Tick, Slot, SegmentId), Totals>,
    campaign_country: FxHashMap<(Tick, Slot, CampaignId, CountryId), Totals>,
    campaign_age_gender: FxHashMap<(Tick, Slot, CampaignId, (AgeBand, Gender)), Totals>,
    /// The sums of every family's dimensions, windowed and all-time; kept between activations,
    /// as the maps above are, so they are not grown from empty (and their memory zeroed
    /// afresh) every time.
    keys: FxHashMap<(Tick, Key), DimensionSums>,
}

/// A [`Dimension`] as the pre-sums key it: countries and states by their numbers, so that a
/// family's sum is added to its dimension without hashing or comparing names.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Campaign(CampaignId),
    AgeGender(Option<(AgeBand, Gender)>),
    State(Option<StateId>),
    Country(Option<CountryId>),
    CampaignCountry(CampaignId, Option<CountryId>),
    CampaignAgeGender(CampaignId, Option<(AgeBand, Gender)>),
}

impl Key {
    /// The dimension, named.
    fn dimension(self, segments: &Segments) -> Dimension {
        let country = |id: Option<CountryId>| id.map(|id| segments.country(id).clone());
        match self {
            Key::Campaign(campaign) => Dimension::Campaign(campaign),
            Key::AgeGender(age_gender) => Dimension::AgeGender(age_gender),
            Key::State(state) => Dimension::State(state.map(|id| segments.state(id).clone())),
            Key::Country(id) => Dimension::Country(country(id)),
            Key::CampaignCountry(campaign, id) => Dimension::CampaignCountry(campaign, country(id)),
            Key::CampaignAgeGender(campaign, age_gender) => {
                Dimension::CampaignAgeGender(campaign, age_gender)
            }
        }
    }
}

/// A dimension's sums at one timestamp: per window, and all time (every slot, closed windows'
/// included).
#[derive(Default)]
struct DimensionSums {
    /// A tick's contributions fall in few windows: the latest, and late ones.
    windows: SmallVec<[(EventTimeMs, Totals); 2]>,
    all_time: Totals,
}

#[derive(Default)]
struct CampaignSums {
    all: Totals,
    unknown: Totals,
}

impl PartialSums {
    /// Adds a contribution attributed to a segment (`None`: the unknown segment). Every
    /// contribution is added once unknown; one added with a segment was found by the join: it
    /// counts there and no longer in the unknown segment, where its unknown copy counted it. The
    /// campaign family counts each contribution once: from its unknown copy. A known contribution
    /// thus costs one update of the campaign's sums and one per family of its segment.
    pub(crate) fn add(
        &mut self,
        time: Tick,
        campaign: CampaignId,
        slot: Slot,
        segment: Option<(SegmentId, &Interned)>,
        totals: Totals,
    ) {
        let sums = self.campaign.entry((time, slot, campaign)).or_default();
        match segment {
            None => {
                sums.all.add(&totals);
                sums.unknown.add(&totals);
            }
            Some((
                id,
                Interned {
                    segment, country, ..
                },
            )) => {
                sums.unknown.add(&totals.negated());
                self.campaign_country
                    .entry((time, slot, campaign, *country))
                    .or_default()
                    .add(&totals);
                self.campaign_age_gender
                    .entry((time, slot, campaign, (segment.age_band, segment.gender)))
                    .or_default()
                    .add(&totals);
                self.segment
                    .entry((time, slot, id))
                    .or_default()
                    .add(&totals);
            }
        }
    }

    /// Hands out every non-zero sum as aggregate keys, windowed and all-time, and empties the maps;
    /// `segments` names the segments and countries the sums are keyed by.
    ///
    /// The sums are gathered per timestamp and dimension, each with its windows' sums and its
    /// all-time sum, so a family's sum costs one update there, and a dimension's key is built
    /// once per window it changed in. (Each family sum was added twice, to its window's key and
    /// to its all-time key, each a whole aggregate key.)
    pub(crate) fn drain(
        &mut self,
        segments: &Segments,
        mut give: impl FnMut(AggregateKey, Tick, Totals),
    ) {
        let sums = &mut self.keys;
        let mut add = |time: Tick, slot: Slot, key: Key, totals: Totals| {
            if totals.is_empty() {
                return;
            }
            let sums = sums.entry((time, key)).or_default();
            sums.all_time.add(&totals);
            if let Slot::Window(start) = slot {
                match sums.windows.iter_mut().find(|(s, _)| *s == start) {
                    Some((_, window)) => window.add(&totals),
                    None => sums.windows.push((start, totals)),
                }
            }
        };
        for ((time, slot, campaign), CampaignSums { all, unknown }) in self.campaign.drain() {
            add(time, slot, Key::Campaign(campaign), all);
            if !unknown.is_empty() {
                add(time, slot, Key::CampaignCountry(campaign, None), unknown);
                add(time, slot, Key::CampaignAgeGender(campaign, None), unknown);
                add(time, slot, Key::AgeGender(None), unknown);
                add(time, slot, Key::State(None), unknown);
                add(time, slot, Key::Country(None), unknown);
            }
        }
        for ((time, slot, campaign, country), totals) in self.campaign_country.drain() {
            add(
                time,
                slot,
                Key::CampaignCountry(campaign, Some(country)),
                totals,
            );
        }
        for ((time, slot, campaign, age_gender), totals) in self.campaign_age_gender.drain() {
            add(
                time,
                slot,
                Key::CampaignAgeGender(campaign, Some(age_gender)),
                totals,
            );
        }
        for ((time, slot, id), totals) in self.segment.drain() {
            let Interned {
                segment,
                country,
                state,
            } = segments.get(id);
            let age_gender = (segment.age_band, segment.gender);
            add(time, slot, Key::AgeGender(Some(age_gender)), totals);
            add(time, slot, Key::State(Some(*state)), totals);
            add(time, slot, Key::Country(Some(*country)), totals);
        }
        for ((time, key), sums) in self.keys.drain() {
            let dimension = key.dimension(segments);
            for (start, totals) in sums.windows {
                if !totals.is_empty() {
                    let key = AggregateKey {
                        dimension: dimension.clone(),
                        window: Some(start),
                    };
                    give(key, time, totals);
                }
            }
            if !sums.all_time.is_empty() {
                let key = AggregateKey {
                    dimension,
                    window: None,
                };
                give(key, time, sums.all_time);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::model::Name;

    /// [`owner`] names the worker whose [`aggregate`] emits a key's rows, at worker counts that
    /// are and are not powers of two.
    #[test]
    fn owner_is_the_worker_that_emits_the_row() {
        use std::sync::{Arc, Mutex};

        use differential_dataflow::input::Input as _;

        let keys: Vec<AggregateKey> = (0..200u32)
            .map(|n| AggregateKey {
                dimension: match n % 3 {
                    0 => Dimension::Campaign(CampaignId(n)),
                    1 => Dimension::Country(Some(Name::from(format!("country {n}")))),
                    _ => Dimension::CampaignCountry(CampaignId(n), None),
                },
                window: (n % 2 == 0).then_some(crate::model::EventTimeMs(u64::from(n) * 60_000)),
            })
            .collect();
        for peers in [2, 3, 4] {
            let seen: Arc<Mutex<Vec<(usize, AggregateKey)>>> = Arc::default();
            let (sent, shared) = (keys.clone(), Arc::clone(&seen));
            timely::execute(timely::Config::process(peers), move |worker| {
                let index = worker.index();
                let seen = Arc::clone(&shared);
                let mut input = worker.dataflow::<Tick, _, _>(|scope| {
                    let (input, updates) = scope.new_collection::<AggregateKey, Totals>();
                    let spec = WindowSpec {
                        size_ms: 60_000,
                        allowed_lateness_ms: u64::MAX / 4,
                    };
                    aggregate(updates, spec).inspect(move |((key, _), _, _)| {
                        if let OutputKey::Aggregate(key) = key {
                            seen.lock().unwrap().push((index, key.clone()));
                        }
                    });
                    input
                });
                if index == 0 {
                    for key in &sent {
                        input.update(key.clone(), Totals::click());
                    }
                }
            })
            .expect("the dataflow runs");
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), keys.len(), "every key's row, once");
            for (worker, key) in seen.iter() {
                assert_eq!(*worker, owner(key, peers), "{key:?} at {peers} workers");
            }
        }
    }

    /// The rows against a map of totals, over random timestamps of random deltas to few keys,
    /// with deltas that cancel, keys that return to zero, and sweeps: each timestamp's changes
    /// are every key whose total moved, once, with its totals before and after.
    #[test]
    fn rows_report_each_changed_key_once_with_its_totals_before_and_after() {
        let mut rng = StdRng::seed_from_u64(11);
        let keys: Vec<AggregateKey> = (0..40u32)
            .map(|n| AggregateKey {
                dimension: match n % 4 {
                    0 => Dimension::Campaign(CampaignId(n)),
                    1 => Dimension::Country(Some(Name::from(format!("country {n}")))),
                    2 => Dimension::Country(None),
                    _ => Dimension::CampaignCountry(CampaignId(n % 3), None),
                },
                window: (n % 5 != 0).then_some(EventTimeMs(u64::from(n % 3))),
            })
            .collect();
        let mut rows = Rows::default();
        let mut model: BTreeMap<AggregateKey, Totals> = BTreeMap::new();
        for time in 0..2_000u64 {
            if rng.random_bool(0.05) {
                // A sweep forgets rows whose window is odd, as a closing window's are.
                let gone = |key: &AggregateKey| key.window.is_some_and(|start| start.0 % 2 == 1);
                rows.retain(|key, total| !gone(key) && !total.is_empty());
                model.retain(|key, _| !gone(key));
            }
            let before = model.clone();
            for _ in 0..rng.random_range(0..12) {
                let key = keys[rng.random_range(0..keys.len())].clone();
                let delta = Totals {
                    clicks: rng.random_range(-2..=2),
                    purchases: rng.random_range(-1..=1),
                    units: 0,
                    revenue_cents: rng.random_range(-1..=1) * 100,
                };
                rows.add(time, key.clone(), &delta);
                model.entry(key).or_default().add(&delta);
            }
            let mut reported = Vec::new();
            rows.changed(|key, old, new| reported.push((key.clone(), *old, *new)));
            reported.sort();
            let mut expected: Vec<(AggregateKey, Totals, Totals)> = model
                .iter()
                .map(|(key, new)| (key, before.get(key).copied().unwrap_or_default(), *new))
                .filter(|(_, old, new)| old != new)
                .map(|(key, old, new)| (key.clone(), old, new))
                .collect();
            expected.sort();
            assert_eq!(reported, expected, "time {time}");
        }
        let mut held: Vec<(AggregateKey, Totals)> = rows
            .rows
            .iter()
            .filter(|row| !row.total.is_empty())
            .map(|row| (row.key.clone(), row.total))
            .collect();
        held.sort();
        let expected: Vec<(AggregateKey, Totals)> = model
            .into_iter()
            .filter(|(_, total)| !total.is_empty())
            .collect();
        assert_eq!(held, expected);
    }
}
