//! `tokenmeter reconcile`: the lake's raw events, the lake's hourly rollups and ClickHouse's
//! rollups, compared per tenant, local day and currency on requests, the five billable token
//! buckets and cost. Any difference is a bug somewhere (or tampering), and finance must hear of it.
//!
//! The three are compared at one consistent cut, so the comparison is exact at every moment,
//! even while the aggregator runs and ClickHouse lags: for each Kafka partition the cut is the
//! last batch both the lake and ClickHouse hold (the lake's `committed_through`, ClickHouse's
//! `max(batch_last)`). The lake side is read through a catalog whose committed offsets *are*
//! the cut; ClickHouse rows after it are left out. What ClickHouse has not loaded yet is
//! reported as lag (a failure unless allowed); a batch in ClickHouse that the lake has not
//! committed is a failure.
//!
//! Not here: the ClickHouse sink (`tokenmeter-aggregate`, `tokenmeter-ingest`).

use crate::catalog::open_catalog_at;
use crate::lake_store::CommittedOffsets;
use crate::localtime::{day_start, days_inclusive, first_off_hour_day};
use crate::{Error, Result};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// The measures compared, in order.
pub const MEASURES: [&str; 7] = [
    "requests",
    "tokens_uncached_input",
    "tokens_cache_read",
    "tokens_cache_write",
    "tokens_output",
    "tokens_reasoning",
    "cost",
];

/// One value per measure; cost in units of 1e-12 (`None` for unpriced usage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub ints: [i64; 6],
    pub cost: Option<i128>,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        for (a, b) in self.ints.iter_mut().zip(o.ints) {
            *a += b;
        }
        self.cost = match (self.cost, o.cost) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
    }

    fn value(&self, i: usize) -> String {
        if i < 6 {
            self.ints[i].to_string()
        } else {
            self.cost.map(money).unwrap_or_else(|| "NULL".into())
        }
    }
}

fn money(v: i128) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!(
        "{sign}{}.{:012}",
        a / 1_000_000_000_000,
        a % 1_000_000_000_000
    )
}

/// (tenant, local day, currency).
pub type Key = (String, NaiveDate, Option<String>);

/// One difference: key, measure index (into [`MEASURES`]), raw, rollups, ClickHouse.
pub type Difference = (Key, usize, Sums, Sums, Sums);

/// What to compare.
#[derive(Debug, Clone)]
pub struct ReconcileParams {
    /// First local date, inclusive.
    pub from: NaiveDate,
    /// Last local date, exclusive.
    pub to: NaiveDate,
    pub tz: Tz,
}

/// Where the ClickHouse rollups are.
#[derive(Clone)]
pub struct ClickHouseSource {
    pub client: clickhouse::Client,
    /// `database.table_complete`: the rows of complete INSERTs.
    pub complete_table: String,
}

/// One partition's positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCut {
    pub topic: String,
    pub partition: i32,
    /// The lake's `committed_through`.
    pub lake: i64,
    /// ClickHouse's last loaded batch end (-1 if none).
    pub clickhouse: i64,
    /// Rollup rows the lake holds after the cut, which ClickHouse has not loaded yet.
    pub rows_behind: u64,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct Reconciliation {
    pub raw: BTreeMap<Key, Sums>,
    pub rollups: BTreeMap<Key, Sums>,
    pub clickhouse: BTreeMap<Key, Sums>,
    pub cuts: Vec<PartitionCut>,
}

impl Reconciliation {
    /// Keys where the three sources disagree, each with the measures that differ:
    /// (key, measure index, raw, rollups, clickhouse).
    pub fn differences(&self) -> Vec<Difference> {
        let keys: BTreeSet<&Key> = self
            .raw
            .keys()
            .chain(self.rollups.keys())
            .chain(self.clickhouse.keys())
            .collect();
        let mut out = Vec::new();
        for k in keys {
            let get = |m: &BTreeMap<Key, Sums>| m.get(k).copied().unwrap_or_default();
            let (r, u, c) = (get(&self.raw), get(&self.rollups), get(&self.clickhouse));
            for i in 0..MEASURES.len() {
                if r.value(i) != u.value(i) || r.value(i) != c.value(i) {
                    out.push((k.clone(), i, r, u, c));
                }
            }
        }
        out
    }

    /// Partitions where ClickHouse holds batches the lake has not committed.
    pub fn ahead(&self) -> Vec<&PartitionCut> {
        self.cuts.iter().filter(|c| c.clickhouse > c.lake).collect()
    }

    /// Rollup rows committed to the lake and not yet in ClickHouse.
    pub fn rows_behind(&self) -> u64 {
        self.cuts.iter().map(|c| c.rows_behind).sum()
    }

    /// The differences as a table: tenant_id, day, currency, measure, raw, rollups, clickhouse.
    pub fn differences_batch(&self) -> Result<RecordBatch> {
        let d = self.differences();
        let col = |f: &dyn Fn(&Difference) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(d.iter().map(f)))
        };
        let schema = Arc::new(Schema::new(
            [
                "tenant_id",
                "day",
                "currency",
                "measure",
                "raw",
                "rollups",
                "clickhouse",
            ]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
        ));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                col(&|x| x.0.0.clone()),
                col(&|x| x.0.1.to_string()),
                col(&|x| x.0.2.clone().unwrap_or_else(|| "NULL".into())),
                col(&|x| MEASURES[x.1].to_string()),
                col(&|x| x.2.value(x.1)),
                col(&|x| x.3.value(x.1)),
                col(&|x| x.4.value(x.1)),
            ],
        )?)
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ChProgress {
    src_topic: String,
    src_partition: i32,
    last: i64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ChSums {
    tenant_id: String,
    hour: u32,
    currency: Option<String>,
    requests: i64,
    t0: i64,
    t1: i64,
    t2: i64,
    t3: i64,
    t4: i64,
    cost: Option<i128>,
}

/// Compare the three sources over `params`.
pub async fn reconcile(
    data_dir: &Path,
    ch: &ClickHouseSource,
    params: &ReconcileParams,
) -> Result<Reconciliation> {
    if params.from >= params.to {
        return Err(Error::EmptyRange {
            from: params.from,
            to: params.to,
        });
    }
    // Hours map to local days only when every local midnight is on a UTC hour.
    if let Some((date, instant)) =
        first_off_hour_day(params.tz, days_inclusive(params.from, params.to))
    {
        return Err(Error::ReconcileNeedsWholeHours {
            tz: params.tz.name().to_string(),
            date,
            instant: instant.to_rfc3339(),
        });
    }
    let (start, end) = (
        day_start(params.tz, params.from),
        day_start(params.tz, params.to),
    );
    // 1. The cut.
    let lake = CommittedOffsets::read(data_dir)?;
    let progress: Vec<ChProgress> = ch
        .client
        .query(&format!(
            "SELECT src_topic, src_partition, max(batch_last) AS last FROM {} GROUP BY src_topic, src_partition",
            ch.complete_table
        ))
        .fetch_all()
        .await
        .map_err(Error::clickhouse("reading the sink's progress"))?;
    let ch_progress: BTreeMap<(String, i32), i64> = progress
        .into_iter()
        .map(|p| ((p.src_topic, p.src_partition), p.last))
        .collect();
    let mut parts: BTreeSet<(String, i32)> = lake.iter().map(|(k, _)| k.clone()).collect();
    parts.extend(ch_progress.keys().cloned());
    let mut cuts = Vec::new();
    let mut cut_offsets = Vec::new();
    for (topic, p) in parts {
        let l = lake.get(&topic, p).unwrap_or(-1);
        let c = ch_progress.get(&(topic.clone(), p)).copied().unwrap_or(-1);
        cut_offsets.push(((topic.clone(), p), l.min(c)));
        cuts.push(PartitionCut {
            topic,
            partition: p,
            lake: l,
            clickhouse: c,
            rows_behind: 0,
        });
    }
    let cut = CommittedOffsets::from_iter(cut_offsets.clone());
    // 2. The lake at the cut.
    let ctx = open_catalog_at(data_dir, cut.clone()).await?;
    let raw = lake_sums(
        &ctx,
        "SELECT tenant_id, date_trunc('hour', event_time) AS hour, currency, COUNT(*) AS requests, SUM(tokens_uncached_input) AS t0, SUM(tokens_cache_read) AS t1, SUM(tokens_cache_write) AS t2, SUM(tokens_output) AS t3, SUM(tokens_reasoning) AS t4, SUM(cost) AS cost FROM usage_events WHERE event_time >= $1 AND event_time < $2 GROUP BY 1, 2, 3",
        start,
        end,
        params.tz,
    )
    .await?;
    let rollups = lake_sums(
        &ctx,
        "SELECT tenant_id, hour, currency, SUM(requests) AS requests, SUM(tokens_uncached_input) AS t0, SUM(tokens_cache_read) AS t1, SUM(tokens_cache_write) AS t2, SUM(tokens_output) AS t3, SUM(tokens_reasoning) AS t4, SUM(cost) AS cost FROM usage_hourly_parts WHERE hour >= $1 AND hour < $2 GROUP BY 1, 2, 3",
        start,
        end,
        params.tz,
    )
    .await?;
    // What the lake holds beyond the cut: ClickHouse's lag.
    rows_behind(data_dir, &mut cuts)?;
    // 3. ClickHouse at the cut.
    let cond = vec!["(src_topic = ? AND src_partition = ? AND batch_last <= ?)"; cut_offsets.len()];
    let cond = if cond.is_empty() {
        "0".to_string()
    } else {
        cond.join(" OR ")
    };
    let sql = format!(
        "SELECT tenant_id, toUInt32(hour) AS hour, currency, toInt64(sum(requests)) AS requests, toInt64(sum(tokens_uncached_input)) AS t0, toInt64(sum(tokens_cache_read)) AS t1, toInt64(sum(tokens_cache_write)) AS t2, toInt64(sum(tokens_output)) AS t3, toInt64(sum(tokens_reasoning)) AS t4, sum(cost) AS cost FROM {} WHERE hour >= toDateTime(?) AND hour < toDateTime(?) AND ({cond}) GROUP BY tenant_id, hour, currency",
        ch.complete_table
    );
    let mut q = ch
        .client
        .query(&sql)
        .bind(start.timestamp() as u32)
        .bind(end.timestamp() as u32);
    for ((t, p), o) in &cut_offsets {
        q = q.bind(t.as_str()).bind(*p).bind(*o);
    }
    let rows: Vec<ChSums> = q
        .fetch_all()
        .await
        .map_err(Error::clickhouse("summing the ClickHouse rollups"))?;
    let mut clickhouse = BTreeMap::new();
    for r in rows {
        let hour = Utc
            .timestamp_opt(i64::from(r.hour), 0)
            .single()
            .expect("u32 seconds are a valid time");
        let key = (r.tenant_id, local_day(params.tz, hour), r.currency);
        let s = Sums {
            ints: [r.requests, r.t0, r.t1, r.t2, r.t3, r.t4],
            cost: r.cost,
        };
        clickhouse.entry(key).or_insert_with(Sums::default).add(&s);
    }
    Ok(Reconciliation {
        raw,
        rollups,
        clickhouse,
        cuts,
    })
}

fn local_day(tz: Tz, t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

async fn lake_sums(
    ctx: &SessionContext,
    sql: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    tz: Tz,
) -> Result<BTreeMap<Key, Sums>> {
    use datafusion::scalar::ScalarValue;
    let ts = |t: DateTime<Utc>| {
        ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
    };
    let df = ctx
        .sql(sql)
        .await?
        .with_param_values(vec![ts(start), ts(end)])?;
    let mut out: BTreeMap<Key, Sums> = BTreeMap::new();
    for b in df.collect().await? {
        let tenant = b.column(0).as_string::<i32>();
        let hour = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let currency = b.column(2).as_string::<i32>();
        let ints: Vec<&Int64Array> = (3..9).map(|i| b.column(i).as_primitive()).collect();
        let cost = b
            .column(9)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .expect("cost is Decimal128");
        for r in 0..b.num_rows() {
            let t = DateTime::from_timestamp_micros(hour.value(r)).expect("valid hour");
            let key = (
                tenant.value(r).to_string(),
                local_day(tz, t),
                (!currency.is_null(r)).then(|| currency.value(r).to_string()),
            );
            let mut s = Sums::default();
            for (i, a) in ints.iter().enumerate() {
                s.ints[i] = a.value(r);
            }
            s.cost = (!cost.is_null(r)).then(|| cost.value(r));
            out.entry(key).or_default().add(&s);
        }
    }
    Ok(out)
}

/// Rollup rows in the lake's committed files of batches after ClickHouse's position, per
/// partition (from the Parquet footers; the batch identity of a rollup file is its name).
fn rows_behind(data_dir: &Path, cuts: &mut [PartitionCut]) -> Result<()> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    use tokenmeter_schemas::layout::{FileId, ROLLUPS_DIR};
    let dir = data_dir.join(ROLLUPS_DIR);
    let io = |path: &Path, e: &dyn std::fmt::Display| Error::LakeRoot {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let dates = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&dir, &e)),
    };
    for d in dates {
        let d = d.map_err(|e| io(&dir, &e))?.path();
        if !d.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&d).map_err(|e| io(&d, &e))? {
            let path = f.map_err(|e| io(&d, &e))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(FileId::parse)
            else {
                continue;
            };
            let Some(c) = cuts
                .iter_mut()
                .find(|c| c.topic == id.topic && c.partition == id.partition)
            else {
                continue;
            };
            if id.first > c.clickhouse && id.last <= c.lake {
                let file = std::fs::File::open(&path).map_err(|e| io(&path, &e))?;
                let r = SerializedFileReader::new(file)?;
                c.rows_behind += r.metadata().file_metadata().num_rows() as u64;
            }
        }
    }
    Ok(())
}
