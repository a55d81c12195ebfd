//! A worker's segments, each held once and named by a small number.
//!
//! The join hands every contribution it finds to the pre-sums with each of its user's segments;
//! the pre-sums key the families by the segment or the part of it each keeps (its country, its
//! age band and gender), and then sum every family into its dimensions, states and countries
//! among them. As text, each of those keys was
//! hashed and compared name by name, several times per contribution. The join holds its users'
//! segments by number instead, and the pre-sums key segments, countries and states by numbers;
//! the names come back only when a tick's sums leave as aggregate keys.
//!
//! Numbers are this worker's own, handed out in the order segments arrive, so they never leave
//! the worker: what is exchanged, checkpointed or compared names segments by their values.
//!
//! A segment is kept while a user holds it, a country or state while a segment kept has it; then
//! its number is freed for reuse, so the table is bounded by the segments users hold now, not by
//! every segment the demographics ever named. Numbers are freed only by [`Segments::collect`],
//! which the join calls once a tick's sums, which may still name a segment its last user left
//! during the tick, have been drained.

use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::model::{Name, Segment};

/// A segment's number in its worker's [`Segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct SegmentId(u32);

/// A country's number in its worker's [`Segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct CountryId(u32);

/// A state's number, within its country, in its worker's [`Segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct StateId(u32);

impl CountryId {
    /// Its number, as [`super::pre_sums`] packs it in a key.
    pub(super) fn number(self) -> u32 {
        self.0
    }

    /// The country numbered `n` (see [`CountryId::number`]).
    pub(super) fn numbered(n: u32) -> CountryId {
        CountryId(n)
    }
}

impl StateId {
    /// Its number, as [`super::pre_sums`] packs it in a key.
    pub(super) fn number(self) -> u32 {
        self.0
    }

    /// The state numbered `n` (see [`StateId::number`]).
    pub(super) fn numbered(n: u32) -> StateId {
        StateId(n)
    }
}

/// A segment as the table holds it.
#[derive(Clone, Debug)]
pub(super) struct Interned {
    /// The segment.
    pub(super) segment: Segment,
    /// The number of its country.
    pub(super) country: CountryId,
    /// The number of its state within its country.
    pub(super) state: StateId,
}

/// Every segment this worker's users hold, and every country and state of those, each under its
/// number.
#[derive(Debug, Default)]
pub(super) struct Segments {
    segments: Table<Segment, Interned>,
    countries: Table<Name, Name>,
    /// By `(country, state)`, as [`crate::model::Dimension::State`] has them.
    states: Table<(Name, Name), (Name, Name)>,
}

impl Segments {
    /// The number of `segment`, given one if it has none. A segment no user holds by the next
    /// [`Segments::collect`] is freed then.
    pub(super) fn intern(&mut self, segment: Segment) -> SegmentId {
        if let Some(id) = self.segments.find(&segment) {
            return SegmentId(id);
        }
        let country = self
            .countries
            .intern(&segment.country, || segment.country.clone());
        self.countries.hold(country);
        let place = (segment.country.clone(), segment.state.clone());
        let state = self.states.intern(&place, || place.clone());
        self.states.hold(state);
        let interned = Interned {
            country: CountryId(country),
            state: StateId(state),
            segment: segment.clone(),
        };
        SegmentId(self.segments.intern(&segment, || interned))
    }

    /// Segment `id`.
    #[inline]
    pub(super) fn get(&self, id: SegmentId) -> &Interned {
        self.segments.get(id.0)
    }

    /// The name of country `id`.
    #[inline]
    pub(super) fn country(&self, id: CountryId) -> &Name {
        self.countries.get(id.0)
    }

    /// State `id`, as `(country, state)`.
    #[inline]
    pub(super) fn state(&self, id: StateId) -> &(Name, Name) {
        self.states.get(id.0)
    }

    /// A user took segment `id`.
    pub(super) fn hold(&mut self, id: SegmentId) {
        self.segments.hold(id.0);
    }

    /// A user left segment `id`.
    pub(super) fn release(&mut self, id: SegmentId) {
        self.segments.release(id.0);
    }

    /// Frees the numbers of segments no user holds, and of countries and states no segment kept
    /// has. Nothing may name a freed number afterwards: call it when no sums are pending.
    pub(super) fn collect(&mut self) {
        for Interned { country, state, .. } in self.segments.collect() {
            self.countries.release(country.0);
            self.states.release(state.0);
        }
        self.countries.collect();
        self.states.collect();
    }

    /// How many segments are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.segments.ids.len()
    }
}

/// Values under numbers, found by their keys, each kept while something holds it.
#[derive(Debug)]
struct Table<K, V> {
    ids: FxHashMap<K, u32>,
    /// By number: the key, the value, and how many hold it. A freed number's entry stays until
    /// the number is reused.
    entries: Vec<(K, V, u32)>,
    /// Freed numbers, to reuse.
    vacant: Vec<u32>,
    /// Numbers whose holders fell to none (or that were never held) since the last collection.
    released: Vec<u32>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Table<K, V> {
        Table {
            ids: FxHashMap::default(),
            entries: Vec::new(),
            vacant: Vec::new(),
            released: Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Table<K, V> {
    fn find(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// The number of `key`, given one (with the value `value` makes) if it has none; a new
    /// number no one holds by the next collection is freed then.
    fn intern(&mut self, key: &K, value: impl FnOnce() -> V) -> u32 {
        if let Some(id) = self.find(key) {
            return id;
        }
        let entry = (key.clone(), value(), 0);
        let id = match self.vacant.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 segments per worker")
            }
        };
        self.ids.insert(key.clone(), id);
        self.released.push(id);
        id
    }

    #[inline]
    fn get(&self, id: u32) -> &V {
        &self.entries[id as usize].1
    }

    fn hold(&mut self, id: u32) {
        self.entries[id as usize].2 += 1;
    }

    fn release(&mut self, id: u32) {
        let holders = &mut self.entries[id as usize].2;
        *holders = holders.checked_sub(1).expect("released more than held");
        if *holders == 0 {
            self.released.push(id);
        }
    }

    /// Frees every released number still not held, and hands back their values.
    fn collect(&mut self) -> Vec<V> {
        let mut freed = Vec::new();
        self.released.sort_unstable();
        self.released.dedup();
        for id in std::mem::take(&mut self.released) {
            let (key, value, holders) = &self.entries[id as usize];
            if *holders == 0 {
                self.ids.remove(key);
                self.vacant.push(id);
                freed.push(value.clone());
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::model::{AgeBand, Gender};

    fn segment(state: &str, country: &str, gender: Gender) -> Segment {
        Segment {
            age_band: AgeBand::of(30),
            gender,
            state: state.into(),
            country: country.into(),
        }
    }

    #[test]
    fn equal_segments_share_a_number_and_countries_and_states_are_shared_between_segments() {
        let mut table = Segments::default();
        let ca = table.intern(segment("CA", "US", Gender::Female));
        let ny = table.intern(segment("NY", "US", Gender::Female));
        let on = table.intern(segment("ON", "CA", Gender::Female));
        let ca_male = table.intern(segment("CA", "US", Gender::Male));
        // A state named like a country is not that country.
        let state_ca = table.intern(segment("CA", "CA", Gender::Female));
        assert_eq!(table.intern(segment("CA", "US", Gender::Female)), ca);
        let ids = [ca, ny, on, ca_male, state_ca];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(table.get(ca).segment, segment("CA", "US", Gender::Female));
        assert_eq!(
            table.get(state_ca).segment,
            segment("CA", "CA", Gender::Female)
        );
        assert_eq!(table.get(ca).country, table.get(ny).country);
        assert_eq!(table.get(ca).country, table.get(ca_male).country);
        assert_eq!(table.get(on).country, table.get(state_ca).country);
        assert_ne!(table.get(ca).country, table.get(on).country);
        assert_eq!(table.country(table.get(ny).country), "US");
        assert_eq!(table.country(table.get(on).country), "CA");
        // States are shared by segments of one place, and told apart by their country.
        assert_eq!(table.get(ca).state, table.get(ca_male).state);
        let states = [ca, ny, on, state_ca].map(|id| table.get(id).state);
        for (i, a) in states.iter().enumerate() {
            for b in &states[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let names = |id: SegmentId| {
            let (country, state) = table.state(table.get(id).state);
            (country.as_str(), state.as_str())
        };
        assert_eq!(names(ca_male), ("US", "CA"));
        assert_eq!(names(state_ca), ("CA", "CA"));
        assert_eq!(names(on), ("CA", "ON"));
    }

    /// Users take and leave segments at random, the table collecting now and then; it must
    /// keep exactly the segments held, each under one number that names it, with its country
    /// and state, and free the rest for reuse.
    #[test]
    fn the_table_keeps_exactly_the_segments_held_and_reuses_the_numbers_of_the_rest() {
        let states = [
            "CA",
            "NY",
            "ON",
            "BC",
            "\0",
            "é",
            "a long state name, not inline at all",
        ];
        let countries = [
            "US",
            "CA",
            "",
            "Ünited Kingdom of Great Britain and Northern Ireland",
        ];
        let genders = [Gender::Female, Gender::Male, Gender::Other];
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut table = Segments::default();
            // The model: how many hold each segment.
            let mut held: BTreeMap<Segment, (SegmentId, usize)> = BTreeMap::new();
            for step in 0..400 {
                let wanted = segment(
                    states[rng.random_range(0..states.len())],
                    countries[rng.random_range(0..countries.len())],
                    genders[rng.random_range(0..genders.len())],
                );
                let (entries, vacant) = (table.segments.entries.len(), table.segments.vacant.len());
                let id = table.intern(wanted.clone());
                if vacant > 0 {
                    // A freed number is taken before a new one is made.
                    assert_eq!(
                        table.segments.entries.len(),
                        entries,
                        "seed {seed}, step {step}"
                    );
                }
                match held.get_mut(&wanted) {
                    Some((known, count)) => {
                        assert_eq!(*known, id, "seed {seed}, step {step}");
                        if *count > 0 && rng.random_bool(0.5) {
                            *count -= 1;
                            table.release(id);
                        } else {
                            *count += 1;
                            table.hold(id);
                        }
                    }
                    // Interned, and sometimes left unheld: freed at the next collection.
                    None if rng.random_bool(0.2) => {}
                    None => {
                        held.insert(wanted.clone(), (id, 1));
                        table.hold(id);
                    }
                }
                if rng.random_bool(0.2) {
                    table.collect();
                    held.retain(|_, (_, count)| *count > 0);
                    assert_eq!(table.len(), held.len(), "seed {seed}, step {step}");
                    let numbers = &table.segments;
                    assert_eq!(numbers.entries.len(), numbers.vacant.len() + held.len());
                    for (segment, (id, _)) in &held {
                        let found = table.get(*id);
                        assert_eq!(&found.segment, segment);
                        assert_eq!(table.country(found.country), &segment.country);
                        assert_eq!(
                            table.state(found.state),
                            &(segment.country.clone(), segment.state.clone())
                        );
                    }
                    let countries: Vec<_> = held.keys().map(|s| s.country.clone()).collect();
                    let live_countries = table.countries.ids.len();
                    assert_eq!(
                        live_countries,
                        countries
                            .iter()
                            .collect::<std::collections::BTreeSet<_>>()
                            .len()
                    );
                    let live_states = table.states.ids.len();
                    let places: std::collections::BTreeSet<_> =
                        held.keys().map(|s| (&s.country, &s.state)).collect();
                    assert_eq!(live_states, places.len());
                }
            }
        }
    }
}
