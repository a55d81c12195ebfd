//! Seeded random inputs for the dataflow and the tools that recompute it: demographic rows and
//! changes (moves, birthdays, deletions, rows for unknown users), events (duplicates, follow-ups
//! of earlier orders, late, future and unknown-user events) and counted bad messages, at ticks.
//! The same seed and [`Shape`] always give the same inputs.

use std::collections::BTreeMap;

use dataflows::Params;
use dataflows::harness::Input;
use dataflows::model::{
    CampaignId, Cents, Counter, Demographic, Event, EventTimeMs, Gender, OrderId, Tag, Tick, UserId,
};
use dataflows::windows::WindowSpec;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The processing-time step between ticks, in milliseconds.
pub const TICK: u64 = 250;

/// What follows up an earlier order.
#[derive(Clone, Copy, Debug)]
pub enum FollowUps {
    /// A purchase or a refund (15% of events).
    PurchaseOrRefund,
    /// A click, purchase or refund (20% of events): a refund may come first, a second click or
    /// purchase may differ from the first, a click may name another campaign.
    AnyTag,
}

/// How a scenario is drawn: the two users of this module stress different things.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The order horizons drawn from.
    pub horizons: &'static [u64],
    /// Whether each event gets a partition: keyed by user like `produce`, or (drawn once per
    /// scenario) spread at random so an order's events cross partitions.
    pub partitions: bool,
    /// The states rows are drawn from, one of them hostile to line protocol.
    pub states: [&'static str; 4],
    /// Ticks: from 4 to this (exclusive).
    pub ticks_below: u64,
    /// Events per tick: from 0 to this (exclusive).
    pub events_below: i32,
    /// What follows up an earlier order.
    pub follow_ups: FollowUps,
    /// The counters bad messages land in.
    pub counters: &'static [Counter],
}

/// A random scenario: parameters, inputs at their ticks, and (with [`Shape::partitions`]) each
/// event's partition, in input order.
pub struct Generated {
    /// The windows and the order horizon.
    pub params: Params,
    /// The inputs, at their ticks.
    pub inputs: Vec<(Tick, Input)>,
    /// The partition of each event input, in input order; empty without [`Shape::partitions`].
    pub partitions: Vec<i32>,
}

/// The scenario of `seed` in `shape`.
pub fn generate(seed: u64, shape: &Shape) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let size_ms = [500, 1_000, 2_000][rng.random_range(0..3)];
    let allowed_lateness_ms = [0, 500, 1_500, 4_000][rng.random_range(0..4)];
    let order_horizon_ms = shape.horizons[rng.random_range(0..shape.horizons.len())];
    let params = Params {
        windows: WindowSpec {
            size_ms,
            allowed_lateness_ms,
        },
        order_horizon_ms,
    };

    let users = rng.random_range(2..12u32);
    let campaigns = rng.random_range(1..5u32);
    let by_user = shape.partitions && rng.random_bool(0.5);
    let states = shape.states;
    let countries = ["US", "CA", "DE"];
    let row = |rng: &mut StdRng, id: u32| Demographic {
        id: UserId(id),
        age: rng.random_range(10..95),
        gender: Gender::ALL[rng.random_range(0..4)],
        state: states[rng.random_range(0..states.len())].into(),
        country: countries[rng.random_range(0..countries.len())].into(),
    };

    let start: Tick = 10_000;
    let mut inputs = Vec::new();
    let mut partitions = Vec::new();
    // Users 0..users have rows from the start, except a few; ids up to users + 3 appear in events.
    let mut table: BTreeMap<u32, Demographic> = BTreeMap::new();
    for id in 0..users {
        if rng.random_bool(0.8) {
            let r = row(&mut rng, id);
            table.insert(id, r.clone());
            inputs.push((start, Input::Demographic(r, 1)));
        }
    }

    let ticks = rng.random_range(4..shape.ticks_below);
    let follow_ups_below = match shape.follow_ups {
        FollowUps::PurchaseOrRefund => 30,
        FollowUps::AnyTag => 35,
    };
    let mut sent: Vec<Event> = Vec::new();
    let mut next_order = 0u64;
    for step in 0..ticks {
        let tick = start + step * TICK;
        for _ in 0..rng.random_range(0..shape.events_below) {
            let choice = rng.random_range(0..100);
            let event = if choice < 15 && !sent.is_empty() {
                // A second delivery of an earlier event.
                sent[rng.random_range(0..sent.len())].clone()
            } else if choice < follow_ups_below && !sent.is_empty() {
                // A follow-up of an earlier order, or of an order never seen.
                let earlier = sent[rng.random_range(0..sent.len())].clone();
                let tag = match shape.follow_ups {
                    FollowUps::PurchaseOrRefund => {
                        if rng.random_bool(0.5) {
                            Tag::Purchased
                        } else {
                            Tag::Refunded
                        }
                    }
                    FollowUps::AnyTag => {
                        [Tag::Click, Tag::Purchased, Tag::Purchased, Tag::Refunded]
                            [rng.random_range(0..4)]
                    }
                };
                let order = if rng.random_bool(0.1) {
                    OrderId(10_000 + next_order)
                } else {
                    earlier.order_id
                };
                let click = tag == Tag::Click;
                Event {
                    order_id: order,
                    tag,
                    campaign_id: if click && rng.random_bool(0.5) {
                        CampaignId(rng.random_range(0..campaigns))
                    } else {
                        earlier.campaign_id
                    },
                    total: Cents(if click {
                        0
                    } else {
                        rng.random_range(1..50_000)
                    }),
                    units: if click { 0 } else { rng.random_range(1..6) },
                    event_time: EventTimeMs(tick - rng.random_range(0..2_000)),
                    ..earlier
                }
            } else {
                next_order += 1;
                let lateness = match rng.random_range(0..10) {
                    0..=5 => rng.random_range(0..TICK),
                    6..=8 => rng.random_range(0..6_000),
                    _ => 0,
                };
                let future = if rng.random_range(0..20) == 0 {
                    rng.random_range(1..3_000)
                } else {
                    0
                };
                let purchase = rng.random_bool(0.4);
                Event {
                    order_id: OrderId(next_order),
                    tag: if purchase { Tag::Purchased } else { Tag::Click },
                    user_id: UserId(rng.random_range(0..users + 3)),
                    campaign_id: CampaignId(rng.random_range(0..campaigns)),
                    total: Cents(if purchase {
                        rng.random_range(1..50_000)
                    } else {
                        0
                    }),
                    units: if purchase { rng.random_range(1..6) } else { 0 },
                    event_time: EventTimeMs(tick - lateness + future),
                }
            };
            sent.push(event.clone());
            if shape.partitions {
                partitions.push(if by_user {
                    (event.user_id.0 % 3) as i32
                } else {
                    rng.random_range(0..3)
                });
            }
            inputs.push((tick, Input::Event(event)));
        }
        // Bad messages a source counted.
        if rng.random_range(0..6) == 0 {
            let counter = shape.counters[rng.random_range(0..shape.counters.len())];
            inputs.push((
                tick,
                Input::Counter(counter, rng.random_range(1..3i64) as isize),
            ));
        }
        // Demographic changes: moves, birthdays, deletions, and rows for unknown users.
        for _ in 0..rng.random_range(0..3) {
            let id = rng.random_range(0..users + 3);
            match table.get(&id).cloned() {
                Some(old) => {
                    inputs.push((tick, Input::Demographic(old.clone(), -1)));
                    if rng.random_bool(0.75) {
                        let mut new = row(&mut rng, id);
                        if rng.random_bool(0.3) {
                            new = Demographic {
                                age: old.age.saturating_add(1),
                                ..old
                            };
                        }
                        inputs.push((tick, Input::Demographic(new.clone(), 1)));
                        table.insert(id, new);
                    } else {
                        table.remove(&id);
                    }
                }
                None => {
                    let new = row(&mut rng, id);
                    inputs.push((tick, Input::Demographic(new.clone(), 1)));
                    table.insert(id, new);
                }
            }
        }
    }
    Generated {
        params,
        inputs,
        partitions,
    }
}
