//! The output contract: for every completed timestamp, one batch of changed rows.
//!
//! A batch holds, for each key whose value changed at that timestamp, the new absolute value, or an
//! explicit removal when the key has no value any more. Nothing of a timestamp is emitted before
//! the timestamp is complete, and a timestamp's changes are never split across batches (per worker;
//! every key lives on exactly one worker, so the batches of a timestamp from all workers are
//! disjoint, and a sink that waits for every worker's frontier sees whole timestamps).

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

use crate::model::{AggregateKey, Dimension, OutputKey, OutputRow, OutputValue, Tick};
use crate::operators::pending::by_time;

/// One key's change at a timestamp.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The row's key.
    pub key: OutputKey,
    /// The new value, or `None` when the row was removed.
    pub value: Option<OutputValue>,
}

/// Every change of one completed timestamp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The completed timestamp.
    pub time: Tick,
    /// The changes, sorted by key; at most one per key.
    pub changes: Vec<Change>,
}

/// What a worker's output operator reports each time its input frontier moves.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// Batches of the timestamps completed since the last report, in time order (non-empty ones).
    pub batches: Vec<Batch>,
    /// The frontier: every later batch is at or after it; `None` when the input is exhausted.
    pub frontier: Option<Tick>,
}

/// Turns a collection of output rows into per-timestamp batches of changes, handed to `report`
/// whenever the frontier advances.
pub fn emit_batches<'scope, F>(rows: VecCollection<'scope, Tick, OutputRow>, mut report: F)
where
    F: FnMut(Progress) + 'static,
{
    let mut pending: BTreeMap<Tick, Vec<(OutputRow, isize)>> = BTreeMap::new();
    // Emptied lists of reported timestamps, reused rather than grown afresh each tick.
    let mut spare: Vec<Vec<(OutputRow, isize)>> = Vec::new();
    let mut reported: Option<Option<Tick>> = None;
    rows.inner
        .sink(Pipeline, "Output: batches", move |(input, frontier)| {
            input.for_each(|_capability, data| {
                by_time(
                    data.drain(..),
                    &mut pending,
                    |_| spare.pop().unwrap_or_default(),
                    |updates, row, diff| updates.push((row, diff)),
                );
            });
            let lower = frontier.frontier().first().copied();
            let mut batches = Vec::new();
            while let Some(entry) = pending.first_entry() {
                if lower.is_some_and(|l| *entry.key() >= l) {
                    break;
                }
                let (time, mut updates) = entry.remove_entry();
                let batch = changes_of(time, &updates);
                updates.clear();
                spare.push(updates);
                if !batch.changes.is_empty() {
                    batches.push(batch);
                }
            }
            if !batches.is_empty() || reported != Some(lower) {
                reported = Some(lower);
                report(Progress {
                    batches,
                    frontier: lower,
                });
            }
        });
}

/// The changes of one timestamp from its updates: a key's new value is the value left with a
/// positive count once its updates are summed; a key left with none was removed, and a key whose
/// updates cancel did not change. The changes are sorted by key.
///
/// A key's updates mostly arrive in a run (the totals emit a key's retraction and its insertion
/// in turn), so the runs are found first and sorted by their key, rather than the rows: half as
/// many items, moved as indices. Runs of one key that arrived apart meet in the sort. Sorting the
/// rows whole, values included, and consolidating them was a noticeable share of the engine's
/// time at thousands of keys per tick; so were the sort's comparisons of keys (segment names,
/// compared byte by byte), which the runs' [`order_prefix`] mostly settle instead.
pub fn changes_of(time: Tick, updates: &[(OutputRow, isize)]) -> Batch {
    let key_at = |at: usize| &updates[at].0.0;
    let mut runs: Vec<(u128, usize, usize)> = Vec::new();
    let mut start = 0;
    for at in 1..=updates.len() {
        if at == updates.len() || key_at(at) != key_at(start) {
            runs.push((order_prefix(key_at(start)), start, at));
            start = at;
        }
    }
    runs.sort_unstable_by(|(p, a, _), (q, b, _)| p.cmp(q).then_with(|| key_at(*a).cmp(key_at(*b))));
    let mut changes: Vec<Change> = Vec::with_capacity(runs.len());
    let mut values: Vec<(OutputValue, isize)> = Vec::new();
    let mut runs = runs.into_iter().peekable();
    while let Some((prefix, start, end)) = runs.next() {
        let key = key_at(start);
        values.clear();
        let mut add = |rows: &[(OutputRow, isize)]| {
            for ((_, value), diff) in rows {
                match values.iter_mut().find(|(v, _)| v == value) {
                    Some((_, count)) => *count += diff,
                    None => values.push((*value, *diff)),
                }
            }
        };
        add(&updates[start..end]);
        while let Some((_, start, end)) =
            runs.next_if(|(p, next, _)| *p == prefix && key_at(*next) == key)
        {
            add(&updates[start..end]);
        }
        values.retain(|(_, count)| *count != 0);
        if values.is_empty() {
            continue;
        }
        let value = values
            .iter()
            .find(|(_, count)| *count > 0)
            .map(|(value, _)| *value);
        changes.push(Change {
            key: key.clone(),
            value,
        });
    }
    Batch { time, changes }
}

/// The leading part of `key`'s place in the order of keys, as a number: `order_prefix(a) <
/// order_prefix(b)` implies `a < b`, and equal keys have equal prefixes, so a sort compares the
/// prefixes and only keys with equal ones in full.
///
/// The prefix is the key's fields in the order `Ord` compares them (the variants' declaration
/// order, `None` before `Some`, tuples field by field), each as a number of fixed width placed
/// after the one before: the variants by index, campaigns and windows whole, names by their first
/// few bytes and their length. It is complete, equal only for equal keys, unless a name is longer
/// than the room it is given (a state or country of more than three bytes, two beside a
/// campaign) or a window starts at `u64::MAX`: the prefix then ends there, and the keys it cannot
/// tell apart are compared in full.
fn order_prefix(key: &OutputKey) -> u128 {
    let mut bits = Bits::default();
    match key {
        OutputKey::Aggregate(AggregateKey { dimension, window }) => {
            bits.push(0, 2);
            match dimension {
                Dimension::Campaign(campaign) => {
                    bits.push(0, 3);
                    bits.push(campaign.0.into(), 32);
                }
                Dimension::AgeGender(age_gender) => {
                    bits.push(1, 3);
                    bits.age_gender(*age_gender);
                }
                Dimension::State(state) => {
                    bits.push(2, 3);
                    bits.push(state.is_some().into(), 1);
                    if let Some((country, state)) = state {
                        bits.name(country, 3);
                        bits.name(state, 3);
                    }
                }
                Dimension::Country(country) => {
                    bits.push(3, 3);
                    bits.country(country.as_ref(), 6);
                }
                Dimension::CampaignCountry(campaign, country) => {
                    bits.push(4, 3);
                    bits.push(campaign.0.into(), 32);
                    bits.country(country.as_ref(), 2);
                }
                Dimension::CampaignAgeGender(campaign, age_gender) => {
                    bits.push(5, 3);
                    bits.push(campaign.0.into(), 32);
                    bits.age_gender(*age_gender);
                }
            }
            // `None` first; a start of `u64::MAX` shares its number with the one before.
            bits.push(window.map_or(0, |start| start.0.saturating_add(1)), 64);
        }
        OutputKey::Counter(counter) => {
            bits.push(1, 2);
            bits.push(*counter as u64, 6);
        }
    }
    bits.value
}

/// Fields placed one after the other from the top of a `u128`, until one ends the prefix.
#[derive(Default)]
struct Bits {
    value: u128,
    used: u32,
    ended: bool,
}

impl Bits {
    /// Places `value`, which must fit in `width` bits.
    fn push(&mut self, value: u64, width: u32) {
        if self.ended {
            return;
        }
        debug_assert!(
            width == 64 || value >> width == 0,
            "{value} in {width} bits"
        );
        self.used += width;
        assert!(self.used <= 128, "a key's prefix of {} bits", self.used);
        self.value |= u128::from(value) << (128 - self.used);
    }

    fn age_gender(&mut self, age_gender: Option<(crate::model::AgeBand, crate::model::Gender)>) {
        self.push(age_gender.is_some().into(), 1);
        if let Some((age_band, gender)) = age_gender {
            self.push(age_band as u64, 3);
            self.push(gender as u64, 2);
        }
    }

    /// Places an optional country, `None` first, its name given `room` bytes.
    fn country(&mut self, country: Option<&crate::model::Name>, room: usize) {
        self.push(country.is_some().into(), 1);
        if let Some(country) = country {
            self.name(country, room);
        }
    }

    /// Places a name's first `room` bytes, zero-padded, then its length, `room + 1` standing for
    /// any longer. Names of at most `room` bytes order as (padded bytes, length); a longer name
    /// ends the prefix, since what follows it would be compared only when the names are equal.
    fn name(&mut self, name: &str, room: usize) {
        let bytes = name.as_bytes();
        let padded = (0..room).fold(0u64, |padded, at| {
            padded << 8 | u64::from(bytes.get(at).copied().unwrap_or(0))
        });
        self.push(padded, 8 * room as u32);
        let length_width = u64::BITS - (room as u64 + 1).leading_zeros();
        self.push(bytes.len().min(room + 1) as u64, length_width);
        if bytes.len() > room {
            self.ended = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::model::{AgeBand, CampaignId, Counter, EventTimeMs, Gender, Name, Totals};

    /// Names a sort can trip on: empty, zero bytes, prefixes of each other, at and past the room
    /// a prefix gives names, and multi-byte characters.
    const NAMES: &[&str] = &[
        "",
        "\0",
        "\0\0",
        "A",
        "A\0",
        "A\0B",
        "AB",
        "AB\0",
        "ABC",
        "ABCD",
        "ABCE",
        "ABD",
        "B",
        "CA",
        "US",
        "USA",
        "ZZZZZZZ",
        "ZZZZZZZ\0",
        "é",
        "éé",
        "\u{7f}",
        "\u{10FFFF}",
        "United States",
        "United Statez",
    ];

    fn random_key(rng: &mut StdRng) -> OutputKey {
        let name = |rng: &mut StdRng| Name::from(NAMES[rng.random_range(0..NAMES.len())]);
        let campaign = |rng: &mut StdRng| {
            CampaignId([0, 1, 2, 7, u32::MAX - 1, u32::MAX][rng.random_range(0..6)])
        };
        let age_gender = |rng: &mut StdRng| {
            rng.random_bool(0.8).then(|| {
                let band =
                    AgeBand::of([0, 17, 18, 30, 40, 50, 60, 90, 255][rng.random_range(0..9)]);
                let genders = [
                    Gender::Female,
                    Gender::Male,
                    Gender::Other,
                    Gender::Undisclosed,
                ];
                (band, genders[rng.random_range(0..4)])
            })
        };
        if rng.random_bool(0.05) {
            return OutputKey::Counter(Counter::ALL[rng.random_range(0..Counter::ALL.len())]);
        }
        let dimension = match rng.random_range(0..6) {
            0 => Dimension::Campaign(campaign(rng)),
            1 => Dimension::AgeGender(age_gender(rng)),
            2 => Dimension::State(rng.random_bool(0.8).then(|| (name(rng), name(rng)))),
            3 => Dimension::Country(rng.random_bool(0.8).then(|| name(rng))),
            4 => Dimension::CampaignCountry(campaign(rng), rng.random_bool(0.8).then(|| name(rng))),
            _ => Dimension::CampaignAgeGender(campaign(rng), age_gender(rng)),
        };
        let window = match rng.random_range(0..7) {
            0 => None,
            1 => Some(0),
            2 => Some(1),
            3 => Some(u64::MAX - 1),
            4 => Some(u64::MAX),
            _ => Some(rng.random_range(0..4) * 60_000),
        };
        OutputKey::Aggregate(AggregateKey {
            dimension,
            window: window.map(EventTimeMs),
        })
    }

    /// Whether the prefix tells `key` from every other key: no name longer than its room and no
    /// window starting at `u64::MAX`.
    fn complete(key: &OutputKey) -> bool {
        let OutputKey::Aggregate(AggregateKey { dimension, window }) = key else {
            return true;
        };
        let fits = |name: &Name, room: usize| name.len() <= room;
        let names = match dimension {
            Dimension::State(Some((country, state))) => fits(country, 3) && fits(state, 3),
            Dimension::Country(Some(country)) => fits(country, 6),
            Dimension::CampaignCountry(_, Some(country)) => fits(country, 2),
            _ => true,
        };
        names && *window != Some(EventTimeMs(u64::MAX))
    }

    #[test]
    fn order_prefixes_sort_as_keys_do_and_tell_apart_keys_that_fit() {
        let mut rng = StdRng::seed_from_u64(7);
        let keys: Vec<OutputKey> = (0..3_000).map(|_| random_key(&mut rng)).collect();
        let prefixes: Vec<u128> = keys.iter().map(order_prefix).collect();
        let mut ties = 0;
        for (a, (key_a, prefix_a)) in keys.iter().zip(&prefixes).enumerate() {
            for (key_b, prefix_b) in keys[a..].iter().zip(&prefixes[a..]) {
                let order = key_a.cmp(key_b);
                match prefix_a.cmp(prefix_b) {
                    std::cmp::Ordering::Equal => {
                        ties += usize::from(order.is_ne());
                        assert!(
                            order.is_eq() || !complete(key_a) || !complete(key_b),
                            "{key_a:?} and {key_b:?} share the prefix {prefix_a:#x}"
                        );
                    }
                    prefix_order => {
                        assert_eq!(prefix_order, order, "{key_a:?} vs {key_b:?}");
                    }
                }
            }
        }
        // The hostile names do leave some keys to a full comparison.
        assert!(ties > 0);
    }

    #[test]
    fn changes_are_what_each_keys_updates_sum_to_in_key_order() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let keys: Vec<OutputKey> = (0..rng.random_range(1..40))
                .map(|_| random_key(&mut rng))
                .collect();
            let value = |n: i64| OutputValue::Totals(Totals::click().scaled(n as isize));
            // Runs of a key's updates, some keys in several runs, some updates cancelling.
            let mut updates: Vec<(OutputRow, isize)> = Vec::new();
            for _ in 0..rng.random_range(0..80) {
                let key = &keys[rng.random_range(0..keys.len())];
                for _ in 0..rng.random_range(1..4) {
                    let row = (key.clone(), value(rng.random_range(1..4)));
                    updates.push((row, rng.random_range(-1i64..=1) as isize));
                }
            }
            let mut sums: BTreeMap<OutputKey, BTreeMap<OutputValue, isize>> = BTreeMap::new();
            for ((key, value), diff) in &updates {
                *sums
                    .entry(key.clone())
                    .or_default()
                    .entry(*value)
                    .or_default() += diff;
            }
            sums.retain(|_, values| {
                values.retain(|_, count| *count != 0);
                !values.is_empty()
            });
            let batch = changes_of(3, &updates);
            let keys: Vec<&OutputKey> = batch.changes.iter().map(|c| &c.key).collect();
            assert_eq!(keys, sums.keys().collect::<Vec<_>>());
            for (change, values) in batch.changes.iter().zip(sums.values()) {
                // A key left with several values (which no collection of rows has) may show any.
                let mut positive = values.iter().filter(|(_, count)| **count > 0);
                match change.value {
                    None => assert_eq!(positive.next(), None),
                    Some(value) => assert!(positive.any(|(v, _)| *v == value), "{change:?}"),
                }
            }
        }
    }

    #[test]
    fn changes_are_new_values_removals_and_nothing_for_cancelled_updates() {
        let key = |c: Counter| OutputKey::Counter(c);
        let n = OutputValue::Count;
        let updates = vec![
            // Changed: 1 -> 2, retraction after insertion.
            ((key(Counter::Duplicates), n(2)), 1),
            // Removed.
            ((key(Counter::EventsIn), n(7)), -1),
            // Inserted and retracted in the same timestamp: no change.
            ((key(Counter::LateForWindow), n(3)), 1),
            ((key(Counter::Duplicates), n(1)), -1),
            ((key(Counter::LateForWindow), n(3)), -1),
            // New.
            ((key(Counter::RefundsApplied), n(5)), 1),
        ];
        let batch = changes_of(9, &updates);
        assert_eq!(batch.time, 9);
        let mut want = vec![
            Change {
                key: key(Counter::Duplicates),
                value: Some(n(2)),
            },
            Change {
                key: key(Counter::EventsIn),
                value: None,
            },
            Change {
                key: key(Counter::RefundsApplied),
                value: Some(n(5)),
            },
        ];
        want.sort();
        assert_eq!(batch.changes, want);
    }
}
