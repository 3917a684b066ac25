//! Queries over the tokenmeter lake with DataFusion: the catalog of committed files, read-only
//! SQL, the billing reports (from raw events or hourly rollups, with identical results) and their
//! output formats.
//!
//! - [`catalog`]: `usage_events`, `usage_hourly_parts` and the `usage_hourly` view over only the
//!   committed Parquet files (via [`lake_store`]), partitioned by `date`.
//! - [`sqlq`]: one read-only query at a time.
//! - [`reports`]: cost by token type and agent share; SQL in `query/sql/`.
//! - [`invoice`]: invoices (rated by tenant contracts) and adjustments of closed months.
//! - [`periods`]: closed months and the windows their late events fall in.
//! - [`reprice`]: restating a period's cost from the raw events with another price book.
//! - [`anomalies`]: large requests and hourly spend spikes; SQL in `query/sql/`.
//! - [`output`]: table, CSV, JSON and Parquet.
//! - [`dashboards`]: the ClickHouse dashboard SQL of `query/sql/clickhouse/`.
//! - [`reconcile`]: raw events vs rollups vs ClickHouse, at one consistent cut.
//!
//! Not here: writing the lake (see `tokenmeter-aggregate`), the CLI (the `tokenmeter` binary).

pub mod anomalies;
pub mod catalog;
pub mod dashboards;
pub mod error;
pub mod invoice;
pub mod lake_store;
pub mod localtime;
pub mod output;
pub mod periods;
pub mod reconcile;
pub mod reports;
pub mod reprice;
pub mod sqlq;

#[cfg(test)]
mod testlake;

pub use anomalies::{AnomalyParams, SpendFactor, anomalies_report};
pub use catalog::open_catalog;
pub use error::{Error, Result};
pub use output::{Format, cost_table_with_totals, write_batches};
pub use reports::{Granularity, ReportParams, Source, agent_share_report, cost_report};
pub use sqlq::run_sql;
