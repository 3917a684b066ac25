//! Test support: a lake built by hand in a temp dir — raw-event and rollup Parquet files named and
//! placed as the aggregator does, and commit-state files — from a few [`Ev`]s, with costs and
//! rollup sums computed here, independently of the aggregator crate.
//!
//! Not here: anything non-test; this module is compiled only for tests.

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokenmeter_schemas::layout::{
    EVENTS_DIR, FileId, PartitionState, ROLLUPS_DIR, date_dir, state_path,
};
use tokenmeter_schemas::tables::{COST_PRECISION, COST_SCALE, EVENTS_SCHEMA, ROLLUP_SCHEMA};

/// Default per-million prices in micro-units: uncached input 3, cache read 0.30, cache write
/// 3.75, output 15, reasoning 15.
pub const RATES: [i64; 5] = [3_000_000, 300_000, 3_750_000, 15_000_000, 15_000_000];

/// One usage event.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: String,
    pub time: DateTime<Utc>,
    pub tenant: String,
    pub provider: String,
    pub model: String,
    pub agent: Option<String>,
    /// input, output, cache_read_input, cache_creation_input, reasoning_output — as reported.
    pub usage: [i64; 5],
    /// Per-million prices in micro-units, bucket order; `None`: unpriced.
    pub rates: Option<[i64; 5]>,
    pub error: bool,
}

impl Ev {
    /// An event of `tenant` at `time` (RFC 3339): openai/gpt-x, not an agent, input 100 (20 cache
    /// read, 10 cache write), output 50 (5 reasoning), priced at [`RATES`] in USD.
    pub fn new(id: &str, time: &str, tenant: &str) -> Self {
        Self {
            id: id.into(),
            time: DateTime::parse_from_rfc3339(time)
                .unwrap()
                .with_timezone(&Utc),
            tenant: tenant.into(),
            provider: "openai".into(),
            model: "gpt-x".into(),
            agent: None,
            usage: [100, 50, 20, 10, 5],
            rates: Some(RATES),
            error: false,
        }
    }

    pub fn agent(mut self, id: &str) -> Self {
        self.agent = Some(id.into());
        self
    }

    pub fn model(mut self, provider: &str, model: &str) -> Self {
        self.provider = provider.into();
        self.model = model.into();
        self
    }

    /// Reported counts: input (including cache), output (including reasoning), cache read,
    /// cache write, reasoning.
    pub fn usage(
        mut self,
        input: i64,
        output: i64,
        cache_read: i64,
        cache_write: i64,
        reasoning: i64,
    ) -> Self {
        self.usage = [input, output, cache_read, cache_write, reasoning];
        self
    }

    pub fn unpriced(mut self) -> Self {
        self.rates = None;
        self
    }

    pub fn failed(mut self) -> Self {
        self.error = true;
        self
    }

    /// uncached_input, cache_read, cache_write, output, reasoning.
    pub fn buckets(&self) -> [i64; 5] {
        let [i, o, cr, cw, r] = self.usage;
        [i - cr - cw, cr, cw, o - r, r]
    }

    /// Cost per bucket in units of 10⁻¹².
    pub fn costs(&self) -> Option<[i128; 5]> {
        let b = self.buckets();
        self.rates
            .map(|r| std::array::from_fn(|i| i128::from(b[i]) * i128::from(r[i])))
    }

    fn currency(&self) -> Option<&str> {
        self.rates.map(|_| "USD")
    }

    fn date(&self) -> NaiveDate {
        self.time.date_naive()
    }
}

fn strings<'a>(v: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.into_iter().collect::<StringArray>())
}

fn ints(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(v.into_iter().collect::<Int64Array>())
}

fn money(v: impl IntoIterator<Item = Option<i128>>) -> ArrayRef {
    Arc::new(
        v.into_iter()
            .collect::<Decimal128Array>()
            .with_precision_and_scale(COST_PRECISION, COST_SCALE)
            .unwrap(),
    )
}

fn times(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(v).with_timezone("UTC"))
}

const REPORTED: [&str; 5] = [
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_output_tokens",
];
const BUCKETS: [&str; 5] = [
    "uncached_input",
    "cache_read",
    "cache_write",
    "output",
    "reasoning",
];

/// The common token and cost columns: reported counts, bucket tokens, bucket costs, cost.
fn usage_column(
    name: &str,
    reported: &[[i64; 5]],
    tokens: &[[i64; 5]],
    costs: &[Option<[i128; 5]>],
) -> Option<ArrayRef> {
    if let Some(i) = REPORTED.iter().position(|n| *n == name) {
        return Some(ints(reported.iter().map(|r| r[i])));
    }
    if let Some(i) = BUCKETS.iter().position(|b| name == format!("tokens_{b}")) {
        return Some(ints(tokens.iter().map(|t| t[i])));
    }
    if let Some(i) = BUCKETS.iter().position(|b| name == format!("cost_{b}")) {
        return Some(money(costs.iter().map(|c| c.map(|c| c[i]))));
    }
    (name == "cost").then(|| money(costs.iter().map(|c| c.map(|c| c.iter().sum()))))
}

fn batch(schema: &SchemaRef, n: usize, column: impl Fn(&str) -> Option<ArrayRef>) -> RecordBatch {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            column(f.name()).unwrap_or_else(|| {
                assert!(
                    f.is_nullable(),
                    "testlake does not fill column {}",
                    f.name()
                );
                new_null_array(f.data_type(), n)
            })
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

fn events_batch(topic: &str, partition: i32, evs: &[(i64, &Ev)]) -> RecordBatch {
    let reported: Vec<_> = evs.iter().map(|(_, e)| e.usage).collect();
    let tokens: Vec<_> = evs.iter().map(|(_, e)| e.buckets()).collect();
    let costs: Vec<_> = evs.iter().map(|(_, e)| e.costs()).collect();
    batch(&EVENTS_SCHEMA, evs.len(), |name| {
        let col = match name {
            "event_id" => strings(evs.iter().map(|(_, e)| Some(e.id.as_str()))),
            "source" => strings(evs.iter().map(|_| Some("gw"))),
            "event_time" => times(evs.iter().map(|(_, e)| e.time.timestamp_micros())),
            "tenant_id" => strings(evs.iter().map(|(_, e)| Some(e.tenant.as_str()))),
            "provider" => strings(evs.iter().map(|(_, e)| Some(e.provider.as_str()))),
            "model" => strings(evs.iter().map(|(_, e)| Some(e.model.as_str()))),
            "is_agent" => Arc::new(
                evs.iter()
                    .map(|(_, e)| Some(e.agent.is_some()))
                    .collect::<BooleanArray>(),
            ),
            "agent_id" => strings(evs.iter().map(|(_, e)| e.agent.as_deref())),
            "status" => strings(
                evs.iter()
                    .map(|(_, e)| Some(if e.error { "error" } else { "ok" })),
            ),
            "currency" => strings(evs.iter().map(|(_, e)| e.currency())),
            "kafka_topic" => strings(evs.iter().map(|_| Some(topic))),
            "kafka_partition" => Arc::new(Int32Array::from(vec![partition; evs.len()])),
            "kafka_offset" => ints(evs.iter().map(|(o, _)| *o)),
            _ => return usage_column(name, &reported, &tokens, &costs),
        };
        Some(col)
    })
}

type RollupKey = (i64, String, String, String, Option<String>, Option<String>);

#[derive(Default)]
struct Sums {
    requests: i64,
    errors: i64,
    reported: [i64; 5],
    tokens: [i64; 5],
    costs: [i128; 5],
}

fn rollup_batch(evs: &[(i64, &Ev)]) -> RecordBatch {
    let mut rows: BTreeMap<RollupKey, Sums> = BTreeMap::new();
    for (_, e) in evs {
        let hour = e.time.timestamp_micros().div_euclid(3_600_000_000) * 3_600_000_000;
        let key = (
            hour,
            e.tenant.clone(),
            e.provider.clone(),
            e.model.clone(),
            e.agent.clone(),
            e.currency().map(str::to_string),
        );
        let s = rows.entry(key).or_default();
        s.requests += 1;
        s.errors += i64::from(e.error);
        let (b, c) = (e.buckets(), e.costs().unwrap_or_default());
        for i in 0..5 {
            s.reported[i] += e.usage[i];
            s.tokens[i] += b[i];
            s.costs[i] += c[i];
        }
    }
    let keys: Vec<_> = rows.keys().collect();
    let sums: Vec<_> = rows.values().collect();
    let reported: Vec<_> = sums.iter().map(|s| s.reported).collect();
    let tokens: Vec<_> = sums.iter().map(|s| s.tokens).collect();
    let costs: Vec<_> = keys
        .iter()
        .zip(&sums)
        .map(|(k, s)| k.5.as_ref().map(|_| s.costs))
        .collect();
    batch(&ROLLUP_SCHEMA, rows.len(), |name| {
        let col = match name {
            "hour" => times(keys.iter().map(|k| k.0)),
            "tenant_id" => strings(keys.iter().map(|k| Some(k.1.as_str()))),
            "provider" => strings(keys.iter().map(|k| Some(k.2.as_str()))),
            "model" => strings(keys.iter().map(|k| Some(k.3.as_str()))),
            "is_agent" => Arc::new(
                keys.iter()
                    .map(|k| Some(k.4.is_some()))
                    .collect::<BooleanArray>(),
            ),
            "agent_id" => strings(keys.iter().map(|k| k.4.as_deref())),
            "currency" => strings(keys.iter().map(|k| k.5.as_deref())),
            "requests" => ints(sums.iter().map(|s| s.requests)),
            "errors" => ints(sums.iter().map(|s| s.errors)),
            _ => return usage_column(name, &reported, &tokens, &costs),
        };
        Some(col)
    })
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A lake in a temp dir.
pub struct Lake {
    dir: tempfile::TempDir,
}

impl Lake {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write the files of one aggregator batch (offsets `first..=last`, given to `evs` in order):
    /// per UTC date, a raw-event file and a rollup file. `suffix` is appended to the file names.
    fn write(&self, topic: &str, partition: i32, first: i64, last: i64, evs: &[Ev], suffix: &str) {
        assert!(evs.len() as i64 <= last - first + 1);
        let id = FileId {
            topic: topic.into(),
            partition,
            first,
            last,
        };
        let mut by_date: BTreeMap<NaiveDate, Vec<(i64, &Ev)>> = BTreeMap::new();
        for (i, e) in evs.iter().enumerate() {
            by_date
                .entry(e.date())
                .or_default()
                .push((first + i as i64, e));
        }
        let name = format!("{}{suffix}", id.file_name());
        for (date, evs) in by_date {
            let events = self.path().join(date_dir(EVENTS_DIR, date)).join(&name);
            write_parquet(&events, &events_batch(topic, partition, &evs));
            let rollups = self.path().join(date_dir(ROLLUPS_DIR, date)).join(&name);
            write_parquet(&rollups, &rollup_batch(&evs));
        }
    }

    /// Write a batch's files as the aggregator renames them into place.
    pub fn write_batch(&self, topic: &str, partition: i32, first: i64, last: i64, evs: &[Ev]) {
        self.write(topic, partition, first, last, evs, "");
    }

    /// Write a batch's files as they are while being written (`.tmp`).
    pub fn write_batch_tmp(&self, topic: &str, partition: i32, first: i64, last: i64, evs: &[Ev]) {
        self.write(
            topic,
            partition,
            first,
            last,
            evs,
            tokenmeter_schemas::layout::TMP_SUFFIX,
        );
    }

    /// Write a partition's commit state.
    pub fn write_state(&self, topic: &str, partition: i32, committed_through: i64) {
        let state = PartitionState {
            version: 1,
            topic: topic.into(),
            partition,
            committed_through,
            pending: None,
        };
        let path = self.path().join(state_path(topic, partition));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    }

    /// Write `evs` as `batches` aggregator batches of partition 0 of topic `usage` (events dealt
    /// round-robin, so rollup keys get partial rows in several files), all committed.
    pub fn write_committed(&self, evs: &[Ev], batches: usize) {
        let mut offset = 0;
        for b in 0..batches {
            let part: Vec<Ev> = evs.iter().skip(b).step_by(batches).cloned().collect();
            let last = offset + part.len().max(1) as i64 - 1;
            self.write_batch("usage", 0, offset, last, &part);
            offset = last + 1;
        }
        self.write_state("usage", 0, offset - 1);
    }
}
