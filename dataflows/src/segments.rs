//! Attributes contributions to demographic segments: a join with the demographics on the user id.
//!
//! Users without a demographics row count in the `unknown` segment. Differential has no outer join,
//! so it is written as one: every contribution is counted as unknown, and the join, for each user
//! it finds, both counts the contribution in the user's segment and cancels its unknown copy. When
//! the row appears (or changes, or is deleted), the join's output moves the user's contributions,
//! past ones included, by retraction and insertion.

use differential_dataflow::VecCollection;

use crate::model::{CampaignId, Contribution, Demographic, Segment, Slot, Tick, Totals};

/// Which segment a contribution row counts in, and with which sign.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Attribution {
    /// In this segment.
    Known(Segment),
    /// In the unknown segment.
    Unknown,
    /// Negatively in the unknown segment: cancels the `Unknown` copy of a user that has a row.
    CancelUnknown,
}

/// A contribution attributed to a segment; its totals travel in the difference.
pub type SegmentRow = (CampaignId, Slot, Attribution);

/// Joins contributions with demographics. Arranges both by user; each demographic row is reduced to
/// its [`Segment`] first, so changes that keep the segment (a birthday within an age band) vanish.
pub fn attribute<'scope>(
    contributions: VecCollection<'scope, Tick, Contribution, Totals>,
    demographics: VecCollection<'scope, Tick, Demographic>,
) -> VecCollection<'scope, Tick, SegmentRow, Totals> {
    let users = demographics
        .map(|row| (row.id, row.segment()))
        .arrange_by_key_named("Arrange: demographics by user");
    let contributions = contributions.arrange_by_key_named("Arrange: contributions by user");
    let unknown = contributions
        .clone()
        .flat_map_ref(|_user, &(campaign, slot)| Some((campaign, slot, Attribution::Unknown)));
    let known = contributions.join_core(users, |_user, &(campaign, slot), segment| {
        [
            (campaign, slot, Attribution::Known(segment.clone())),
            (campaign, slot, Attribution::CancelUnknown),
        ]
    });
    known.concat(unknown)
}
