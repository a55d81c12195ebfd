//! Attributes contributions to demographic segments: a join with the demographics on the user id,
//! which also keeps every contribution for as long as it can still move.
//!
//! Users without a demographics row count in the `unknown` segment. The join is written as an
//! outer join: every contribution is counted as unknown, and every segment the join finds for its
//! user counts the contribution in that segment *and* cancels its unknown copy. When the row
//! appears (or changes, or is deleted), the join's output moves the user's contributions, past ones
//! included, by retraction and insertion.
//!
//! A contribution is held in its event-time window while the window is open, and in the user's
//! all-time remainder for the campaign once the window has closed (see [`WindowSpec`]): a closed
//! window's rows are final, so only the all-time totals still move with the user. Windowed state
//! is therefore bounded by the allowed lateness, and the all-time state by the (user, campaign)
//! pairs.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::{FxBuildHasher, FxHashMap};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, InputCapability, Operator};

use crate::model::{
    CampaignId, Contribution, Demographic, EventTimeMs, Segment, Slot, Tick, Totals, UserId,
};
use crate::windows::WindowSpec;

/// A contribution attributed to a segment (`None`: the unknown segment); its totals travel in the
/// difference. A `Some` row also stands for the negation of the same row with `None`.
pub type SegmentRow = (CampaignId, Slot, Option<Segment>);

/// What one worker's join holds: for each of its users, the segments the demographics give it and
/// every contribution counted so far (all-time remainders and open windows). Checkpoints read it.
pub struct Attribution {
    spec: WindowSpec,
    users: FxHashMap<UserId, User>,
    /// The latest tick applied, if any.
    applied: Option<Tick>,
    /// By closing time, the users who opened a contribution in a window closing then (a user
    /// once per campaign): whom to visit when the window closes.
    closing: BTreeMap<Tick, Vec<UserId>>,
    /// Closed windows' users still to visit, with when the window closed and how many are done.
    retiring: VecDeque<(Tick, Vec<UserId>, usize)>,
    /// Emptied lists of users, reused.
    spare: Vec<Vec<UserId>>,
}

/// A user's side of the join.
#[derive(Default)]
struct User {
    /// The user's segments with their multiplicity: one with multiplicity one for a user with a
    /// demographics row, none for an unknown user. Anything else (two rows for one id) is joined
    /// as differential's join would, each segment times its multiplicity.
    segments: Vec<(Segment, isize)>,
    /// Contributions, sorted by campaign and slot, none zero.
    contributions: Vec<(CampaignId, Slot, Totals)>,
}

impl Attribution {
    /// An empty join for windows of `spec`.
    pub fn new(spec: WindowSpec) -> Attribution {
        Attribution {
            spec,
            users: FxHashMap::default(),
            applied: None,
            closing: BTreeMap::new(),
            retiring: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    /// Applies one tick: first the segment changes, each moving everything the user contributed
    /// before the tick, then the contributions, each counted in the user's segments as they are
    /// after the tick. Together that is `C ⋈ D' - C ⋈ D` for `C' = C + dC`, `D' = D + dD`:
    /// `dC ⋈ D' + C ⋈ dD`, which is what a differential join emits at the tick.
    fn apply(
        &mut self,
        tick: Tick,
        segments: &mut Vec<((UserId, Segment), isize)>,
        contributions: &mut Vec<(Contribution, Totals)>,
        mut emit: impl FnMut(SegmentRow, Totals),
    ) {
        self.applied = Some(tick);
        for ((id, segment), change) in segments.drain(..) {
            if change == 0 {
                continue;
            }
            let user = self.users.entry(id).or_default();
            for (campaign, slot, totals) in &user.contributions {
                emit(
                    (*campaign, *slot, Some(segment.clone())),
                    totals.scaled(change),
                );
            }
            match user.segments.iter().position(|(s, _)| *s == segment) {
                Some(at) => {
                    user.segments[at].1 += change;
                    if user.segments[at].1 == 0 {
                        user.segments.swap_remove(at);
                        if user.segments.is_empty() && user.contributions.is_empty() {
                            self.users.remove(&id);
                        }
                    }
                }
                None => user.segments.push((segment, change)),
            }
        }
        let spec = self.spec;
        for ((id, (campaign, slot)), totals) in contributions.drain(..) {
            if totals.is_empty() {
                continue;
            }
            let slot = match slot {
                Slot::Window(start) if spec.is_closed(start, tick) => Slot::Retired,
                slot => slot,
            };
            emit((campaign, slot, None), totals);
            let user = self.users.entry(id).or_default();
            for (segment, count) in &user.segments {
                emit(
                    (campaign, slot, Some(segment.clone())),
                    totals.scaled(*count),
                );
            }
            let list = &mut user.contributions;
            match list.binary_search_by(|(c, s, _)| (*c, *s).cmp(&(campaign, slot))) {
                Ok(at) => {
                    list[at].2.add(&totals);
                    if list[at].2.is_empty() {
                        list.remove(at);
                        if list.is_empty() && user.segments.is_empty() {
                            self.users.remove(&id);
                        }
                    }
                }
                Err(at) => {
                    list.insert(at, (campaign, slot, totals));
                    if let Slot::Window(start) = slot {
                        let closes = spec.closes_at(start);
                        let spare = &mut self.spare;
                        self.closing
                            .entry(closes)
                            .or_insert_with(|| spare.pop().unwrap_or_default())
                            .push(id);
                    }
                }
            }
        }
    }

    /// Moves the contributions of windows that closed before `now`, the first tick still to come,
    /// to their all-time remainders. That changes no output: a closed window takes no more
    /// changes, and all-time totals sum every slot. `None`: everything still waiting moves now
    /// (the input has ended).
    ///
    /// A window moves once its closing tick is complete, not at it: a checkpoint at `now` then
    /// holds it in its window if it closes at `now`, and a restore may enter the state before the
    /// checkpoint's tick (the harness does, two milliseconds before) as long as no window closes
    /// between the two.
    ///
    /// The users of a closed window are visited spread over the window's length after it closes,
    /// rather than all at its closing tick: a window holds a contribution per (user, campaign) it
    /// saw, millions at 100,000 events/s, and moving them at once would stall the pipeline at
    /// every window.
    fn retire(&mut self, now: Option<Tick>) {
        while let Some(entry) = self.closing.first_entry() {
            if now.is_some_and(|now| now <= *entry.key()) {
                break;
            }
            let (closes, users) = entry.remove_entry();
            self.retiring.push_back((closes, users, 0));
        }
        let spec = self.spec;
        for (closes, users, done) in &mut self.retiring {
            let share = match now {
                Some(now) => (now - *closes) as f64 / spec.size_ms as f64,
                None => 1.0,
            };
            // At least one more each time, so every window retires in finitely many steps.
            let due = ((share.clamp(0.0, 1.0) * users.len() as f64).ceil() as usize)
                .max(*done + 1)
                .min(users.len());
            // The window is closed at `closes`, and the ticks still to come are later.
            let closed = |start: EventTimeMs| spec.is_closed(start, *closes);
            for id in &users[*done..due] {
                if let Some(user) = self.users.get_mut(id) {
                    retire_closed(&mut user.contributions, closed);
                }
            }
            *done = due;
        }
        while self
            .retiring
            .front()
            .is_some_and(|(_, users, done)| *done == users.len())
        {
            let (_, mut users, _) = self.retiring.pop_front().expect("a retirement");
            users.clear();
            self.spare.push(users);
        }
    }

    /// The latest tick applied, if any.
    pub fn applied(&self) -> Option<Tick> {
        self.applied
    }

    /// How many contributions are held.
    pub fn held(&self) -> usize {
        self.users
            .values()
            .map(|user| user.contributions.len())
            .sum()
    }

    /// Every contribution held, by user, campaign and slot.
    pub fn contributions(&self) -> Vec<(Contribution, Totals)> {
        let mut ids: Vec<UserId> = self.users.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Vec::new();
        for id in ids {
            let user = &self.users[&id];
            out.extend(
                user.contributions
                    .iter()
                    .map(|&(campaign, slot, totals)| ((id, (campaign, slot)), totals)),
            );
        }
        out
    }

    /// Every user's segments with their multiplicity, by user and segment.
    pub fn segments(&self) -> Vec<((UserId, Segment), isize)> {
        let mut out: Vec<_> = self
            .users
            .iter()
            .flat_map(|(id, user)| {
                user.segments
                    .iter()
                    .map(move |(segment, count)| ((*id, segment.clone()), *count))
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// Folds the contributions of closed windows into the all-time remainder of their campaign, in
/// place; `list` is sorted by campaign and slot, the remainder last among a campaign's slots.
fn retire_closed(list: &mut Vec<(CampaignId, Slot, Totals)>, closed: impl Fn(EventTimeMs) -> bool) {
    let is_closed = |slot: &Slot| matches!(slot, Slot::Window(start) if closed(*start));
    if !list.iter().any(|(_, slot, _)| is_closed(slot)) {
        return;
    }
    // Entries are written back at `written`, never ahead of the one being read: a campaign's
    // remainder is written once its last slot has been read.
    let mut written = 0;
    let mut remainder: Option<(CampaignId, Totals)> = None;
    for read in 0..list.len() {
        let (campaign, slot, totals) = list[read];
        if let Some((of, sum)) = remainder.take_if(|(of, _)| *of != campaign)
            && !sum.is_empty()
        {
            list[written] = (of, Slot::Retired, sum);
            written += 1;
        }
        if slot == Slot::Retired || is_closed(&slot) {
            remainder
                .get_or_insert((campaign, Totals::default()))
                .1
                .add(&totals);
        } else {
            list[written] = (campaign, slot, totals);
            written += 1;
        }
    }
    if let Some((of, sum)) = remainder
        && !sum.is_empty()
    {
        list[written] = (of, Slot::Retired, sum);
        written += 1;
    }
    list.truncate(written);
}

/// Contributions and segment changes of one tick.
type Lists = (Vec<(Contribution, Totals)>, Vec<((UserId, Segment), isize)>);

/// A tick's [`Lists`], waiting for the tick to complete.
type Pending = (
    Capability<Tick>,
    Vec<(Contribution, Totals)>,
    Vec<((UserId, Segment), isize)>,
);

/// Joins contributions with demographics. Each demographic row is reduced to its [`Segment`]
/// first, so changes that keep the segment (a birthday within an age band) do not move anything.
///
/// Both inputs are routed by user, and a tick is applied once both frontiers have passed it, in
/// time order, to state that keeps each user's segments beside the user's contributions in a
/// hash map. That is differential's join for a totally ordered time, without its arrangements:
/// the state holds one entry per (user, campaign, slot) rather than a history of batches, and a
/// tick costs work in proportion to its updates rather than a sort, a seal and spine merges. The
/// arrangements were most of the engine's time at 5,000 events per worker per tick
/// (`perf --call-graph dwarf`, `shopflow bench -w 2`).
///
/// The output is not consolidated: [`crate::aggregates`] sums it by hashing anyway.
///
/// `restored_segments` are users' segments a checkpoint held, entering beside the demographics.
/// Also returns the join's state, for checkpoints.
pub fn attribute<'scope>(
    contributions: VecCollection<'scope, Tick, Contribution, Totals>,
    demographics: VecCollection<'scope, Tick, Demographic>,
    restored_segments: VecCollection<'scope, Tick, (UserId, Segment)>,
    spec: WindowSpec,
) -> (
    VecCollection<'scope, Tick, SegmentRow, Totals>,
    Rc<RefCell<Attribution>>,
) {
    let segments = demographics
        .map(|row| (row.id, row.segment()))
        .concat(restored_segments);
    let state = Rc::new(RefCell::new(Attribution::new(spec)));
    let shared = Rc::clone(&state);
    let by_contribution_user = Exchange::new(|((user, _), _, _): &(Contribution, Tick, Totals)| {
        FxBuildHasher.hash_one(user)
    });
    let by_segment_user = Exchange::new(|((user, _), _, _): &((UserId, Segment), Tick, isize)| {
        FxBuildHasher.hash_one(user)
    });
    let rows = contributions.inner.binary_frontier(
        segments.inner,
        by_contribution_user,
        by_segment_user,
        "Join: contributions with segments",
        move |_capability, _info| {
            let mut pending: BTreeMap<Tick, Pending> = BTreeMap::new();
            // The emptied lists of applied ticks, reused rather than grown afresh each tick.
            let mut spare: Vec<Lists> = Vec::new();
            move |(contributions, contributions_frontier), (segments, segments_frontier), output| {
                let port = output.output_index();
                let mut stash = |capability: &InputCapability<Tick>, time: Tick| {
                    let (c, s) = spare.pop().unwrap_or_default();
                    (capability.delayed(&time, port), c, s)
                };
                contributions.for_each_stamp(|capability, data| {
                    for batch in data {
                        for (contribution, time, totals) in batch.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| stash(&capability, time))
                                .1
                                .push((contribution, totals));
                        }
                    }
                });
                segments.for_each_stamp(|capability, data| {
                    for batch in data {
                        for (user_segment, time, change) in batch.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| stash(&capability, time))
                                .2
                                .push((user_segment, change));
                        }
                    }
                });
                let mut state = state.borrow_mut();
                while let Some(entry) = pending.first_entry() {
                    if contributions_frontier.less_equal(entry.key())
                        || segments_frontier.less_equal(entry.key())
                    {
                        break;
                    }
                    let (time, (capability, mut c, mut s)) = entry.remove_entry();
                    let mut session = output.session(&capability);
                    state.apply(time, &mut s, &mut c, |row, totals| {
                        session.give((row, time, totals));
                    });
                    drop(session);
                    spare.push((c, s));
                }
                let now = [
                    contributions_frontier.frontier(),
                    segments_frontier.frontier(),
                ]
                .into_iter()
                .filter_map(|frontier| frontier.first().copied())
                .min();
                state.retire(now);
            }
        },
    );
    (rows.as_collection(), shared)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input as _;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::model::Gender;

    type Row = (SegmentRow, Tick, Totals);

    fn click() -> Totals {
        Totals {
            clicks: 1,
            ..Totals::default()
        }
    }

    /// Feeds `(tick, user, campaign, window)` clicks and user 0's segment at tick 0, ticking to
    /// `until`; returns what the join emitted and the contributions it holds after each tick.
    fn join(
        spec: WindowSpec,
        inputs: &[(Tick, u32, u32, u64)],
        until: Tick,
    ) -> (Vec<Row>, Vec<Vec<(Contribution, Totals)>>) {
        let emitted: Arc<Mutex<Vec<Row>>> = Arc::default();
        let held: Arc<Mutex<Vec<Vec<(Contribution, Totals)>>>> = Arc::default();
        let (inputs, sink, states) = (inputs.to_vec(), Arc::clone(&emitted), Arc::clone(&held));
        timely::execute_directly(move |worker| {
            let (mut contributions_in, mut demographics_in, state) =
                worker.dataflow::<Tick, _, _>(|scope| {
                    let (contributions_in, contributions) = scope.new_collection();
                    let (demographics_in, demographics) = scope.new_collection();
                    let (_, restored) = scope.new_collection();
                    let (rows, state) = attribute(contributions, demographics, restored, spec);
                    let (probe, _) = rows
                        .inner
                        .inspect(move |row| sink.lock().unwrap().push(row.clone()))
                        .probe();
                    (contributions_in, demographics_in, (state, probe))
                });
            let (state, probe) = state;
            demographics_in.insert(Demographic {
                id: UserId(0),
                age: 30,
                gender: Gender::Female,
                state: "CA".into(),
                country: "US".into(),
            });
            for tick in 0..=until {
                for &(_, user, campaign, start) in inputs.iter().filter(|(t, ..)| *t == tick) {
                    contributions_in.update(
                        (
                            UserId(user),
                            (CampaignId(campaign), Slot::Window(EventTimeMs(start))),
                        ),
                        click(),
                    );
                }
                contributions_in.advance_to(tick + 1);
                contributions_in.flush();
                demographics_in.advance_to(tick + 1);
                demographics_in.flush();
                worker.step_while(|| probe.less_equal(&tick));
                states.lock().unwrap().push(state.borrow().contributions());
            }
        });
        let emitted = std::mem::take(&mut *emitted.lock().unwrap());
        let held = std::mem::take(&mut *held.lock().unwrap());
        (emitted, held)
    }

    /// A closed window's contributions move to the campaign's all-time remainder, spread over
    /// the window's length after it closes, and emit nothing when they move; a contribution
    /// arriving for a closed window goes straight to the remainder.
    #[test]
    fn closed_windows_fold_into_the_remainder_silently() {
        let spec = WindowSpec {
            size_ms: 10,
            allowed_lateness_ms: 5,
        };
        // Window [0, 10) closes at 15: 40 users click in it at ticks 0 to 3, user 0 twice in
        // campaign 7. At tick 20 user 99 clicks late for it, and user 1 clicks in window 20.
        let mut inputs: Vec<(Tick, u32, u32, u64)> =
            (0..40).map(|user| (user as Tick % 4, user, 7, 0)).collect();
        inputs.push((2, 0, 7, 0));
        inputs.push((20, 99, 7, 0));
        inputs.push((20, 1, 7, 20));
        let (emitted, held) = join(spec, &inputs, 40);

        // Each click is emitted once as unknown, and user 0's also in its segment.
        let unknown = |row: &&Row| row.0.2.is_none();
        assert_eq!(emitted.iter().filter(unknown).count(), 43);
        assert_eq!(emitted.len(), 43 + 2);
        assert!(emitted.iter().all(|(_, time, _)| *time <= 3 || *time == 20));
        let late: Vec<&Row> = emitted.iter().filter(|(_, t, _)| *t == 20).collect();
        assert!(late.contains(&&((CampaignId(7), Slot::Retired, None), 20, click())));

        // Held: in the window until it closes; from then on moved bit by bit, all by 25.
        let windowed = |state: &Vec<(Contribution, Totals)>| {
            state
                .iter()
                .filter(|((_, (_, slot)), _)| *slot == Slot::Window(EventTimeMs(0)))
                .count()
        };
        assert_eq!(windowed(&held[14]), 40);
        let moving: Vec<usize> = (15..=25).map(|tick| windowed(&held[tick])).collect();
        assert!(moving.windows(2).all(|w| w[0] >= w[1]), "{moving:?}");
        assert!(
            moving.iter().filter(|n| **n > 0 && **n < 40).count() >= 5,
            "{moving:?}"
        );
        assert_eq!(windowed(&held[25]), 0);

        let mut want: Vec<(Contribution, Totals)> = (0..40)
            .map(|user| ((UserId(user), (CampaignId(7), Slot::Retired)), click()))
            .collect();
        want[0].1.clicks = 2;
        want.insert(
            1,
            (
                (UserId(1), (CampaignId(7), Slot::Window(EventTimeMs(20)))),
                click(),
            ),
        );
        want.push(((UserId(99), (CampaignId(7), Slot::Retired)), click()));
        assert_eq!(held[25], want);
    }
}
