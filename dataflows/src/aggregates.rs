//! The aggregate families: per campaign, per segment, per campaign and segment, each all-time and
//! per window, maintained by one `count_total` over a single arrangement of keys.

use differential_dataflow::operators::CountTotal;
use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::vec::Filter;

use crate::model::{AggregateKey, CampaignId, Counter, Dimension, Segment, Slot, Tick, Totals};
use crate::segments::{Attribution, SegmentRow};
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

/// Maintains every aggregate: `(key, totals)` rows, one per key, updated as old value retracted
/// and new value inserted.
///
/// Rows of a window disappear from the arrangement when the window closes (see
/// [`crate::windows::retire_windows`]); those disappearances are not changes of the aggregate and
/// are filtered out, so a closed window's last value is its final value.
pub fn aggregate<'scope>(
    rows: VecCollection<'scope, Tick, SegmentRow, Totals>,
    spec: WindowSpec,
) -> VecCollection<'scope, Tick, (AggregateKey, Totals), isize> {
    pre_sum(rows)
        .arrange_by_self_named("Arrange: aggregates")
        .count_total()
        .inner
        .filter(move |((key, _), time, _)| {
            key.window.is_none_or(|start| !spec.is_closed(start, *time))
        })
        .as_collection()
}

/// Keeps the engine's counters: `(counter, value)` rows.
pub fn count_counters<'scope>(
    counters: VecCollection<'scope, Tick, Counter, isize>,
) -> VecCollection<'scope, Tick, (Counter, isize), isize> {
    counters
        .arrange_by_self_named("Arrange: counters")
        .count_total()
}

/// Expands segment rows into aggregate keys, summing what each worker received in one activation
/// before anything is exchanged or sorted.
///
/// Most keys are few (a handful of age bands, fifty states) while rows are many, so summing in a
/// hash map first shrinks what the arrangement has to sort by orders of magnitude. Unknown rows
/// and their cancellations meet here first and mostly vanish.
fn pre_sum<'scope>(
    rows: VecCollection<'scope, Tick, SegmentRow, Totals>,
) -> VecCollection<'scope, Tick, AggregateKey, Totals> {
    rows.inner
        .unary(Pipeline, "Aggregate: pre-sum", |_capability, _info| {
            let mut by_segment: FxHashMap<(Tick, CampaignId, Slot, Option<Segment>), Totals> =
                FxHashMap::default();
            let mut by_key: FxHashMap<(Tick, AggregateKey), Totals> = FxHashMap::default();
            move |input, output| {
                input.for_each_stamp(|capability, data| {
                    for batch in data {
                        for ((campaign, slot, attribution), time, totals) in batch.drain(..) {
                            let (segment, totals) = match attribution {
                                Attribution::Known(segment) => (Some(segment), totals),
                                Attribution::Unknown => (None, totals),
                                Attribution::CancelUnknown => (None, totals.negated()),
                            };
                            by_segment
                                .entry((time, campaign, slot, segment))
                                .or_default()
                                .add(&totals);
                        }
                    }
                    for ((time, campaign, slot, segment), totals) in by_segment.drain() {
                        if totals.is_empty() {
                            continue;
                        }
                        for dimension in dimensions(campaign, segment.as_ref()) {
                            if let Slot::Window(start) = slot {
                                let key = AggregateKey {
                                    dimension: dimension.clone(),
                                    window: Some(start),
                                };
                                by_key.entry((time, key)).or_default().add(&totals);
                            }
                            let key = AggregateKey {
                                dimension,
                                window: None,
                            };
                            by_key.entry((time, key)).or_default().add(&totals);
                        }
                    }
                    let mut session = output.session(&capability);
                    for ((time, key), totals) in by_key.drain() {
                        if !totals.is_empty() {
                            session.give((key, time, totals));
                        }
                    }
                });
            }
        })
        .as_collection()
}
