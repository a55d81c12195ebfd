//! A hash table of words by word, for the ledger's millions of remembered orders.
//!
//! Open addressing with linear probing: each entry is its key and its value, 16 bytes in one array,
//! so a lookup reads one cache line (rarely two), whose address is known from the key alone and can
//! be loaded ahead of the lookup ([`OrderTable::prefetch`]). A removal shifts the entries after it
//! back into place rather than leaving a tombstone, so a table whose entries come and go at the
//! same rate keeps its size.
//!
//! The standard library's map (hashbrown) keeps its control bytes apart from its entries: a lookup
//! in a map far larger than the caches missed twice, one miss waiting on the other, and could not
//! be prefetched short of doing the lookup; and removals left tombstones that had to be swept by
//! rebuilding the map.

use crate::operators::prefetch::prefetch;

/// Values are words that are never zero: a zero value marks a vacant entry.
#[derive(Default)]
pub(super) struct OrderTable {
    entries: Vec<Entry>,
    len: usize,
    /// `64 - log2(entries.len())`: an entry's home is the top bits of its key's hash.
    shift: u32,
}

#[derive(Clone, Copy, Default)]
struct Entry {
    key: u64,
    /// Zero: vacant.
    value: u64,
}

/// The most entries a table of `capacity` holds before it doubles: 3/4 full, where linear probing
/// still finds a key within a couple of entries, nearly always in the same cache line.
fn most(capacity: usize) -> usize {
    capacity / 4 * 3
}

/// The smallest table allocated.
const SMALLEST: usize = 16;

/// The key's hash: the finalizer of MurmurHash3, whose top bits depend on every bit of the key
/// (keys are often sequential, and the shard and the worker are chosen by another hash of them,
/// whose top bits are alike within a shard).
fn hash(key: u64) -> u64 {
    let mut h = key;
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

impl OrderTable {
    /// The number of keys held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The number of entries allocated.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.entries.len()
    }

    fn home(&self, key: u64) -> usize {
        (hash(key) >> self.shift) as usize
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// Where `key` is, or the vacant entry where it would go.
    fn find(&self, key: u64) -> (usize, bool) {
        let mask = self.mask();
        let mut at = self.home(key);
        loop {
            let entry = &self.entries[at];
            if entry.value == 0 {
                return (at, false);
            }
            if entry.key == key {
                return (at, true);
            }
            at = (at + 1) & mask;
        }
    }

    /// Asks the processor to load `key`'s home entry, without waiting for it.
    #[inline]
    pub(super) fn prefetch(&self, key: u64) {
        if let Some(entry) = self.entries.get(self.home(key)) {
            prefetch(entry);
        }
    }

    /// The value of `key`.
    pub(super) fn get(&self, key: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        match self.find(key) {
            (at, true) => Some(self.entries[at].value),
            (_, false) => None,
        }
    }

    /// The value of `key`, `value` inserted first if it has none; and whether it was inserted.
    ///
    /// # Panics
    /// If `value` is zero.
    pub(super) fn get_or_insert(&mut self, key: u64, value: u64) -> (&mut u64, bool) {
        assert_ne!(value, 0, "an order table's values are never zero");
        if self.len + 1 > most(self.entries.len()) {
            self.grow();
        }
        let (at, found) = self.find(key);
        if !found {
            self.entries[at] = Entry { key, value };
            self.len += 1;
        }
        (&mut self.entries[at].value, !found)
    }

    /// Removes `key`, returning its value. The entries after it that can move closer to their
    /// home move back, so no entry is left marked as removed.
    pub(super) fn remove(&mut self, key: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let (mut hole, found) = self.find(key);
        if !found {
            return None;
        }
        let removed = self.entries[hole].value;
        let mask = self.mask();
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let entry = self.entries[at];
            if entry.value == 0 {
                break;
            }
            // The entry may fill the hole unless its home lies after the hole, up to where it is
            // (cyclically): it would then sit before its home, where no lookup would find it.
            let home = self.home(entry.key);
            let stays = if hole <= at {
                hole < home && home <= at
            } else {
                hole < home || home <= at
            };
            if !stays {
                self.entries[hole] = entry;
                hole = at;
            }
        }
        self.entries[hole] = Entry::default();
        self.len -= 1;
        Some(removed)
    }

    /// Doubles the table (or allocates its first entries), moving every key to its new home.
    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).max(SMALLEST);
        let old = std::mem::replace(&mut self.entries, vec![Entry::default(); capacity]);
        self.shift = 64 - capacity.trailing_zeros();
        for entry in old.into_iter().filter(|entry| entry.value != 0) {
            let (at, _) = self.find(entry.key);
            self.entries[at] = entry;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// The table against a map, over inserts, lookups and removals of keys drawn from a few
    /// small ranges (so that they collide, cluster and wrap around the table's end), with the
    /// table growing and then holding a steady number of keys.
    #[test]
    fn the_table_holds_what_a_map_holds() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut table = OrderTable::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        for step in 0..400_000u64 {
            let key = match rng.random_range(0..4) {
                0 => rng.random_range(0..2_000),
                1 => u64::MAX - rng.random_range(0..2_000),
                2 => rng.random_range(0..2_000) << 40,
                _ => rng.random(),
            };
            // Growing for the first half, then removing as often as inserting.
            let remove = rng.random_bool(if step < 200_000 { 0.3 } else { 0.5 });
            if remove {
                assert_eq!(table.remove(key), model.remove(&key), "step {step}");
            } else {
                let value = rng.random_range(1..=u64::MAX);
                let (held, inserted) = table.get_or_insert(key, value);
                assert_eq!(inserted, !model.contains_key(&key), "step {step}");
                let want = *model.entry(key).or_insert(value);
                assert_eq!(*held, want, "step {step}");
                if rng.random_bool(0.5) {
                    *held = value;
                    model.insert(key, value);
                }
            }
            let probe = rng.random_range(0..2_000);
            assert_eq!(table.get(probe), model.get(&probe).copied(), "step {step}");
            assert_eq!(table.len(), model.len());
        }
        for (key, value) in &model {
            assert_eq!(table.get(*key), Some(*value));
        }
        // Every held key is where a lookup starting from its home finds it.
        let held = table.entries.iter().filter(|e| e.value != 0).count();
        assert_eq!(held, model.len());
        assert!(table.len() <= most(table.capacity()));
    }

    /// Keys that come and go at the same rate keep the table at the size its keys need.
    #[test]
    fn steady_churn_keeps_the_table_size() {
        let live = 100_000u64;
        let mut table = OrderTable::default();
        let mut grown = 0;
        for n in 0..live * 20 {
            table.get_or_insert(n, n + 1);
            if n >= live {
                assert_eq!(table.remove(n - live), Some(n - live + 1));
            } else {
                grown = table.capacity();
            }
        }
        assert_eq!(table.len() as u64, live);
        assert_eq!(
            table.capacity(),
            grown,
            "the table grew while its keys did not"
        );
        for n in live * 19..live * 20 {
            assert_eq!(table.get(n), Some(n + 1));
        }
        assert_eq!(table.get(live * 19 - 1), None);
    }

    #[test]
    #[should_panic(expected = "never zero")]
    fn a_zero_value_is_refused() {
        OrderTable::default().get_or_insert(1, 0);
    }
}
