//! The usage-event contract of tokenmeter: the CloudEvents JSON a gateway sends, its decoding and
//! validation rules, the billable token buckets derived from it, and the Arrow schemas of the two
//! tables the aggregator writes (raw events, hourly rollups) and their ClickHouse DDL.
//!
//! This crate depends on no other tokenmeter crate and does no I/O: it is the contract, nothing
//! more. Pricing lives in `tokenmeter-aggregate`, Kafka in `tokenmeter-ingest`.

pub mod clickhouse;
pub mod error;
pub mod event;
pub mod layout;
pub mod tables;

pub use error::{Error, Result};
pub use event::{
    Agent, AgentStep, Buckets, DecodeOptions, JsonParser, MAX_TOKENS, Status, Usage, UsageEvent,
    ValidationError, decode_event,
};

/// The JSON Schema of the event contract, as shipped in `schemas/usage-event.v1.schema.json`.
pub const USAGE_EVENT_JSON_SCHEMA: &str = include_str!("../usage-event.v1.schema.json");
