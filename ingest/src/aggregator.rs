//! `tokenmeter aggregate`: the consumer loop.
//!
//! Per assigned partition it buffers consumed messages into a batch (a contiguous offset range),
//! decodes and validates each message, prices the valid ones and sends the invalid ones to the
//! dead-letter topic. A batch is flushed by size or age: dead-letter deliveries are awaited, then
//! the batch is committed to the lake ([`tokenmeter_aggregate::lake`]), and only then is the Kafka
//! offset committed (for lag tools; the lake's state, not Kafka, says where to resume).
//!
//! On every assignment, each partition is recovered in the lake and the consumer is positioned
//! at the lake's `committed_through + 1`. Revoked partitions drop their uncommitted buffers: the
//! next owner replays them from the lake's committed offset.
//!
//! Not here: the commit protocol itself, pricing, dedupe of gateway retries.

use crate::kafka::{client_config, producer_config, redacted};
use crate::{Error, Result};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokenmeter_aggregate::lake::{FailPoint, Lake, LakeOptions};
use tokenmeter_aggregate::{PriceBook, PricedEvent};
use tokenmeter_schemas::{DecodeOptions, ValidationError, decode_event};
use tracing::{debug, info, warn};

/// Settings of one aggregator process.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic of usage events.
    pub topic: String,
    /// Dead-letter topic for invalid messages.
    pub dlq_topic: String,
    /// Consumer group.
    pub group: String,
    /// Root of the Parquet lake.
    pub data_dir: PathBuf,
    /// Flush a partition's batch when it holds this many messages.
    pub flush_max_messages: usize,
    /// Flush a partition's batch when its first message is this old.
    pub flush_interval: Duration,
    /// Exit 0 once every assigned partition is at its end and nothing arrived for this long.
    pub exit_when_idle: Option<Duration>,
    /// Event validation settings.
    pub decode: DecodeOptions,
    /// Parquet writer settings.
    pub lake: LakeOptions,
    /// Extra librdkafka settings for every client.
    pub kafka_extra: Vec<(String, String)>,
    /// How often progress is logged.
    pub progress_interval: Duration,
}

impl AggregatorConfig {
    /// Defaults for everything but the brokers and the lake.
    pub fn new(brokers: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: "usage.events".into(),
            dlq_topic: "usage.events.dlq".into(),
            group: "tokenmeter".into(),
            data_dir: data_dir.into(),
            flush_max_messages: 250_000,
            flush_interval: Duration::from_secs(10),
            exit_when_idle: None,
            decode: DecodeOptions::default(),
            lake: LakeOptions::default(),
            kafka_extra: Vec::new(),
            progress_interval: Duration::from_secs(5),
        }
    }
}

/// Counters of a running aggregator, readable from another task (progress bars, metrics).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages consumed (including replays of uncommitted batches after a rebalance).
    pub consumed: AtomicU64,
    /// Valid events committed to the lake.
    pub committed_events: AtomicU64,
    /// Messages committed to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Messages behind the end of the assigned partitions at the last progress check.
    pub lag: AtomicU64,
    /// Events with no matching price (stored with null cost).
    pub unpriced: AtomicU64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub committed_events: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub elapsed: Duration,
}

/// Shared between the rebalance callback (which runs inside `recv`) and the loop.
#[derive(Default)]
struct Assignment {
    /// Newly assigned partitions with their resume offsets.
    assigned: Vec<(i32, i64)>,
    /// Revoked partitions.
    revoked: Vec<i32>,
    /// Error raised inside the callback (recovery failed).
    error: Option<String>,
}

struct Ctx {
    lake: Arc<Lake>,
    topic: String,
    shared: Arc<Mutex<Assignment>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            // librdkafka reports partition ends as "global errors"; they are how idle is seen.
            KafkaError::PartitionEOF(_)
            | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                debug!(reason, "partition end")
            }
            e => warn!(error = %e, reason, "kafka client error; librdkafka retries by itself"),
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .map(TopicPartitionListElem::partition)
                    .collect();
                let mut shared = self.shared.lock().expect("lock");
                for p in parts {
                    match self.lake.recover(&self.topic, p) {
                        Ok(resume) => {
                            info!(topic = %self.topic, partition = p, resume, "partition assigned; resuming after the lake's committed offset");
                            let _ =
                                tpl.set_partition_offset(&self.topic, p, Offset::Offset(resume));
                            shared.assigned.push((p, resume));
                        }
                        Err(e) => {
                            shared.error = Some(format!("recovering partition {p}: {e}"));
                        }
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    shared.error = Some(format!("assigning partitions: {e}"));
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut shared = self.shared.lock().expect("lock");
                for e in tpl.elements() {
                    info!(topic = %self.topic, partition = e.partition(), "partition revoked");
                    shared.revoked.push(e.partition());
                }
                if let Err(e) = consumer.unassign() {
                    shared.error = Some(format!("unassigning partitions: {e}"));
                }
            }
            other => warn!(?other, "rebalance error"),
        }
    }
}

/// One partition's open batch.
struct Batch {
    first: i64,
    last: i64,
    messages: usize,
    events: Vec<PricedEvent>,
    dlq: Vec<DeliveryFuture>,
    started: Instant,
}

struct PartitionState {
    /// Next offset expected; messages below it are replays of committed data and are skipped.
    next: i64,
    batch: Option<Batch>,
    at_eof: bool,
}

/// Run the aggregator until `shutdown` resolves, `exit_when_idle` fires, or a fatal error.
pub async fn run_aggregator(
    cfg: AggregatorConfig,
    book: PriceBook,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<RunSummary> {
    let started = Instant::now();
    let lake = Arc::new(Lake::open(&cfg.data_dir, cfg.lake.clone())?);
    let shared = Arc::new(Mutex::new(Assignment::default()));
    let mut cc = client_config(&cfg.brokers, &[]);
    cc.set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never skip silently: a resume offset the broker no longer has is an error.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in &cfg.kafka_extra {
        cc.set(k, v);
    }
    info!(config = %redacted(&cc), "consumer");
    let ctx = Ctx {
        lake: lake.clone(),
        topic: cfg.topic.clone(),
        shared: shared.clone(),
    };
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        cc.create_with_context(ctx)
            .map_err(Error::kafka("creating the consumer"))?,
    );
    let producer: FutureProducer = producer_config(&cfg.brokers, &cfg.kafka_extra)
        .create()
        .map_err(Error::kafka("creating the dead-letter producer"))?;
    consumer
        .subscribe(&[&cfg.topic])
        .map_err(Error::kafka(format!("subscribing to {}", cfg.topic)))?;

    let mut parts: HashMap<i32, PartitionState> = HashMap::new();
    let mut last_message = Instant::now();
    let mut last_progress = Instant::now();
    let mut progress_base = 0u64;
    let tick = Duration::from_millis(200);
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => { info!("shutdown requested: flushing"); break; }
            m = tokio::time::timeout(tick, consumer.recv()) => m,
        };
        apply_assignment(&shared, &mut parts)?;
        match next {
            Ok(Ok(msg)) => {
                last_message = Instant::now();
                metrics.consumed.fetch_add(1, Relaxed);
                handle_message(&cfg, &book, &producer, &metrics, &mut parts, &msg);
            }
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(s) = parts.get_mut(&p) {
                    s.at_eof = true;
                }
            }
            Ok(Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::AutoOffsetReset,
            ))) => {
                return Err(Error::Config(format!(
                    "a partition of {} no longer holds the offset after the lake's last commit: the broker deleted messages (retention) before they were aggregated. Those events are lost to billing unless the gateways can resend them; see the librdkafka warning above for the partition and offsets. tokenmeter will not skip the gap by itself: do not move or edit the state files in {}/_state (that hides committed data from every report). Raise the topic's retention so this cannot recur, and record the gap before any restart.",
                    cfg.topic,
                    cfg.data_dir.display()
                )));
            }
            Ok(Err(e)) => warn!(error = %e, "kafka error; the client retries by itself"),
            Err(_) => {} // tick
        }
        // Flush batches that are full or old.
        let due: Vec<i32> = parts
            .iter()
            .filter_map(|(p, s)| {
                let b = s.batch.as_ref()?;
                (b.messages >= cfg.flush_max_messages || b.started.elapsed() >= cfg.flush_interval)
                    .then_some(*p)
            })
            .collect();
        for p in due {
            flush(&cfg, &lake, &consumer, &metrics, &mut parts, p).await?;
        }
        if last_progress.elapsed() >= cfg.progress_interval {
            let consumed = metrics.consumed.load(Relaxed);
            let rate = (consumed - progress_base) as f64 / last_progress.elapsed().as_secs_f64();
            progress_base = consumed;
            last_progress = Instant::now();
            let lag = lag(&consumer, &cfg.topic, &parts).await;
            metrics.lag.store(lag, Relaxed);
            info!(
                events_per_s = rate as u64,
                consumed,
                committed = metrics.committed_events.load(Relaxed),
                dead_lettered = metrics.dead_lettered.load(Relaxed),
                lag,
                partitions = parts.len(),
                "progress"
            );
        }
        if let Some(idle) = cfg.exit_when_idle
            && !parts.is_empty()
            && parts.values().all(|s| s.at_eof)
            && last_message.elapsed() >= idle
        {
            info!(
                idle_s = idle.as_secs_f64(),
                "every partition is at its end and idle: flushing and exiting"
            );
            break;
        }
    }
    let ps: Vec<i32> = parts.keys().copied().collect();
    for p in ps {
        flush(&cfg, &lake, &consumer, &metrics, &mut parts, p).await?;
    }
    // Offsets were committed asynchronously after each batch; make the last ones land.
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(RunSummary {
        committed_events: metrics.committed_events.load(Relaxed),
        dead_lettered: metrics.dead_lettered.load(Relaxed),
        batches: metrics.batches.load(Relaxed),
        elapsed: started.elapsed(),
    })
}

fn apply_assignment(
    shared: &Mutex<Assignment>,
    parts: &mut HashMap<i32, PartitionState>,
) -> Result<()> {
    let mut s = shared.lock().expect("lock");
    if let Some(e) = s.error.take() {
        return Err(Error::Config(e));
    }
    for p in s.revoked.drain(..) {
        if let Some(state) = parts.remove(&p)
            && let Some(b) = state.batch
        {
            info!(
                partition = p,
                first = b.first,
                last = b.last,
                "dropping the uncommitted batch of a revoked partition; its next owner replays it"
            );
        }
    }
    for (p, resume) in s.assigned.drain(..) {
        parts.insert(
            p,
            PartitionState {
                next: resume,
                batch: None,
                at_eof: false,
            },
        );
    }
    Ok(())
}

fn handle_message(
    cfg: &AggregatorConfig,
    book: &PriceBook,
    producer: &FutureProducer,
    metrics: &Metrics,
    parts: &mut HashMap<i32, PartitionState>,
    msg: &BorrowedMessage<'_>,
) {
    let (p, offset) = (msg.partition(), msg.offset());
    let Some(state) = parts.get_mut(&p) else {
        debug!(
            partition = p,
            offset, "message of a partition not assigned any more; skipped"
        );
        return;
    };
    state.at_eof = false;
    if offset < state.next {
        debug!(partition = p, offset, "offset already committed; skipped");
        return;
    }
    state.next = offset + 1;
    let batch = state.batch.get_or_insert_with(|| Batch {
        first: offset,
        last: offset,
        messages: 0,
        events: Vec::new(),
        dlq: Vec::new(),
        started: Instant::now(),
    });
    batch.last = offset;
    batch.messages += 1;
    match validate(msg, &cfg.decode) {
        Ok(event) => {
            let priced = PricedEvent::new(event, book, p, offset);
            if priced.price.is_none() {
                metrics.unpriced.fetch_add(1, Relaxed);
            }
            batch.events.push(priced);
        }
        Err(e) => {
            debug!(partition = p, offset, error = %e, "invalid message to the dead-letter topic");
            batch
                .dlq
                .push(dead_letter(producer, &cfg.dlq_topic, &cfg.topic, msg, &e));
        }
    }
}

/// Decode the payload, then check the key: the key must be the event's tenant id.
fn validate(
    msg: &BorrowedMessage<'_>,
    opts: &DecodeOptions,
) -> Result<tokenmeter_schemas::UsageEvent, ValidationError> {
    let payload = msg.payload().ok_or_else(|| ValidationError {
        field: String::new(),
        rule: "message has no payload (a tombstone); expected a usage event".into(),
    })?;
    let event = decode_event(payload, opts)?;
    match msg.key() {
        None => Err(ValidationError {
            field: "key".into(),
            rule: "the Kafka message key is required: it must be the tenant id (subject)".into(),
        }),
        Some(k) if k != event.tenant_id.as_bytes() => Err(ValidationError {
            field: "key".into(),
            rule: format!(
                "the Kafka message key {:?} must equal subject {:?}",
                String::from_utf8_lossy(&k[..k.len().min(80)]),
                event.tenant_id
            ),
        }),
        Some(_) => Ok(event),
    }
}

/// Header names on dead-letter messages.
pub mod dlq_headers {
    pub const ERROR: &str = "tokenmeter.error";
    pub const FIELD: &str = "tokenmeter.error.field";
    pub const REASON: &str = "tokenmeter.error.reason";
    pub const TOPIC: &str = "tokenmeter.source.topic";
    pub const PARTITION: &str = "tokenmeter.source.partition";
    pub const OFFSET: &str = "tokenmeter.source.offset";
}

fn dead_letter(
    producer: &FutureProducer,
    dlq_topic: &str,
    topic: &str,
    msg: &BorrowedMessage<'_>,
    err: &ValidationError,
) -> DeliveryFuture {
    let (p, o) = (msg.partition().to_string(), msg.offset().to_string());
    let text = err.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: dlq_headers::ERROR,
            value: Some(text.as_str()),
        })
        .insert(Header {
            key: dlq_headers::FIELD,
            value: Some(err.field.as_str()),
        })
        .insert(Header {
            key: dlq_headers::REASON,
            value: Some(err.reason()),
        })
        .insert(Header {
            key: dlq_headers::TOPIC,
            value: Some(topic),
        })
        .insert(Header {
            key: dlq_headers::PARTITION,
            value: Some(p.as_str()),
        })
        .insert(Header {
            key: dlq_headers::OFFSET,
            value: Some(o.as_str()),
        });
    if let Some(h) = msg.headers() {
        for h in h.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic)
        .payload(msg.payload().unwrap_or(&[]))
        .headers(headers);
    if let Some(k) = msg.key() {
        record = record.key(k);
    }
    loop {
        match producer.send_result(record) {
            Ok(f) => return f,
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                producer.poll(Duration::from_millis(50));
                record = r;
            }
            Err((e, r)) => {
                warn!(error = %e, "dead-letter enqueue failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
                record = r;
            }
        }
    }
}

async fn flush(
    cfg: &AggregatorConfig,
    lake: &Arc<Lake>,
    consumer: &StreamConsumer<Ctx>,
    metrics: &Metrics,
    parts: &mut HashMap<i32, PartitionState>,
    p: i32,
) -> Result<()> {
    let Some(batch) = parts.get_mut(&p).and_then(|s| s.batch.take()) else {
        return Ok(());
    };
    // 1. Invalid messages are durably in the dead-letter topic before their offsets commit.
    let dlq_count = batch.dlq.len() as u64;
    for f in batch.dlq {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(Error::Kafka {
                    context: format!("delivering to dead-letter topic {}", cfg.dlq_topic),
                    source: e,
                });
            }
            Err(_) => return Err(Error::Config("dead-letter producer dropped".into())),
        }
    }
    // 2. The batch into the lake, retried with backoff on I/O errors.
    let t = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let events = Arc::new(batch.events);
    loop {
        let (lake2, topic, ev) = (lake.clone(), cfg.topic.clone(), events.clone());
        let (first, last) = (batch.first, batch.last);
        let res = tokio::task::spawn_blocking(move || lake2.commit(&topic, p, first, last, &ev))
            .await
            .expect("commit task panicked");
        match res {
            Ok(report) => {
                info!(
                    partition = p,
                    first,
                    last,
                    events = report.events,
                    dead_lettered = dlq_count,
                    files = report.files.len(),
                    bytes = report.bytes,
                    ms = t.elapsed().as_millis() as u64,
                    "batch committed"
                );
                break;
            }
            Err(e @ tokenmeter_aggregate::Error::FailPoint(_)) => return Err(e.into()),
            Err(e) => {
                warn!(partition = p, first, last, error = %e, retry_in_ms = backoff.as_millis() as u64, "batch commit failed; retrying (nothing is acknowledged until it succeeds)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                // A failed attempt may have left an intent or temporary files: recover first.
                match lake.recover(&cfg.topic, p) {
                    Ok(resume) if resume > last => break, // the intent was recorded: rolled forward
                    Ok(_) => {}
                    Err(e) => {
                        warn!(partition = p, error = %e, "recovery after a failed commit failed; retrying")
                    }
                }
            }
        }
    }
    metrics
        .committed_events
        .fetch_add(events.len() as u64, Relaxed);
    metrics.dead_lettered.fetch_add(dlq_count, Relaxed);
    metrics.batches.fetch_add(1, Relaxed);
    // 3. Kafka's offset, for lag tools; the lake is the source of truth.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.topic, p, Offset::Offset(batch.last + 1))
        .map_err(Error::kafka("building the offset list"))?;
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        warn!(partition = p, error = %e, "Kafka offset commit failed (harmless: the lake holds the position)");
    }
    Ok(())
}

async fn lag(
    consumer: &Arc<StreamConsumer<Ctx>>,
    topic: &str,
    parts: &HashMap<i32, PartitionState>,
) -> u64 {
    let positions: Vec<(i32, i64)> = parts.iter().map(|(p, s)| (*p, s.next)).collect();
    let (c, topic) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        positions
            .iter()
            .filter_map(|(p, next)| {
                let (_, high) = c
                    .fetch_watermarks(&topic, *p, Duration::from_secs(1))
                    .ok()?;
                Some((high - next).max(0) as u64)
            })
            .sum()
    })
    .await
    .unwrap_or(0)
}

/// Re-exported for the CLI: parse `TOKENMETER_FAILPOINT=name:n`.
pub fn parse_fail_point(s: &str) -> std::result::Result<(FailPoint, u64), String> {
    let (name, n) = s.split_once(':').unwrap_or((s, "1"));
    Ok((
        name.parse()?,
        n.parse()
            .map_err(|_| format!("fail point count {n:?} is not a number"))?,
    ))
}
