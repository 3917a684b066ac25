//! The one integration-test binary of tokenmeter: a module per area.
//!
//! - `contract`: the Rust validator and the JSON Schema agree on the example corpus.
//! - `lake`: the commit protocol survives a crash at every step, with nothing lost or doubled.
//! - `pipeline`: generator → Kafka (librdkafka's mock cluster) → aggregator → lake, checked
//!   against totals computed independently from the generated JSON; restart after a crash.
//! - `reports`: reports from rollups equal reports from raw events; golden report snapshots
//!   (cost, agent share, anomalies).
//! - `clickhouse`: the ClickHouse sink, reconcile and dashboards against the real server.
//! - `budgets`: budget alerts exactly once on the alerts topic (and at least once to a webhook)
//!   through SIGKILLs at every step of the alert protocol, against the real broker.
//! - `finance`: invoices by contract, repricing with `--as-of`, closing a month and its
//!   adjustments, through the binary against an independent oracle.
//! - `litellm`: `prices import-litellm` on LiteLLM's real catalog against a Python oracle.
//!
//! `support` holds the independent oracle (cost computed with rust_decimal from the TOML).

mod budgets;
mod cli;
mod clickhouse;
mod contract;
mod faults;
mod finance;
mod lake;
mod litellm;
mod pipeline;
mod reliability;
mod reports;
mod services;
mod support;
