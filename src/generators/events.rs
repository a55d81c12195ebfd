//! Click and purchase events: a pure function of the seed and the event's position.
//!
//! Event `n` arrives at `start + n / rate` (simulated time). Most events are a click opening order
//! `n`, or a purchase completing the order of a click shortly before; the knobs add late events
//! (event time before arrival), duplicate deliveries, refunds of earlier purchases, and events of
//! users who have no demographics row yet.

use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
use rand::RngExt;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};

use super::rng_for;

const SALT_BASE: u64 = 0xE1;
const SALT_DELIVERY: u64 = 0xE2;
const SALT_REFUND: u64 = 0xE3;

/// The generators' knobs, the `[generator]` section; the defaults live in `config/shopflow.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GeneratorKnobs {
    /// The seed of every random choice.
    pub seed: u64,
    /// Events per second of simulated time.
    pub events_per_second: f64,
    /// Users with demographics rows at the start (ids `0..users`).
    pub users: u32,
    /// Users without rows at the start, who appear in events and get rows over time.
    pub new_users: u32,
    /// Campaigns (ids `0..campaigns`), chosen with Zipf popularity.
    pub campaigns: u32,
    /// The Zipf exponent of campaign popularity.
    pub campaign_zipf_exponent: f64,
    /// The chance that an event slot is drawn as a purchase; it completes the click `funnel-span`
    /// events earlier when that slot is a click, so about `p(1-p)` of events are purchases.
    pub conversion_share: f64,
    /// How many events after its click a purchase arrives; a refund arrives four times as many
    /// events after its purchase.
    pub funnel_span: u32,
    /// The median order total in cents.
    pub median_order_cents: u32,
    /// The share of events that arrive late.
    pub late_share: f64,
    /// The largest lateness of a late event, in milliseconds.
    pub max_lateness_ms: u64,
    /// The share of purchases refunded later.
    pub refund_share: f64,
    /// The share of events that are a second delivery of an earlier event.
    pub duplicate_share: f64,
    /// The share of clicks by users drawn from the new users.
    pub unknown_user_share: f64,
    /// Demographic changes per second of simulated time.
    pub demographic_changes_per_second: f64,
    /// Whether simulated time follows the wall clock.
    pub pace: Pace,
}

/// How simulated time relates to the wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// Events are produced when the wall clock reaches their arrival time.
    Realtime,
    /// Events are produced as fast as the engine takes them.
    Unbounded,
}

impl GeneratorKnobs {
    /// Checks the knobs make sense; names the first that does not.
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be within 0 and 1, not {v}"))
            }
        };
        share("conversion-share", self.conversion_share)?;
        share("late-share", self.late_share)?;
        share("refund-share", self.refund_share)?;
        share("duplicate-share", self.duplicate_share)?;
        share("unknown-user-share", self.unknown_user_share)?;
        if !(self.events_per_second > 0.0 && self.events_per_second.is_finite()) {
            return Err(format!(
                "events-per-second must be positive, not {}",
                self.events_per_second
            ));
        }
        if !(self.demographic_changes_per_second >= 0.0
            && self.demographic_changes_per_second.is_finite())
        {
            return Err(format!(
                "demographic-changes-per-second must be 0 or more, not {}",
                self.demographic_changes_per_second
            ));
        }
        if self.campaigns == 0 {
            return Err("campaigns must be at least 1".into());
        }
        if self.users == 0 && self.new_users == 0 {
            return Err("users and new-users cannot both be 0".into());
        }
        if !(self.campaign_zipf_exponent >= 0.0 && self.campaign_zipf_exponent.is_finite()) {
            return Err("campaign-zipf-exponent must be 0 or more".into());
        }
        if self.funnel_span == 0 {
            return Err("funnel-span must be at least 1".into());
        }
        if self.median_order_cents == 0 {
            return Err("median-order-cents must be at least 1".into());
        }
        Ok(())
    }
}

/// Generates events from knobs and a start time.
///
/// A generator may resume a stream where an earlier one left off ([`EventGenerator::resuming`]):
/// its event `n` is then the stream's event `offset + n`, so a producer restarted with the same
/// seed continues the stream (new order ids) instead of sending its beginning again, which the
/// pipeline would drop as duplicates for the order horizon.
#[derive(Clone, Debug)]
pub struct EventGenerator {
    knobs: GeneratorKnobs,
    start_ms: u64,
    /// The stream's position of this generator's event 0.
    offset: u64,
    /// Campaign popularity: Zipf weights in an alias table, O(1) per draw.
    campaigns: WeightedAliasIndex<f64>,
    amounts: LogNormal<f64>,
}

impl EventGenerator {
    /// A generator whose event 0 arrives at `start_ms`. The knobs must be valid.
    pub fn new(knobs: GeneratorKnobs, start_ms: u64) -> Result<EventGenerator, String> {
        Self::resuming(knobs, start_ms, 0)
    }

    /// A generator whose event `n` is the stream's event `offset + n`, arriving at
    /// `start_ms + n / rate`. Events it derives from earlier positions (the click a purchase
    /// completes, the event a duplicate repeats, the purchase a refund takes back) are those the
    /// stream had there: a restart continues the stream as if it had never stopped.
    ///
    /// ```
    /// use shopflow::generators::events::EventGenerator;
    /// # let knobs = shopflow::config::Config::load(None).unwrap().generator;
    ///
    /// let whole = EventGenerator::new(knobs.clone(), 0).unwrap();
    /// let rest = EventGenerator::resuming(knobs, 5_000, 1_000).unwrap();
    /// assert_eq!(rest.event(7).order_id, whole.event(1_007).order_id);
    /// assert_eq!(rest.arrival_ms(0), 5_000);
    /// ```
    pub fn resuming(
        knobs: GeneratorKnobs,
        start_ms: u64,
        offset: u64,
    ) -> Result<EventGenerator, String> {
        knobs.validate()?;
        let weights = (1..=knobs.campaigns)
            .map(|k| 1.0 / f64::from(k).powf(knobs.campaign_zipf_exponent))
            .collect();
        let campaigns = WeightedAliasIndex::new(weights).map_err(|e| e.to_string())?;
        let amounts = LogNormal::new(f64::from(knobs.median_order_cents).ln(), 0.8)
            .map_err(|e| e.to_string())?;
        Ok(EventGenerator {
            knobs,
            start_ms,
            offset,
            campaigns,
            amounts,
        })
    }

    /// The knobs.
    pub fn knobs(&self) -> &GeneratorKnobs {
        &self.knobs
    }

    /// The stream's position of this generator's event 0 (see [`EventGenerator::resuming`]).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// When event `n` arrives, in simulated milliseconds since the epoch.
    pub fn arrival_ms(&self, n: u64) -> u64 {
        self.start_ms + (n as f64 * 1_000.0 / self.knobs.events_per_second) as u64
    }

    /// When the stream's event at `position` arrives (or arrived, before this generator's start).
    fn arrival_at(&self, position: u64) -> u64 {
        match position.checked_sub(self.offset) {
            Some(n) => self.arrival_ms(n),
            None => {
                let before = (self.offset - position) as f64 * 1_000.0;
                self.start_ms
                    .saturating_sub((before / self.knobs.events_per_second).ceil() as u64)
            }
        }
    }

    /// The first event arriving at or after `time_ms`.
    pub fn first_at_or_after(&self, time_ms: u64) -> u64 {
        let elapsed = time_ms.saturating_sub(self.start_ms) as f64;
        let mut n = (elapsed * self.knobs.events_per_second / 1_000.0) as u64;
        // Float rounding may land one off either way; settle on the exact boundary.
        while n > 0 && self.arrival_ms(n - 1) >= time_ms {
            n -= 1;
        }
        while self.arrival_ms(n) < time_ms {
            n += 1;
        }
        n
    }

    /// Event `n` as delivered.
    pub fn event(&self, n: u64) -> Event {
        let n = self.offset.saturating_add(n);
        let mut rng = rng_for(self.knobs.seed, SALT_DELIVERY, n);
        let draw: f64 = rng.random();
        if draw < self.knobs.duplicate_share && n > 0 {
            // A second delivery of an event shortly before.
            let back = rng.random_range(1..=n.min(1_000));
            return self.original(n - back);
        }
        let refund_lag = 4 * u64::from(self.knobs.funnel_span);
        // The refund of a purchase is delivered a fixed lag after it, in place of that slot's
        // event. The refund's draw comes first: it is cheaper than the event it refunds, and
        // nearly always false.
        if n >= refund_lag
            && rng_for(self.knobs.seed, SALT_REFUND, n - refund_lag)
                .random_bool(self.knobs.refund_share)
        {
            let purchase = self.original(n - refund_lag);
            if purchase.tag == Tag::Purchased {
                return Event {
                    tag: Tag::Refunded,
                    event_time: EventTimeMs(self.arrival_at(n)),
                    ..purchase
                };
            }
        }
        self.original(n)
    }

    /// The stream's event at `n` as it first happened: a click, or the purchase of an earlier click's order.
    fn original(&self, n: u64) -> Event {
        let mut rng = rng_for(self.knobs.seed, SALT_BASE, n);
        let span = u64::from(self.knobs.funnel_span);
        let purchase_of = (rng.random_bool(self.knobs.conversion_share)
            && self.completes_a_click(n))
        .then(|| n - span);
        let late = rng.random_bool(self.knobs.late_share);
        let lateness = if late {
            rng.random_range(0..=self.knobs.max_lateness_ms)
        } else {
            rng.random_range(0..50)
        };
        let event_time = EventTimeMs(self.arrival_at(n).saturating_sub(lateness));
        match purchase_of {
            Some(click) => {
                let click = self.click(click);
                let total = Cents(self.amounts.sample(&mut rng).round().max(1.0) as i64);
                let units = 1 + (rng.random::<f64>().ln() / 0.45f64.ln()).floor().min(20.0) as u32;
                Event {
                    tag: Tag::Purchased,
                    total,
                    units,
                    event_time,
                    ..click
                }
            }
            None => Event {
                event_time,
                ..self.click(n)
            },
        }
    }

    /// Whether a purchase drawn at `n` has a click to complete: slot `n - funnel-span` must not be
    /// drawn as a purchase itself. With a fixed lag, every click is completed at most once.
    fn completes_a_click(&self, n: u64) -> bool {
        let span = u64::from(self.knobs.funnel_span);
        n >= span
            && !rng_for(self.knobs.seed, SALT_BASE, n - span)
                .random_bool(self.knobs.conversion_share)
    }

    /// The click opening order `n`; its event time is filled in by the caller.
    fn click(&self, n: u64) -> Event {
        let mut rng = rng_for(self.knobs.seed, SALT_BASE ^ 0xC1, n);
        let knobs = &self.knobs;
        let user = if knobs.new_users > 0
            && (knobs.users == 0 || rng.random_bool(knobs.unknown_user_share))
        {
            knobs.users + rng.random_range(0..knobs.new_users)
        } else {
            rng.random_range(0..knobs.users)
        };
        let campaign = self.campaigns.sample(&mut rng) as u32;
        Event {
            order_id: OrderId(n),
            tag: Tag::Click,
            user_id: UserId(user),
            campaign_id: CampaignId(campaign),
            total: Cents(0),
            units: 0,
            event_time: EventTimeMs(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    pub(crate) fn knobs() -> GeneratorKnobs {
        GeneratorKnobs {
            seed: 5,
            events_per_second: 1_000.0,
            users: 1_000,
            new_users: 50,
            campaigns: 40,
            campaign_zipf_exponent: 1.1,
            conversion_share: 0.3,
            funnel_span: 100,
            median_order_cents: 4_000,
            late_share: 0.05,
            max_lateness_ms: 60_000,
            refund_share: 0.02,
            duplicate_share: 0.01,
            unknown_user_share: 0.01,
            demographic_changes_per_second: 1.0,
            pace: Pace::Unbounded,
        }
    }

    #[test]
    fn events_are_a_function_of_position() {
        let g = EventGenerator::new(knobs(), 1_000_000).unwrap();
        for n in [0, 1, 17, 99_999] {
            assert_eq!(g.event(n), g.event(n));
        }
        assert_eq!(g.arrival_ms(0), 1_000_000);
        assert_eq!(g.arrival_ms(1_000), 1_001_000);
        for t in [1_000_000, 1_000_001, 1_000_999, 1_001_000, 1_234_567] {
            let n = g.first_at_or_after(t);
            assert!(g.arrival_ms(n) >= t && (n == 0 || g.arrival_ms(n - 1) < t));
        }
    }

    #[test]
    fn the_knobs_shape_the_stream() {
        let g = EventGenerator::new(knobs(), 0).unwrap();
        let events: Vec<Event> = (0..100_000).map(|n| g.event(n)).collect();
        let share = |f: &dyn Fn(&Event) -> bool| {
            events.iter().filter(|e| f(e)).count() as f64 / events.len() as f64
        };
        let purchases = share(&|e| e.tag == Tag::Purchased);
        assert!((0.15..0.35).contains(&purchases), "purchases {purchases}");
        let refunds = share(&|e| e.tag == Tag::Refunded) / purchases;
        assert!(
            (0.01..0.03).contains(&refunds),
            "refunded share of purchases {refunds}"
        );
        let late = events
            .iter()
            .enumerate()
            .filter(|(n, e)| g.arrival_ms(*n as u64) - e.event_time.0 > 1_000)
            .count();
        assert!((2_000..9_000).contains(&late), "late {late}");
        let mut seen: HashMap<(OrderId, Tag), usize> = HashMap::new();
        for e in &events {
            *seen.entry((e.order_id, e.tag)).or_default() += 1;
        }
        let duplicates: usize = seen.values().map(|n| n - 1).sum();
        assert!(
            (500..1_500).contains(&duplicates),
            "duplicates {duplicates}"
        );
        // Every purchase completes a click of the same order, user and campaign.
        for e in events.iter().filter(|e| e.tag == Tag::Purchased) {
            let click = g.original(e.order_id.0);
            assert_eq!(
                (click.tag, click.user_id, click.campaign_id),
                (Tag::Click, e.user_id, e.campaign_id)
            );
        }
        let unknown = share(&|e| e.user_id.0 >= 1_000);
        assert!((0.003..0.03).contains(&unknown), "unknown users {unknown}");
        // Campaign 0 is the most popular.
        let c0 = share(&|e| e.campaign_id.0 == 0);
        let c9 = share(&|e| e.campaign_id.0 == 9);
        assert!(c0 > 3.0 * c9);
    }

    /// A resumed generator continues the stream: the same events (order ids, users, campaigns,
    /// amounts, and the clicks, duplicates and refunds that reach back before the restart), its
    /// arrival times counted from its own start.
    #[test]
    fn a_resumed_generator_continues_the_stream() {
        let whole = EventGenerator::new(knobs(), 1_000_000).unwrap();
        for offset in [1, 99, 100, 101, 400, 12_345] {
            let rest = EventGenerator::resuming(knobs(), 1_000_000, offset).unwrap();
            assert_eq!(rest.offset(), offset);
            for n in 0..3_000 {
                let (a, b) = (rest.event(n), whole.event(offset + n));
                // Simulated time shifts back by the offset; everything else is the stream's.
                let shift = whole.arrival_ms(offset) - 1_000_000;
                assert_eq!(
                    Event {
                        event_time: EventTimeMs(0),
                        ..a
                    },
                    Event {
                        event_time: EventTimeMs(0),
                        ..b
                    },
                    "offset {offset}, event {n}"
                );
                let want = b.event_time.0.saturating_sub(shift);
                assert!(
                    a.event_time.0.abs_diff(want) <= 1,
                    "offset {offset}, event {n}: {} vs {want}",
                    a.event_time.0
                );
            }
        }
        // From position 0 it is the plain generator, bit for bit.
        let zero = EventGenerator::resuming(knobs(), 1_000_000, 0).unwrap();
        assert!((0..5_000).all(|n| zero.event(n) == whole.event(n)));
    }

    #[test]
    fn bad_knobs_are_named() {
        let bad = GeneratorKnobs {
            late_share: 1.5,
            ..knobs()
        };
        assert_eq!(
            EventGenerator::new(bad, 0).unwrap_err(),
            "late-share must be within 0 and 1, not 1.5"
        );
        let bad = GeneratorKnobs {
            events_per_second: 0.0,
            ..knobs()
        };
        assert!(
            EventGenerator::new(bad, 0)
                .unwrap_err()
                .contains("events-per-second")
        );
    }
}
