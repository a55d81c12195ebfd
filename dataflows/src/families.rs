//! The aggregate families, declared in one place: the dimension sets a contribution counts in.
//!
//! A family keeps some of a contribution's columns (its campaign, and of its user's segment the
//! age band and gender, the state or the country) and sums over the rest; its [`Dimension`] is
//! made of what it keeps. [`FAMILIES`] lists them all: the join sums each family on the columns
//! it keeps ([`crate::operators::attribute`]), and everything after it knows a family only by its
//! dimensions. Adding a family is a line in [`FAMILIES`], with the [`Dimension`] variant it
//! makes (which the output orders and the sink writes).

use std::mem::{Discriminant, discriminant};
use std::sync::LazyLock;

use crate::model::{AgeBand, CampaignId, Dimension, Gender, Name, Segment};

/// Which of a contribution's columns a family keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keeps {
    /// The campaign.
    pub campaign: bool,
    /// The user's age band and gender.
    pub age_gender: bool,
    /// The user's state, within its country.
    pub state: bool,
    /// The user's country.
    pub country: bool,
}

impl Keeps {
    /// Whether the family keeps anything of the user's segment: then the unknown segment (users
    /// without a demographics row) is one of its values.
    pub const fn segment(self) -> bool {
        self.age_gender || self.state || self.country
    }
}

/// The values of a contribution's columns, of which a family's dimension takes those it keeps;
/// the segment's are `None` for a user without a known segment.
#[derive(Clone, Copy, Debug)]
pub struct Columns<'a> {
    /// The campaign.
    pub campaign: CampaignId,
    /// The user's age band and gender.
    pub age_gender: Option<(AgeBand, Gender)>,
    /// The user's state, as `(country, state)`.
    pub state: Option<&'a (Name, Name)>,
    /// The user's country.
    pub country: Option<&'a Name>,
}

/// An aggregate family: the columns it keeps, and the dimension it makes of them.
pub struct Family {
    /// The columns it keeps.
    pub keeps: Keeps,
    /// Its dimension, from the columns it keeps (it must read no other: the join gives it only
    /// those).
    pub dimension: fn(&Columns<'_>) -> Dimension,
}

const fn keeps(campaign: bool, age_gender: bool, state: bool, country: bool) -> Keeps {
    Keeps {
        campaign,
        age_gender,
        state,
        country,
    }
}

/// Every family, in the order of their [`Dimension`] variants.
#[rustfmt::skip]
pub const FAMILIES: &[Family] = &[
    // keeps:                       campaign, age/gender, state, country
    Family { keeps: keeps(true, false, false, false), dimension: |c| Dimension::Campaign(c.campaign) },
    Family { keeps: keeps(false, true, false, false), dimension: |c| Dimension::AgeGender(c.age_gender) },
    Family { keeps: keeps(false, false, true, false), dimension: |c| Dimension::State(c.state.cloned()) },
    Family { keeps: keeps(false, false, false, true), dimension: |c| Dimension::Country(c.country.cloned()) },
    Family { keeps: keeps(true, false, false, true), dimension: |c| Dimension::CampaignCountry(c.campaign, c.country.cloned()) },
    Family { keeps: keeps(true, true, false, false), dimension: |c| Dimension::CampaignAgeGender(c.campaign, c.age_gender) },
];

/// The dimensions a contribution of `campaign` by a user of `segment` (or of no known segment)
/// counts in: one per family, in the order of [`FAMILIES`].
///
/// ```
/// use dataflows::families::dimensions;
/// use dataflows::model::{CampaignId, Dimension};
///
/// let unknown = dimensions(CampaignId(7), None);
/// assert_eq!(unknown[0], Dimension::Campaign(CampaignId(7)));
/// assert_eq!(unknown[3], Dimension::Country(None));
/// ```
pub fn dimensions(campaign: CampaignId, segment: Option<&Segment>) -> [Dimension; FAMILIES.len()] {
    let place = segment.map(|s| (s.country.clone(), s.state.clone()));
    let columns = Columns {
        campaign,
        age_gender: segment.map(|s| (s.age_band, s.gender)),
        state: place.as_ref(),
        country: segment.map(|s| &s.country),
    };
    std::array::from_fn(|i| (FAMILIES[i].dimension)(&columns))
}

/// The place in [`FAMILIES`] of the family whose dimensions are of `dimension`'s kind.
///
/// ```
/// use dataflows::families::{dimensions, family_of};
/// use dataflows::model::CampaignId;
///
/// for (i, dimension) in dimensions(CampaignId(3), None).iter().enumerate() {
///     assert_eq!(family_of(dimension), i);
/// }
/// ```
pub fn family_of(dimension: &Dimension) -> usize {
    // The kind each family makes, found once: the API asks for every row it serves.
    static KINDS: LazyLock<[Discriminant<Dimension>; FAMILIES.len()]> = LazyLock::new(|| {
        dimensions(CampaignId::default(), None)
            .each_ref()
            .map(discriminant)
    });
    let kind = discriminant(dimension);
    KINDS
        .iter()
        .position(|made| *made == kind)
        .expect("every kind of dimension is a family's (a test checks it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of dimension is made by one family, the families in the order of the kinds:
    /// [`family_of`] finds each, and a new kind does not compile here until it is listed.
    #[test]
    fn every_kind_of_dimension_is_a_familys_in_order() {
        let every = [
            Dimension::Campaign(CampaignId(1)),
            Dimension::AgeGender(None),
            Dimension::State(Some(("US".into(), "CA".into()))),
            Dimension::Country(None),
            Dimension::CampaignCountry(CampaignId(2), Some("US".into())),
            Dimension::CampaignAgeGender(CampaignId(3), None),
        ];
        for (i, dimension) in every.iter().enumerate() {
            match dimension {
                Dimension::Campaign(_)
                | Dimension::AgeGender(_)
                | Dimension::State(_)
                | Dimension::Country(_)
                | Dimension::CampaignCountry(..)
                | Dimension::CampaignAgeGender(..) => assert_eq!(family_of(dimension), i),
            }
        }
        assert_eq!(FAMILIES.len(), every.len());
    }

    /// A family's dimension changes with each column it keeps, and with no other: the join
    /// gives it only the columns it keeps.
    #[test]
    fn a_familys_dimension_is_made_of_the_columns_it_keeps() {
        let places = [("US".into(), "CA".into()), ("CA".into(), "ON".into())];
        let countries: [Name; 2] = ["US".into(), "CA".into()];
        let base = Columns {
            campaign: CampaignId(1),
            age_gender: Some((AgeBand::From18To24, Gender::Female)),
            state: Some(&places[0]),
            country: Some(&countries[0]),
        };
        let others = [
            (
                "campaign",
                Columns {
                    campaign: CampaignId(2),
                    ..base
                },
            ),
            (
                "age_gender",
                Columns {
                    age_gender: Some((AgeBand::From65, Gender::Male)),
                    ..base
                },
            ),
            (
                "state",
                Columns {
                    state: Some(&places[1]),
                    ..base
                },
            ),
            (
                "country",
                Columns {
                    country: Some(&countries[1]),
                    ..base
                },
            ),
        ];
        for (i, family) in FAMILIES.iter().enumerate() {
            let Keeps {
                campaign,
                age_gender,
                state,
                country,
            } = family.keeps;
            for ((column, other), kept) in others.iter().zip([campaign, age_gender, state, country])
            {
                let moved = (family.dimension)(other) != (family.dimension)(&base);
                assert_eq!(moved, kept, "family {i}, column {column}");
            }
        }
        let variants: std::collections::HashSet<_> = FAMILIES
            .iter()
            .map(|family| std::mem::discriminant(&(family.dimension)(&base)))
            .collect();
        assert_eq!(
            variants.len(),
            FAMILIES.len(),
            "each family its own dimension"
        );
    }
}
