//! The join's sums per family, before anything is exchanged: see [`PartialSums`].

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::interned::{CountryId, Interned, SegmentId, Segments, StateId};
use crate::model::{
    AgeBand, AggregateKey, CampaignId, Dimension, EventTimeMs, Gender, Slot, Tick, Totals,
};

/// Sums of attributed contributions per family, on the family's own columns, before anything is
/// exchanged: [`super::attribute`] adds a tick's contributions and drains the sums.
///
/// Contributions are many and keys few (a handful of age bands, fifty states), so summing in hash
/// maps first shrinks what the totals receive by orders of magnitude. Each family is summed on just
/// the columns it keeps, so a contribution costs a few small-key hash updates, and the segment-only
/// families forget the campaign before they meet the many segments. Segments and countries are
/// keyed by their numbers in the join's [`Segments`], which give back their names when the sums
/// are drained.
#[derive(Default)]
pub(super) struct PartialSums {
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
    pub(super) fn add(
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
