//! A priced event — the unit the aggregator buffers — and its encoding into Arrow record batches
//! of the raw-event and rollup tables; and the way back from a stored raw-event row to the
//! content its fingerprint hashes ([`StoredContent`]).
//!
//! Pure: no I/O. The Parquet writing is in [`crate::lake`].

use crate::dedupe::{AgentContent, Content};
use crate::prices::{Money, PriceBook};
use crate::rollup::{RollupKey, RollupValue};
use crate::{Error, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Decimal128Builder, Int32Builder,
    Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
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
        latency.append_option(d.latency_ms.map(stored_latency));
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

/// How the raw-event table stores `latency_ms`, an unsigned count: as `Int64`, clamped to
/// `i64::MAX` (about 292 million years).
pub fn stored_latency(ms: u64) -> i64 {
    ms.min(i64::MAX as u64) as i64
}

/// The raw-event columns that hold an event's [`Content`], the input of its fingerprint.
pub const CONTENT_COLUMNS: [&str; 22] = [
    "event_id",
    "source",
    "event_time",
    "tenant_id",
    "provider",
    "model",
    "operation",
    "is_agent",
    "agent_id",
    "agent_name",
    "agent_run_id",
    "agent_step",
    "channel",
    "api_key_id",
    "user_id",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "latency_ms",
    "status",
];

/// The [`Content`] of stored raw-event rows: a record batch holding at least
/// [`CONTENT_COLUMNS`] (in any order; other columns are ignored), as the lake reads its files
/// back to rebuild the dedupe index. [`StoredContent::content`] of a row gives the same
/// fingerprint as the event it was written from.
#[derive(Debug)]
pub struct StoredContent<'b> {
    id: &'b StringArray,
    source: &'b StringArray,
    time: &'b TimestampMicrosecondArray,
    tenant_id: &'b StringArray,
    provider: &'b StringArray,
    model: &'b StringArray,
    operation: &'b StringArray,
    is_agent: &'b BooleanArray,
    agent_id: &'b StringArray,
    agent_name: &'b StringArray,
    agent_run_id: &'b StringArray,
    agent_step: &'b StringArray,
    channel: &'b StringArray,
    api_key_id: &'b StringArray,
    user_id: &'b StringArray,
    /// In [`Content::tokens`] order.
    tokens: [&'b Int64Array; 5],
    latency_ms: &'b Int64Array,
    status: &'b StringArray,
}

fn read_back_error(message: String) -> Error {
    Error::Encode {
        what: "raw events (reading back)",
        message,
    }
}

impl<'b> StoredContent<'b> {
    /// Check `batch`'s content columns: present, of the table's type, no null where the table
    /// has none, an agent id on every agent row.
    pub fn new(batch: &'b RecordBatch) -> Result<Self> {
        let column = |name: &str| -> Result<&'b ArrayRef> {
            let i = batch.schema().index_of(name).map_err(|_| {
                read_back_error(format!("no column {name}: not a tokenmeter raw-event file"))
            })?;
            Ok(batch.column(i))
        };
        let wrong = |name: &str, a: &ArrayRef| {
            read_back_error(format!(
                "column {name} is {}, not the raw-event table's type",
                a.data_type()
            ))
        };
        let string = |name: &str| -> Result<&'b StringArray> {
            let a = column(name)?;
            a.as_string_opt::<i32>().ok_or_else(|| wrong(name, a))
        };
        let int = |name: &str| -> Result<&'b Int64Array> {
            let a = column(name)?;
            a.as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong(name, a))
        };
        let time = column("event_time")?;
        let is_agent = column("is_agent")?;
        let c = Self {
            id: string("event_id")?,
            source: string("source")?,
            time: time
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| wrong("event_time", time))?,
            tenant_id: string("tenant_id")?,
            provider: string("provider")?,
            model: string("model")?,
            operation: string("operation")?,
            is_agent: is_agent
                .as_boolean_opt()
                .ok_or_else(|| wrong("is_agent", is_agent))?,
            agent_id: string("agent_id")?,
            agent_name: string("agent_name")?,
            agent_run_id: string("agent_run_id")?,
            agent_step: string("agent_step")?,
            channel: string("channel")?,
            api_key_id: string("api_key_id")?,
            user_id: string("user_id")?,
            tokens: [
                int("input_tokens")?,
                int("cache_read_input_tokens")?,
                int("cache_creation_input_tokens")?,
                int("output_tokens")?,
                int("reasoning_output_tokens")?,
            ],
            latency_ms: int("latency_ms")?,
            status: string("status")?,
        };
        let required: [(&str, &dyn Array); 13] = [
            ("event_id", c.id),
            ("source", c.source),
            ("event_time", c.time),
            ("tenant_id", c.tenant_id),
            ("provider", c.provider),
            ("model", c.model),
            ("is_agent", c.is_agent),
            ("input_tokens", c.tokens[0]),
            ("cache_read_input_tokens", c.tokens[1]),
            ("cache_creation_input_tokens", c.tokens[2]),
            ("output_tokens", c.tokens[3]),
            ("reasoning_output_tokens", c.tokens[4]),
            ("status", c.status),
        ];
        if let Some((name, _)) = required.iter().find(|(_, a)| a.null_count() > 0) {
            return Err(read_back_error(format!(
                "column {name} holds a null, which the raw-event table forbids"
            )));
        }
        if (0..batch.num_rows()).any(|i| c.is_agent.value(i) && c.agent_id.is_null(i)) {
            return Err(read_back_error(
                "an agent row (is_agent true) has no agent_id".into(),
            ));
        }
        Ok(c)
    }

    /// The content of row `i`.
    pub fn content(&self, i: usize) -> Content<'b> {
        let opt = |a: &'b StringArray| (!a.is_null(i)).then(|| a.value(i));
        Content {
            id: self.id.value(i),
            source: self.source.value(i),
            time_micros: self.time.value(i),
            tenant_id: self.tenant_id.value(i),
            provider: self.provider.value(i),
            model: self.model.value(i),
            operation: opt(self.operation),
            agent: self.is_agent.value(i).then(|| AgentContent {
                id: self.agent_id.value(i),
                name: opt(self.agent_name),
                run_id: opt(self.agent_run_id),
                step: opt(self.agent_step),
            }),
            channel: opt(self.channel),
            api_key_id: opt(self.api_key_id),
            user_id: opt(self.user_id),
            tokens: self.tokens.map(|a| a.value(i)),
            latency_ms: (!self.latency_ms.is_null(i)).then(|| self.latency_ms.value(i)),
            status: self.status.value(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::fingerprint;
    use proptest::prelude::*;
    use tokenmeter_schemas::{DecodeOptions, decode_event};

    const BOOK: &str = "currency = \"USD\"\n[[price]]\nprovider = \"p\"\nmodel = \"m\"\neffective_from = \"2025-01-01T00:00:00Z\"\ninput = \"1\"\noutput = \"2\"\n";

    fn word() -> impl Strategy<Value = String> {
        "[a-z0-9-]{1,8}"
    }

    fn opt_word() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(word())
    }

    /// Events with every optional field present or absent, any latency (beyond `i64::MAX`
    /// too), any valid token counts, times (2000 to 2023) with and without an offset and
    /// sub-second digits.
    fn event_json() -> impl Strategy<Value = serde_json::Value> {
        let agent = proptest::option::of((
            word(),
            opt_word(),
            opt_word(),
            proptest::option::of(proptest::sample::select(
                tokenmeter_schemas::AgentStep::ALL.to_vec(),
            )),
        ));
        let usage = proptest::array::uniform5(0..=tokenmeter_schemas::MAX_TOKENS / 2);
        (
            (word(), word(), word(), opt_word()),
            agent,
            (opt_word(), opt_word(), opt_word()),
            usage,
            (proptest::option::of(any::<u64>()), any::<bool>()),
            (
                946_684_800_000_000i64..1_700_000_000_000_000,
                -14i32..=14,
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (id, source, tenant, operation),
                    agent,
                    (channel, key, user),
                    u,
                    (latency, error),
                    (micros, hours, model_p),
                )| {
                    let offset = chrono::FixedOffset::east_opt(hours * 3600).unwrap();
                    let time = chrono::DateTime::from_timestamp_micros(micros)
                        .unwrap()
                        .with_timezone(&offset)
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
                    let mut data = serde_json::json!({
                        "provider": if model_p { "p" } else { "other" },
                        "model": "m",
                        "usage": {
                            "input_tokens": u[0].max(u[1] + u[2]),
                            "cache_read_input_tokens": u[1],
                            "cache_creation_input_tokens": u[2],
                            "output_tokens": u[3].max(u[4]),
                            "reasoning_output_tokens": u[4],
                        },
                        "status": if error { "error" } else { "ok" },
                    });
                    let d = data.as_object_mut().unwrap();
                    for (k, v) in [
                        ("operation", operation),
                        ("channel", channel),
                        ("api_key_id", key),
                        ("user_id", user),
                    ] {
                        if let Some(v) = v {
                            d.insert(k.into(), v.into());
                        }
                    }
                    if let Some(l) = latency {
                        d.insert("latency_ms".into(), l.into());
                    }
                    if let Some((id, name, run, step)) = agent {
                        let mut a = serde_json::json!({ "id": id });
                        let o = a.as_object_mut().unwrap();
                        for (k, v) in [("name", name), ("run_id", run)] {
                            if let Some(v) = v {
                                o.insert(k.into(), v.into());
                            }
                        }
                        if let Some(s) = step {
                            o.insert("step".into(), s.as_str().into());
                        }
                        d.insert("agent".into(), a);
                    }
                    serde_json::json!({
                        "specversion": "1.0", "type": "gen_ai.usage", "id": id,
                        "source": source, "time": time, "subject": tenant, "data": data,
                    })
                },
            )
    }

    proptest! {
        /// The way back: every stored row yields the content, and so the fingerprint, of the
        /// event it was written from — what lets the lake leave the fingerprint out.
        #[test]
        fn stored_rows_give_back_each_events_content_and_fingerprint(
            events in proptest::collection::vec(event_json(), 1..40)
        ) {
            let book = PriceBook::parse(BOOK, "t").unwrap();
            let priced: Vec<PricedEvent> = events
                .iter()
                .enumerate()
                .map(|(i, j)| {
                    let e = decode_event(j.to_string().as_bytes(), &DecodeOptions::default())
                        .unwrap_or_else(|e| panic!("{j}: {e}"));
                    PricedEvent::new(e, &book, 0, i as i64)
                })
                .collect();
            let refs: Vec<&PricedEvent> = priced.iter().collect();
            let batch = events_batch("t", &refs).unwrap();
            // As the lake reads it back: only the content columns, in another order.
            let mut names = CONTENT_COLUMNS;
            names.reverse();
            let idx: Vec<usize> = names.iter().map(|n| batch.schema().index_of(n).unwrap()).collect();
            let projected = batch.project(&idx).unwrap();
            let stored = StoredContent::new(&projected).unwrap();
            for (i, p) in priced.iter().enumerate() {
                let c = stored.content(i);
                prop_assert_eq!(c, Content::of(&p.event));
                prop_assert_eq!(c.fingerprint(), p.fingerprint);
                prop_assert_eq!(p.fingerprint, fingerprint(&p.event));
            }
        }
    }

    fn one_event_batch(agent: bool) -> RecordBatch {
        let agent = if agent { r#","agent":{"id":"a1"}"# } else { "" };
        let json = format!(
            r#"{{"specversion":"1.0","type":"gen_ai.usage","id":"e1","source":"s","time":"2026-01-01T10:00:00Z","subject":"t1","data":{{"provider":"p","model":"m","usage":{{"input_tokens":3,"output_tokens":4}}{agent}}}}}"#
        );
        let e = decode_event(json.as_bytes(), &DecodeOptions::default()).unwrap();
        let p = PricedEvent::new(e, &PriceBook::parse(BOOK, "t").unwrap(), 0, 0);
        events_batch("t", &[&p]).unwrap()
    }

    #[test]
    fn content_differs_with_each_field() {
        let b = one_event_batch(true);
        let stored = StoredContent::new(&b).unwrap();
        let base = stored.content(0);
        let mut variants = vec![
            Content { id: "e2", ..base },
            Content {
                source: "s2",
                ..base
            },
            Content {
                time_micros: base.time_micros + 1,
                ..base
            },
            Content {
                tenant_id: "t2",
                ..base
            },
            Content {
                provider: "p2",
                ..base
            },
            Content {
                model: "m2",
                ..base
            },
            Content {
                operation: Some(""),
                ..base
            },
            Content {
                agent: None,
                ..base
            },
            Content {
                channel: Some("c"),
                ..base
            },
            Content {
                api_key_id: Some("k"),
                ..base
            },
            Content {
                user_id: Some("u"),
                ..base
            },
            Content {
                latency_ms: Some(0),
                ..base
            },
            Content {
                status: "error",
                ..base
            },
        ];
        for k in 0..5 {
            let mut tokens = base.tokens;
            tokens[k] += 1;
            variants.push(Content { tokens, ..base });
        }
        let a = base.agent.unwrap();
        for agent in [
            AgentContent { id: "a2", ..a },
            AgentContent {
                name: Some(""),
                ..a
            },
            AgentContent {
                run_id: Some(""),
                ..a
            },
            AgentContent {
                step: Some("act"),
                ..a
            },
        ] {
            variants.push(Content {
                agent: Some(agent),
                ..base
            });
        }
        // Moving a string between neighbouring fields changes the hash too.
        variants.push(Content {
            id: "e1s",
            source: "",
            ..base
        });
        let mut seen = std::collections::HashSet::from([base.fingerprint()]);
        for v in &variants {
            assert!(seen.insert(v.fingerprint()), "{v:?} collides");
        }
    }

    #[test]
    fn reading_back_names_the_broken_column() {
        let b = one_event_batch(true);
        let without = b.project(&[0, 1]).unwrap();
        let err = StoredContent::new(&without).unwrap_err().to_string();
        assert!(err.contains("no column event_time"), "{err}");

        let i = b.schema().index_of("agent_id").unwrap();
        let mut cols = b.columns().to_vec();
        cols[i] = arrow::array::new_null_array(&arrow::datatypes::DataType::Utf8, 1);
        let no_agent_id = RecordBatch::try_new(b.schema(), cols).unwrap();
        let err = StoredContent::new(&no_agent_id).unwrap_err().to_string();
        assert!(err.contains("no agent_id"), "{err}");

        let i = b.schema().index_of("latency_ms").unwrap();
        let mut cols = b.columns().to_vec();
        cols[i] = Arc::new(arrow::array::Int32Array::from(vec![Some(1)]));
        let fields: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .enumerate()
            .map(|(k, f)| {
                if k == i {
                    Arc::new(arrow::datatypes::Field::new(
                        "latency_ms",
                        arrow::datatypes::DataType::Int32,
                        true,
                    ))
                } else {
                    f.clone()
                }
            })
            .collect();
        let wrong =
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
        let err = StoredContent::new(&wrong).unwrap_err().to_string();
        assert!(err.contains("column latency_ms is Int32"), "{err}");
    }
}
