//! Event-time tumbling windows: which window an event falls in, when a window closes, and the
//! operator that retires closed windows from the state.

use std::collections::{BTreeMap, VecDeque};

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

/// Retires every windowed contribution once its window has closed.
///
/// A contribution arriving at `t` for a window closing at `c > t` is kept in its window now, and
/// from `c` on moved to [`Slot::Retired`]: a retraction from the window and an insertion into the
/// remainder, like a Materialize temporal filter. One arriving at or after `c` goes straight to
/// the remainder: it counts in all-time totals and in no window. All-time totals sum every slot,
/// so the move never changes them; windowed aggregates see their rows disappear, which
/// [`crate::aggregates::aggregate`] drops, as it drops every change to a closed window.
///
/// Because no output depends on when a closed window's contributions move, the moves are spread
/// over the window's length after it closes ([`Retirements`]), rather than made all at the
/// closing tick: a window holds one contribution per (user, campaign) it saw, millions at 100,000
/// events/s, and moving them at once stalled the pipeline for seconds every window. So the state
/// holds at most one closed window beside the open ones.
///
/// The moves wait here, summed per key and indexed by closing time, rather than as future-time
/// updates in the arrangement's batcher: the batcher would re-merge every pending update at every
/// tick, while this queue touches each key once when it arrives and once when it retires.
pub fn retire_windows<'scope>(
    contributions: VecCollection<'scope, Tick, Contribution, Totals>,
    spec: WindowSpec,
) -> VecCollection<'scope, Tick, Contribution, Totals> {
    contributions
        .inner
        .unary_frontier(Pipeline, "Windows: retire", move |_capability, _info| {
            let mut closing: BTreeMap<Tick, (Capability<Tick>, Pending)> = BTreeMap::new();
            let mut retiring: VecDeque<Retirements> = VecDeque::new();
            // Emptied maps of closed windows, reused for the next ones: a window's map grows to
            // one entry per (user, campaign) it saw, and growing it afresh each window would
            // rehash it step by step into newly zeroed memory.
            let mut spare: Vec<Pending> = Vec::new();
            // Likewise the lists of moves: built afresh, each grew by doubling into new memory,
            // and at 100,000 events/s the page faults of that alone paused the pipeline at every
            // window's close (perf: most of a 1 s pause zeroing pages under `Vec` growth).
            let mut spare_moves: Vec<Vec<Move>> = Vec::new();
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
                                            (
                                                capability.delayed(&closes, port),
                                                spare.pop().unwrap_or_default(),
                                            )
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
                let now = frontier.frontier().first().copied();
                while let Some(entry) = closing.first_entry() {
                    if frontier.less_than(entry.key()) {
                        break;
                    }
                    let (closes, (capability, mut pending)) = entry.remove_entry();
                    let mut moves = spare_moves.pop().unwrap_or_default();
                    moves.reserve(pending.len());
                    moves.extend(pending.drain().filter(|(_, totals)| !totals.is_empty()));
                    spare.push(pending);
                    retiring.push_back(Retirements {
                        capability,
                        closes,
                        moves,
                        done: 0,
                    });
                }
                // `None`: the input has ended, and everything still waiting moves now.
                let share = |closes: Tick| match now {
                    Some(now) => (now - closes + 1) as f64 / spec.size_ms as f64,
                    None => 1.0,
                };
                for retirement in &mut retiring {
                    if let Some(now) = now {
                        retirement.capability.downgrade(&now);
                    }
                    let due = retirement.due(share(retirement.closes));
                    let mut session = output.session(&retirement.capability);
                    let time = *retirement.capability.time();
                    for &((user, campaign, start), totals) in
                        &retirement.moves[retirement.done..due]
                    {
                        session.give((
                            (user, (campaign, Slot::Window(start))),
                            time,
                            totals.negated(),
                        ));
                        session.give(((user, (campaign, Slot::Retired)), time, totals));
                    }
                    retirement.done = due;
                }
                while let Some(index) = retiring
                    .iter()
                    .position(|retirement| retirement.done == retirement.moves.len())
                {
                    let mut moves = retiring.remove(index).expect("a retirement").moves;
                    moves.clear();
                    spare_moves.push(moves);
                }
            }
        })
        .as_collection()
}

/// Per closing time, what the windows closing then hold, summed per key.
type Pending = FxHashMap<(UserId, CampaignId, EventTimeMs), Totals>;

/// One contribution's move out of its closed window.
type Move = ((UserId, CampaignId, EventTimeMs), Totals);

/// The moves of a closed window's contributions to the remainder, made a share at a time.
struct Retirements {
    /// Held at the time of the next moves.
    capability: Capability<Tick>,
    /// When the window closed.
    closes: Tick,
    moves: Vec<Move>,
    /// How many moves were made.
    done: usize,
}

impl Retirements {
    /// How many moves should have been made once `share` (0 to 1 and beyond) of the spreading
    /// time has passed: at least one more each time, so every window retires in finitely many
    /// steps whatever the ticks.
    fn due(&self, share: f64) -> usize {
        let len = self.moves.len();
        let target = (share.clamp(0.0, 1.0) * len as f64).ceil() as usize;
        target.max(self.done + 1).min(len)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input as _;
    use timely::dataflow::operators::Inspect;

    use super::*;

    type Update = (Contribution, Tick, Totals);

    /// Feeds `(tick, user, campaign, slot)` contributions of one click each, advancing the input
    /// tick by tick to `until`, and returns what `retire_windows` emitted.
    fn retire(spec: WindowSpec, inputs: &[(Tick, u32, u32, Slot)], until: Tick) -> Vec<Update> {
        let emitted: Arc<Mutex<Vec<Update>>> = Arc::default();
        let inputs = inputs.to_vec();
        let sink = Arc::clone(&emitted);
        timely::execute_directly(move |worker| {
            let mut input = worker.dataflow::<Tick, _, _>(|scope| {
                let (input, contributions) = scope.new_collection();
                retire_windows(contributions, spec)
                    .inner
                    .inspect(move |update| {
                        sink.lock().unwrap().push(*update);
                    });
                input
            });
            let click = Totals {
                clicks: 1,
                ..Totals::default()
            };
            for tick in 0..=until {
                for &(_, user, campaign, slot) in inputs.iter().filter(|(t, ..)| *t == tick) {
                    input.update((UserId(user), (CampaignId(campaign), slot)), click);
                }
                input.advance_to(tick + 1);
                input.flush();
                worker.step();
            }
            drop(input);
            while worker.step() {}
        });
        let mut emitted = std::mem::take(&mut *emitted.lock().unwrap());
        emitted.sort();
        emitted
    }

    /// A closed window's contributions move to the remainder spread over the window's length
    /// after it closes, each exactly once, and none before it closes.
    #[test]
    fn closed_windows_retire_spread_over_the_window_length() {
        let spec = WindowSpec {
            size_ms: 10,
            allowed_lateness_ms: 5,
        };
        // Window [0, 10) closes at 15: 40 users click in it at ticks 0 to 3. A late click at 20
        // goes straight to the remainder.
        let mut inputs: Vec<(Tick, u32, u32, Slot)> = (0..40)
            .map(|user| (user as Tick % 4, user, 7, Slot::Window(EventTimeMs(0))))
            .collect();
        inputs.push((20, 99, 7, Slot::Window(EventTimeMs(0))));
        let emitted = retire(spec, &inputs, 40);
        let moves: Vec<&Update> = emitted
            .iter()
            .filter(|(_, time, totals)| *time >= 15 && totals.clicks < 0)
            .collect();
        assert_eq!(moves.len(), 40, "{emitted:?}");
        let retired_at: BTreeSet<Tick> = moves.iter().map(|(_, time, _)| *time).collect();
        assert!(*retired_at.first().unwrap() >= 15);
        assert!(*retired_at.last().unwrap() < 15 + 10, "{retired_at:?}");
        assert!(retired_at.len() >= 5, "spread over ticks: {retired_at:?}");
        // Net: nothing left in the window, every click in the remainder.
        let mut net: BTreeMap<Contribution, i64> = BTreeMap::new();
        for ((user, (campaign, slot)), _, totals) in &emitted {
            *net.entry((*user, (*campaign, *slot))).or_default() += totals.clicks;
        }
        net.retain(|_, clicks| *clicks != 0);
        let mut want: BTreeMap<Contribution, i64> = (0..40)
            .map(|user| ((UserId(user), (CampaignId(7), Slot::Retired)), 1))
            .collect();
        want.insert((UserId(99), (CampaignId(7), Slot::Retired)), 1);
        assert_eq!(net, want);
    }

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
