//! Pricing, rollups and the exactly-once Parquet lake.
//!
//! - [`prices`]: the price book (TOML) and exact cost arithmetic — pure.
//! - [`billing`]: rating usage by a tenant's contract into invoice lines — pure.
//! - [`litellm`]: LiteLLM's price catalog converted exactly into a price book — pure.
//! - [`budgets`]: monthly budgets — periods, month-to-date spend, threshold crossings, the alert
//!   message and the alert ledger's format — pure.
//! - [`rollup`]: the hourly rollup fold — pure.
//! - [`dedupe`]: retry dedupe keys, content fingerprints and the per-partition index — pure.
//! - [`lake`]: the Parquet sink and the commit protocol that makes it exactly-once (see
//!   ARCHITECTURE.md, "Delivery invariant"); also the alert ledgers and reading committed events
//!   back for budgets.
//! - [`clickhouse`]: the ClickHouse tables, the sink's progress and atomic inserts of committed
//!   rollup files (ARCHITECTURE.md, "ClickHouse sink").
//!
//! The lake and the ClickHouse module are the only I/O in this crate.
//!
//! Not here: Kafka (see `tokenmeter-ingest`) and queries (see `tokenmeter-query`).

pub mod billing;
pub mod budgets;
pub mod clickhouse;
pub mod dedupe;
pub mod error;
pub mod lake;
pub mod litellm;
pub mod prices;
pub mod record;
pub mod rollup;

pub use error::{Error, Result};
pub use prices::{Money, PriceBook, Rates};
pub use record::PricedEvent;
