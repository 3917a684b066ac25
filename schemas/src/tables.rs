//! Arrow schemas of the two tables tokenmeter writes as Parquet: `usage_events` (one row per
//! accepted event) and `usage_hourly` (rollup rows). Column names here are the contract shared by
//! the writer (`tokenmeter-aggregate`), the readers (`tokenmeter-query`, notebooks) and ClickHouse.
//!
//! Neither table stores its `date` partition column: it lives in the directory name
//! (`date=YYYY-MM-DD`, the UTC date of the event time or hour).

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, LazyLock};

/// Money: Decimal128(38, 12). A cost in this type is exact for any price with at most 6 decimal
/// places per million tokens.
pub const COST_PRECISION: u8 = 38;
/// See [`COST_PRECISION`].
pub const COST_SCALE: i8 = 12;

/// The money type.
pub fn cost_type() -> DataType {
    DataType::Decimal128(COST_PRECISION, COST_SCALE)
}

/// The timestamp type: microseconds, UTC.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Bucket column suffixes in `Buckets::NAMES` order; token columns are `tokens_<bucket>`, cost
/// columns `cost_<bucket>`.
pub const BUCKETS: [&str; 5] = crate::Buckets::NAMES;

fn bucket_fields(fields: &mut Vec<Field>) {
    // Reported counts, as the gateway sent them (cache and reasoning included).
    for name in [
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "reasoning_output_tokens",
    ] {
        fields.push(Field::new(name, DataType::Int64, false));
    }
    for b in BUCKETS {
        fields.push(Field::new(format!("tokens_{b}"), DataType::Int64, false));
    }
    for b in BUCKETS {
        fields.push(Field::new(format!("cost_{b}"), cost_type(), true));
    }
    fields.push(Field::new("cost", cost_type(), true));
    fields.push(Field::new("currency", DataType::Utf8, true));
}

/// Schema of the raw-event table. `cost*` and `currency` are null for an event no price covers.
///
/// It holds every field of the event's content fingerprint (the dedupe index's test of a retry,
/// `tokenmeter_aggregate::dedupe::Content`) but not the fingerprint itself, which the index
/// recomputes from these columns: a random 64-bit column would be 17 % of the table's bytes.
/// Files written by earlier builds carry a `content_fingerprint` column too; readers ignore it
/// (the catalog reads the columns of this schema, the index reads its columns by name).
pub static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("event_time", time_type(), false),
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("provider", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("operation", DataType::Utf8, true),
        Field::new("is_agent", DataType::Boolean, false),
        Field::new("agent_id", DataType::Utf8, true),
        Field::new("agent_name", DataType::Utf8, true),
        Field::new("agent_run_id", DataType::Utf8, true),
        Field::new("agent_step", DataType::Utf8, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("api_key_id", DataType::Utf8, true),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("latency_ms", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
    ];
    bucket_fields(&mut f);
    f.extend([
        Field::new("price_effective_from", time_type(), true),
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]);
    Arc::new(Schema::new(f))
});

/// Schema of the hourly rollup table. One row per (hour, tenant_id, provider, model, is_agent,
/// agent_id, currency) **per batch file**: several files may hold rows of the same key, and
/// readers sum them (the `usage_hourly` view does). `currency` null means unpriced usage, whose
/// cost columns are null.
pub static ROLLUP_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = vec![
        Field::new("hour", time_type(), false),
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("provider", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("is_agent", DataType::Boolean, false),
        Field::new("agent_id", DataType::Utf8, true),
        Field::new("requests", DataType::Int64, false),
        Field::new("errors", DataType::Int64, false),
    ];
    bucket_fields(&mut f);
    Arc::new(Schema::new(f))
});

/// Columns of the rollup key, in order.
pub const ROLLUP_KEY: [&str; 7] = [
    "hour",
    "tenant_id",
    "provider",
    "model",
    "is_agent",
    "agent_id",
    "currency",
];
