//! Test oracle: expected totals computed from the generated JSON with serde_json values and
//! rust_decimal prices read straight from the TOML — none of tokenmeter's decoding or pricing
//! code — and readers of the lake that go around the query crate.

use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

pub const PRICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/prices.example.toml");

/// Per-tenant expected figures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    pub requests: i64,
    /// uncached_input, cache_read, cache_write, output, reasoning.
    pub tokens: [i64; 5],
    pub cost: Decimal,
    pub unpriced_requests: i64,
}

/// (provider, model) → [(effective_from, per-million prices in bucket order)], sorted.
type Entries = Vec<(chrono::DateTime<chrono::Utc>, [Decimal; 5])>;
pub struct Book(HashMap<(String, String), Entries>);

impl Book {
    pub fn load(path: &str) -> Book {
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut map: HashMap<_, Vec<_>> = HashMap::new();
        for p in v["price"].as_array().unwrap() {
            let d = |k: &str| {
                p.get(k)
                    .map(|x| Decimal::from_str(x.as_str().unwrap()).unwrap())
            };
            let input = d("input").unwrap();
            let output = d("output").unwrap();
            let prices = [
                input,
                d("cache_read").unwrap_or(input),
                d("cache_write").unwrap_or(input),
                output,
                d("reasoning").unwrap_or(output),
            ];
            let from = chrono::DateTime::parse_from_rfc3339(p["effective_from"].as_str().unwrap())
                .unwrap()
                .to_utc();
            map.entry((
                p["provider"].as_str().unwrap().to_string(),
                p["model"].as_str().unwrap().to_string(),
            ))
            .or_default()
            .push((from, prices));
        }
        for l in map.values_mut() {
            l.sort_by_key(|x| x.0);
        }
        Book(map)
    }

    pub fn price(
        &self,
        provider: &str,
        model: &str,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Option<[Decimal; 5]> {
        self.0
            .get(&(provider.to_string(), model.to_string()))?
            .iter()
            .rev()
            .find(|(f, _)| *f <= t)
            .map(|x| x.1)
    }
}

/// The five billable buckets of an event's JSON (uncached input, cache read, cache write, output,
/// reasoning), from the reported counts: input includes the cache, output the reasoning.
pub fn billable(v: &Value) -> [i64; 5] {
    let u = &v["data"]["usage"];
    let n = |k: &str| u.get(k).and_then(Value::as_i64).unwrap_or(0);
    let (i, cr, cw, o, r) = (
        n("input_tokens"),
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
        n("output_tokens"),
        n("reasoning_output_tokens"),
    );
    [i - cr - cw, cr, cw, o - r, r]
}

/// Expected per-tenant totals of valid events given as JSON payloads.
pub fn expected(payloads: &[Vec<u8>], book: &Book) -> BTreeMap<String, Expected> {
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    let million = Decimal::from(1_000_000);
    for p in payloads {
        let v: Value = serde_json::from_slice(p).unwrap();
        let tokens = billable(&v);
        let e = out
            .entry(v["subject"].as_str().unwrap().to_string())
            .or_default();
        e.requests += 1;
        for (sum, t) in e.tokens.iter_mut().zip(tokens) {
            *sum += t;
        }
        let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap())
            .unwrap()
            .to_utc();
        match book.price(
            v["data"]["provider"].as_str().unwrap(),
            v["data"]["model"].as_str().unwrap(),
            t,
        ) {
            Some(prices) => {
                for k in 0..5 {
                    e.cost += Decimal::from(tokens[k]) * prices[k] / million;
                }
            }
            None => e.unpriced_requests += 1,
        }
    }
    out
}

/// Every file (not directory) under `dir`, at any depth; none if `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

/// Every `.parquet` file under `dir`, read with the parquet crate directly (each must be valid).
pub fn read_parquet_dir(dir: &Path) -> Vec<datafusion::arrow::array::RecordBatch> {
    let files: Vec<_> = files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    read_parquet_files(&files)
}

/// Read Parquet files with the parquet crate.
pub fn read_parquet_files(
    files: &[std::path::PathBuf],
) -> Vec<datafusion::arrow::array::RecordBatch> {
    let mut out = Vec::new();
    for p in files {
        let f = std::fs::File::open(p).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap_or_else(|e| panic!("{} is not valid Parquet: {e}", p.display()))
            .build()
            .unwrap();
        out.extend(r.map(Result::unwrap));
    }
    out
}

/// Per-tenant totals of raw-event Parquet batches (tokens per bucket, requests, cost) and the
/// list of event ids.
pub fn totals_of_events(
    batches: &[datafusion::arrow::array::RecordBatch],
) -> (BTreeMap<String, Expected>, Vec<String>) {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    let mut ids = Vec::new();
    for b in batches {
        let tenant = b.column_by_name("tenant_id").unwrap().as_string::<i32>();
        let id = b.column_by_name("event_id").unwrap().as_string::<i32>();
        let cost = b
            .column_by_name("cost")
            .unwrap()
            .as_primitive::<Decimal128Type>();
        let toks: Vec<_> = [
            "tokens_uncached_input",
            "tokens_cache_read",
            "tokens_cache_write",
            "tokens_output",
            "tokens_reasoning",
        ]
        .iter()
        .map(|c| {
            b.column_by_name(c)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        })
        .collect();
        for row in 0..b.num_rows() {
            let e = out.entry(tenant.value(row).to_string()).or_default();
            e.requests += 1;
            for (sum, col) in e.tokens.iter_mut().zip(&toks) {
                *sum += col.value(row);
            }
            if cost.is_null(row) {
                e.unpriced_requests += 1;
            } else {
                e.cost += Decimal::from_i128_with_scale(cost.value(row), 12);
            }
            ids.push(id.value(row).to_string());
        }
    }
    for e in out.values_mut() {
        e.cost = e.cost.normalize();
    }
    (out, ids)
}

/// Normalize decimal costs for comparison.
pub fn normalized(mut m: BTreeMap<String, Expected>) -> BTreeMap<String, Expected> {
    for e in m.values_mut() {
        e.cost = e.cost.normalize();
    }
    m
}
