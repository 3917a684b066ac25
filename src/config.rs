//! The aggregator's configuration file: TOML, every key optional, unknown keys rejected. Layers,
//! highest first: command-line flag, `TOKENMETER_*` environment variable, this file, built-in
//! default. The doc comments below are the reference for each key.
//!
//! Not here: the library's own settings type (`tokenmeter_ingest::AggregatorConfig`), which this
//! fills in.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `tokenmeter aggregate --config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateFile {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: Option<String>,
    /// Root directory of the Parquet lake.
    pub data_dir: Option<PathBuf>,
    /// Price book (TOML).
    pub prices: Option<PathBuf>,
    /// Topic of usage events (default `usage.events`).
    pub topic: Option<String>,
    /// Dead-letter topic (default `usage.events.dlq`).
    pub dlq_topic: Option<String>,
    /// Consumer group (default `tokenmeter`).
    pub group: Option<String>,
    /// Static group membership id (Kafka `group.instance.id`), unique per process.
    pub instance_id: Option<String>,
    /// Flush a partition's batch at this many messages (default 250000).
    pub flush_max_messages: Option<usize>,
    /// Messages held in all partitions' batches together, open and committing; the largest open
    /// batch is flushed once the open ones hold half of it (default 500000).
    pub max_buffered_messages: Option<usize>,
    /// Flush a partition's batch when its first message is this many seconds old (default 10).
    pub flush_interval_secs: Option<f64>,
    /// How far, in seconds, an event's time may be ahead of this machine's clock (default 300).
    pub max_future_skew_secs: Option<i64>,
    /// Dedupe keys kept in memory across partitions (default 4000000).
    pub dedupe_max_keys: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: off).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Extra librdkafka settings, e.g. `kafka = { "security.protocol" = "ssl" }`; `-X` flags
    /// override them key by key.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    /// ClickHouse sink, e.g. `[clickhouse] url = "http://127.0.0.1:8123"`.
    #[serde(default)]
    pub clickhouse: ClickHouseFile,
    /// Budget alerts, e.g. `[alerts] topic = "tokenmeter.alerts"`.
    #[serde(default)]
    pub alerts: AlertsFile,
}

/// `[alerts]` of the aggregator's configuration file: budget alerts of the price book's
/// `[[tenant.budget]]` entries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Topic the alerts are produced to (must exist); alerts are off without it.
    pub topic: Option<String>,
    /// `http://` URL each alert is also POSTed to, with `Idempotency-Key: <alert id>`.
    pub webhook: Option<String>,
}

/// `[clickhouse]` of the aggregator's configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseFile {
    /// HTTP URL of the server; the sink is off without it.
    pub url: Option<String>,
    /// Database (default `tokenmeter`).
    pub database: Option<String>,
    /// Rollup view name; the table is `{table}_parts` (default `usage_hourly`).
    pub table: Option<String>,
    /// User (default: the server's default user).
    pub user: Option<String>,
    /// Password (prefer `TOKENMETER_CLICKHOUSE_PASSWORD`).
    pub password: Option<String>,
}

impl AggregateFile {
    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "configuration file {} (keys: brokers, data_dir, prices, topic, dlq_topic, group, instance_id, flush_max_messages, max_buffered_messages, flush_interval_secs, max_future_skew_secs, dedupe_max_keys, metrics_addr, kafka, [clickhouse] url/database/table/user/password, [alerts] topic/webhook)",
                path.display()
            )
        })
    }
}
