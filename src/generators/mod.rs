//! Seeded, deterministic, resumable generators of the model's records.
//!
//! Like Materialize's load generators, every record is a function of the seed and its position:
//! event `n` can be produced without producing the ones before it, so any number of workers
//! generate disjoint shares of one stream, and a run can resume at any offset.

pub mod demographics;
pub mod events;

use rand::SeedableRng;
use rand::rngs::SmallRng;

/// A random number generator for item `index` of a stream `salt` under `seed`.
pub(crate) fn rng_for(seed: u64, salt: u64, index: u64) -> SmallRng {
    // SplitMix64's finaliser spreads neighbouring indices over the whole seed space.
    let mut z = seed ^ salt.rotate_left(32) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    SmallRng::seed_from_u64(z ^ (z >> 31))
}

/// Picks from `choices` with the given relative weights; `draw` is uniform in `[0, 1)`.
pub(crate) fn weighted<T: Copy>(choices: &[(T, u32)], draw: f64) -> T {
    let total: u32 = choices.iter().map(|(_, w)| w).sum();
    let mut target = draw * f64::from(total);
    for &(choice, weight) in choices {
        if target < f64::from(weight) {
            return choice;
        }
        target -= f64::from(weight);
    }
    choices[choices.len() - 1].0
}
