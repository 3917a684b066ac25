//! Kafka in and out for tokenmeter: the aggregator's consumer loop (decode, validate, price,
//! batch, commit to the lake, dead-letter the invalid), the producer gateways use, and the
//! deterministic traffic generator.
//!
//! Not here: pricing, rollups and the Parquet commit protocol (`tokenmeter-aggregate`), queries
//! (`tokenmeter-query`).

pub mod aggregator;
pub mod error;
pub mod generate;
pub mod kafka;
pub mod produce;

pub use aggregator::{AggregatorConfig, Metrics, RunSummary, run_aggregator};
pub use error::{Error, Result};
