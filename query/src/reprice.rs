//! Repricing: recompute the cost of the UTC dates `[from, to)` from the raw events (the source
//! of truth) with a price book, and publish the result as a restatement — new raw-event and
//! rollup files named `*.r{generation:06}.parquet` next to the originals, made visible at once
//! by a manifest (`_restatements/{generation:06}.json`) that is also the audit record: who,
//! when, which book (path and hash), the cut, old and new totals per tenant and currency.
//!
//! Compaction ([`compact`]) is a restatement that keeps every row and cost: each date's files
//! (one per partition and batch) become one raw-event file and one rollup file, ordered by tenant
//! and time, so readers open a few large files instead of many small ones. Same protocol, same
//! guarantees; its manifest's old and new totals are equal.
//!
//! - **Atomic:** files are written (temp, fsync, rename) before the manifest; readers show a
//!   generation's files only once its manifest exists. An intent record written first lets the
//!   next run delete the files of a run that crashed, whose generation number is never reused.
//! - **Idempotent:** repricing with the book that priced the data changes no cost, and then
//!   nothing is written.
//! - **Consistent with the aggregator running:** the restatement covers the batches committed
//!   at its cut; batches committed later keep their own pricing and stay visible.
//! - **Closed months are refused:** their invoices are frozen.
//!
//! Not here: reading with restatements applied (see [`crate::lake_store::Restated`]).

use crate::catalog::{View, open_view};
use crate::lake_store::{
    CommittedOffsets, Restated as RestatedView, read_records, read_restatements, visible_files_at,
};
use crate::periods::{cut_entries, read_closes, touches_closed, write_atomic};
use crate::sqlq::read_only_options;
use crate::{Error, Result};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Decimal128Builder, Int32Array, Int64Array,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{
    Decimal128Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use datafusion::common::ScalarValue;
use std::collections::BTreeMap;
use std::path::Path;
use tokenmeter_aggregate::PriceBook;
use tokenmeter_aggregate::prices::{Money, format_money};
use tokenmeter_aggregate::record::rollup_batch;
use tokenmeter_aggregate::rollup::{RollupKey, RollupValue, by_tenant, hour_of};
use tokenmeter_schemas::layout::{
    EVENTS_DIR, FileId, RESTATEMENTS_DIR, ROLLUPS_DIR, RestatedTotal, Restatement, RestatementKind,
    compacted_name, date_dir,
};
use tokenmeter_schemas::tables::{COST_PRECISION, COST_SCALE, EVENTS_SCHEMA};

/// What a reprice did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repriced {
    /// The book prices every event of the range as the lake already does: nothing written.
    NoChange { events: i64 },
    /// A restatement was published.
    Restated(Restatement),
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compacted {
    /// Every date of the range already has at most one file per table: nothing written.
    NoChange { events: i64 },
    /// A compaction was published.
    Compacted {
        manifest: Restatement,
        /// Per compacted date: visible files before (events + rollups), their bytes, and the
        /// bytes of the two files that replace them.
        dates: Vec<CompactedDate>,
    },
}

/// One date of a compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactedDate {
    pub date: NaiveDate,
    pub events: i64,
    pub files_before: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// How a restatement rewrites its dates.
#[derive(Clone, Copy)]
enum Mode<'a> {
    Reprice {
        book: &'a PriceBook,
        prices_path: &'a str,
    },
    Compact,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Intent {
    generation: u32,
    from: NaiveDate,
    to: NaiveDate,
}

fn state_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::LakeState {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn dates(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    from.iter_days().take_while(move |d| *d < to)
}

/// The file name of generation `g`'s intent.
fn intent_name(g: u32) -> String {
    format!("{g:06}.intent.json")
}

/// Delete the files of restatements that crashed before their manifest; return the highest
/// generation ever used.
fn clean_dead_intents(root: &Path) -> Result<u32> {
    let dir = root.join(RESTATEMENTS_DIR);
    let mut max = read_restatements(root)?
        .iter()
        .map(|r| r.generation)
        .max()
        .unwrap_or(0);
    let intents: Vec<Intent> =
        read_records(&dir, "restatement intent", |stem| stem.ends_with(".intent"))?;
    for intent in intents {
        max = max.max(intent.generation);
        let suffix = format!(".r{:06}.parquet", intent.generation);
        for d in dates(intent.from, intent.to) {
            for table in [EVENTS_DIR, ROLLUPS_DIR] {
                let ddir = root.join(date_dir(table, d));
                let Ok(files) = std::fs::read_dir(&ddir) else {
                    continue;
                };
                for f in files {
                    let f = f.map_err(state_err(&ddir))?.path();
                    let n = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if n.ends_with(&suffix) || n.ends_with(&format!("{suffix}.tmp")) {
                        std::fs::remove_file(&f).map_err(state_err(&f))?;
                    }
                }
            }
        }
        tracing::info!(
            generation = intent.generation,
            "removed the files of an unfinished restatement"
        );
        let path = dir.join(intent_name(intent.generation));
        std::fs::remove_file(&path).map_err(state_err(&path))?;
    }
    Ok(max)
}

/// One file pair of a restatement: a (topic, partition) run of a date's events, repriced, or a
/// whole date, compacted.
struct Restated {
    name: String,
    events: RecordBatch,
    rollups: RecordBatch,
}

#[derive(Default)]
struct Totals {
    events: i64,
    old: Option<Money>,
    new: Option<Money>,
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    b.column(EVENTS_SCHEMA.index_of(name).expect("events column"))
}

/// The columns of a batch of raw events that the rollup fold reads.
struct EventColumns<'a> {
    tenant: &'a StringArray,
    provider: &'a StringArray,
    model: &'a StringArray,
    status: &'a StringArray,
    agent: &'a StringArray,
    currency: &'a StringArray,
    time: &'a TimestampMicrosecondArray,
    tokens: Vec<&'a Int64Array>,
    reported: Vec<&'a Int64Array>,
    cost: &'a Decimal128Array,
}

impl<'a> EventColumns<'a> {
    fn new(b: &'a RecordBatch) -> Self {
        let s = |name: &str| col(b, name).as_string::<i32>();
        let i64s = |name: &str| col(b, name).as_primitive::<Int64Type>();
        EventColumns {
            tenant: s("tenant_id"),
            provider: s("provider"),
            model: s("model"),
            status: s("status"),
            agent: s("agent_id"),
            currency: s("currency"),
            time: col(b, "event_time").as_primitive::<TimestampMicrosecondType>(),
            tokens: tokenmeter_schemas::tables::BUCKETS
                .iter()
                .map(|x| i64s(&format!("tokens_{x}")))
                .collect(),
            reported: [
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
                "reasoning_output_tokens",
            ]
            .iter()
            .map(|x| i64s(x))
            .collect(),
            cost: col(b, "cost").as_primitive::<Decimal128Type>(),
        }
    }

    fn tokens(&self, r: usize) -> [i64; 5] {
        std::array::from_fn(|i| self.tokens[i].value(r))
    }

    fn old_currency(&self, r: usize) -> Option<String> {
        (!self.currency.is_null(r)).then(|| self.currency.value(r).to_string())
    }

    fn old_cost(&self, r: usize) -> Option<Money> {
        (!self.cost.is_null(r)).then(|| self.cost.value(r))
    }

    /// Row `r` as a rollup key and one-event value, priced in `currency` at `costs`.
    fn rollup(
        &self,
        r: usize,
        currency: Option<String>,
        costs: [Money; 5],
    ) -> (RollupKey, RollupValue) {
        let key = RollupKey {
            hour_micros: hour_of(self.time.value(r)),
            tenant_id: self.tenant.value(r).to_string(),
            provider: self.provider.value(r).to_string(),
            model: self.model.value(r).to_string(),
            agent_id: (!self.agent.is_null(r)).then(|| self.agent.value(r).to_string()),
            currency,
        };
        let value = RollupValue {
            requests: 1,
            errors: i64::from(self.status.value(r) == "error"),
            reported: std::array::from_fn(|i| self.reported[i].value(r)),
            tokens: self.tokens(r),
            costs,
        };
        (key, value)
    }
}

/// The rollups of a date's events as they are priced (compaction), with their totals.
fn fold_as_priced(
    b: &RecordBatch,
    totals: &mut BTreeMap<(String, Option<String>), Totals>,
) -> Result<RecordBatch> {
    let e = EventColumns::new(b);
    let costs: Vec<&Decimal128Array> = tokenmeter_schemas::tables::BUCKETS
        .iter()
        .map(|x| col(b, &format!("cost_{x}")).as_primitive::<Decimal128Type>())
        .collect();
    let mut rollups: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    for r in 0..b.num_rows() {
        let cur = e.old_currency(r);
        let t = totals
            .entry((e.tenant.value(r).to_string(), cur.clone()))
            .or_default();
        t.events += 1;
        if let Some(v) = e.old_cost(r) {
            *t.old.get_or_insert(0) += v;
            *t.new.get_or_insert(0) += v;
        }
        let c = std::array::from_fn(|i| {
            if costs[i].is_null(r) {
                0
            } else {
                costs[i].value(r)
            }
        });
        let (key, v) = e.rollup(r, cur, c);
        rollups.entry(key).or_default().merge(&v);
    }
    Ok(rollup_batch(&by_tenant(&rollups))?)
}

/// Reprice one run of events (same topic and partition) with `book`.
fn reprice_run(
    book: &PriceBook,
    b: &RecordBatch,
    totals: &mut BTreeMap<(String, Option<String>), Totals>,
    changed: &mut bool,
) -> Result<(RecordBatch, RecordBatch)> {
    let n = b.num_rows();
    let e = EventColumns::new(b);
    let dec = || {
        Decimal128Builder::with_capacity(n)
            .with_precision_and_scale(COST_PRECISION, COST_SCALE)
            .expect("valid decimal")
    };
    let mut costs: [Decimal128Builder; 5] = std::array::from_fn(|_| dec());
    let mut cost = dec();
    let mut currency = StringBuilder::with_capacity(n, n * 3);
    let mut price_from = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut rollups: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    for r in 0..n {
        let t = DateTime::from_timestamp_micros(e.time.value(r)).expect("valid time");
        let tk = e.tokens(r);
        let entry = book.lookup(e.provider.value(r), e.model.value(r), t);
        let c: Option<[Money; 5]> =
            entry.map(|p| std::array::from_fn(|i| tk[i] as Money * p.rates.0[i] as Money));
        match (&c, entry) {
            (Some(c), Some(p)) => {
                for (bld, v) in costs.iter_mut().zip(c) {
                    bld.append_value(*v);
                }
                cost.append_value(c.iter().sum());
                currency.append_value(&p.currency);
                price_from.append_value(p.effective_from.timestamp_micros());
            }
            _ => {
                costs.iter_mut().for_each(|b| b.append_null());
                cost.append_null();
                currency.append_null();
                price_from.append_null();
            }
        }
        let new_cur = entry.map(|p| p.currency.clone());
        let tenant = e.tenant.value(r);
        let te = totals
            .entry((tenant.to_string(), e.old_currency(r)))
            .or_default();
        te.events += 1;
        if let Some(v) = e.old_cost(r) {
            *te.old.get_or_insert(0) += v;
        }
        let tn = totals
            .entry((tenant.to_string(), new_cur.clone()))
            .or_default();
        if let Some(v) = c.map(|c| c.iter().sum::<Money>()) {
            *tn.new.get_or_insert(0) += v;
        }
        let (key, v) = e.rollup(r, new_cur, c.unwrap_or([0; 5]));
        rollups.entry(key).or_default().merge(&v);
    }
    let mut cols: Vec<ArrayRef> = b.columns().to_vec();
    let mut put = |name: &str, a: ArrayRef| {
        let i = EVENTS_SCHEMA.index_of(name).expect("events column");
        if cols[i].as_ref() != a.as_ref() {
            *changed = true;
        }
        cols[i] = a;
    };
    for (x, mut bld) in tokenmeter_schemas::tables::BUCKETS.iter().zip(costs) {
        put(&format!("cost_{x}"), std::sync::Arc::new(bld.finish()));
    }
    put("cost", std::sync::Arc::new(cost.finish()));
    put("currency", std::sync::Arc::new(currency.finish()));
    put(
        "price_effective_from",
        std::sync::Arc::new(price_from.finish()),
    );
    let events = RecordBatch::try_new(EVENTS_SCHEMA.clone(), cols)?;
    Ok((events, rollup_batch(&by_tenant(&rollups))?))
}

/// Reprice the UTC dates `[from, to)` of the lake at `root` with `book` (read from
/// `prices_path`), as `by`, at `now`.
pub async fn reprice(
    root: &Path,
    book: &PriceBook,
    prices_path: &str,
    from: NaiveDate,
    to: NaiveDate,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Repriced> {
    let mode = Mode::Reprice { book, prices_path };
    Ok(match restate(root, mode, from, to, by, now).await? {
        (None, events, _) => Repriced::NoChange { events },
        (Some(m), _, _) => Repriced::Restated(m),
    })
}

/// Compact the UTC dates `[from, to)` of the lake at `root`, as `by`, at `now`: each date with
/// more than one visible file per table gets one raw-event file and one rollup file holding the
/// same rows and costs, ordered by tenant and time.
pub async fn compact(
    root: &Path,
    from: NaiveDate,
    to: NaiveDate,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Compacted> {
    Ok(
        match restate(root, Mode::Compact, from, to, by, now).await? {
            (None, events, _) => Compacted::NoChange { events },
            (Some(manifest), _, dates) => Compacted::Compacted { manifest, dates },
        },
    )
}

/// Publish a restatement of `[from, to)` in `mode`: the manifest (`None` when nothing changes),
/// the events read, and per compacted date its figures.
async fn restate(
    root: &Path,
    mode: Mode<'_>,
    from: NaiveDate,
    to: NaiveDate,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(Option<Restatement>, i64, Vec<CompactedDate>)> {
    let verb = match mode {
        Mode::Reprice { .. } => "Reprice",
        Mode::Compact => "Compact",
    };
    if from >= to {
        return Err(Error::EmptyRange { from, to });
    }
    if let Some(m) = touches_closed(&read_closes(root)?, from, to)? {
        return Err(Error::Period(format!(
            "{from}..{to} touches {m}, which is closed: its invoices are frozen. {verb} only open months; corrections of a closed month belong on the next invoice"
        )));
    }
    let generation = clean_dead_intents(root)? + 1;
    let rdir = root.join(RESTATEMENTS_DIR);
    let intent_name = intent_name(generation);
    let intent = serde_json::to_vec(&Intent {
        generation,
        from,
        to,
    })
    .expect("serializable");
    write_atomic(&rdir, &intent_name, &intent)?;
    let cut = CommittedOffsets::read(root)?;
    let ctx = open_view(
        root,
        View {
            as_of: None,
            cut: Some(cut.clone()),
        },
    )
    .await?;
    let (in_force, _) = RestatedView::read(root, None, Some(&cut))?;
    let select: Vec<String> = EVENTS_SCHEMA
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect();
    let order = match mode {
        Mode::Reprice { .. } => "kafka_topic, kafka_partition, kafka_offset",
        Mode::Compact => "tenant_id, event_time, kafka_topic, kafka_partition, kafka_offset",
    };
    let sql = format!(
        "SELECT {} FROM usage_events WHERE date = $d ORDER BY {order}",
        select.join(", ")
    );
    let mut totals: BTreeMap<(String, Option<String>), Totals> = BTreeMap::new();
    let mut changed = false;
    let mut out: Vec<(NaiveDate, Restated)> = Vec::new();
    let mut compacted: Vec<CompactedDate> = Vec::new();
    let mut events_total = 0i64;
    for d in dates(from, to) {
        let before = match mode {
            Mode::Compact => {
                let (events_files, rollup_files) = (
                    visible_files_at(root, &date_dir(EVENTS_DIR, d), &cut, &in_force)?,
                    visible_files_at(root, &date_dir(ROLLUPS_DIR, d), &cut, &in_force)?,
                );
                if events_files.len() <= 1 && rollup_files.len() <= 1 {
                    // Nothing to gain; its events still count in the figures.
                    let n = ctx
                        .sql_with_options(
                            "SELECT count(*) FROM usage_events WHERE date = $d",
                            read_only_options(),
                        )
                        .await?
                        .with_param_values(vec![(
                            "d",
                            ScalarValue::Date32(Some(d.to_epoch_days())),
                        )])?
                        .collect()
                        .await?;
                    events_total += n
                        .first()
                        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
                        .unwrap_or(0);
                    continue;
                }
                Some([events_files, rollup_files].concat())
            }
            Mode::Reprice { .. } => None,
        };
        let batches = ctx
            .sql_with_options(&sql, read_only_options())
            .await?
            .with_param_values(vec![("d", ScalarValue::Date32(Some(d.to_epoch_days())))])?
            .collect()
            .await?;
        let mut fixed = Vec::new();
        for b in batches {
            let cols = b
                .columns()
                .iter()
                .zip(EVENTS_SCHEMA.fields())
                .map(|(c, f)| cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            fixed.push(RecordBatch::try_new(EVENTS_SCHEMA.clone(), cols)?);
        }
        let all = concat_batches(&EVENTS_SCHEMA, &fixed)?;
        events_total += all.num_rows() as i64;
        if all.num_rows() == 0 {
            continue;
        }
        let book = match mode {
            Mode::Compact => {
                let rollups = fold_as_priced(&all, &mut totals)?;
                let files = before.unwrap_or_default();
                compacted.push(CompactedDate {
                    date: d,
                    events: all.num_rows() as i64,
                    files_before: files.len(),
                    bytes_before: files.iter().map(|(_, n)| n).sum(),
                    bytes_after: 0,
                });
                changed = true;
                out.push((
                    d,
                    Restated {
                        name: compacted_name(generation),
                        events: all,
                        rollups,
                    },
                ));
                continue;
            }
            Mode::Reprice { book, .. } => book,
        };
        let topic = col(&all, "kafka_topic").as_string::<i32>().clone();
        let part: Int32Array = col(&all, "kafka_partition")
            .as_primitive::<Int32Type>()
            .clone();
        let off: Int64Array = col(&all, "kafka_offset")
            .as_primitive::<Int64Type>()
            .clone();
        let mut start = 0;
        while start < all.num_rows() {
            let mut end = start + 1;
            while end < all.num_rows()
                && topic.value(end) == topic.value(start)
                && part.value(end) == part.value(start)
            {
                end += 1;
            }
            let run = all.slice(start, end - start);
            let (events, rollups) = reprice_run(book, &run, &mut totals, &mut changed)?;
            let id = FileId {
                topic: topic.value(start).to_string(),
                partition: part.value(start),
                first: off.value(start),
                last: off.value(end - 1),
            };
            out.push((
                d,
                Restated {
                    name: id.restated_name(generation),
                    events,
                    rollups,
                },
            ));
            start = end;
        }
    }
    if !changed {
        std::fs::remove_file(rdir.join(&intent_name)).map_err(state_err(&rdir))?;
        return Ok((None, events_total, Vec::new()));
    }
    let mut files = Vec::new();
    for (d, r) in &out {
        for (table, batch) in [(EVENTS_DIR, &r.events), (ROLLUPS_DIR, &r.rollups)] {
            let rel = format!("{}/{}", date_dir(table, *d), r.name);
            let path = root.join(&rel);
            std::fs::create_dir_all(path.parent().expect("parent")).map_err(state_err(&path))?;
            tokenmeter_aggregate::lake::write_file_atomic(&path, table, batch)?;
            if let Some(c) = compacted.iter_mut().find(|c| c.date == *d) {
                c.bytes_after += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
            files.push(rel);
        }
    }
    let (kind, prices_path, prices_hash) = match mode {
        Mode::Reprice { book, prices_path } => (
            RestatementKind::Reprice,
            prices_path.to_string(),
            book.hash.clone(),
        ),
        Mode::Compact => (RestatementKind::Compaction, String::new(), String::new()),
    };
    let manifest = Restatement {
        version: 1,
        kind,
        generation,
        created_at: now,
        created_by: by.to_string(),
        prices_path,
        prices_hash,
        from,
        to,
        cut: cut_entries(&cut),
        files,
        totals: totals
            .into_iter()
            .map(|((tenant_id, currency), t)| RestatedTotal {
                tenant_id,
                currency,
                events: t.events,
                old_cost: t.old.map(format_money),
                new_cost: t.new.map(format_money),
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("serializable");
    write_atomic(&rdir, &format!("{generation:06}.json"), &text)?;
    std::fs::remove_file(rdir.join(&intent_name)).map_err(state_err(&rdir))?;
    Ok((Some(manifest), events_total, compacted))
}

/// The audit records of every restatement, oldest first.
pub fn restatements(root: &Path) -> Result<Vec<Restatement>> {
    read_restatements(root)
}
