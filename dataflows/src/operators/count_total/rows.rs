//! One worker's totals per key: see [`Rows`].

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::model::{AggregateKey, Tick, Totals};

/// The totals of one worker's keys, with what each was before the timestamp being applied.
///
/// One hash table finds a key's row, which remembers its total at the timestamp's start the first
/// time the timestamp changes it; the rows changed are listed by place. A timestamp's updates of
/// a key (one from each worker's join) thus cost one lookup each, where summing them per
/// timestamp in a map and then applying the sums to the totals cost two lookups per update and
/// one more per key (`perf`, `shopflow bench -w 2`). A key whose total returns to zero keeps a
/// zero row, which counts as no row, until the next sweep of closed windows.
#[derive(Default)]
pub(super) struct Rows {
    /// Places in `rows`, by the hash of their keys.
    table: HashTable<u32>,
    rows: Vec<Row>,
    /// Places of the rows changed at the timestamp being applied, each once.
    changed: Vec<u32>,
}

struct Row {
    hash: u64,
    key: AggregateKey,
    total: Totals,
    /// The total before the timestamp `stamp`, the latest that changed it.
    before: Totals,
    stamp: Tick,
}

impl Rows {
    /// Adds `delta` to `key`'s total at `time`, which must not decrease between calls; whether
    /// the key had no row.
    pub(super) fn add(&mut self, time: Tick, key: AggregateKey, delta: &Totals) -> bool {
        let hash = FxBuildHasher.hash_one(&key);
        let rows = &mut self.rows;
        let found = self
            .table
            .find(hash, |&at| {
                let row = &rows[at as usize];
                row.hash == hash && row.key == key
            })
            .copied();
        match found {
            Some(at) => {
                let row = &mut rows[at as usize];
                if row.stamp != time {
                    row.before = row.total;
                    row.stamp = time;
                    self.changed.push(at);
                }
                row.total.add(delta);
                false
            }
            None => {
                let at = u32::try_from(rows.len()).expect("fewer than 2^32 aggregate keys");
                rows.push(Row {
                    hash,
                    key,
                    total: *delta,
                    before: Totals::default(),
                    stamp: time,
                });
                self.table
                    .insert_unique(hash, at, |&at| rows[at as usize].hash);
                self.changed.push(at);
                true
            }
        }
    }

    /// Hands out each row changed since the last call, with its total before and after, and
    /// forgets which rows changed.
    pub(super) fn changed(&mut self, mut give: impl FnMut(&AggregateKey, &Totals, &Totals)) {
        for at in self.changed.drain(..) {
            let row = &self.rows[at as usize];
            if row.before != row.total {
                give(&row.key, &row.before, &row.total);
            }
        }
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &AggregateKey> {
        self.rows.iter().map(|row| &row.key)
    }

    /// Keeps the rows `keep` accepts, and rebuilds the table of places.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&AggregateKey, &Totals) -> bool) {
        self.rows.retain(|row| keep(&row.key, &row.total));
        self.table.clear();
        let rows = &self.rows;
        for (at, row) in rows.iter().enumerate() {
            self.table
                .insert_unique(row.hash, at as u32, |&at| rows[at as usize].hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::model::{CampaignId, Dimension, EventTimeMs, Name};

    /// The rows against a map of totals, over random timestamps of random deltas to few keys,
    /// with deltas that cancel, keys that return to zero, and sweeps: each timestamp's changes
    /// are every key whose total moved, once, with its totals before and after.
    #[test]
    fn rows_report_each_changed_key_once_with_its_totals_before_and_after() {
        let mut rng = StdRng::seed_from_u64(11);
        let keys: Vec<AggregateKey> = (0..40u32)
            .map(|n| AggregateKey {
                dimension: match n % 4 {
                    0 => Dimension::Campaign(CampaignId(n)),
                    1 => Dimension::Country(Some(Name::from(format!("country {n}")))),
                    2 => Dimension::Country(None),
                    _ => Dimension::CampaignCountry(CampaignId(n % 3), None),
                },
                window: (n % 5 != 0).then_some(EventTimeMs(u64::from(n % 3))),
            })
            .collect();
        let mut rows = Rows::default();
        let mut model: BTreeMap<AggregateKey, Totals> = BTreeMap::new();
        for time in 0..2_000u64 {
            if rng.random_bool(0.05) {
                // A sweep forgets rows whose window is odd, as a closing window's are.
                let gone = |key: &AggregateKey| key.window.is_some_and(|start| start.0 % 2 == 1);
                rows.retain(|key, total| !gone(key) && !total.is_empty());
                model.retain(|key, _| !gone(key));
            }
            let before = model.clone();
            for _ in 0..rng.random_range(0..12) {
                let key = keys[rng.random_range(0..keys.len())].clone();
                let delta = Totals {
                    clicks: rng.random_range(-2..=2),
                    purchases: rng.random_range(-1..=1),
                    units: 0,
                    revenue_cents: rng.random_range(-1..=1) * 100,
                };
                rows.add(time, key.clone(), &delta);
                model.entry(key).or_default().add(&delta);
            }
            let mut reported = Vec::new();
            rows.changed(|key, old, new| reported.push((key.clone(), *old, *new)));
            reported.sort();
            let mut expected: Vec<(AggregateKey, Totals, Totals)> = model
                .iter()
                .map(|(key, new)| (key, before.get(key).copied().unwrap_or_default(), *new))
                .filter(|(_, old, new)| old != new)
                .map(|(key, old, new)| (key.clone(), old, new))
                .collect();
            expected.sort();
            assert_eq!(reported, expected, "time {time}");
        }
        let mut held: Vec<(AggregateKey, Totals)> = rows
            .rows
            .iter()
            .filter(|row| !row.total.is_empty())
            .map(|row| (row.key.clone(), row.total))
            .collect();
        held.sort();
        let expected: Vec<(AggregateKey, Totals)> = model
            .into_iter()
            .filter(|(_, total)| !total.is_empty())
            .collect();
        assert_eq!(held, expected);
    }
}
