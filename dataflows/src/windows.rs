//! Event-time tumbling windows: which window an event falls in, when a window closes, and the
//! operator that retires closed windows from the state.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};

use crate::model::{CampaignId, Contribution, EventTimeMs, Slot, Tick, Totals, UserId};

/// Window size and allowed lateness, both in milliseconds.
///
/// A window `[start, start + size)` is *open* while the processing time is before
/// `start + size + allowed_lateness`: until then late events, refunds and demographic changes
/// correct it. At that tick it *closes*: its rows are final, they leave the dataflow's state, and
/// what it held stays only in the all-time totals. The allowed lateness is therefore also the
/// window retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// The window length; greater than zero.
    pub size_ms: u64,
    /// How long after its end a window still takes corrections.
    pub allowed_lateness_ms: u64,
}

impl WindowSpec {
    /// The start of the window holding `time`.
    #[inline]
    pub fn window_of(&self, time: EventTimeMs) -> EventTimeMs {
        EventTimeMs(time.0 - time.0 % self.size_ms)
    }

    /// The processing time at which the window starting at `start` closes.
    #[inline]
    pub fn closes_at(&self, start: EventTimeMs) -> Tick {
        start
            .0
            .saturating_add(self.size_ms)
            .saturating_add(self.allowed_lateness_ms)
    }

    /// Whether the window starting at `start` has closed at processing time `tick`.
    #[inline]
    pub fn is_closed(&self, start: EventTimeMs, tick: Tick) -> bool {
        tick >= self.closes_at(start)
    }
}

/// Retires every windowed contribution when its window closes.
///
/// A contribution arriving at `t` for a window closing at `c > t` is kept in its window now, and at
/// `c` moved to [`Slot::Retired`]: a retraction from the window and an insertion into the
/// remainder, like a Materialize temporal filter. One arriving at or after `c` goes straight to the
/// remainder: it counts in all-time totals and in no window. All-time totals sum every slot, so the
/// move never changes them; windowed aggregates see their rows disappear at `c`, which downstream
/// reads as "final", not as "removed".
///
/// The moves wait here, summed per key and indexed by closing time, rather than as future-time
/// updates in the arrangement's batcher: the batcher would re-merge every pending update at every
/// tick, while this queue touches each key once when it arrives and once when its window closes.
pub fn retire_windows<'scope>(
    contributions: VecCollection<'scope, Tick, Contribution, Totals>,
    spec: WindowSpec,
) -> VecCollection<'scope, Tick, Contribution, Totals> {
    type Pending = FxHashMap<(UserId, CampaignId, EventTimeMs), Totals>;
    contributions
        .inner
        .unary_frontier(Pipeline, "Windows: retire", move |_capability, _info| {
            let mut closing: BTreeMap<Tick, (Capability<Tick>, Pending)> = BTreeMap::new();
            move |(input, frontier), output| {
                let port = output.output_index();
                input.for_each_stamp(|capability, data| {
                    let mut session = output.session(&capability);
                    for batch in data {
                        for ((user, (campaign, slot)), time, totals) in batch.drain(..) {
                            match slot {
                                Slot::Window(start) if time < spec.closes_at(start) => {
                                    let closes = spec.closes_at(start);
                                    let pending = &mut closing
                                        .entry(closes)
                                        .or_insert_with(|| {
                                            (capability.delayed(&closes, port), Pending::default())
                                        })
                                        .1;
                                    pending
                                        .entry((user, campaign, start))
                                        .or_default()
                                        .add(&totals);
                                    session.give(((user, (campaign, slot)), time, totals));
                                }
                                _ => {
                                    session.give(((user, (campaign, Slot::Retired)), time, totals))
                                }
                            }
                        }
                    }
                });
                // Every contribution before `closes` has arrived once the frontier reaches it.
                while let Some(entry) = closing.first_entry() {
                    if frontier.less_than(entry.key()) {
                        break;
                    }
                    let (closes, (capability, pending)) = entry.remove_entry();
                    let mut session = output.session(&capability);
                    for ((user, campaign, start), totals) in pending {
                        if !totals.is_empty() {
                            session.give((
                                (user, (campaign, Slot::Window(start))),
                                closes,
                                totals.negated(),
                            ));
                            session.give(((user, (campaign, Slot::Retired)), closes, totals));
                        }
                    }
                }
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_closing() {
        let spec = WindowSpec {
            size_ms: 60_000,
            allowed_lateness_ms: 10_000,
        };
        assert_eq!(spec.window_of(EventTimeMs(0)), EventTimeMs(0));
        assert_eq!(spec.window_of(EventTimeMs(59_999)), EventTimeMs(0));
        assert_eq!(spec.window_of(EventTimeMs(60_000)), EventTimeMs(60_000));
        assert_eq!(spec.closes_at(EventTimeMs(60_000)), 130_000);
        assert!(!spec.is_closed(EventTimeMs(60_000), 129_999));
        assert!(spec.is_closed(EventTimeMs(60_000), 130_000));
        assert_eq!(spec.closes_at(EventTimeMs(u64::MAX - 5)), u64::MAX);
    }
}
