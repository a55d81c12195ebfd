//! Users' demographics: a plausible population, and a stream of slow changes to it.

use dataflows::model::{Demographic, Gender, UserId};
use rand::RngExt;
use rand::rngs::SmallRng;

use super::{rng_for, weighted};

const SALT_ROW: u64 = 0xD3;
const SALT_CHANGE: u64 = 0xC4;

/// Countries, weighted roughly by an American shop's audience.
const COUNTRIES: &[(&str, u32)] = &[
    ("US", 70),
    ("CA", 8),
    ("GB", 7),
    ("DE", 6),
    ("FR", 4),
    ("IN", 3),
    ("BR", 2),
];

/// US states weighted by population (millions, rounded), the rest of the states sharing a remainder.
const US_STATES: &[(&str, u32)] = &[
    ("CA", 39),
    ("TX", 30),
    ("FL", 22),
    ("NY", 20),
    ("PA", 13),
    ("IL", 13),
    ("OH", 12),
    ("GA", 11),
    ("NC", 11),
    ("MI", 10),
    ("NJ", 9),
    ("VA", 9),
    ("WA", 8),
    ("AZ", 7),
    ("TN", 7),
    ("MA", 7),
    ("IN", 7),
    ("MO", 6),
    ("MD", 6),
    ("WI", 6),
    ("CO", 6),
    ("MN", 6),
    ("SC", 5),
    ("AL", 5),
    ("LA", 5),
    ("KY", 5),
    ("OR", 4),
    ("OK", 4),
    ("CT", 4),
    ("UT", 3),
    ("IA", 3),
    ("NV", 3),
    ("AR", 3),
    ("MS", 3),
    ("KS", 3),
    ("NM", 2),
    ("NE", 2),
    ("ID", 2),
    ("WV", 2),
    ("HI", 1),
    ("NH", 1),
    ("ME", 1),
    ("MT", 1),
    ("RI", 1),
    ("DE", 1),
    ("SD", 1),
    ("ND", 1),
    ("AK", 1),
    ("DC", 1),
    ("VT", 1),
    ("WY", 1),
];
const CA_PROVINCES: &[(&str, u32)] = &[
    ("ON", 39),
    ("QC", 22),
    ("BC", 14),
    ("AB", 12),
    ("MB", 4),
    ("SK", 3),
    ("NS", 3),
];
const GB_NATIONS: &[(&str, u32)] = &[("ENG", 84), ("SCT", 8), ("WLS", 5), ("NIR", 3)];
const DE_STATES: &[(&str, u32)] = &[
    ("NW", 21),
    ("BY", 16),
    ("BW", 13),
    ("NI", 10),
    ("HE", 8),
    ("BE", 4),
    ("SN", 5),
];
const FR_REGIONS: &[(&str, u32)] = &[
    ("IDF", 18),
    ("ARA", 12),
    ("NAQ", 9),
    ("OCC", 9),
    ("HDF", 9),
    ("PAC", 8),
];
const IN_STATES: &[(&str, u32)] = &[
    ("MH", 10),
    ("UP", 16),
    ("KA", 5),
    ("TN", 6),
    ("DL", 2),
    ("WB", 7),
];
const BR_STATES: &[(&str, u32)] = &[("SP", 22), ("MG", 10), ("RJ", 8), ("BA", 7), ("RS", 5)];

fn regions(country: &str) -> &'static [(&'static str, u32)] {
    match country {
        "US" => US_STATES,
        "CA" => CA_PROVINCES,
        "GB" => GB_NATIONS,
        "DE" => DE_STATES,
        "FR" => FR_REGIONS,
        "IN" => IN_STATES,
        _ => BR_STATES,
    }
}

/// An age between 18 and 90, skewed towards the thirties: the sum of three uniform draws.
fn age(rng: &mut SmallRng) -> u8 {
    let spread: f64 = (0..3).map(|_| rng.random::<f64>()).sum::<f64>() / 3.0;
    let skewed = spread * spread.sqrt();
    18 + (skewed * 72.0).round() as u8
}

fn gender(rng: &mut SmallRng) -> Gender {
    weighted(
        &[
            (Gender::Female, 49),
            (Gender::Male, 48),
            (Gender::Other, 2),
            (Gender::Undisclosed, 1),
        ],
        rng.random(),
    )
}

/// A place to live: a country and one of its regions.
fn place(rng: &mut SmallRng) -> (&'static str, &'static str) {
    let country = weighted(COUNTRIES, rng.random());
    (country, weighted(regions(country), rng.random()))
}

/// The generated demographics row of user `id`: a pure function of `(seed, id)`.
pub fn user(seed: u64, id: u32) -> Demographic {
    let mut rng = rng_for(seed, SALT_ROW, u64::from(id));
    let age = age(&mut rng);
    let gender = gender(&mut rng);
    let (country, state) = place(&mut rng);
    Demographic {
        id: UserId(id),
        age,
        gender,
        state: state.into(),
        country: country.into(),
    }
}

/// The initial table: users `0..users`.
pub fn table(seed: u64, users: u32) -> impl Iterator<Item = Demographic> {
    (0..users).map(move |id| user(seed, id))
}

/// A stream of changes to the table, each as `(row, +1 | -1)` updates: users move (within their
/// country or abroad), have birthdays, are deleted, and new users arrive from the ids above the
/// initial table (those events generate as "unknown users" until their row arrives).
///
/// Change `k` depends on the seed and on the changes before it (an update retracts the row as it
/// is then), so the stream is replayed from the start to resume; it is cheap, a few per second.
pub struct Changes {
    seed: u64,
    next: u64,
    initial_users: u32,
    rows: Vec<Option<Demographic>>,
}

impl Changes {
    /// Changes to the table of `initial_users` users, new users taking ids up to
    /// `initial_users + new_users`.
    pub fn new(seed: u64, initial_users: u32, new_users: u32) -> Changes {
        let mut rows: Vec<Option<Demographic>> = table(seed, initial_users).map(Some).collect();
        rows.resize(initial_users as usize + new_users as usize, None);
        Changes {
            seed,
            next: 0,
            initial_users,
            rows,
        }
    }

    /// How many changes have been produced.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next change's updates (empty when it picked an absent row to update).
    pub fn next_change(&mut self) -> Vec<(Demographic, isize)> {
        let mut rng = rng_for(self.seed, SALT_CHANGE, self.next);
        self.next += 1;
        if self.rows.is_empty() {
            return Vec::new();
        }
        let kind = rng.random_range(0..100);
        // New users arrive in id order, so generated "unknown users" eventually become known.
        if kind < 15
            && let Some(id) =
                (self.initial_users as usize..self.rows.len()).find(|&i| self.rows[i].is_none())
        {
            let row = user(self.seed ^ 0x5EED, id as u32);
            self.rows[id] = Some(row.clone());
            return vec![(row, 1)];
        }
        let id = rng.random_range(0..self.rows.len());
        let Some(old) = self.rows[id].clone() else {
            return Vec::new();
        };
        let new = match kind {
            0..=59 => {
                // A move: within the country mostly, sometimes abroad.
                let (country, state) = if rng.random_bool(0.9) {
                    (
                        old.country.clone(),
                        weighted(regions(&old.country), rng.random()).into(),
                    )
                } else {
                    let (c, s) = place(&mut rng);
                    (c.into(), s.into())
                };
                Some(Demographic {
                    country,
                    state,
                    ..old.clone()
                })
            }
            60..=89 => Some(Demographic {
                age: old.age.saturating_add(1),
                ..old.clone()
            }),
            _ => None,
        };
        self.rows[id] = new.clone();
        match new {
            Some(new) if new == old => Vec::new(),
            Some(new) => vec![(old, -1), (new, 1)],
            None => vec![(old, -1)],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn rows_are_deterministic_and_plausible() {
        assert_eq!(user(7, 123), user(7, 123));
        let rows: Vec<_> = table(7, 10_000).collect();
        assert!(rows.iter().all(|r| (18..=90).contains(&r.age)));
        let us = rows.iter().filter(|r| r.country == "US").count();
        assert!((6_500..7_500).contains(&us), "about 70% in the US: {us}");
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.country == "US") {
            *by_state.entry(r.state.as_str()).or_default() += 1;
        }
        assert!(by_state["CA"] > by_state["WY"] * 10, "skewed by population");
    }

    #[test]
    fn changes_keep_one_row_per_user() {
        let mut changes = Changes::new(3, 50, 10);
        let mut table: BTreeMap<Demographic, isize> = table(3, 50).map(|r| (r, 1)).collect();
        for _ in 0..2_000 {
            for (row, diff) in changes.next_change() {
                *table.entry(row).or_default() += diff;
            }
        }
        table.retain(|_, n| *n != 0);
        assert!(table.values().all(|&n| n == 1));
        let mut ids: Vec<_> = table.keys().map(|r| r.id).collect();
        let len = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), len, "one row per user");
        assert!(ids.iter().any(|id| id.0 >= 50), "new users arrived");
        // Replaying from the start gives the same stream.
        let mut again = Changes::new(3, 50, 10);
        let mut first = Changes::new(3, 50, 10);
        for _ in 0..100 {
            assert_eq!(first.next_change(), again.next_change());
        }
    }
}
