//! `shopflow verify`: the recomputation against the naive reference on seeded random scenarios
//! (arrival times jittered within the tolerance: whatever verify does not skip must equal the
//! reference), the comparison on hand-built rows, and the built binary after a real run on real
//! services, before and after corrupting InfluxDB.
//!
//! By what they test: the recomputation against the reference on random scenarios
//! (`random_scenarios`) and on hand-built cases (`recomputation`), the comparison (`comparison`),
//! and the command (`command`).

mod command;
mod comparison;
mod random_scenarios;
mod recomputation;

use std::collections::BTreeMap;

use dataflows::Params;
use dataflows::harness::Input;
use dataflows::model::{
    AggregateKey, CampaignId, Cents, Counter, Demographic, Dimension, Event, EventTimeMs, Gender,
    OrderId, OutputKey, OutputValue, Tag, Totals, UserId,
};
use dataflows::reference;
use dataflows::windows::WindowSpec;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shopflow::verify::compare::{self, Difference, Found, FoundRow, MismatchKey};
use shopflow::verify::recompute::{self, Arrival, Expected, Settings, Skip, Stats};
use shopflow::verify::series::{Family, SeriesKey};

use crate::support::influx;
use crate::support::random::{self, FollowUps, Generated, Shape};

/// The counters the sources keep (the pipeline's reader, the demographics source): verify takes
/// them from its own reading of the sources, never from the ledger.
const SOURCE_COUNTERS: [Counter; 10] = [
    Counter::MalformedFraming,
    Counter::MalformedUnknownSchema,
    Counter::MalformedTruncated,
    Counter::MalformedInvalidValue,
    Counter::MalformedOversize,
    Counter::RejectedNegative,
    Counter::RejectedTooOld,
    Counter::RejectedFuture,
    Counter::RejectedImplausible,
    Counter::DemographicsSkipped,
];

fn campaign_key(campaign: u32, window: Option<u64>) -> SeriesKey {
    SeriesKey::of(&AggregateKey {
        dimension: Dimension::Campaign(CampaignId(campaign)),
        window: window.map(EventTimeMs),
    })
}

fn totals(clicks: i64, purchases: i64, units: i64, revenue_cents: i64) -> Totals {
    Totals {
        clicks,
        purchases,
        units: units.into(),
        revenue_cents: revenue_cents.into(),
    }
}

fn settings(tolerance_ms: u64) -> Settings {
    Settings {
        params: Params {
            windows: WindowSpec {
                size_ms: 60_000,
                allowed_lateness_ms: 0,
            },
            order_horizon_ms: 10_000,
        },
        tick_ms: 1_000,
        tolerance_ms,
        now_ms: 10_000_000,
    }
}
