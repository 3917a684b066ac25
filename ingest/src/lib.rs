//! Kafka in and out for tokenmeter: the aggregator's consumer loop (decode, validate, price,
//! dedupe retries, batch, commit to the lake, dead-letter the invalid), the tasks that follow the
//! lake's commits (the ClickHouse sink, budget alerts to a topic and a webhook), its Prometheus
//! metrics, the producer gateways use, the deterministic traffic generator, and the measurements
//! of `tokenmeter bench`.
//!
//! Not here: pricing, rollups and the Parquet commit protocol (`tokenmeter-aggregate`), queries
//! (`tokenmeter-query`).

pub mod aggregator;
pub mod alerts;
pub mod bench;
pub mod chsink;
pub mod error;
pub mod generate;
pub mod kafka;
pub mod metrics;
pub mod produce;
pub mod webhook;

pub use aggregator::{AggregatorConfig, RunSummary, run_aggregator};
pub use error::{Error, Result};
pub use metrics::Metrics;
