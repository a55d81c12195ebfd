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

mod index;
mod interned;
mod pre_sums;
mod remainders;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, InputCapability, Operator};

use crate::model::{
    AggregateKey, CampaignId, Contribution, EventTimeMs, Segment, Slot, Tick, Totals, UserId,
};
use crate::operators::pending::by_time;
use crate::operators::prefetch::{prefetch, prefetch_bytes};
use crate::windows::WindowSpec;
use index::Index;
use interned::{Interned, SegmentId, Segments};
use pre_sums::PartialSums;
use remainders::Remainders;

/// What one worker's join holds: for each of its users, the segments the demographics give it and
/// every contribution counted so far (all-time remainders and open windows). Checkpoints read it.
struct Attribution {
    spec: WindowSpec,
    /// Where each user is in `users`.
    index: Index,
    /// The users, each at a place it keeps for as long as it is held: a forgotten user's place is
    /// reused, and no user ever moves, so [`Attribution::closing`] can name places. The index is
    /// small and the users are not, so a tick's users can be loaded ahead of their turn from
    /// their places (see [`Attribution::apply`]).
    users: Vec<User>,
    /// Places of forgotten users, to reuse.
    vacant: Vec<u32>,
    /// Every segment a user has had here, by number; users hold their segments' numbers.
    interned: Segments,
    /// The latest tick applied, if any.
    applied: Option<Tick>,
    /// By closing time, the places of users who opened a contribution in a window closing then
    /// (once per window, see [`User::listed_until`]): whom to visit when the window closes. A
    /// place whose user was forgotten meanwhile, or reused by another, is visited all the same:
    /// a visit only folds what has closed, which is right for any user at any later time.
    closing: BTreeMap<Tick, Vec<u32>>,
    /// Closed windows' places still to visit, with when the window closed and how many are done.
    retiring: VecDeque<(Tick, Vec<u32>, usize)>,
    /// Emptied lists of places, reused.
    spare: Vec<Vec<u32>>,
    /// A user's contributions of closed windows, on their way to its remainders.
    folding: Vec<(CampaignId, Totals)>,
    /// Room for merging a user's remainders.
    packing: Vec<(CampaignId, Totals)>,
}

/// A user's side of the join.
#[derive(Default)]
struct User {
    /// The user.
    id: UserId,
    /// The user's segments with their multiplicity: one with multiplicity one for a user with a
    /// demographics row, none for an unknown user. Anything else (two rows for one id) is joined
    /// as differential's join would, each segment times its multiplicity. Held in place, as the
    /// one segment nearly every user has is read with every contribution; by its number in
    /// [`Attribution::interned`], which keeps the user small and what the pre-sums key by short.
    segments: SmallVec<[(SegmentId, isize); 1]>,
    /// Contributions in open windows (and closed ones not yet folded), sorted by window and
    /// campaign, none zero. Most contributions land here, and the list is short: the user's
    /// contributions within the allowed lateness. Most go to the latest window, at the end of
    /// the list, and closed windows leave from its front.
    windows: Vec<(EventTimeMs, CampaignId, Totals)>,
    /// The all-time remainder per campaign, packed: these are what grows with the (user,
    /// campaign) pairs.
    retired: Remainders,
    /// The latest closing time the user is listed under in [`Attribution::closing`]. A visit then
    /// folds every window closed by that time, so a user is listed once per window, however many
    /// campaigns it contributes to there, and not at all for an earlier window (one a late event
    /// opens): that one is folded at the later visit.
    listed_until: Tick,
}

impl Attribution {
    /// An empty join for windows of `spec`.
    pub fn new(spec: WindowSpec) -> Attribution {
        Attribution {
            spec,
            index: Index::default(),
            users: Vec::new(),
            vacant: Vec::new(),
            interned: Segments::default(),
            applied: None,
            closing: BTreeMap::new(),
            retiring: VecDeque::new(),
            spare: Vec::new(),
            folding: Vec::new(),
            packing: Vec::new(),
        }
    }

    /// The place of user `id`, given one if it has none.
    #[inline]
    fn place_of(&mut self, id: UserId) -> usize {
        if let Some(place) = self.index.get(id) {
            return place as usize;
        }
        let user = User {
            id,
            ..User::default()
        };
        let place = match self.vacant.pop() {
            Some(place) => {
                self.users[place as usize] = user;
                place
            }
            None => {
                self.users.push(user);
                u32::try_from(self.users.len() - 1)
                    .ok()
                    .filter(|place| *place != Index::NONE)
                    .expect("fewer than 2^32 - 1 users per worker")
            }
        };
        self.index.insert(id, place, self.users.len());
        place as usize
    }

    /// User `id`, if held.
    #[inline]
    fn user(&self, id: UserId) -> Option<&User> {
        self.index.get(id).map(|place| &self.users[place as usize])
    }

    /// Forgets the user at `place` if it holds nothing.
    fn forget_if_empty(&mut self, place: usize) {
        let user = &mut self.users[place];
        if user.is_empty() {
            self.index.remove(user.id);
            *user = User::default();
            self.vacant.push(place as u32);
        }
    }

    /// Applies one tick: first the segment changes, each moving everything the user contributed
    /// before the tick, then the contributions, each counted in the user's segments as they are
    /// after the tick. Together that is `C ⋈ D' - C ⋈ D` for `C' = C + dC`, `D' = D + dD`:
    /// `dC ⋈ D' + C ⋈ dD`, which is what a differential join emits at the tick.
    ///
    /// A tick's users are random, and each one's index entry, entry and windowed contributions
    /// are cache misses, so they are loaded ahead of their turn in three steps: the index entry
    /// twice [`LOOK_AHEAD`] contributions before, the user's entry [`LOOK_AHEAD`] before, the
    /// windowed contributions it points to half as many before.
    #[inline(never)]
    fn apply(
        &mut self,
        tick: Tick,
        segments: &mut Vec<((UserId, Segment), isize)>,
        contributions: &mut Vec<(Contribution, Totals)>,
        mut emit: impl FnMut(CampaignId, Slot, Option<(SegmentId, &Interned)>, Totals),
    ) {
        self.applied = Some(tick);
        for ((id, segment), change) in segments.drain(..) {
            if change == 0 {
                continue;
            }
            let segment = self.interned.intern(segment);
            let place = self.place_of(id);
            let user = &mut self.users[place];
            let interned = Some((segment, self.interned.get(segment)));
            for (start, campaign, totals) in &user.windows {
                let slot = Slot::Window(*start);
                emit(*campaign, slot, interned, totals.scaled(change));
            }
            for (campaign, totals) in user.retired.iter() {
                emit(campaign, Slot::Retired, interned, totals.scaled(change));
            }
            match user.segments.iter().position(|(s, _)| *s == segment) {
                Some(at) => {
                    user.segments[at].1 += change;
                    if user.segments[at].1 == 0 {
                        user.segments.swap_remove(at);
                        self.interned.release(segment);
                        self.forget_if_empty(place);
                    }
                }
                None => {
                    user.segments.push((segment, change));
                    self.interned.hold(segment);
                }
            }
        }
        let spec = self.spec;
        for at in 0..contributions.len() {
            if let Some(((id, _), _)) = contributions.get(at + 2 * LOOK_AHEAD) {
                self.index.prefetch(*id);
            }
            if let Some(((id, _), _)) = contributions.get(at + LOOK_AHEAD)
                && let Some(user) = self.user(*id)
            {
                prefetch(user);
            }
            if let Some(((id, _), _)) = contributions.get(at + LOOK_AHEAD / 2)
                && let Some(user) = self.user(*id)
            {
                user.prefetch_latest_windows();
            }
            let ((id, (campaign, slot)), totals) = contributions[at];
            if totals.is_empty() {
                continue;
            }
            let slot = match slot {
                Slot::Window(start) if spec.is_closed(start, tick) => Slot::Retired,
                slot => slot,
            };
            emit(campaign, slot, None, totals);
            let place = self.place_of(id);
            let user = &mut self.users[place];
            for &(segment, count) in &user.segments {
                let interned = Some((segment, self.interned.get(segment)));
                emit(campaign, slot, interned, totals.scaled(count));
            }
            match slot {
                Slot::Retired => user
                    .retired
                    .add_sorted(&[(campaign, totals)], &mut self.packing),
                Slot::Window(start) => {
                    let list = &mut user.windows;
                    let key = (start, campaign);
                    // Most contributions are to the latest window, at the end of the list: the
                    // search starts there (and the list is short).
                    let found = match list.iter().rposition(|(s, c, _)| (*s, *c) <= key) {
                        Some(at) if (list[at].0, list[at].1) == key => Ok(at),
                        Some(at) => Err(at + 1),
                        None => Err(0),
                    };
                    match found {
                        Ok(at) => {
                            list[at].2.add(&totals);
                            if list[at].2.is_empty() {
                                list.remove(at);
                            }
                        }
                        Err(at) => {
                            list.insert(at, (start, campaign, totals));
                            let closes = spec.closes_at(start);
                            if closes > user.listed_until {
                                user.listed_until = closes;
                                let spare = &mut self.spare;
                                self.closing
                                    .entry(closes)
                                    .or_insert_with(|| spare.pop().unwrap_or_default())
                                    .push(place as u32);
                            }
                        }
                    }
                }
            }
            self.forget_if_empty(place);
        }
        contributions.clear();
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
    /// every window. They are loaded ahead of their turn as in [`Attribution::apply`].
    #[inline(never)]
    fn retire(&mut self, now: Option<Tick>) {
        while let Some(entry) = self.closing.first_entry() {
            if now.is_some_and(|now| now <= *entry.key()) {
                break;
            }
            let (closes, places) = entry.remove_entry();
            self.retiring.push_back((closes, places, 0));
        }
        let spec = self.spec;
        for (closes, places, done) in &mut self.retiring {
            let share = match now {
                Some(now) => (now - *closes) as f64 / spec.size_ms as f64,
                None => 1.0,
            };
            // At least one more each time, so every window retires in finitely many steps.
            let due = ((share.clamp(0.0, 1.0) * places.len() as f64).ceil() as usize)
                .max(*done + 1)
                .min(places.len());
            // The window is closed at `closes`, and the ticks still to come are later.
            let closed = |start: EventTimeMs| spec.is_closed(start, *closes);
            let places = &places[..due];
            for at in *done..due {
                if let Some(place) = places.get(at + LOOK_AHEAD) {
                    prefetch(&self.users[*place as usize]);
                }
                if let Some(place) = places.get(at + LOOK_AHEAD / 2) {
                    let user = &self.users[*place as usize];
                    user.prefetch_earliest_windows();
                    user.retired.prefetch_end();
                }
                let user = &mut self.users[places[at] as usize];
                let list = &mut user.windows;
                let end = list.partition_point(|(start, _, _)| closed(*start));
                if end == 0 {
                    continue;
                }
                self.folding.clear();
                self.folding.extend(
                    list.drain(..end)
                        .map(|(_, campaign, totals)| (campaign, totals)),
                );
                self.folding.sort_unstable_by_key(|(campaign, _)| *campaign);
                user.retired.add_sorted(&self.folding, &mut self.packing);
                // The list grows by doubling within a window and shrinks here, so that its
                // capacity follows the user's activity rather than its busiest window.
                if list.capacity() > 2 * list.len() + 4 {
                    list.shrink_to_fit();
                }
            }
            *done = due;
        }
        while self
            .retiring
            .front()
            .is_some_and(|(_, places, done)| *done == places.len())
        {
            let (_, mut places, _) = self.retiring.pop_front().expect("a retirement");
            places.clear();
            self.spare.push(places);
        }
    }

    /// The latest tick applied, if any.
    pub fn applied(&self) -> Option<Tick> {
        self.applied
    }

    /// The users held, in no particular order.
    fn held_users(&self) -> impl Iterator<Item = &User> {
        self.index.places().map(|place| &self.users[place as usize])
    }

    /// How many contributions are held.
    pub fn held(&self) -> usize {
        self.held_users()
            .map(|user| user.windows.len() + user.retired.len())
            .sum()
    }

    /// Every contribution held, by user, campaign and slot.
    pub fn contributions(&self) -> Vec<(Contribution, Totals)> {
        let mut users: Vec<&User> = self.held_users().collect();
        users.sort_unstable_by_key(|user| user.id);
        let mut out = Vec::new();
        let mut merged = Vec::new();
        for user in users {
            let id = user.id;
            let first = out.len();
            out.extend(
                user.windows.iter().map(|&(start, campaign, totals)| {
                    ((id, (campaign, Slot::Window(start))), totals)
                }),
            );
            out.extend(
                user.retired
                    .merged(&mut merged)
                    .iter()
                    .map(|&(campaign, totals)| ((id, (campaign, Slot::Retired)), totals)),
            );
            out[first..].sort_unstable_by_key(|(contribution, _)| *contribution);
        }
        out
    }

    /// Every user's segments with their multiplicity, by user and segment.
    pub fn segments(&self) -> Vec<((UserId, Segment), isize)> {
        let mut out: Vec<_> = self
            .held_users()
            .flat_map(|user| {
                user.segments.iter().map(move |&(segment, count)| {
                    let segment = self.interned.get(segment).segment.clone();
                    ((user.id, segment), count)
                })
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// How many contributions ahead [`Attribution::apply`] and [`Attribution::retire`] start to load
/// a user's entry; its windowed contributions are loaded half as many ahead.
const LOOK_AHEAD: usize = 8;

impl User {
    /// Whether the user holds nothing: it can be forgotten.
    fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.windows.is_empty() && self.retired.is_empty()
    }

    /// Starts loading the windowed contributions [`Attribution::apply`] reads first: the last
    /// few, where the latest window's are.
    #[inline]
    fn prefetch_latest_windows(&self) {
        let list = self.windows.as_slice();
        let tail = &list[list.len().saturating_sub(WINDOWS_AHEAD)..];
        prefetch_bytes(tail.as_ptr().cast(), std::mem::size_of_val(tail));
    }

    /// Starts loading the windowed contributions [`Attribution::retire`] reads first: the first
    /// few, where the closed windows' are.
    #[inline]
    fn prefetch_earliest_windows(&self) {
        let list = self.windows.as_slice();
        let head = &list[..list.len().min(WINDOWS_AHEAD)];
        prefetch_bytes(head.as_ptr().cast(), std::mem::size_of_val(head));
    }
}

/// How many of a user's windowed contributions are loaded ahead: four cache lines' worth.
const WINDOWS_AHEAD: usize = 4 * 64 / std::mem::size_of::<(EventTimeMs, CampaignId, Totals)>();

/// Contributions and segment changes of one tick.
type Lists = (Vec<(Contribution, Totals)>, Vec<((UserId, Segment), isize)>);

/// A tick's contributions and segment changes, waiting for the tick to complete.
type Pending = (
    Capability<Tick>,
    Vec<(Contribution, Totals)>,
    Vec<((UserId, Segment), isize)>,
);

/// A worker's handle on its [`Attribute`] join's state, as an arrangement's trace is one on the
/// arrangement's: checkpoints read it while the dataflow is paused at a tick boundary.
pub struct AttributionHandle {
    state: Rc<RefCell<Attribution>>,
}

impl AttributionHandle {
    /// The latest tick the join applied, if any.
    pub fn applied(&self) -> Option<Tick> {
        self.state.borrow().applied()
    }

    /// How many contributions the join holds: one per (user, campaign) all-time remainder and
    /// per (user, campaign, window) not yet folded into it.
    pub fn held(&self) -> usize {
        self.state.borrow().held()
    }

    /// Every contribution held, by user, campaign and slot.
    pub fn contributions(&self) -> Vec<(Contribution, Totals)> {
        self.state.borrow().contributions()
    }

    /// Every user's segments with their multiplicity, by user and segment.
    pub fn segments(&self) -> Vec<((UserId, Segment), isize)> {
        self.state.borrow().segments()
    }
}

/// Extension trait for the `attribute` method, on the counted contributions.
pub trait Attribute<'scope> {
    /// Joins contributions with users' segments (each demographics row reduced to its
    /// [`Segment`], so changes that keep the segment, a birthday within an age band, move
    /// nothing), and sums what it finds per aggregate key: the output is a tick's sums per key.
    ///
    /// Both inputs are routed by user, and a tick is applied once both frontiers have passed it, in
    /// time order, to state that keeps each user's segments beside the user's contributions in a
    /// hash map. That is differential's join for a totally ordered time, without its arrangements:
    /// the state holds one entry per (user, campaign, slot) rather than a history of batches, and a
    /// tick costs work in proportion to its updates rather than a sort, a seal and spine merges. The
    /// arrangements were most of the engine's time at 5,000 events per worker per tick
    /// (`perf --call-graph dwarf`, `shopflow bench -w 2`).
    ///
    /// What the join finds is summed per aggregate key at once ([`PartialSums`]), so the output is a
    /// tick's sums per key: the join's rows, each carrying a segment, are never materialized.
    ///
    ///
    /// Also returns this worker's [`AttributionHandle`], for checkpoints.
    ///
    /// # Examples
    ///
    /// ```
    /// use differential_dataflow::AsCollection;
    /// use timely::dataflow::operators::capture::{Capture, Extract};
    /// use timely::dataflow::operators::ToStream;
    ///
    /// use dataflows::model::{
    ///     AgeBand, AggregateKey, CampaignId, Dimension, EventTimeMs, Gender, Segment, Slot,
    ///     Totals, UserId,
    /// };
    /// use dataflows::operators::attribute::Attribute;
    /// use dataflows::windows::WindowSpec;
    ///
    /// let spec = WindowSpec { size_ms: 1_000, allowed_lateness_ms: 1_000 };
    /// let sums = timely::example(move |scope| {
    ///     // A click of user 1, who lives in California, and one of user 2, unknown.
    ///     let window = (CampaignId(7), Slot::Window(EventTimeMs(0)));
    ///     let contributions = vec![
    ///         ((UserId(1), window), 0, Totals::click()),
    ///         ((UserId(2), window), 0, Totals::click()),
    ///     ];
    ///     let segment = Segment {
    ///         age_band: AgeBand::From25To34,
    ///         gender: Gender::Female,
    ///         state: "CA".into(),
    ///         country: "US".into(),
    ///     };
    ///     let segments = vec![((UserId(1), segment), 0, 1)];
    ///     let (sums, _join) = contributions
    ///         .to_stream(scope)
    ///         .as_collection()
    ///         .attribute(segments.to_stream(scope).as_collection(), spec);
    ///     sums.inner.capture()
    /// });
    ///
    /// let sums: Vec<(AggregateKey, u64, Totals)> =
    ///     sums.extract().into_iter().flat_map(|(_, sums)| sums).collect();
    /// let clicks = |dimension: Dimension| {
    ///     let key = AggregateKey { dimension, window: None };
    ///     sums.iter().filter(|(k, _, _)| *k == key).map(|(_, _, t)| t.clicks).sum::<i64>()
    /// };
    /// // Both clicks count in their campaign, one in the user's country, one as unknown.
    /// assert_eq!(clicks(Dimension::Campaign(CampaignId(7))), 2);
    /// assert_eq!(clicks(Dimension::Country(Some("US".into()))), 1);
    /// assert_eq!(clicks(Dimension::Country(None)), 1);
    /// // The campaign's sums, and five families' for each segment, all-time and in the window.
    /// assert_eq!(sums.len(), 2 * (1 + 5 + 5));
    /// ```
    fn attribute(
        self,
        segments: VecCollection<'scope, Tick, (UserId, Segment)>,
        spec: WindowSpec,
    ) -> (
        VecCollection<'scope, Tick, AggregateKey, Totals>,
        AttributionHandle,
    );
}

impl<'scope> Attribute<'scope> for VecCollection<'scope, Tick, Contribution, Totals> {
    fn attribute(
        self,
        segments: VecCollection<'scope, Tick, (UserId, Segment)>,
        spec: WindowSpec,
    ) -> (
        VecCollection<'scope, Tick, AggregateKey, Totals>,
        AttributionHandle,
    ) {
        let contributions = self;
        let state = Rc::new(RefCell::new(Attribution::new(spec)));
        let shared = Rc::clone(&state);
        let by_contribution_user =
            Exchange::new(|((user, _), _, _): &(Contribution, Tick, Totals)| {
                FxBuildHasher.hash_one(user)
            });
        let by_segment_user =
            Exchange::new(|((user, _), _, _): &((UserId, Segment), Tick, isize)| {
                FxBuildHasher.hash_one(user)
            });
        let sums = contributions.inner.binary_frontier(
            segments.inner,
            by_contribution_user,
            by_segment_user,
            "Join: contributions with segments",
            move |_capability, _info| {
                let mut pending: BTreeMap<Tick, Pending> = BTreeMap::new();
                // The emptied lists of applied ticks, reused rather than grown afresh each tick.
                let mut spare: Vec<Lists> = Vec::new();
                let mut sums = PartialSums::default();
                move |(contributions, contributions_frontier),
                      (segments, segments_frontier),
                      output| {
                    let port = output.output_index();
                    let mut stash = |capability: &InputCapability<Tick>, time: Tick| {
                        let (c, s) = spare.pop().unwrap_or_default();
                        (capability.delayed(&time, port), c, s)
                    };
                    contributions.for_each_stamp(|capability, data| {
                        for batch in data {
                            by_time(
                                batch.drain(..),
                                &mut pending,
                                |time| stash(&capability, time),
                                |(_, c, _), contribution, totals| c.push((contribution, totals)),
                            );
                        }
                    });
                    segments.for_each_stamp(|capability, data| {
                        for batch in data {
                            by_time(
                                batch.drain(..),
                                &mut pending,
                                |time| stash(&capability, time),
                                |(_, _, s), user_segment, change| s.push((user_segment, change)),
                            );
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
                        state.apply(time, &mut s, &mut c, |campaign, slot, segment, totals| {
                            sums.add(time, campaign, slot, segment, totals);
                        });
                        let mut session = output.session(&capability);
                        sums.drain(&state.interned, |key, time, totals| {
                            session.give((key, time, totals))
                        });
                        // No sums name a segment now: those no user holds can go.
                        state.interned.collect();
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
        (sums.as_collection(), AttributionHandle { state: shared })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input as _;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::model::{Demographic, Dimension, Gender};

    type Row = (AggregateKey, Tick, Totals);
    /// The contributions the join holds after a tick.
    type Held = Vec<(Contribution, Totals)>;

    fn click() -> Totals {
        Totals {
            clicks: 1,
            ..Totals::default()
        }
    }

    /// Feeds `(tick, user, campaign, window)` clicks and user 0's segment at tick 0, ticking to
    /// `until`; returns the sums the join emitted and the contributions it holds after each tick.
    fn join(
        spec: WindowSpec,
        inputs: &[(Tick, u32, u32, u64)],
        until: Tick,
    ) -> (Vec<Row>, Vec<Held>) {
        let emitted: Arc<Mutex<Vec<Row>>> = Arc::default();
        let held: Arc<Mutex<Vec<Held>>> = Arc::default();
        let (inputs, sink, states) = (inputs.to_vec(), Arc::clone(&emitted), Arc::clone(&held));
        timely::execute_directly(move |worker| {
            let (mut contributions_in, mut demographics_in, state) =
                worker.dataflow::<Tick, _, _>(|scope| {
                    let (contributions_in, contributions) = scope.new_collection();
                    let (demographics_in, demographics) = scope.new_collection();
                    let segments = demographics.map(|row: Demographic| (row.id, row.segment()));
                    let (rows, state) = contributions.attribute(segments, spec);
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
                states.lock().unwrap().push(state.contributions());
            }
        });
        let emitted = std::mem::take(&mut *emitted.lock().unwrap());
        let held = std::mem::take(&mut *held.lock().unwrap());
        (emitted, held)
    }

    /// The join's state against a model of it, over random ticks of few users, so that users
    /// are forgotten (their segments retracted, their contributions cancelled) and their places
    /// reused within a tick, while windows they were listed in close: what the join emits per
    /// campaign and segment sums to the model's contributions times its segments, and what it
    /// holds per user and campaign is the model's.
    #[test]
    fn places_are_reused_without_losing_or_moving_anything() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};

        let spec = WindowSpec {
            size_ms: 10,
            allowed_lateness_ms: 5,
        };
        let places: Vec<Segment> = ["CA", "NY", "TX"]
            .iter()
            .map(|state| Segment {
                age_band: crate::model::AgeBand::From25To34,
                gender: Gender::Male,
                state: (*state).into(),
                country: "US".into(),
            })
            .collect();
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut join = Attribution::new(spec);
            // The model: segments and all-time contributions per user; and what the join emitted.
            let mut segments: BTreeMap<(UserId, Segment), isize> = BTreeMap::new();
            let mut held: BTreeMap<(UserId, CampaignId), Totals> = BTreeMap::new();
            let mut emitted: BTreeMap<(CampaignId, Option<Segment>), Totals> = BTreeMap::new();
            for tick in 0..120u64 {
                let mut changes = Vec::new();
                for _ in 0..rng.random_range(0..4) {
                    let id = UserId(rng.random_range(0..6));
                    let segment = places[rng.random_range(0..places.len())].clone();
                    // Mostly retract what is there, so that users lose their segments.
                    let count = segments.get(&(id, segment.clone())).copied().unwrap_or(0);
                    let change = if count != 0 && rng.random_bool(0.7) {
                        -count
                    } else {
                        rng.random_range(-1..=1i64) as isize
                    };
                    changes.push(((id, segment), change));
                }
                let mut contributions = Vec::new();
                for _ in 0..rng.random_range(0..8) {
                    let id = UserId(rng.random_range(0..6));
                    let campaign = CampaignId(rng.random_range(0..3));
                    let slot = match rng.random_range(0..4) {
                        0 => Slot::Retired,
                        _ => Slot::Window(EventTimeMs(
                            tick.saturating_sub(rng.random_range(0..30)) / 10 * 10,
                        )),
                    };
                    // Often the exact opposite of what the user holds, so that it empties.
                    let totals = match held.get(&(id, campaign)) {
                        Some(totals) if rng.random_bool(0.5) => totals.negated(),
                        _ => Totals {
                            clicks: rng.random_range(-2..=2),
                            purchases: rng.random_range(-1..=1),
                            units: 0,
                            revenue_cents: rng.random_range(-500..=500),
                        },
                    };
                    contributions.push(((id, (campaign, slot)), totals));
                }
                for ((id, segment), change) in &changes {
                    *segments.entry((*id, segment.clone())).or_default() += change;
                }
                segments.retain(|_, count| *count != 0);
                for ((id, (campaign, _)), totals) in &contributions {
                    held.entry((*id, *campaign)).or_default().add(totals);
                }
                held.retain(|_, totals| !totals.is_empty());

                join.apply(
                    tick,
                    &mut changes,
                    &mut contributions,
                    |c, _, segment, t| {
                        let segment = segment.map(|(_, interned)| interned.segment.clone());
                        emitted.entry((c, segment)).or_default().add(&t);
                    },
                );
                join.retire(Some(tick + 1));

                // What the join emitted so far is the contributions joined with the segments,
                // and each contribution once unknown.
                let mut want: BTreeMap<(CampaignId, Option<Segment>), Totals> = BTreeMap::new();
                for ((id, campaign), totals) in &held {
                    want.entry((*campaign, None)).or_default().add(totals);
                    for ((user, segment), count) in &segments {
                        if user == id {
                            want.entry((*campaign, Some(segment.clone())))
                                .or_default()
                                .add(&totals.scaled(*count));
                        }
                    }
                }
                want.retain(|_, totals| !totals.is_empty());
                emitted.retain(|_, totals| !totals.is_empty());
                assert_eq!(emitted, want, "seed {seed}, tick {tick}");

                let mut found: BTreeMap<(UserId, CampaignId), Totals> = BTreeMap::new();
                for ((id, (campaign, _)), totals) in join.contributions() {
                    found.entry((id, campaign)).or_default().add(&totals);
                }
                found.retain(|_, totals| !totals.is_empty());
                assert_eq!(found, held, "seed {seed}, tick {tick}");
                let found: BTreeMap<(UserId, Segment), isize> =
                    join.segments().into_iter().collect();
                assert_eq!(found, segments, "seed {seed}, tick {tick}");
            }
        }
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

        // Each click counts once in its campaign, user 0's in its country and the others'
        // in the unknown one; nothing is emitted when windows fold.
        let clicks = |dimension: Dimension, window: Option<u64>| -> i64 {
            let key = AggregateKey {
                dimension,
                window: window.map(EventTimeMs),
            };
            emitted
                .iter()
                .filter(|(k, _, _)| *k == key)
                .map(|(_, _, totals)| totals.clicks)
                .sum()
        };
        let campaign = CampaignId(7);
        assert_eq!(clicks(Dimension::Campaign(campaign), None), 43);
        assert_eq!(clicks(Dimension::Campaign(campaign), Some(0)), 41);
        let us = Some("US".into());
        assert_eq!(clicks(Dimension::CampaignCountry(campaign, us), None), 2);
        assert_eq!(clicks(Dimension::CampaignCountry(campaign, None), None), 41);
        assert!(emitted.iter().all(|(_, time, _)| *time <= 3 || *time == 20));
        // The late click counts in all-time totals only, the other one in its window too.
        let windows_at_20: Vec<Option<EventTimeMs>> = emitted
            .iter()
            .filter(|(_, time, _)| *time == 20)
            .map(|(key, _, _)| key.window)
            .collect();
        assert!(windows_at_20.contains(&Some(EventTimeMs(20))));
        assert!(!windows_at_20.contains(&Some(EventTimeMs(0))));

        // Held: in the window until it closes; from then on moved bit by bit, all by 25.
        let windowed = |state: &Held| {
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
