//! Where each of the join's users is: see [`Index`].

use rustc_hash::FxHashMap;

use crate::model::UserId;
use crate::operators::prefetch::prefetch;

/// Where each user is in [`super::Attribution`]'s users: a table indexed by the id itself for ids below a
/// few times the number of users held, and a hash map for the others. A shop numbers its users
/// densely, so nearly every user is in the table, where finding it takes one load whose address
/// is known without loading anything: it can be prefetched, where a hash map's probe could not
/// (perf annotate put 40% of `apply`'s samples on the probe's miss).
#[derive(Default)]
pub(super) struct Index {
    /// By id: the user's place, or [`Index::NONE`].
    dense: Vec<u32>,
    /// Users whose ids are beyond `dense`.
    sparse: FxHashMap<UserId, u32>,
}

impl Index {
    /// No user.
    pub(super) const NONE: u32 = u32::MAX;

    /// The place of user `id`, if held.
    #[inline]
    pub(super) fn get(&self, id: UserId) -> Option<u32> {
        match self.dense.get(id.0 as usize) {
            Some(&place) => (place != Index::NONE).then_some(place),
            None => self.sparse.get(&id).copied(),
        }
    }

    /// Records that user `id`, not held, is at `place`, with `places` places in all. The table
    /// grows to take the id if it is below four times the places (and at least 2^16): the
    /// table then takes at most 16 bytes per place, whatever ids the input holds.
    pub(super) fn insert(&mut self, id: UserId, place: u32, places: usize) {
        let at = id.0 as usize;
        let limit = (4 * places).max(1 << 16);
        if at >= self.dense.len() && at < limit {
            let len = (at + 1).next_power_of_two().min(limit);
            self.dense.resize(len, Index::NONE);
            let moved: Vec<UserId> = self
                .sparse
                .keys()
                .filter(|id| (id.0 as usize) < len)
                .copied()
                .collect();
            for id in moved {
                self.dense[id.0 as usize] = self.sparse.remove(&id).expect("a sparse user");
            }
        }
        match self.dense.get_mut(at) {
            Some(slot) => *slot = place,
            None => {
                self.sparse.insert(id, place);
            }
        }
    }

    /// Forgets user `id`.
    pub(super) fn remove(&mut self, id: UserId) {
        match self.dense.get_mut(id.0 as usize) {
            Some(slot) => *slot = Index::NONE,
            None => {
                self.sparse.remove(&id);
            }
        }
    }

    /// Starts loading the entry of user `id`, if it is in the table.
    #[inline]
    pub(super) fn prefetch(&self, id: UserId) {
        if let Some(slot) = self.dense.get(id.0 as usize) {
            prefetch(slot);
        }
    }

    /// The places of every user held.
    pub(super) fn places(&self) -> impl Iterator<Item = u32> {
        let dense = self.dense.iter().copied().filter(|p| *p != Index::NONE);
        dense.chain(self.sparse.values().copied())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The index against a map, with ids dense and sparse: those beyond the table, and those
    /// the table takes in once it grows with the places.
    #[test]
    fn the_index_finds_every_user_dense_or_sparse() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};

        let mut rng = StdRng::seed_from_u64(3);
        let mut index = Index::default();
        let mut model: BTreeMap<UserId, u32> = BTreeMap::new();
        let mut places = 0;
        for step in 0..200_000u32 {
            let id = UserId(match rng.random_range(0..4) {
                0 => rng.random_range(0..1_000),
                1 => rng.random_range(0..400_000),
                2 => rng.random_range(u32::MAX - 1_000..=u32::MAX),
                _ => rng.random(),
            });
            match model.get(&id) {
                Some(_) if rng.random_bool(0.3) => {
                    index.remove(id);
                    model.remove(&id);
                }
                Some(_) => {}
                None => {
                    places += 1;
                    index.insert(id, step, places);
                    model.insert(id, step);
                }
            }
            let probe = UserId(rng.random_range(0..400_000));
            assert_eq!(index.get(probe), model.get(&probe).copied());
            assert_eq!(index.get(id), model.get(&id).copied());
        }
        assert!(index.dense.len() > 1 << 16, "the table grew");
        assert!(!index.sparse.is_empty(), "some ids stayed beyond it");
        for (id, place) in &model {
            assert_eq!(index.get(*id), Some(*place));
        }
        let mut found: Vec<u32> = index.places().collect();
        found.sort_unstable();
        let mut want: Vec<u32> = model.values().copied().collect();
        want.sort_unstable();
        assert_eq!(found, want);
    }
}
