//! A naive reference implementation of the semantics, computed from scratch.
//!
//! It shares nothing with the dataflow but the model types: it replays the inputs in order with
//! plain maps and answers "what should every row hold once timestamp `as_of` is complete?". Tests
//! compare the dataflow's accumulated output with it at every completed timestamp; experiments
//! print both side by side.

use std::collections::{BTreeMap, HashMap};

use crate::Params;
use crate::harness::Input;
use crate::model::{
    AgeBand, AggregateKey, CampaignId, Counter, Demographic, Dimension, EventTimeMs, OrderId,
    OutputKey, OutputValue, Tag, Tick, Totals, UserId,
};

/// A counted contribution or retraction, at the tick it took effect.
#[derive(Clone, Debug)]
struct Record {
    tick: Tick,
    user: UserId,
    campaign: CampaignId,
    window: EventTimeMs,
    totals: Totals,
}

/// The expected value of every row once `as_of` is complete.
pub fn evaluate(
    inputs: &[(Tick, Input)],
    params: Params,
    as_of: Tick,
) -> BTreeMap<OutputKey, OutputValue> {
    let (records, counters) = ledger(inputs, params, as_of);
    let mut table: BTreeMap<OutputKey, OutputValue> = BTreeMap::new();

    // All-time rows: every record so far, in the user's segment as of now.
    let users_now = demographics_at(inputs, as_of);
    let mut sums: BTreeMap<AggregateKey, Totals> = BTreeMap::new();
    for record in &records {
        for dimension in dimensions_of(record, &users_now) {
            sums.entry(AggregateKey {
                dimension,
                window: None,
            })
            .or_default()
            .add(&record.totals);
        }
    }

    // Window rows: frozen at the last instant before the window closed.
    let mut windows: Vec<EventTimeMs> = records.iter().map(|r| r.window).collect();
    windows.sort();
    windows.dedup();
    for window in windows {
        let frozen_at = as_of.min(params.windows.closes_at(window).saturating_sub(1));
        if params.windows.closes_at(window) == 0 {
            continue;
        }
        let users_then = demographics_at(inputs, frozen_at);
        for record in records
            .iter()
            .filter(|r| r.window == window && r.tick <= frozen_at)
        {
            for dimension in dimensions_of(record, &users_then) {
                sums.entry(AggregateKey {
                    dimension,
                    window: Some(window),
                })
                .or_default()
                .add(&record.totals);
            }
        }
    }
    for (key, totals) in sums {
        if totals != Totals::default() {
            table.insert(OutputKey::Aggregate(key), OutputValue::Totals(totals));
        }
    }
    let mut counters = counters;
    for (tick, input) in inputs {
        if let (true, Input::Counter(counter, n)) = (*tick <= as_of, input) {
            *counters.entry(*counter).or_default() += *n as i64;
        }
    }
    for (counter, n) in counters {
        if n != 0 {
            table.insert(OutputKey::Counter(counter), OutputValue::Count(n));
        }
    }
    table
}

/// The demographics table as of `time`.
fn demographics_at(inputs: &[(Tick, Input)], time: Tick) -> HashMap<UserId, Demographic> {
    let mut rows: BTreeMap<Demographic, isize> = BTreeMap::new();
    for (tick, input) in inputs {
        if let (true, Input::Demographic(row, diff)) = (*tick <= time, input) {
            *rows.entry(row.clone()).or_default() += diff;
        }
    }
    let mut users = HashMap::new();
    for (row, count) in rows {
        assert!(
            (0..=1).contains(&count),
            "a demographics row is present at most once: {row:?}"
        );
        if count == 1 {
            let previous = users.insert(row.id, row);
            assert!(previous.is_none(), "one row per user");
        }
    }
    users
}

/// The six dimensions a record counts in, given the users' rows.
fn dimensions_of(record: &Record, users: &HashMap<UserId, Demographic>) -> Vec<Dimension> {
    let campaign = record.campaign;
    match users.get(&record.user) {
        Some(row) => {
            let age_gender = Some((AgeBand::of(row.age), row.gender));
            vec![
                Dimension::Campaign(campaign),
                Dimension::AgeGender(age_gender),
                Dimension::State(Some((row.country.clone(), row.state.clone()))),
                Dimension::Country(Some(row.country.clone())),
                Dimension::CampaignCountry(campaign, Some(row.country.clone())),
                Dimension::CampaignAgeGender(campaign, age_gender),
            ]
        }
        None => vec![
            Dimension::Campaign(campaign),
            Dimension::AgeGender(None),
            Dimension::State(None),
            Dimension::Country(None),
            Dimension::CampaignCountry(campaign, None),
            Dimension::CampaignAgeGender(campaign, None),
        ],
    }
}

/// Replays the events up to `as_of`, tick by tick in canonical order, with the order rules:
/// a click and a purchase count once per order; a refund retracts the counted purchase, or, if
/// none is known yet, stops it from counting; an order is forgotten `order_horizon_ms` after its
/// first event.
fn ledger(
    inputs: &[(Tick, Input)],
    params: Params,
    as_of: Tick,
) -> (Vec<Record>, BTreeMap<Counter, i64>) {
    #[derive(Default)]
    struct Order {
        first_seen: Tick,
        clicked: bool,
        purchase: Option<Record>,
        refunded: bool,
    }

    let mut by_tick: BTreeMap<Tick, Vec<crate::model::Event>> = BTreeMap::new();
    for (tick, input) in inputs {
        if let (true, Input::Event(event)) = (*tick <= as_of, input) {
            by_tick.entry(*tick).or_default().push(event.clone());
        }
    }

    let mut orders: BTreeMap<OrderId, Order> = BTreeMap::new();
    let mut records = Vec::new();
    let mut counters: BTreeMap<Counter, i64> = BTreeMap::new();
    let bump =
        |counters: &mut BTreeMap<Counter, i64>, c: Counter| *counters.entry(c).or_default() += 1;

    for (tick, mut events) in by_tick {
        orders.retain(|_, order| order.first_seen + params.order_horizon_ms > tick);
        events.sort();
        for event in events {
            bump(&mut counters, Counter::EventsIn);
            let order = orders.entry(event.order_id).or_insert_with(|| Order {
                first_seen: tick,
                ..Order::default()
            });
            let window =
                EventTimeMs(event.event_time.0 / params.windows.size_ms * params.windows.size_ms);
            let record = |totals| Record {
                tick,
                user: event.user_id,
                campaign: event.campaign_id,
                window,
                totals,
            };
            let counted = match event.tag {
                Tag::Click => {
                    if order.clicked {
                        bump(&mut counters, Counter::Duplicates);
                        None
                    } else {
                        order.clicked = true;
                        Some(record(Totals::click()))
                    }
                }
                Tag::Purchased => {
                    if order.purchase.is_some() {
                        bump(&mut counters, Counter::Duplicates);
                        None
                    } else {
                        let purchase = record(Totals::purchase(event.total, event.units));
                        order.purchase = Some(purchase.clone());
                        if order.refunded { None } else { Some(purchase) }
                    }
                }
                Tag::Refunded => {
                    if order.refunded {
                        bump(&mut counters, Counter::Duplicates);
                        None
                    } else {
                        order.refunded = true;
                        match &order.purchase {
                            Some(purchase) => {
                                bump(&mut counters, Counter::RefundsApplied);
                                let mut retraction = purchase.clone();
                                retraction.tick = tick;
                                retraction.totals = retraction.totals.negated();
                                Some(retraction)
                            }
                            None => {
                                bump(&mut counters, Counter::RefundsUnmatched);
                                None
                            }
                        }
                    }
                }
            };
            if let Some(record) = counted {
                if tick >= params.windows.closes_at(record.window) {
                    bump(&mut counters, Counter::LateForWindow);
                }
                records.push(record);
            }
        }
    }
    (records, counters)
}
