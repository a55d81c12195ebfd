//! Attributes contributions to demographic segments: a join with the demographics on the user id.
//!
//! Users without a demographics row count in the `unknown` segment. Differential has no outer join,
//! so it is written as one: every contribution is counted as unknown, and every row the join finds
//! counts the contribution in the user's segment *and* cancels its unknown copy. When the row
//! appears (or changes, or is deleted), the join's output moves the user's contributions, past ones
//! included, by retraction and insertion.

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::operators::cursor::join::join_traces;
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::{CapacityContainerBuilder, PushInto};

use crate::model::{CampaignId, Contribution, Demographic, Segment, Slot, Tick, Totals, UserId};

/// The contributions arranged by user: the all-time and open-window state a checkpoint reads.
pub type ContributionTrace = TraceAgent<ValSpine<UserId, (CampaignId, Slot), Tick, Totals>>;

/// Each user's segment as the join holds it, which a checkpoint reads.
pub type SegmentTrace = TraceAgent<ValSpine<UserId, Segment, Tick, isize>>;

/// A contribution attributed to a segment (`None`: the unknown segment); its totals travel in the
/// difference. A `Some` row also stands for the negation of the same row with `None`.
pub type SegmentRow = (CampaignId, Slot, Option<Segment>);

/// Joins contributions with demographics. Arranges both by user; each demographic row is reduced to
/// its [`Segment`] first, so changes that keep the segment (a birthday within an age band) vanish.
///
/// The join's output is not consolidated here: [`crate::aggregates`] sums it by hashing anyway, and
/// sorting rows that carry segment names was the join's largest cost.
///
/// `restored_segments` are users' segments a checkpoint held, entering beside the demographics.
/// Also returns both arrangements: everything counted so far, and every user's segment.
pub fn attribute<'scope>(
    contributions: VecCollection<'scope, Tick, Contribution, Totals>,
    demographics: VecCollection<'scope, Tick, Demographic>,
    restored_segments: VecCollection<'scope, Tick, (UserId, Segment)>,
) -> (
    VecCollection<'scope, Tick, SegmentRow, Totals>,
    ContributionTrace,
    SegmentTrace,
) {
    let users = demographics
        .map(|row| (row.id, row.segment()))
        .concat(restored_segments)
        .arrange_by_key_named("Arrange: demographics by user");
    let segment_trace = users.trace.clone();
    let contributions = contributions.arrange_by_key_named("Arrange: contributions by user");
    let trace = contributions.trace.clone();
    let unknown = contributions
        .clone()
        .flat_map_ref(|_user, &(campaign, slot)| Some((campaign, slot, None)));
    let known =
        join_traces::<_, _, _, _, CapacityContainerBuilder<Vec<(SegmentRow, Tick, Totals)>>>(
            contributions,
            users,
            "Join: contributions with segments",
            |_user, &(campaign, slot), segment, time, totals, count: &isize, output| {
                output.push_into((
                    (campaign, slot, Some(segment.clone())),
                    time,
                    totals.scaled(*count),
                ));
            },
        )
        .as_collection();
    (known.concat(unknown), trace, segment_trace)
}
