//! The aggregate families: the dimension sets a contribution counts in.

use crate::model::{CampaignId, Dimension, Segment};

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
