//! A priced event — the unit the aggregator buffers — and its encoding into Arrow record batches
//! of the raw-event and rollup tables.
//!
//! Pure: no I/O. The Parquet writing is in [`crate::lake`].

use crate::prices::{Money, PriceBook};
use crate::rollup::{RollupKey, RollupValue};
use crate::{Error, Result};
use arrow::array::{
    ArrayRef, BooleanBuilder, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tokenmeter_schemas::tables::{COST_PRECISION, COST_SCALE, EVENTS_SCHEMA, ROLLUP_SCHEMA};
use tokenmeter_schemas::{Buckets, UsageEvent};

/// Where a message came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The price applied to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub currency: String,
    pub effective_from: DateTime<Utc>,
    pub costs: [Money; 5],
}

/// An accepted event with its buckets and (if a price covers it) its cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedEvent {
    pub event: UsageEvent,
    pub time: DateTime<Utc>,
    pub buckets: Buckets,
    /// `None` when no price-book entry covers the event: stored with null cost, never 0.
    pub price: Option<Applied>,
    pub partition: i32,
    pub offset: i64,
    /// [`crate::dedupe::fingerprint`] of the event.
    pub fingerprint: u64,
}

impl PricedEvent {
    /// Derive buckets and price the event with `book`.
    pub fn new(event: UsageEvent, book: &PriceBook, partition: i32, offset: i64) -> Self {
        let time = event.time_utc();
        let buckets = event.data.usage.buckets();
        let fingerprint = crate::dedupe::fingerprint(&event);
        let price = book
            .lookup(&event.data.provider, &event.data.model, time)
            .map(|e| Applied {
                currency: e.currency.clone(),
                effective_from: e.effective_from,
                costs: e.rates.costs(&buckets),
            });
        Self {
            event,
            time,
            buckets,
            price,
            partition,
            offset,
            fingerprint,
        }
    }

    /// Reported counts in table order: input, output, cache_read_input, cache_creation_input,
    /// reasoning_output.
    pub fn reported(&self) -> [i64; 5] {
        let u = &self.event.data.usage;
        [
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens,
            u.cache_creation_input_tokens,
            u.reasoning_output_tokens,
        ]
        .map(|v| v as i64)
    }

    /// Total cost, if priced.
    pub fn cost(&self) -> Option<Money> {
        self.price.as_ref().map(|p| p.costs.iter().sum())
    }
}

fn decimal_builder(cap: usize) -> Decimal128Builder {
    Decimal128Builder::with_capacity(cap)
        .with_precision_and_scale(COST_PRECISION, COST_SCALE)
        .expect("valid decimal type")
}

fn encode_err(what: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |e| Error::Encode {
        what,
        message: e.to_string(),
    }
}

/// The builders of the columns `tables::bucket_fields` defines, shared by both tables: reported
/// counts, bucket tokens, bucket costs, total cost, currency.
struct BucketColumns {
    reported: [Int64Builder; 5],
    tokens: [Int64Builder; 5],
    costs: [Decimal128Builder; 5],
    cost: Decimal128Builder,
    currency: StringBuilder,
}

impl BucketColumns {
    fn new(n: usize) -> Self {
        Self {
            reported: std::array::from_fn(|_| Int64Builder::with_capacity(n)),
            tokens: std::array::from_fn(|_| Int64Builder::with_capacity(n)),
            costs: std::array::from_fn(|_| decimal_builder(n)),
            cost: decimal_builder(n),
            currency: StringBuilder::with_capacity(n, n * 3),
        }
    }

    /// One row; `priced` is `(costs, currency)`, or `None` for unpriced (null cost, never 0).
    fn append(&mut self, reported: [i64; 5], tokens: [i64; 5], priced: Option<([Money; 5], &str)>) {
        for (b, v) in self.reported.iter_mut().zip(reported) {
            b.append_value(v);
        }
        for (b, v) in self.tokens.iter_mut().zip(tokens) {
            b.append_value(v);
        }
        match priced {
            Some((costs, currency)) => {
                for (b, v) in self.costs.iter_mut().zip(costs) {
                    b.append_value(v);
                }
                self.cost.append_value(costs.iter().sum());
                self.currency.append_value(currency);
            }
            None => {
                self.costs.iter_mut().for_each(|b| b.append_null());
                self.cost.append_null();
                self.currency.append_null();
            }
        }
    }

    fn finish_into(mut self, cols: &mut Vec<ArrayRef>) {
        let mut push = |a: ArrayRef| cols.push(a);
        self.reported
            .iter_mut()
            .for_each(|b| push(Arc::new(b.finish())));
        self.tokens
            .iter_mut()
            .for_each(|b| push(Arc::new(b.finish())));
        self.costs
            .iter_mut()
            .for_each(|b| push(Arc::new(b.finish())));
        push(Arc::new(self.cost.finish()));
        push(Arc::new(self.currency.finish()));
    }
}

/// Build a raw-event record batch from events of one topic.
pub fn events_batch(topic: &str, events: &[&PricedEvent]) -> Result<RecordBatch> {
    let n = events.len();
    let s = || StringBuilder::with_capacity(n, n * 16);
    let (mut id, mut source, mut tenant, mut provider, mut model, mut operation) =
        (s(), s(), s(), s(), s(), s());
    let (mut agent_id, mut agent_name, mut agent_run, mut agent_step) = (s(), s(), s(), s());
    let (mut channel, mut key, mut user, mut status, mut ktopic) = (s(), s(), s(), s(), s());
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut price_from = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut is_agent = BooleanBuilder::with_capacity(n);
    let mut latency = Int64Builder::with_capacity(n);
    let mut buckets = BucketColumns::new(n);
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut fingerprint = Int64Builder::with_capacity(n);
    for p in events {
        let e = &p.event;
        let d = &e.data;
        id.append_value(&e.id);
        source.append_value(&e.source);
        time.append_value(p.time.timestamp_micros());
        tenant.append_value(&e.tenant_id);
        provider.append_value(&d.provider);
        model.append_value(&d.model);
        operation.append_option(d.operation.as_deref());
        is_agent.append_value(d.agent.is_some());
        let a = d.agent.as_ref();
        agent_id.append_option(a.map(|a| &a.id));
        agent_name.append_option(a.and_then(|a| a.name.as_deref()));
        agent_run.append_option(a.and_then(|a| a.run_id.as_deref()));
        agent_step.append_option(a.and_then(|a| a.step).map(|s| s.as_str()));
        channel.append_option(d.channel.as_deref());
        key.append_option(d.api_key_id.as_deref());
        user.append_option(d.user_id.as_deref());
        latency.append_option(d.latency_ms.map(|v| v.min(i64::MAX as u64) as i64));
        status.append_value(d.status.as_str());
        buckets.append(
            p.reported(),
            p.buckets.as_array().map(|v| v as i64),
            p.price.as_ref().map(|a| (a.costs, a.currency.as_str())),
        );
        price_from.append_option(
            p.price
                .as_ref()
                .map(|a| a.effective_from.timestamp_micros()),
        );
        ktopic.append_value(topic);
        partition.append_value(p.partition);
        offset.append_value(p.offset);
        fingerprint.append_value(p.fingerprint as i64);
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(source.finish()),
        Arc::new(time.finish()),
        Arc::new(tenant.finish()),
        Arc::new(provider.finish()),
        Arc::new(model.finish()),
        Arc::new(operation.finish()),
        Arc::new(is_agent.finish()),
        Arc::new(agent_id.finish()),
        Arc::new(agent_name.finish()),
        Arc::new(agent_run.finish()),
        Arc::new(agent_step.finish()),
        Arc::new(channel.finish()),
        Arc::new(key.finish()),
        Arc::new(user.finish()),
        Arc::new(latency.finish()),
        Arc::new(status.finish()),
    ];
    buckets.finish_into(&mut cols);
    cols.push(Arc::new(price_from.finish()));
    cols.push(Arc::new(ktopic.finish()));
    cols.push(Arc::new(partition.finish()));
    cols.push(Arc::new(offset.finish()));
    cols.push(Arc::new(fingerprint.finish()));
    RecordBatch::try_new(EVENTS_SCHEMA.clone(), cols).map_err(encode_err("raw events"))
}

/// Build a rollup record batch from folded rows (in the order given).
pub fn rollup_batch(rows: &[(&RollupKey, &RollupValue)]) -> Result<RecordBatch> {
    let n = rows.len();
    let s = || StringBuilder::with_capacity(n, n * 12);
    let (mut tenant, mut provider, mut model, mut agent_id) = (s(), s(), s(), s());
    let mut hour = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut is_agent = BooleanBuilder::with_capacity(n);
    let mut requests = Int64Builder::with_capacity(n);
    let mut errors = Int64Builder::with_capacity(n);
    let mut buckets = BucketColumns::new(n);
    for (k, v) in rows {
        hour.append_value(k.hour_micros);
        tenant.append_value(&k.tenant_id);
        provider.append_value(&k.provider);
        model.append_value(&k.model);
        is_agent.append_value(k.agent_id.is_some());
        agent_id.append_option(k.agent_id.as_deref());
        requests.append_value(v.requests);
        errors.append_value(v.errors);
        buckets.append(
            v.reported,
            v.tokens,
            k.currency.as_deref().map(|c| (v.costs, c)),
        );
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(hour.finish()),
        Arc::new(tenant.finish()),
        Arc::new(provider.finish()),
        Arc::new(model.finish()),
        Arc::new(is_agent.finish()),
        Arc::new(agent_id.finish()),
        Arc::new(requests.finish()),
        Arc::new(errors.finish()),
    ];
    buckets.finish_into(&mut cols);
    RecordBatch::try_new(ROLLUP_SCHEMA.clone(), cols).map_err(encode_err("rollups"))
}
