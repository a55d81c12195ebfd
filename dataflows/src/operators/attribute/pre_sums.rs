//! The join's sums per family, before anything is exchanged: see [`PartialSums`].

use std::hash::Hash;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::interned::{CountryId, Interned, SegmentId, Segments, StateId};
use crate::families::{Columns, FAMILIES, Family, Keeps};
use crate::model::{AgeBand, AggregateKey, CampaignId, EventTimeMs, Gender, Slot, Tick, Totals};

/// Sums of attributed contributions per family, on the family's own columns, before anything is
/// exchanged: [`super::Attribute`] adds a tick's contributions and drains the sums.
///
/// Contributions are many and keys few (a handful of age bands, fifty states), so summing in hash
/// maps first shrinks what the totals receive by orders of magnitude. Each family of
/// [`FAMILIES`] is summed on just the columns it keeps, so a contribution costs a few small-key
/// hash updates: one for its campaign (which also counts it in every family's unknown segment
/// until the join finds its user's segment), one per family that keeps the campaign and part of
/// the segment, and one for the segment, shared by the families that keep no campaign, which
/// forget it before they meet the many segments. Segments, countries and states are keyed by
/// their numbers in the join's [`Segments`], which give back their names when the sums are
/// drained.
#[derive(Default)]
pub(super) struct PartialSums {
    /// Per campaign: every contribution (each counted once, by its unknown copy), and what is
    /// left in the unknown segment once the rows the join found have taken theirs out.
    campaign: FxHashMap<(Tick, Slot, CampaignId), CampaignSums>,
    /// Per segment, for the families that keep part of it and no campaign.
    segment: FxHashMap<(Tick, Slot, SegmentId), Totals>,
    /// Per family that keeps the campaign and part of the segment (in the order of
    /// [`CAMPAIGN_SEGMENT`]), on what it keeps.
    campaign_segment: [FxHashMap<(Tick, Slot, CampaignId, Part), Totals>; CAMPAIGN_SEGMENT.len()],
    /// The sums of every family's dimensions, windowed and all-time; kept between activations,
    /// as the maps above are, so they are not grown from empty (and their memory zeroed
    /// afresh) every time.
    keys: FxHashMap<(Tick, Key), DimensionSums>,
}

/// The families of [`FAMILIES`] that keep the campaign and part of the segment, by their places
/// there: each is summed per contribution, in a map of its own.
const CAMPAIGN_SEGMENT: [usize; count(true)] = places(true);

/// Whether some family keeps part of the segment and no campaign: those are summed per segment.
const SEGMENT_ONLY: bool = count(false) > 0;

/// Whether a family keeping `keeps` keeps part of the segment, and the campaign as `campaign`
/// says.
const fn keeps_segment_and(keeps: Keeps, campaign: bool) -> bool {
    keeps.segment() && keeps.campaign == campaign
}

/// How many families keep part of the segment, and the campaign as `campaign` says.
const fn count(campaign: bool) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < FAMILIES.len() {
        if keeps_segment_and(FAMILIES[i].keeps, campaign) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The places in [`FAMILIES`] of the `N` families that keep part of the segment, and the
/// campaign as `campaign` says.
const fn places<const N: usize>(campaign: bool) -> [usize; N] {
    let (mut places, mut n, mut i) = ([0; N], 0, 0);
    while i < FAMILIES.len() {
        if keeps_segment_and(FAMILIES[i].keeps, campaign) {
            places[n] = i;
            n += 1;
        }
        i += 1;
    }
    places
}

/// What a family keeps of a known segment, packed: the age band and gender as
/// `1 + band * 4 + gender` (0: not kept) above 32 bits holding the state's number if it keeps
/// the state, else the country's if it keeps the country (a state's number names its country
/// too). A contribution's sum in a family that keeps the campaign is keyed by its campaign and
/// this, a few bytes hashed and compared as the family's own columns were.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Part(u64);

impl Part {
    /// What a family that keeps `keeps` keeps of `interned`.
    #[inline]
    fn of(keeps: Keeps, interned: &Interned) -> Part {
        let mut part = 0;
        if keeps.age_gender {
            let (band, gender) = (interned.segment.age_band, interned.segment.gender);
            part |= u64::from(1 + band as u32 * 4 + gender as u32) << 32;
        }
        if keeps.state {
            part |= u64::from(interned.state.number());
        } else if keeps.country {
            part |= u64::from(interned.country.number());
        }
        Part(part)
    }
}

/// A family's dimension as [`PartialSums::drain`] gathers its sums, packed into one number: its
/// place in [`FAMILIES`] in the lowest 3 bits, then its campaign plus one (zero: not kept) in 33
/// bits, then its [`Part`] plus one (zero: not kept, or the unknown segment) in 41 bits. Sums are
/// gathered without hashing or comparing names, and a key hashes and compares as one `u128`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u128);

const CAMPAIGN: u32 = 3;
const PART: u32 = 36;
// A family's place fits its 3 bits, and a gender its 2 in a part.
const _: () = assert!(FAMILIES.len() <= 8 && Gender::ALL.len() <= 4);

impl Key {
    /// The key of family `family`, for a contribution of `campaign` by a user of whose segment
    /// the family keeps `part` (`None`: the unknown segment).
    #[inline]
    fn of(family: usize, campaign: CampaignId, part: Option<Part>) -> Key {
        let keeps = FAMILIES[family].keeps;
        let mut key = family as u128;
        if keeps.campaign {
            key |= (u128::from(campaign.0) + 1) << CAMPAIGN;
        }
        if let Some(Part(part)) = part.filter(|_| keeps.segment()) {
            key |= (u128::from(part) + 1) << PART;
        }
        Key(key)
    }

    /// The dimension, named.
    fn dimension(self, segments: &Segments) -> crate::model::Dimension {
        let family = &FAMILIES[(self.0 & 0b111) as usize];
        let keeps = family.keeps;
        let campaign = ((self.0 >> CAMPAIGN) as u64 & ((1 << 33) - 1)).checked_sub(1);
        let part = ((self.0 >> PART) as u64 & ((1 << 41) - 1)).checked_sub(1);
        let age_gender = part
            .map(|part| (part >> 32) as usize)
            .filter(|&n| n > 0)
            .map(|n| (AgeBand::ALL[(n - 1) / 4], Gender::ALL[(n - 1) % 4]));
        let place = part.map(|part| part as u32);
        let state = place
            .filter(|_| keeps.state)
            .map(|n| segments.state(StateId::numbered(n)));
        let country = match (keeps.country, state) {
            (false, _) => None,
            (true, Some((country, _))) => Some(country),
            (true, None) => place.map(|n| segments.country(CountryId::numbered(n))),
        };
        let columns = Columns {
            // A family that keeps no campaign reads none.
            campaign: CampaignId(campaign.unwrap_or_default() as u32),
            age_gender,
            state,
            country,
        };
        (family.dimension)(&columns)
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
    /// families that keep no segment count each contribution once: from its unknown copy. A
    /// known contribution thus costs one update of the campaign's sums, one per family that
    /// keeps the campaign and part of the segment, and one of the segment's.
    pub(super) fn add(
        &mut self,
        time: Tick,
        campaign: CampaignId,
        slot: Slot,
        segment: Option<(SegmentId, &Interned)>,
        totals: Totals,
    ) {
        update(
            &mut self.campaign,
            (time, slot, campaign),
            |sums| match segment {
                None => {
                    sums.all.add(&totals);
                    sums.unknown.add(&totals);
                }
                Some(_) => sums.unknown.add(&totals.negated()),
            },
        );
        if let Some((id, interned)) = segment {
            for (sums, family) in self.campaign_segment.iter_mut().zip(CAMPAIGN_SEGMENT) {
                let part = Part::of(FAMILIES[family].keeps, interned);
                update(sums, (time, slot, campaign, part), |sum| sum.add(&totals));
            }
            if SEGMENT_ONLY {
                update(&mut self.segment, (time, slot, id), |sum| sum.add(&totals));
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
    pub(super) fn drain(
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
            for (family, Family { keeps, .. }) in FAMILIES.iter().enumerate() {
                // The families that keep no segment take every contribution; the others, here,
                // what is left in the unknown segment.
                let totals = if keeps.segment() { unknown } else { all };
                add(time, slot, Key::of(family, campaign, None), totals);
            }
        }
        for (sums, family) in self.campaign_segment.iter_mut().zip(CAMPAIGN_SEGMENT) {
            for ((time, slot, campaign, part), totals) in sums.drain() {
                add(time, slot, Key::of(family, campaign, Some(part)), totals);
            }
        }
        for ((time, slot, id), totals) in self.segment.drain() {
            let interned = segments.get(id);
            for (family, Family { keeps, .. }) in FAMILIES.iter().enumerate() {
                if !keeps.campaign && keeps.segment() {
                    // A family that keeps no campaign reads none.
                    let part = Part::of(*keeps, interned);
                    let key = Key::of(family, CampaignId::default(), Some(part));
                    add(time, slot, key, totals);
                }
            }
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

/// Applies `f` to `key`'s value in `map`, a default value inserted first if it has none.
///
/// A tick's contributions are many and its keys few, so the key is nearly always there: a
/// lookup, which is inlined, finds it, and only a new key pays for an entry. (`entry` on every
/// contribution was a call, not inlined, once the families became data: 7.9M calls of
/// `rustc_entry` in `shopflow bench -w 1 --events 2000000`, +3.4% instructions in all; callgrind.)
#[inline(always)]
fn update<K: Hash + Eq, V: Default>(map: &mut FxHashMap<K, V>, key: K, f: impl FnOnce(&mut V)) {
    match map.get_mut(&key) {
        Some(value) => f(value),
        None => f(map.entry(key).or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::dimensions;
    use crate::model::Segment;

    /// Every family's key names the dimension `families::dimensions` gives, for every age band,
    /// gender, place and the unknown segment, and campaigns up to the largest.
    #[test]
    fn a_key_names_the_dimension_the_families_give() {
        let mut segments = Segments::default();
        let places = [
            ("US", "CA"),
            ("US", "NY"),
            ("CA", "CA"),
            ("", ""),
            ("ÅÅ\u{0}", "\"x,y=z\""),
        ];
        let mut ids = Vec::new();
        for (i, (country, state)) in places.iter().enumerate() {
            for band in AgeBand::ALL {
                let segment = Segment {
                    age_band: band,
                    gender: Gender::ALL[i % Gender::ALL.len()],
                    state: (*state).into(),
                    country: (*country).into(),
                };
                ids.push((segments.intern(segment.clone()), segment));
            }
        }
        for campaign in [0, 1, 7, u32::MAX - 1, u32::MAX].map(CampaignId) {
            let mut cases: Vec<_> = ids
                .iter()
                .map(|(id, segment)| (Some(segments.get(*id)), Some(segment)))
                .collect();
            cases.push((None, None));
            for (interned, segment) in cases {
                let expected = dimensions(campaign, segment);
                for family in 0..FAMILIES.len() {
                    let part = interned.map(|i| Part::of(FAMILIES[family].keeps, i));
                    let key = Key::of(family, campaign, part);
                    assert_eq!(
                        key.dimension(&segments),
                        expected[family],
                        "family {family}, campaign {campaign:?}, segment {segment:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_variant_lists_follow_their_discriminants() {
        for (i, band) in AgeBand::ALL.into_iter().enumerate() {
            assert_eq!(band as usize, i);
        }
        for (i, gender) in Gender::ALL.into_iter().enumerate() {
            assert_eq!(gender as usize, i);
        }
    }
}
