//! A worker's segments, each held once and named by a small number.
//!
//! The join hands every contribution it finds to the pre-sums with each of its user's segments,
//! and the pre-sums key three of their four families by the segment or its country: as text, each
//! of those keys was hashed and compared name by name, several times per contribution. The join
//! holds its users' segments by number instead, and the pre-sums key by those numbers; the names
//! come back only when a tick's sums leave as aggregate keys.
//!
//! Numbers are this worker's own, handed out in the order segments arrive, so they never leave
//! the worker: what is exchanged, checkpointed or compared names segments by their values.

use rustc_hash::FxHashMap;

use crate::model::{Name, Segment};

/// A segment's number in its worker's [`Segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SegmentId(u32);

/// A country's number in its worker's [`Segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CountryId(u32);

/// A state's number, within its country, in its worker's [`Segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StateId(u32);

/// A segment as the table holds it.
#[derive(Debug)]
pub(crate) struct Interned {
    /// The segment.
    pub(crate) segment: Segment,
    /// The number of its country.
    pub(crate) country: CountryId,
    /// The number of its state within its country.
    pub(crate) state: StateId,
}

/// Every segment this worker has seen, and every country and state, each under its number.
///
/// Segments are never dropped: the table holds each distinct segment seen once (a few thousand
/// in a shop: age bands × genders × states), however many users share it or have left it.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    ids: FxHashMap<Segment, SegmentId>,
    segments: Vec<Interned>,
    country_ids: FxHashMap<Name, CountryId>,
    countries: Vec<Name>,
    /// By `(country, state)`, as [`crate::model::Dimension::State`] has them.
    state_ids: FxHashMap<(Name, Name), StateId>,
    states: Vec<(Name, Name)>,
}

impl Segments {
    /// The number of `segment`, given one if it has none.
    pub(crate) fn intern(&mut self, segment: Segment) -> SegmentId {
        if let Some(&id) = self.ids.get(&segment) {
            return id;
        }
        let country = match self.country_ids.get(&segment.country) {
            Some(&country) => country,
            None => {
                let country = CountryId(next(self.countries.len()));
                self.countries.push(segment.country.clone());
                self.country_ids.insert(segment.country.clone(), country);
                country
            }
        };
        let place = (segment.country.clone(), segment.state.clone());
        let state = match self.state_ids.get(&place) {
            Some(&state) => state,
            None => {
                let state = StateId(next(self.states.len()));
                self.states.push(place.clone());
                self.state_ids.insert(place, state);
                state
            }
        };
        let id = SegmentId(next(self.segments.len()));
        self.ids.insert(segment.clone(), id);
        self.segments.push(Interned {
            segment,
            country,
            state,
        });
        id
    }

    /// Segment `id`.
    #[inline]
    pub(crate) fn get(&self, id: SegmentId) -> &Interned {
        &self.segments[id.0 as usize]
    }

    /// The name of country `id`.
    #[inline]
    pub(crate) fn country(&self, id: CountryId) -> &Name {
        &self.countries[id.0 as usize]
    }

    /// State `id`, as `(country, state)`.
    #[inline]
    pub(crate) fn state(&self, id: StateId) -> &(Name, Name) {
        &self.states[id.0 as usize]
    }
}

/// The number after `len` others.
fn next(len: usize) -> u32 {
    u32::try_from(len).expect("fewer than 2^32 distinct segments per worker")
}

#[cfg(test)]
mod tests {
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
}
