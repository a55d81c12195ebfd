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

/// Every input an embedded run of `events` events feeds the dataflow, at its tick: the initial
/// table and the events and demographic changes of each tick, as the runtime produces them
/// (split over workers there). Tests and experiments replay it through the reference.
pub fn recorded_run(
    knobs: &events::GeneratorKnobs,
    start_ms: u64,
    tick_ms: u64,
    events: u64,
) -> Result<Vec<(dataflows::model::Tick, dataflows::harness::Input)>, String> {
    use dataflows::harness::Input;
    let generator = events::EventGenerator::new(knobs.clone(), start_ms)?;
    let mut changes = demographics::Changes::new(knobs.seed, knobs.users, knobs.new_users);
    let change_ms =
        |k: u64| start_ms + (k as f64 * 1_000.0 / knobs.demographic_changes_per_second) as u64;
    let mut tick = start_ms - start_ms % tick_ms;
    let mut inputs: Vec<_> = demographics::table(knobs.seed, knobs.users)
        .map(|row| (tick, Input::Demographic(row, 1)))
        .collect();
    while generator.first_at_or_after(tick) < events {
        let end = tick + tick_ms;
        let (first, last) = (
            generator.first_at_or_after(tick),
            generator.first_at_or_after(end).min(events),
        );
        inputs.extend((first..last).map(|n| (tick, Input::Event(generator.event(n)))));
        while knobs.demographic_changes_per_second > 0.0 && change_ms(changes.position()) < end {
            inputs.extend(
                changes
                    .next_change()
                    .into_iter()
                    .map(|(row, diff)| (tick, Input::Demographic(row, diff))),
            );
        }
        tick = end;
    }
    Ok(inputs)
}
