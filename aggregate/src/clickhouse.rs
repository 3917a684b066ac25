//! The ClickHouse sink's I/O primitives: the tables (DDL from `schemas/clickhouse/`), the
//! per-partition progress the sink keeps *in* ClickHouse, and atomic inserts of committed lake
//! rollup files.
//!
//! The exactly-once protocol (ARCHITECTURE.md, "ClickHouse sink"): every row carries the identity
//! of the lake batch it came from (`src_topic`, `src_partition`, `batch_first`, `batch_last`)
//! and of the INSERT that wrote it (`insert_id`, and `insert_rows`, the rows that INSERT sent);
//! batches of a partition are shipped in offset order, whole, in one INSERT into a table without
//! PARTITION BY. Readers see only the rows of *complete* INSERTs (the `{table}_complete` view:
//! as many rows under an `insert_id` as it declares), because ClickHouse 18.16 keeps the rows
//! received before a client's connection broke (ClickHouse/ClickHouse#9666). The sink's position
//! for a partition is therefore `max(batch_last)` of its complete rows, read back from ClickHouse
//! after every restart or failed insert — the same state the data lives in, so they cannot
//! disagree.
//!
//! Not here: when to ship and which partitions this process owns (`tokenmeter-ingest`'s sink
//! task), and reconciliation (`tokenmeter-query`).

use crate::{Error, Result};
use arrow::array::{
    Array, AsArray, BooleanArray, Decimal128Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokenmeter_schemas::layout::{self, FileId};

use tokenmeter_schemas::clickhouse::USAGE_HOURLY_DDL as DDL;

/// Rows per INSERT at most: under ClickHouse's `max_insert_block_size` (1,048,576), so that one
/// INSERT is one block, hence one part.
pub const MAX_INSERT_ROWS: usize = 500_000;

/// Where the rollups go.
#[derive(Debug, Clone)]
pub struct Target {
    /// HTTP URL of the server, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    /// The view's name; the table is `{table}_parts`.
    pub table: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// One row of `{table}_parts`: a lake rollup row plus the identity of its batch. Money is the
/// raw Decimal(38, 12) value (units of 1e-12), as in the lake.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct RollupRow {
    /// Start of the UTC hour, seconds since the epoch.
    pub hour: u32,
    pub tenant_id: String,
    pub provider: String,
    pub model: String,
    pub is_agent: u8,
    pub agent_id: Option<String>,
    pub requests: i64,
    pub errors: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub reasoning_output_tokens: i64,
    pub tokens_uncached_input: i64,
    pub tokens_cache_read: i64,
    pub tokens_cache_write: i64,
    pub tokens_output: i64,
    pub tokens_reasoning: i64,
    pub cost_uncached_input: Option<i128>,
    pub cost_cache_read: Option<i128>,
    pub cost_cache_write: Option<i128>,
    pub cost_output: Option<i128>,
    pub cost_reasoning: Option<i128>,
    pub cost: Option<i128>,
    pub currency: Option<String>,
    pub src_topic: String,
    pub src_partition: i32,
    pub batch_first: i64,
    pub batch_last: i64,
    /// The `query_id` of the INSERT that wrote the row (set by [`ClickHouse::insert`]).
    pub insert_id: String,
    /// How many rows that INSERT sent: fewer rows under its `insert_id` mean it was cut short.
    pub insert_rows: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Progress {
    src_partition: i32,
    last: i64,
}

/// A ClickHouse server holding tokenmeter's rollup tables.
#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    target: Target,
}

fn ch_err(context: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> Error {
    let context = context.into();
    move |source| Error::ClickHouse { context, source }
}

/// A database or table name: letters, digits and `_`, not starting with a digit — spliced into
/// SQL, so nothing else is accepted.
pub fn check_identifier(what: &str, name: &str) -> Result<()> {
    if tokenmeter_schemas::clickhouse::is_plain_identifier(name) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {name:?} is not a plain identifier: use letters, digits and _ (not first), at most 64 characters"
        )))
    }
}

impl ClickHouse {
    /// A client for `target` (no connection is made yet). Validation is off: ClickHouse 18.16
    /// has no RowBinaryWithNamesAndTypes; rows are plain RowBinary in [`RollupRow`] order.
    pub fn new(target: Target) -> Result<Self> {
        check_identifier("ClickHouse database", &target.database)?;
        check_identifier("ClickHouse table", &target.table)?;
        if !(target.url.starts_with("http://") || target.url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "ClickHouse URL {:?} must be the HTTP interface, e.g. http://127.0.0.1:8123",
                target.url
            )));
        }
        let mut client = clickhouse::Client::default()
            .with_url(&target.url)
            .with_validation(false);
        if let Some(u) = &target.user {
            client = client.with_user(u);
        }
        if let Some(p) = &target.password {
            client = client.with_password(p);
        }
        Ok(ClickHouse { client, target })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `database.table_parts`, the table rows are inserted into.
    pub fn parts_table(&self) -> String {
        format!("{}.{}_parts", self.target.database, self.target.table)
    }

    /// `database.table_complete`, the view of the rows of complete INSERTs: what every reader
    /// (the sink's position, reconcile, dashboards, the `usage_hourly` view) reads.
    pub fn complete_table(&self) -> String {
        complete_table(&self.target.database, &self.target.table)
    }

    /// The DDL statements for this target, in order.
    pub fn ddl(&self) -> Vec<String> {
        ddl_statements(&self.target.database, &self.target.table)
    }

    /// Create the database, the table and the views if they do not exist (idempotent).
    pub async fn init(&self) -> Result<()> {
        for stmt in self.ddl() {
            let head: String = stmt.lines().next().unwrap_or_default().to_string();
            self.client
                .query(&stmt)
                .execute()
                .await
                .map_err(ch_err(format!("running `{head}`")))?;
        }
        Ok(())
    }

    /// Whether the server answers, with its version.
    pub async fn version(&self) -> Result<String> {
        let v: Vec<String> = self
            .client
            .query("SELECT version()")
            .fetch_all()
            .await
            .map_err(ch_err(format!("connecting to {}", self.target.url)))?;
        Ok(v.into_iter().next().unwrap_or_default())
    }

    /// The sink's position per partition of `topic`: the last offset of the last batch loaded
    /// by a complete INSERT.
    pub async fn progress(&self, topic: &str) -> Result<BTreeMap<i32, i64>> {
        let sql = format!(
            "SELECT src_partition, max(batch_last) AS last FROM {} WHERE src_topic = ? GROUP BY src_partition",
            self.complete_table()
        );
        let rows: Vec<Progress> = self
            .client
            .query(&sql)
            .bind(topic)
            .fetch_all()
            .await
            .map_err(ch_err(format!(
                "reading the sink's progress from {}",
                self.parts_table()
            )))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.src_partition, r.last))
            .collect())
    }

    /// Whether a query with this id is still running on the server (an INSERT whose answer was
    /// lost may still be writing; its outcome is only known once it is not).
    pub async fn running(&self, query_id: &str) -> Result<bool> {
        let n: Vec<u64> = self
            .client
            .query("SELECT count() FROM system.processes WHERE query_id = ?")
            .bind(query_id)
            .fetch_all()
            .await
            .map_err(ch_err("reading system.processes"))?;
        Ok(n.first().copied().unwrap_or(0) > 0)
    }

    /// Insert `rows` in one INSERT under `query_id` (at most [`MAX_INSERT_ROWS`]), each row
    /// stamped with `query_id` and the row count, so a cut-short INSERT stays invisible.
    pub async fn insert(
        &self,
        rows: &mut [RollupRow],
        query_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        assert!(
            rows.len() <= MAX_INSERT_ROWS,
            "insert of {} rows",
            rows.len()
        );
        let n = rows.len() as u64;
        for r in rows.iter_mut() {
            r.insert_id = query_id.to_string();
            r.insert_rows = n;
        }
        let table = self.parts_table();
        let mut ins = self
            .client
            // `database.table`, both checked plain identifiers.
            .insert_unescaped::<RollupRow>(&table)
            .await
            .map_err(ch_err(format!("starting an INSERT into {table}")))?
            .with_timeouts(Some(timeout), Some(timeout))
            .with_setting("query_id", query_id);
        for r in rows.iter() {
            ins.write(r)
                .await
                .map_err(ch_err(format!("writing rows into {table}")))?;
        }
        ins.end()
            .await
            .map_err(ch_err(format!("finishing the INSERT into {table}")))
    }

    /// The underlying client, for queries of other modules.
    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }
}

/// `database.table_complete` (validated identifiers): the rows of complete INSERTs.
pub fn complete_table(database: &str, table: &str) -> String {
    format!("{database}.{table}_complete")
}

/// The DDL statements for a database and table name (validated identifiers).
pub fn ddl_statements(database: &str, table: &str) -> Vec<String> {
    let body: String = DDL
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split("\n;")
        .map(|s| {
            s.trim()
                .replace("{{database}}", database)
                .replace("{{table}}", table)
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// A committed rollup file of the lake: its batch and path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RollupFile {
    pub id: FileId,
    /// Path relative to the lake root.
    pub rel: String,
}

/// The rollup files of `topic` in the lake under `root`, by partition and batch, whose batch
/// lies after `after[partition]` (or anywhere when absent) and is committed (`last` ≤
/// `committed[partition]`).
pub fn committed_rollup_files(
    root: &Path,
    topic: &str,
    after: &BTreeMap<i32, i64>,
    committed: &BTreeMap<i32, i64>,
) -> Result<Vec<RollupFile>> {
    let dir = root.join(layout::ROLLUPS_DIR);
    let mut out = Vec::new();
    let dates = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("list", &dir)(e)),
    };
    for d in dates {
        let d = d.map_err(Error::io("list", &dir))?;
        let date_dir = d.path();
        let Some(date) = d.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !date.starts_with("date=") || !date_dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&date_dir).map_err(Error::io("list", &date_dir))? {
            let f = f.map_err(Error::io("list", &date_dir))?;
            let name = f.file_name().to_string_lossy().to_string();
            let Some(id) = FileId::parse(&name) else {
                continue;
            };
            if id.topic != topic
                || after.get(&id.partition).is_some_and(|a| id.first <= *a)
                || committed.get(&id.partition).is_none_or(|c| id.last > *c)
            {
                continue;
            }
            out.push(RollupFile {
                id,
                rel: format!("{}/{date}/{name}", layout::ROLLUPS_DIR),
            });
        }
    }
    out.sort_by(|a, b| (&a.id, &a.rel).cmp(&(&b.id, &b.rel)));
    Ok(out)
}

/// The rows of one committed rollup file, tagged with its batch identity.
pub fn read_rollup_file(root: &Path, file: &RollupFile) -> Result<Vec<RollupRow>> {
    let path = root.join(&file.rel);
    let f = std::fs::File::open(&path).map_err(Error::io("open", &path))?;
    let enc = |e: &dyn std::fmt::Display| Error::Encode {
        what: "rollup file",
        message: format!("{}: {e}", path.display()),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| enc(&e))?
        .build()
        .map_err(|e| enc(&e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| enc(&e))?;
        let col = |name: &str| {
            b.column_by_name(name)
                .cloned()
                .ok_or_else(|| enc(&format!("no column {name}")))
        };
        let ts = col("hour")?;
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| enc(&"hour is not Timestamp(µs)"))?
            .clone();
        let s = |name: &str| -> Result<StringArray> { Ok(col(name)?.as_string::<i32>().clone()) };
        let i = |name: &str| -> Result<Int64Array> {
            col(name)?
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| enc(&format!("{name} is not Int64")))
        };
        let d = |name: &str| -> Result<Decimal128Array> {
            col(name)?
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .cloned()
                .ok_or_else(|| enc(&format!("{name} is not Decimal128")))
        };
        let agent: BooleanArray = col("is_agent")?.as_boolean().clone();
        let (tenant, provider, model, agent_id, currency) = (
            s("tenant_id")?,
            s("provider")?,
            s("model")?,
            s("agent_id")?,
            s("currency")?,
        );
        let ints: Vec<Int64Array> = [
            "requests",
            "errors",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "reasoning_output_tokens",
            "tokens_uncached_input",
            "tokens_cache_read",
            "tokens_cache_write",
            "tokens_output",
            "tokens_reasoning",
        ]
        .iter()
        .map(|n| i(n))
        .collect::<Result<_>>()?;
        let decs: Vec<Decimal128Array> = [
            "cost_uncached_input",
            "cost_cache_read",
            "cost_cache_write",
            "cost_output",
            "cost_reasoning",
            "cost",
        ]
        .iter()
        .map(|n| d(n))
        .collect::<Result<_>>()?;
        let opt_s = |a: &StringArray, r: usize| (!a.is_null(r)).then(|| a.value(r).to_string());
        let opt_d = |a: &Decimal128Array, r: usize| (!a.is_null(r)).then(|| a.value(r));
        for r in 0..b.num_rows() {
            let hour = u32::try_from(ts.value(r).div_euclid(1_000_000))
                .map_err(|_| enc(&format!("hour {} out of DateTime range", ts.value(r))))?;
            rows.push(RollupRow {
                hour,
                tenant_id: tenant.value(r).to_string(),
                provider: provider.value(r).to_string(),
                model: model.value(r).to_string(),
                is_agent: u8::from(agent.value(r)),
                agent_id: opt_s(&agent_id, r),
                requests: ints[0].value(r),
                errors: ints[1].value(r),
                input_tokens: ints[2].value(r),
                output_tokens: ints[3].value(r),
                cache_read_input_tokens: ints[4].value(r),
                cache_creation_input_tokens: ints[5].value(r),
                reasoning_output_tokens: ints[6].value(r),
                tokens_uncached_input: ints[7].value(r),
                tokens_cache_read: ints[8].value(r),
                tokens_cache_write: ints[9].value(r),
                tokens_output: ints[10].value(r),
                tokens_reasoning: ints[11].value(r),
                cost_uncached_input: opt_d(&decs[0], r),
                cost_cache_read: opt_d(&decs[1], r),
                cost_cache_write: opt_d(&decs[2], r),
                cost_output: opt_d(&decs[3], r),
                cost_reasoning: opt_d(&decs[4], r),
                cost: opt_d(&decs[5], r),
                currency: opt_s(&currency, r),
                src_topic: file.id.topic.clone(),
                src_partition: file.id.partition,
                batch_first: file.id.first,
                batch_last: file.id.last,
                insert_id: String::new(),
                insert_rows: 0,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_splits_into_four_statements_with_names_substituted() {
        let s = ddl_statements("db1", "hourly");
        assert_eq!(s.len(), 4, "{s:#?}");
        assert!(s[0].starts_with("CREATE DATABASE IF NOT EXISTS db1"));
        assert!(s[1].starts_with("CREATE TABLE IF NOT EXISTS db1.hourly_parts ("));
        assert!(s[2].starts_with("CREATE VIEW IF NOT EXISTS db1.hourly_complete AS"));
        assert!(s[3].starts_with("CREATE VIEW IF NOT EXISTS db1.hourly AS"));
        assert!(s[3].contains("FROM db1.hourly_complete"));
        assert!(s.iter().all(|x| !x.contains("{{")));
    }

    #[test]
    fn identifiers_are_plain() {
        assert!(check_identifier("t", "usage_hourly").is_ok());
        for bad in ["", "1x", "a.b", "a;drop", "a b", "ä"] {
            let e = check_identifier("ClickHouse table", bad).unwrap_err();
            assert!(e.to_string().contains("plain identifier"), "{e}");
        }
    }
}
