//! Avro click, purchase and refund events with the Confluent wire framing.
//!
//! A message is the magic byte `0`, the writer schema's registry id as a 4-byte big-endian
//! integer, and the Avro binary encoding of one `io.shopflow.Event` record
//! ([`EVENT_SCHEMA`]). [`encode_event`] writes one; a [`Decoder`] reads one back.
//!
//! Decoding has two paths. Messages written with the bundled schema's layout, which is what the
//! shop's producers send, go through a hand-written decoder that reads the bytes directly: it is
//! the hot path of every source. Messages written with any other registered schema (version 1,
//! or a later one that added fields) go through apache-avro's schema resolution against the
//! bundled schema, which is some fifty times slower but handles every evolution Avro allows.
//!
//! Neither path panics or allocates according to a length read from the input: the generic path
//! walks the body against the writer schema before apache-avro sees it, because apache-avro
//! sizes its buffers from the lengths in the data and reads a truncated string or union as null.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, InnerDecimalSchema, Name, RecordSchema, ResolvedSchema, UuidSchema,
};
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use dataflows::model::{CampaignId, Cents, Event, EventTimeMs, OrderId, Tag, UserId};
use rustc_hash::FxHashMap;

/// The bundled event schema, version 2: the reader schema of every decode.
pub const EVENT_SCHEMA: &str = include_str!("../../config/schemas/event.avsc");

/// The schema id [`Decoder::new`] registers the bundled schema under, for setups without a
/// schema registry; with one, use [`Decoder::with_bundled`] and the id the registry assigned.
pub const DEFAULT_SCHEMA_ID: u32 = 1;

/// The first byte of every Confluent-framed message.
pub const MAGIC: u8 = 0;

// The header's length and the limits `[kafka]`'s checks name live in config, below this module.
pub use crate::config::kafka::{HEADER_LEN, MAX_CENTS, MAX_ENCODED_LEN};

/// How deep the generic path follows nested records, arrays, maps and unions before it gives up.
/// A recursive writer schema could otherwise nest without end; the event schema nests once.
const MAX_NESTING: u32 = 64;

/// The bundled schema, parsed once.
///
/// Fails only if `config/schemas/event.avsc` is not a valid Avro schema, which the tests rule
/// out; it is a `Result` rather than a panic because library code does not panic.
pub fn event_schema() -> Result<&'static Schema, SchemaError> {
    static PARSED: OnceLock<Result<Schema, SchemaError>> = OnceLock::new();
    PARSED
        .get_or_init(|| Schema::parse_str(EVENT_SCHEMA).map_err(SchemaError::parse))
        .as_ref()
        .map_err(Clone::clone)
}

/// Why a message could not be decoded; each variant is counted separately by the pipeline
/// (see [`DecodeError::reason`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first byte is not the Confluent magic byte `0`: not a framed Avro message.
    #[error("bad magic byte {0:#04x}: not a Confluent-framed Avro message")]
    BadMagic(u8),
    /// The message is shorter than the 5-byte header.
    #[error("message shorter than the {HEADER_LEN}-byte Confluent header")]
    TooShort,
    /// No writer schema is registered under the header's id.
    #[error("no writer schema registered under id {0}")]
    UnknownSchemaId(u32),
    /// The Avro body ends in the middle of the record.
    #[error("the Avro body ends in the middle of the record")]
    Truncated,
    /// A field holds a value the event cannot carry, or bytes no Avro writer produces.
    #[error("invalid `{field}`: {reason}")]
    InvalidValue {
        /// The Avro field (of `io.shopflow.Event`; `writer-only field` for one the bundled
        /// schema does not have).
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Bytes are left over after the record.
    #[error("bytes left over after the record")]
    TrailingBytes,
    /// apache-avro could not resolve the writer's record against the bundled schema.
    #[error("schema resolution failed: {0}")]
    Resolution(String),
}

impl DecodeError {
    /// Every value [`DecodeError::reason`] returns, so metrics can be registered up front.
    pub const REASONS: [&'static str; 7] = [
        "bad_magic",
        "too_short",
        "unknown_schema_id",
        "truncated",
        "invalid_value",
        "trailing_bytes",
        "resolution",
    ];

    /// A stable snake_case name of the variant, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadMagic(_) => "bad_magic",
            DecodeError::TooShort => "too_short",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::Truncated => "truncated",
            DecodeError::InvalidValue { .. } => "invalid_value",
            DecodeError::TrailingBytes => "trailing_bytes",
            DecodeError::Resolution(_) => "resolution",
        }
    }

    fn invalid(field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::InvalidValue { field, reason }
    }

    fn resolution(error: apache_avro::Error) -> DecodeError {
        DecodeError::Resolution(error.to_string())
    }
}

/// Why a writer schema could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The text is not a valid Avro schema.
    #[error("not a valid Avro schema: {0}")]
    Parse(String),
    /// The schema is valid, but its records cannot be read as `io.shopflow.Event`.
    #[error("writer schema {id} cannot be read as io.shopflow.Event: {reason}")]
    Incompatible {
        /// The id it was to be registered under.
        id: u32,
        /// apache-avro's explanation.
        reason: String,
    },
}

impl SchemaError {
    fn parse(error: apache_avro::Error) -> SchemaError {
        SchemaError::Parse(error.to_string())
    }
}

/// Which decoder read a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodePath {
    /// The hand-written decoder of the bundled layout.
    Fast,
    /// apache-avro's schema resolution.
    Generic,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DecodedEvent {
    /// The writer schema id from the header.
    pub schema_id: u32,
    /// Which decoder read it.
    pub path: DecodePath,
    /// The event, with `event_time` as written: `0` when the writer did not say (version 1
    /// writers never do); see [`DecodedEvent::into_event`].
    pub event: Event,
}

impl DecodedEvent {
    /// Whether the writer gave the event's time (a nonzero `event_time`).
    pub fn has_event_time(&self) -> bool {
        self.event.event_time.0 != 0
    }

    /// The event, with an absent event time replaced by `arrival`, the time the message arrived.
    pub fn into_event(self, arrival: EventTimeMs) -> Event {
        let mut event = self.event;
        if event.event_time.0 == 0 {
            event.event_time = arrival;
        }
        event
    }
}

/// Writes `event` as a Confluent-framed message with the bundled schema's layout, appending to
/// `out`.
///
/// This is the exact inverse of the fast decoder for every event the schema can carry: ids,
/// units and times up to the signed maximum of their Avro type, totals from zero to
/// [`MAX_CENTS`]. The schema's signed types cannot carry larger ones; they are written as their
/// two's-complement wrap (a negative number, or a total above the bound), which every decoder
/// rejects as [`DecodeError::InvalidValue`], so such an event is never read back as another.
pub fn encode_event(schema_id: u32, event: &Event, out: &mut Vec<u8>) {
    out.reserve(MAX_ENCODED_LEN);
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    // The `as` casts wrap on purpose: see above.
    put_long(out, i64::from(event.user_id.0 as i32));
    put_long(out, i64::from(event.campaign_id.0 as i32));
    put_long(out, event.order_id.0 as i64);
    out.extend_from_slice(&(event.total.0 as f64 / 100.0).to_le_bytes());
    put_long(out, i64::from(event.units as i32));
    put_long(out, tag_index(event.tag));
    put_long(out, event.event_time.0 as i64);
}

/// Appends `n` as a zig-zag varint, Avro's encoding of `int`, `long` and enum indexes.
#[inline]
fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The position of `tag` in the schema's `Tag` symbols.
fn tag_index(tag: Tag) -> i64 {
    match tag {
        Tag::Click => 0,
        Tag::Purchased => 1,
        Tag::Refunded => 2,
    }
}

/// A writer schema the decoder knows.
#[derive(Clone, Debug)]
struct Writer {
    schema: Schema,
    /// Its named types, for following references when the generic path walks a body.
    names: HashMap<Name, Schema>,
    /// Whether its layout is the one the hand-written decoder reads.
    fast: bool,
}

/// Decodes Confluent-framed event messages written with any registered writer schema.
#[derive(Clone, Debug)]
pub struct Decoder {
    writers: FxHashMap<u32, Writer>,
    /// The bundled schema, which the generic path resolves every writer's record against.
    reader: Schema,
}

impl Decoder {
    /// A decoder that knows the bundled schema under [`DEFAULT_SCHEMA_ID`].
    pub fn new() -> Result<Decoder, SchemaError> {
        Decoder::with_bundled(DEFAULT_SCHEMA_ID)
    }

    /// A decoder that knows no writer schema yet (they come from a schema registry), reading
    /// into the bundled schema.
    pub fn empty() -> Result<Decoder, SchemaError> {
        Ok(Decoder {
            writers: FxHashMap::default(),
            reader: event_schema()?.clone(),
        })
    }

    /// A decoder that knows the bundled schema under `id`.
    pub fn with_bundled(id: u32) -> Result<Decoder, SchemaError> {
        let reader = event_schema()?.clone();
        let mut decoder = Decoder {
            writers: FxHashMap::default(),
            reader: reader.clone(),
        };
        decoder.register_schema(id, reader)?;
        Ok(decoder)
    }

    /// Adds the writer schema `writer_schema_json` under `id`, replacing any schema registered
    /// under it before.
    ///
    /// A schema with the bundled layout (the same fields, types and order; docs, defaults and
    /// logical types aside) is read by the fast path. Every schema must be readable as the
    /// bundled one under Avro's resolution rules, which is checked here rather than on every
    /// message.
    pub fn register(&mut self, id: u32, writer_schema_json: &str) -> Result<(), SchemaError> {
        let schema = Schema::parse_str(writer_schema_json).map_err(SchemaError::parse)?;
        self.register_schema(id, schema)
    }

    fn register_schema(&mut self, id: u32, schema: Schema) -> Result<(), SchemaError> {
        let fast = has_fast_layout(&schema);
        let incompatible = |reason: String| SchemaError::Incompatible { id, reason };
        SchemaCompatibility::can_read(&schema, &self.reader)
            .map_err(|error| incompatible(error.to_string()))?;
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|error| incompatible(error.to_string()))?
            .get_names()
            .iter()
            .map(|(name, named)| (name.clone(), (*named).clone()))
            .collect();
        self.writers.insert(
            id,
            Writer {
                schema,
                names,
                fast,
            },
        );
        Ok(())
    }

    /// Whether a writer schema is registered under `id`.
    pub fn knows(&self, id: u32) -> bool {
        self.writers.contains_key(&id)
    }

    /// Decodes one message; the event's `event_time` is as written (see [`DecodedEvent`]).
    pub fn decode(&self, message: &[u8]) -> Result<DecodedEvent, DecodeError> {
        let (schema_id, body) = split_header(message)?;
        let writer = self
            .writers
            .get(&schema_id)
            .ok_or(DecodeError::UnknownSchemaId(schema_id))?;
        let (path, event) = if writer.fast {
            (DecodePath::Fast, decode_fast(body)?)
        } else {
            (DecodePath::Generic, self.decode_resolved(writer, body)?)
        };
        Ok(DecodedEvent {
            schema_id,
            path,
            event,
        })
    }

    /// Decodes one message through apache-avro's schema resolution even when its writer schema
    /// has the fast path's layout: for checking the two paths against each other, and for
    /// benchmarks. The pipeline uses [`Decoder::decode`].
    pub fn decode_generic(&self, message: &[u8]) -> Result<DecodedEvent, DecodeError> {
        let (schema_id, body) = split_header(message)?;
        let writer = self
            .writers
            .get(&schema_id)
            .ok_or(DecodeError::UnknownSchemaId(schema_id))?;
        Ok(DecodedEvent {
            schema_id,
            path: DecodePath::Generic,
            event: self.decode_resolved(writer, body)?,
        })
    }

    fn decode_resolved(&self, writer: &Writer, body: &[u8]) -> Result<Event, DecodeError> {
        // apache-avro trusts lengths and reads a truncated string, boolean or union as null, so
        // the body is first checked to be exactly one well-formed record of the writer schema.
        Walk::new(body, &writer.names).record(&writer.schema)?;
        let mut rest = body;
        let value = GenericDatumReader::builder(&writer.schema)
            .reader_schema(&self.reader)
            .build()
            .map_err(DecodeError::resolution)?
            .read_value(&mut rest)
            .map_err(DecodeError::resolution)?;
        event_from_value(&value)
    }
}

/// Whether `schema` writes exactly the layout the hand-written decoder reads: the bundled
/// schema's fields, names and order, whatever its docs, defaults and logical types say.
///
/// The fast path is keyed to this check rather than to whatever `event.avsc` says, so that an
/// edit of the schema file cannot make the hand-written decoder misread bytes: a writer schema
/// with any other layout takes the generic path (and a test fails, since the bundled schema
/// must take the fast one). It compares the parsed schema rather than its canonical form
/// because apache-avro's canonical form spells a logical-type `long` differently from a plain
/// one, though the bytes are the same.
fn has_fast_layout(schema: &Schema) -> bool {
    let Schema::Record(RecordSchema { name, fields, .. }) = schema else {
        return false;
    };
    const NAMES: [&str; 7] = [
        "id",
        "campaign_id",
        "order_id",
        "total_amount",
        "units",
        "tag",
        "event_time",
    ];
    let types: Vec<&Schema> = fields.iter().map(|field| &field.schema).collect();
    name.fullname(None) == "io.shopflow.Event"
        && fields.iter().map(|field| field.name.as_str()).eq(NAMES)
        && matches!(
            types[..],
            [
                Schema::Int,
                Schema::Int,
                Schema::Long,
                Schema::Double,
                Schema::Int,
                Schema::Enum(EnumSchema { name: tag, symbols, .. }),
                Schema::Long | Schema::TimestampMillis,
            ] if tag.fullname(name.namespace()) == "io.shopflow.Tag"
                && symbols.iter().map(String::as_str).eq(["click", "purchased", "refunded"])
        )
}

/// Checks the Confluent header; returns the schema id and the Avro body.
fn split_header(message: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match message {
        [] => Err(DecodeError::TooShort),
        [magic, ..] if *magic != MAGIC => Err(DecodeError::BadMagic(*magic)),
        [_, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => Err(DecodeError::TooShort),
    }
}

/// What can go wrong reading an Avro primitive, before the field it was in is known.
///
/// Kept to a byte so that the cursor's results come back in registers on the hot path; the
/// caller names the field when it turns a fault into a [`DecodeError`].
#[derive(Clone, Copy, Debug)]
enum Fault {
    Truncated,
    VarintOverflow,
    IntRange,
}

impl Fault {
    #[cold]
    fn at(self, field: &'static str) -> DecodeError {
        match self {
            Fault::Truncated => DecodeError::Truncated,
            Fault::VarintOverflow => DecodeError::invalid(field, "varint overflows 64 bits"),
            Fault::IntRange => DecodeError::invalid(field, "outside the int range"),
        }
    }
}

/// Reads Avro primitives from a body, failing instead of running past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// A zig-zag varint of at most ten bytes, the tenth carrying only the top bit.
    #[inline]
    fn long(&mut self) -> Result<i64, Fault> {
        let mut zigzag: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self.bytes.get(self.pos).ok_or(Fault::Truncated)?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(Fault::VarintOverflow);
            }
            zigzag |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64));
            }
            shift += 7;
        }
    }

    #[inline]
    fn int(&mut self) -> Result<i32, Fault> {
        i32::try_from(self.long()?).map_err(|_| Fault::IntRange)
    }

    #[inline]
    fn double(&mut self) -> Result<f64, Fault> {
        let bytes = self.take(8)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(le))
    }

    /// The next `len` bytes; `len` comes from the schema or has been checked against the input.
    #[inline]
    fn take(&mut self, len: usize) -> Result<&'a [u8], Fault> {
        if len > self.remaining() {
            return Err(Fault::Truncated);
        }
        let bytes = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// The hand-written decoder of the bundled layout: the fields in schema order, nothing else.
fn decode_fast(body: &[u8]) -> Result<Event, DecodeError> {
    let at = |field| move |fault: Fault| fault.at(field);
    let mut cursor = Cursor::new(body);
    let user_id = UserId(non_negative_int("id", cursor.int().map_err(at("id"))?)?);
    let campaign_id = CampaignId(non_negative_int(
        "campaign_id",
        cursor.int().map_err(at("campaign_id"))?,
    )?);
    let order_id = OrderId(non_negative_long(
        "order_id",
        cursor.long().map_err(at("order_id"))?,
    )?);
    let total = cents_from_amount(cursor.double().map_err(at("total_amount"))?)?;
    let units = non_negative_int("units", cursor.int().map_err(at("units"))?)?;
    let tag = match cursor.int().map_err(at("tag"))? {
        0 => Tag::Click,
        1 => Tag::Purchased,
        2 => Tag::Refunded,
        _ => return Err(DecodeError::invalid("tag", "enum index out of range")),
    };
    let event_time = EventTimeMs(non_negative_long(
        "event_time",
        cursor.long().map_err(at("event_time"))?,
    )?);
    cursor.finish()?;
    Ok(Event {
        order_id,
        tag,
        user_id,
        campaign_id,
        total,
        units,
        event_time,
    })
}

fn non_negative_int(field: &'static str, value: i32) -> Result<u32, DecodeError> {
    u32::try_from(value).map_err(|_| DecodeError::invalid(field, "negative"))
}

fn non_negative_long(field: &'static str, value: i64) -> Result<u64, DecodeError> {
    u64::try_from(value).map_err(|_| DecodeError::invalid(field, "negative"))
}

/// Currency units to integer cents, rounding half away from zero.
fn cents_from_amount(amount: f64) -> Result<Cents, DecodeError> {
    const FIELD: &str = "total_amount";
    if !amount.is_finite() {
        return Err(DecodeError::invalid(FIELD, "not a finite number"));
    }
    if amount < 0.0 {
        return Err(DecodeError::invalid(FIELD, "negative"));
    }
    let cents = (amount * 100.0).round();
    // Compared as a double, before the cast, so that no amount saturates into range.
    if cents > MAX_CENTS as f64 {
        return Err(DecodeError::invalid(
            FIELD,
            "too large to keep in exact cents",
        ));
    }
    Ok(Cents(cents as i64))
}

/// The event in a record apache-avro resolved against the bundled schema.
fn event_from_value(value: &Value) -> Result<Event, DecodeError> {
    let Value::Record(fields) = value else {
        return Err(DecodeError::Resolution(
            "the resolved value is not a record".to_owned(),
        ));
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value)
            .ok_or_else(|| DecodeError::Resolution(format!("the resolved record lacks `{name}`")))
    };
    let wrong_type = |name: &str| {
        DecodeError::Resolution(format!("the resolved `{name}` has an unexpected type"))
    };
    let int = |name: &'static str| match field(name)? {
        Value::Int(n) => non_negative_int(name, *n),
        _ => Err(wrong_type(name)),
    };
    let long = |name: &'static str| match field(name)? {
        Value::Long(n) | Value::TimestampMillis(n) => non_negative_long(name, *n),
        _ => Err(wrong_type(name)),
    };
    let total = match field("total_amount")? {
        Value::Double(amount) => cents_from_amount(*amount)?,
        _ => return Err(wrong_type("total_amount")),
    };
    let tag = match field("tag")? {
        Value::Enum(_, symbol) => match symbol.as_str() {
            "click" => Tag::Click,
            "purchased" => Tag::Purchased,
            "refunded" => Tag::Refunded,
            _ => return Err(DecodeError::invalid("tag", "unknown enum symbol")),
        },
        _ => return Err(wrong_type("tag")),
    };
    Ok(Event {
        order_id: OrderId(long("order_id")?),
        tag,
        user_id: UserId(int("id")?),
        campaign_id: CampaignId(int("campaign_id")?),
        total,
        units: int("units")?,
        event_time: EventTimeMs(long("event_time")?),
    })
}

/// The name of a top-level field for [`DecodeError::InvalidValue`], which carries static names.
fn static_field_name(name: &str) -> &'static str {
    match name {
        "id" => "id",
        "campaign_id" => "campaign_id",
        "order_id" => "order_id",
        "total_amount" => "total_amount",
        "units" => "units",
        "tag" => "tag",
        "event_time" => "event_time",
        _ => "writer-only field",
    }
}

/// Checks that a body is exactly one well-formed datum of a writer schema, without allocating.
///
/// Every length and block count is checked against the bytes left, and the number of array
/// and map items against the body's length, so whatever apache-avro then allocates is bounded
/// by the message's size.
struct Walk<'a> {
    cursor: Cursor<'a>,
    names: &'a HashMap<Name, Schema>,
    /// Array and map items still allowed; items of zero width would otherwise be free.
    items_left: usize,
    /// The top-level field being read, for error messages.
    field: &'static str,
}

impl<'a> Walk<'a> {
    fn new(body: &'a [u8], names: &'a HashMap<Name, Schema>) -> Walk<'a> {
        Walk {
            cursor: Cursor::new(body),
            names,
            items_left: body.len(),
            field: "record",
        }
    }

    /// Walks the top-level record and checks nothing follows it.
    fn record(mut self, schema: &Schema) -> Result<(), DecodeError> {
        match schema {
            Schema::Record(RecordSchema { name, fields, .. }) => {
                let name = name.fully_qualified_name(None);
                for field in fields {
                    self.field = static_field_name(&field.name);
                    self.datum(&field.schema, name.namespace(), 1)?;
                }
            }
            _ => self.datum(schema, None, 0)?,
        }
        self.cursor.finish()
    }

    fn long(&mut self) -> Result<i64, DecodeError> {
        let field = self.field;
        self.cursor.long().map_err(|fault| fault.at(field))
    }

    fn int(&mut self) -> Result<i32, DecodeError> {
        let field = self.field;
        self.cursor.int().map_err(|fault| fault.at(field))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let field = self.field;
        self.cursor.take(len).map_err(|fault| fault.at(field))
    }

    fn length(&mut self) -> Result<usize, DecodeError> {
        let len = self.long()?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::invalid(self.field, "negative length"))?;
        if len > self.cursor.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(len)
    }

    /// The item count of the next array or map block; zero ends the array or map.
    fn block_count(&mut self) -> Result<usize, DecodeError> {
        let count = self.long()?;
        if count < 0 {
            // A negative count is followed by the block's size in bytes, which skipping needs
            // and walking does not.
            self.long()?;
        }
        let count = usize::try_from(count.unsigned_abs())
            .ok()
            .filter(|count| *count <= self.items_left)
            .ok_or(DecodeError::invalid(
                self.field,
                "more items than the message has bytes",
            ))?;
        self.items_left -= count;
        Ok(count)
    }

    fn datum(
        &mut self,
        schema: &Schema,
        namespace: Option<&str>,
        depth: u32,
    ) -> Result<(), DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::invalid(self.field, "nested too deeply"));
        }
        match schema {
            Schema::Null => {}
            Schema::Boolean => {
                if self.take(1)?[0] > 1 {
                    return Err(DecodeError::invalid(self.field, "boolean neither 0 nor 1"));
                }
            }
            Schema::Int | Schema::Date | Schema::TimeMillis => {
                self.int()?;
            }
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => {
                self.long()?;
            }
            Schema::Float => {
                self.take(4)?;
            }
            Schema::Double => {
                self.take(8)?;
            }
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            })
            | Schema::Uuid(UuidSchema::Bytes) => {
                let len = self.length()?;
                self.take(len)?;
            }
            Schema::String | Schema::Uuid(UuidSchema::String) => {
                let len = self.length()?;
                if std::str::from_utf8(self.take(len)?).is_err() {
                    return Err(DecodeError::invalid(self.field, "string is not UTF-8"));
                }
            }
            Schema::Fixed(fixed)
            | Schema::Duration(fixed)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(fixed),
                ..
            })
            | Schema::Uuid(UuidSchema::Fixed(fixed)) => {
                self.take(fixed.size)?;
            }
            Schema::Enum(schema) => {
                let index = self.int()?;
                if usize::try_from(index).map_or(true, |index| index >= schema.symbols.len()) {
                    return Err(DecodeError::invalid(self.field, "enum index out of range"));
                }
            }
            Schema::Union(union) => {
                let index = self.long()?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|index| union.variants().get(index))
                    .ok_or(DecodeError::invalid(self.field, "union index out of range"))?;
                self.datum(variant, namespace, depth + 1)?;
            }
            Schema::Record(RecordSchema { name, fields, .. }) => {
                let name = name.fully_qualified_name(namespace);
                for field in fields {
                    self.datum(&field.schema, name.namespace(), depth + 1)?;
                }
            }
            Schema::Array(array) => loop {
                let count = self.block_count()?;
                if count == 0 {
                    break;
                }
                for _ in 0..count {
                    self.datum(&array.items, namespace, depth + 1)?;
                }
            },
            Schema::Map(map) => loop {
                let count = self.block_count()?;
                if count == 0 {
                    break;
                }
                for _ in 0..count {
                    self.datum(&Schema::String, namespace, depth + 1)?;
                    self.datum(&map.types, namespace, depth + 1)?;
                }
            },
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(namespace);
                let named = self.names.get(name.as_ref()).ok_or_else(|| {
                    DecodeError::Resolution(format!("the writer schema does not define {name}"))
                })?;
                self.datum(named, name.namespace(), depth + 1)?;
            }
        }
        Ok(())
    }
}
