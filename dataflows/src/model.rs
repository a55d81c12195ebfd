//! The domain, named once: identifiers, money, time, the input records, and the output rows.
//!
//! Money is integer cents and time is integer milliseconds since the Unix epoch, and the type names
//! say so. The dataflow timestamp ([`Tick`]) is *processing* time: the moment a record entered the
//! engine, rounded down to the tick. [`EventTimeMs`] is the time the shop says the event happened.

use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// The dataflow timestamp: processing time in milliseconds since the Unix epoch, a multiple of the
/// tick length. Inputs advance tick by tick, never per event.
pub type Tick = u64;

/// A short text value such as a state or country; inline up to 24 bytes, so cloning rarely allocates.
pub type Name = CompactString;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A shop user; the primary key of the demographics table.
    UserId(u32)
);
id_type!(
    /// A marketing campaign.
    CampaignId(u32)
);
id_type!(
    /// An order: a click and the purchase it led to share one, and a refund names it again.
    OrderId(u64)
);
id_type!(
    /// An amount of money in integer cents.
    Cents(i64)
);
id_type!(
    /// The time an event happened, in milliseconds since the Unix epoch.
    EventTimeMs(u64)
);

/// A user's gender as recorded in the demographics table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Gender {
    /// `F`
    Female,
    /// `M`
    Male,
    /// `X`: non-binary or other.
    Other,
    /// `U`: not disclosed.
    Undisclosed,
}

impl Gender {
    /// Every gender, in a fixed order.
    pub const ALL: [Gender; 4] = [
        Gender::Female,
        Gender::Male,
        Gender::Other,
        Gender::Undisclosed,
    ];

    /// The one-letter code used in MySQL, Avro and InfluxDB tags.
    pub fn code(self) -> &'static str {
        match self {
            Gender::Female => "F",
            Gender::Male => "M",
            Gender::Other => "X",
            Gender::Undisclosed => "U",
        }
    }

    /// Parses a code or a spelled-out gender, case-insensitively; `None` for anything else.
    pub fn parse(text: &str) -> Option<Gender> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f" | "female" => Some(Gender::Female),
            "m" | "male" => Some(Gender::Male),
            "x" | "o" | "other" | "non-binary" | "nonbinary" => Some(Gender::Other),
            "u" | "undisclosed" | "unknown" | "" => Some(Gender::Undisclosed),
            _ => None,
        }
    }
}

/// An age band of the demographic segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AgeBand {
    /// Younger than 18.
    Under18,
    /// 18 to 24.
    From18To24,
    /// 25 to 34.
    From25To34,
    /// 35 to 44.
    From35To44,
    /// 45 to 54.
    From45To54,
    /// 55 to 64.
    From55To64,
    /// 65 and older.
    From65,
}

impl AgeBand {
    /// Every age band, in the order of their variants.
    pub const ALL: [AgeBand; 7] = [
        AgeBand::Under18,
        AgeBand::From18To24,
        AgeBand::From25To34,
        AgeBand::From35To44,
        AgeBand::From45To54,
        AgeBand::From55To64,
        AgeBand::From65,
    ];

    /// The band an age falls in.
    pub fn of(age: u8) -> AgeBand {
        match age {
            0..=17 => AgeBand::Under18,
            18..=24 => AgeBand::From18To24,
            25..=34 => AgeBand::From25To34,
            35..=44 => AgeBand::From35To44,
            45..=54 => AgeBand::From45To54,
            55..=64 => AgeBand::From55To64,
            _ => AgeBand::From65,
        }
    }

    /// The label used in InfluxDB tags and dashboards.
    pub fn label(self) -> &'static str {
        match self {
            AgeBand::Under18 => "<18",
            AgeBand::From18To24 => "18-24",
            AgeBand::From25To34 => "25-34",
            AgeBand::From35To44 => "35-44",
            AgeBand::From45To54 => "45-54",
            AgeBand::From55To64 => "55-64",
            AgeBand::From65 => "65+",
        }
    }
}

/// One row of the demographics table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Demographic {
    /// The user, the table's primary key.
    pub id: UserId,
    /// Age in years.
    pub age: u8,
    /// Gender.
    pub gender: Gender,
    /// State or region within the country.
    pub state: Name,
    /// Country, as an ISO 3166 alpha-2 code in generated data.
    pub country: Name,
}

impl Demographic {
    /// The segment this user's contributions are counted in.
    pub fn segment(&self) -> Segment {
        Segment {
            age_band: AgeBand::of(self.age),
            gender: self.gender,
            state: self.state.clone(),
            country: self.country.clone(),
        }
    }
}

/// What the aggregates know of a user: the demographic columns, with age reduced to its band, so
/// that a birthday inside a band changes nothing downstream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Segment {
    /// The age band.
    pub age_band: AgeBand,
    /// The gender.
    pub gender: Gender,
    /// The state.
    pub state: Name,
    /// The country.
    pub country: Name,
}

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tag {
    /// A click on a campaign; opens an order.
    Click,
    /// A purchase completing the order.
    Purchased,
    /// A refund or cancellation of the order's purchase; retracts it everywhere it was counted.
    Refunded,
}

impl Tag {
    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Tag::Click => "click",
            Tag::Purchased => "purchased",
            Tag::Refunded => "refunded",
        }
    }
}

/// A click, purchase or refund event, as delivered (possibly late, possibly more than once).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// The order; with `tag` it identifies the event, so a second delivery is recognised.
    pub order_id: OrderId,
    /// What happened.
    pub tag: Tag,
    /// The user (the seed's `id` field).
    pub user_id: UserId,
    /// The campaign the event is attributed to.
    pub campaign_id: CampaignId,
    /// The order's total; zero for clicks.
    pub total: Cents,
    /// Units in the order; zero for clicks.
    pub units: u32,
    /// When it happened.
    pub event_time: EventTimeMs,
}

/// The aggregate carried in the difference of every contribution: adding two contributions adds
/// their fields, so events are summed by differential's own consolidation instead of being stored.
///
/// Units and revenue are 128-bit so that no sum can wrap: one event brings at most 2^31 units
/// and 2^51 cents (what the source decodes), so an `i64` sum wrapped after 4,096 purchases of the
/// largest total, where an `i128` needs 2^76 of them. A saturating sum would not do: it is not
/// invertible, and retractions must cancel exactly. Counts of clicks and purchases grow by one
/// per event and stay `i64`. InfluxDB stores 64-bit integers: a sum beyond them is written
/// clamped, see [`Totals::clamped`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Totals {
    /// Clicks counted.
    pub clicks: i64,
    /// Purchases counted (refunded ones excluded).
    pub purchases: i64,
    /// Units purchased.
    pub units: i128,
    /// Revenue in cents.
    pub revenue_cents: i128,
}

impl Totals {
    /// One click.
    pub fn click() -> Totals {
        Totals {
            clicks: 1,
            ..Totals::default()
        }
    }

    /// One purchase of `units` units for `total`.
    pub fn purchase(total: Cents, units: u32) -> Totals {
        Totals {
            clicks: 0,
            purchases: 1,
            units: i128::from(units),
            revenue_cents: i128::from(total.0),
        }
    }

    /// Purchases per click, when there were clicks.
    pub fn conversion_rate(&self) -> Option<f64> {
        (self.clicks > 0).then(|| self.purchases as f64 / self.clicks as f64)
    }

    /// The negation, for retractions.
    pub fn negated(self) -> Totals {
        Totals {
            clicks: -self.clicks,
            purchases: -self.purchases,
            units: -self.units,
            revenue_cents: -self.revenue_cents,
        }
    }

    /// Whether every field is zero.
    pub fn is_empty(&self) -> bool {
        *self == Totals::default()
    }

    /// Adds `other` field by field.
    pub fn add(&mut self, other: &Totals) {
        self.clicks += other.clicks;
        self.purchases += other.purchases;
        self.units += other.units;
        self.revenue_cents += other.revenue_cents;
    }

    /// Multiplies every field by `factor`.
    pub fn scaled(self, factor: isize) -> Totals {
        let f = factor as i64;
        Totals {
            clicks: self.clicks * f,
            purchases: self.purchases * f,
            units: self.units * i128::from(f),
            revenue_cents: self.revenue_cents * i128::from(f),
        }
    }

    /// Units and revenue as 64-bit integers, as InfluxDB stores them, and whether either was
    /// clamped: a value beyond `i64` becomes its nearest bound, so that the line is still
    /// accepted.
    ///
    /// ```
    /// use dataflows::model::{Cents, Totals};
    ///
    /// let mut totals = Totals::purchase(Cents(i64::MAX), 3);
    /// assert_eq!(totals.clamped(), (3, i64::MAX, false));
    /// totals.add(&Totals::purchase(Cents(1), 0));
    /// assert_eq!(totals.clamped(), (3, i64::MAX, true));
    /// ```
    pub fn clamped(&self) -> (i64, i64, bool) {
        let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        let (units, revenue) = (clamp(self.units), clamp(self.revenue_cents));
        let clamped = i128::from(units) != self.units || i128::from(revenue) != self.revenue_cents;
        (units, revenue, clamped)
    }
}

mod totals_difference {
    use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};

    use super::Totals;

    impl IsZero for Totals {
        #[inline]
        fn is_zero(&self) -> bool {
            self.is_empty()
        }
    }
    impl Semigroup for Totals {
        #[inline]
        fn plus_equals(&mut self, rhs: &Self) {
            self.add(rhs);
        }
    }
    impl Monoid for Totals {
        fn zero() -> Self {
            Totals::default()
        }
    }
    impl Abelian for Totals {
        fn negate(&mut self) {
            *self = self.negated();
        }
    }
    impl Multiply<isize> for Totals {
        type Output = Totals;
        fn multiply(self, rhs: &isize) -> Totals {
            self.scaled(*rhs)
        }
    }
}

/// Where a contribution sits in time: an event-time window still open to corrections, or the
/// all-time remainder that windows fold into once they close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// The tumbling window starting at this event time.
    Window(EventTimeMs),
    /// Closed windows: counted in all-time totals only.
    Retired,
}

/// A user's contribution to a campaign in one slot; its totals travel in the difference.
pub type Contribution = (UserId, (CampaignId, Slot));

/// The dimensions an aggregate is kept for. `None` in a segment position is the `unknown` segment:
/// events of users without a demographics row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dimension {
    /// Per campaign.
    Campaign(CampaignId),
    /// Per age band and gender.
    AgeGender(Option<(AgeBand, Gender)>),
    /// Per state, within its country: `(country, state)`.
    State(Option<(Name, Name)>),
    /// Per country.
    Country(Option<Name>),
    /// Per campaign and country.
    CampaignCountry(CampaignId, Option<Name>),
    /// Per campaign, age band and gender.
    CampaignAgeGender(CampaignId, Option<(AgeBand, Gender)>),
}

/// An aggregate row's key: its dimension, and the window it covers (`None`: all time).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AggregateKey {
    /// The dimension and its values.
    pub dimension: Dimension,
    /// The start of the event-time window, or `None` for all-time totals.
    pub window: Option<EventTimeMs>,
}

/// The engine's own counters, kept by the same dataflow and written as the `pipeline` measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Counter {
    /// Events that reached the dataflow, duplicates included.
    EventsIn,
    /// Second and later deliveries of the same order and tag, ignored.
    Duplicates,
    /// Counted events (and refunds) whose window had closed when they arrived: in all-time totals only.
    LateForWindow,
    /// Refunds that retracted a counted purchase.
    RefundsApplied,
    /// Refunds for which no purchase was known; the purchase, should it arrive, is not counted.
    RefundsUnmatched,
    /// Source messages not in the expected framing (wrong magic byte, too short for a header).
    MalformedFraming,
    /// Source messages naming a schema the decoder does not know.
    MalformedUnknownSchema,
    /// Source messages whose body ended early or had bytes left over.
    MalformedTruncated,
    /// Source messages with a value out of range or of the wrong type (bytes that do not decode
    /// as the schema's types, an enum index out of range, a negative id, a total that is not a
    /// finite number); negative units and totals are counted apart, in [`Counter::RejectedNegative`].
    MalformedInvalidValue,
    /// Source messages larger than the source's size limit: counted, never decoded.
    MalformedOversize,
    /// Well-formed events with negative units or a negative total: rejected by the source.
    RejectedNegative,
    /// Events whose event time lies further before their processing time than the source's
    /// plausibility bound (a time in 1970, say): rejected by the source, counted in no total.
    RejectedTooOld,
    /// Events whose event time lies further after their processing time than the source allows
    /// for clock skew: rejected by the source, counted in no total.
    RejectedFuture,
    /// Well-formed events whose total or units exceed the source's plausibility bounds
    /// (`kafka.max-order-cents`, `kafka.max-units`): rejected by the source, counted in no total.
    RejectedImplausible,
    /// Demographics rows the source skips because they do not convert (a gender not F, M, X or
    /// U, an age out of range, a NULL): how many rows of the table are such now. A row that
    /// becomes valid, or is deleted, is no longer counted; its user's events count as `unknown`
    /// meanwhile.
    DemographicsSkipped,
}

/// Where a [`Counter`] is kept: see [`Counter::origin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterOrigin {
    /// The dataflow's order ledger, over the events that entered it.
    Ledger,
    /// The event source: a message it read and did not hand on (each such message in exactly one
    /// of these counters).
    RejectedMessage,
    /// The demographics source: rows of its table that do not convert.
    DemographicsTable,
}

impl Counter {
    /// Every counter, in declaration order (the dataflow indexes arrays by `counter as usize`).
    pub const ALL: [Counter; 15] = [
        Counter::EventsIn,
        Counter::Duplicates,
        Counter::LateForWindow,
        Counter::RefundsApplied,
        Counter::RefundsUnmatched,
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

    /// Who keeps the counter: the dataflow's ledger, or a source apart from it (and so what
    /// `verify` recounts from the sources, and which counters count source messages). Listed one
    /// by one, so that a new counter needs a decision here.
    pub fn origin(self) -> CounterOrigin {
        match self {
            Counter::EventsIn
            | Counter::Duplicates
            | Counter::LateForWindow
            | Counter::RefundsApplied
            | Counter::RefundsUnmatched => CounterOrigin::Ledger,
            Counter::MalformedFraming
            | Counter::MalformedUnknownSchema
            | Counter::MalformedTruncated
            | Counter::MalformedInvalidValue
            | Counter::MalformedOversize
            | Counter::RejectedNegative
            | Counter::RejectedTooOld
            | Counter::RejectedFuture
            | Counter::RejectedImplausible => CounterOrigin::RejectedMessage,
            Counter::DemographicsSkipped => CounterOrigin::DemographicsTable,
        }
    }

    /// The field name in the `pipeline` measurement.
    pub fn name(self) -> &'static str {
        match self {
            Counter::EventsIn => "events_in",
            Counter::Duplicates => "duplicates",
            Counter::LateForWindow => "late_for_window",
            Counter::RefundsApplied => "refunds_applied",
            Counter::RefundsUnmatched => "refunds_unmatched",
            Counter::MalformedFraming => "malformed_framing",
            Counter::MalformedUnknownSchema => "malformed_unknown_schema",
            Counter::MalformedTruncated => "malformed_truncated",
            Counter::MalformedInvalidValue => "malformed_invalid_value",
            Counter::MalformedOversize => "malformed_oversize",
            Counter::RejectedNegative => "rejected_negative",
            Counter::RejectedTooOld => "rejected_too_old",
            Counter::RejectedFuture => "rejected_future",
            Counter::RejectedImplausible => "rejected_implausible",
            Counter::DemographicsSkipped => "demographics_skipped",
        }
    }
}

/// The key of an output row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutputKey {
    /// An aggregate over events.
    Aggregate(AggregateKey),
    /// One of the engine's counters.
    Counter(Counter),
}

/// The value of an output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutputValue {
    /// The totals of an aggregate.
    Totals(Totals),
    /// A counter's value.
    Count(i64),
}

/// An output row: every key has at most one value at any time.
pub type OutputRow = (OutputKey, OutputValue);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_listed_in_declaration_order_with_distinct_names() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i, "{counter:?}");
        }
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
