//! `tokenmeter aggregate`: the consumer loop.
//!
//! Per assigned partition it buffers consumed messages into a batch (a contiguous offset range),
//! decodes and validates each message, prices the valid ones and sends the invalid ones to the
//! dead-letter topic. A batch is flushed by size or age: dead-letter deliveries are awaited, then
//! the batch is committed to the lake ([`tokenmeter_aggregate::lake`]), and only then is the Kafka
//! offset committed (for lag tools; the lake's state, not Kafka, says where to resume).
//!
//! A flushed batch commits in the background while the loop goes on consuming: each partition
//! has at most one batch committing (its next batch fills meanwhile and commits after it, in
//! offset order), at most one commit per core runs at a time, and the batches held in memory,
//! filling and committing, stay within `max_buffered_messages`.
//!
//! On every assignment, each partition is locked (the lake's per-partition `flock`: a zombie
//! owner that the group has replaced keeps the lock, and the new owner waits for it rather than
//! writing beside it), recovered in the lake, and the consumer is positioned at the lake's
//! `committed_through + 1`. Revoked partitions release their lock and drop their uncommitted
//! buffers and dedupe index: the next owner replays them from the lake's committed offset. A
//! batch committing when its partition is revoked holds the lock until that attempt returns
//! (each attempt takes its own reference) and makes no other; its outcome is not applied to a
//! later assignment of the partition (`PartitionState::epoch`).
//!
//! Gateway retries (same `source` and `id`) are dropped by the partition's
//! [`DedupeIndex`], loaded per event date from the lake's committed raw events; a retry with
//! other content is a conflict and goes to the dead-letter topic.
//!
//! Not here: the commit protocol itself, pricing, the dedupe index's rules.

use crate::kafka::{client_config, producer_config, redacted};
use crate::metrics::Metrics;
use crate::{Error, Result};
use futures::StreamExt as _;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokenmeter_aggregate::dedupe::{self, DedupeIndex, Verdict};
use tokenmeter_aggregate::lake::{FailPoint, Lake, LakeOptions, PartitionLock};
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
    /// Static group membership (Kafka's `group.instance.id`): a restarted process with the same
    /// id takes its partitions back without a rebalance of the whole group. Unique per process.
    pub instance_id: Option<String>,
    /// Root of the Parquet lake.
    pub data_dir: PathBuf,
    /// Flush a partition's batch when it holds this many messages.
    pub flush_max_messages: usize,
    /// Messages held in the batches of all partitions together, open and committing: the
    /// largest open batch is flushed once the open ones hold half of it, and consumption waits
    /// for a commit when all of them reach it. With many partitions, this bounds the
    /// aggregator's memory rather than partitions × `flush_max_messages`.
    pub max_buffered_messages: usize,
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
    /// Dedupe keys kept in memory, shared out among the assigned partitions (about 40 bytes
    /// each); beyond it, least recently used dates are dropped and re-read from the lake.
    pub dedupe_max_keys: usize,
    /// Also ship the hourly rollups into this ClickHouse (see [`crate::chsink`]).
    pub clickhouse: Option<tokenmeter_aggregate::clickhouse::Target>,
    /// Settings of the ClickHouse sink.
    pub clickhouse_sink: crate::chsink::SinkOptions,
    /// Budget alerts (the book's `[[tenant.budget]]`) to a topic and a webhook (see
    /// [`crate::alerts`]).
    pub alerts: Option<crate::alerts::AlertsOptions>,
}

impl AggregatorConfig {
    /// Defaults for everything but the brokers and the lake.
    pub fn new(brokers: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: "usage.events".into(),
            dlq_topic: "usage.events.dlq".into(),
            group: "tokenmeter".into(),
            instance_id: None,
            data_dir: data_dir.into(),
            flush_max_messages: 250_000,
            max_buffered_messages: 500_000,
            flush_interval: Duration::from_secs(10),
            exit_when_idle: None,
            decode: DecodeOptions::default(),
            lake: LakeOptions::default(),
            kafka_extra: Vec::new(),
            progress_interval: Duration::from_secs(5),
            dedupe_max_keys: 4_000_000,
            clickhouse: None,
            clickhouse_sink: Default::default(),
            alerts: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub committed_events: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub batches: u64,
    pub elapsed: Duration,
}

/// Shared between the rebalance callback (which runs inside `recv`) and the loop.
#[derive(Default)]
struct Assignment {
    /// Newly assigned partitions with their resume offsets.
    assigned: Vec<(i32, i64)>,
    /// The lake locks of the partitions this process owns. Released in the revoke callback
    /// itself, so that a rebalance that moves a partition never waits on this process.
    locks: HashMap<i32, Arc<PartitionLock>>,
    /// Revoked partitions.
    revoked: Vec<i32>,
    /// Error raised inside the callback (recovery failed).
    error: Option<String>,
}

struct Ctx {
    lake: Arc<Lake>,
    topic: String,
    /// Whether budget alerts are on: a partition's alert ledger is created on assignment.
    alerts: bool,
    shared: Arc<Mutex<Assignment>>,
    /// High watermark per partition of the topic, as the latest fetch responses report it
    /// (librdkafka's statistics, every second).
    high: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(t) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut high = self.high.lock().expect("lock");
        for (p, s) in &t.partitions {
            if *p >= 0 && s.hi_offset >= 0 {
                high.insert(*p, s.hi_offset);
            }
        }
    }

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

impl Ctx {
    /// Take the partition's lake lock, waiting while another process holds it: that process is
    /// a previous owner still finishing (or stalled in) a commit; writing beside it could
    /// interleave two batches. Its lock goes away when it releases it or dies.
    fn acquire(&self, p: i32) -> tokenmeter_aggregate::Result<PartitionLock> {
        let started = Instant::now();
        let mut last_log: Option<Instant> = None;
        loop {
            if let Some(l) = self.lake.try_lock(&self.topic, p)? {
                if started.elapsed() > Duration::from_millis(500) {
                    info!(
                        partition = p,
                        waited_s = started.elapsed().as_secs_f64(),
                        "partition lock acquired after waiting"
                    );
                }
                return Ok(l);
            }
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                warn!(
                    partition = p,
                    holder = %self.lake.lock_holder(&self.topic, p),
                    waited_s = started.elapsed().as_secs_f64() as u64,
                    "partition is locked by another aggregator on this lake (the previous owner, still running); waiting for it to let go. If that process is hung, stop it."
                );
                last_log = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
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
                for p in parts {
                    let lock = match self.shared.lock().expect("lock").locks.get(&p) {
                        Some(l) => Ok(l.clone()),
                        None => self.acquire(p).map(Arc::new),
                    };
                    let res = lock.and_then(|lock| Ok((self.lake.recover(&lock)?, lock)));
                    if self.alerts
                        && let Ok((_, lock)) = &res
                        && let Err(e) = self.lake.ensure_ledger(lock)
                    {
                        // The alerts task creates it when it takes the partition over.
                        warn!(partition = p, error = %e, "creating the partition's alert ledger failed; retried by the alerts task");
                    }
                    let mut shared = self.shared.lock().expect("lock");
                    match res {
                        Ok((resume, lock)) => {
                            info!(topic = %self.topic, partition = p, resume, "partition assigned and locked; resuming after the lake's committed offset");
                            let _ =
                                tpl.set_partition_offset(&self.topic, p, Offset::Offset(resume));
                            shared.assigned.push((p, resume));
                            shared.locks.insert(p, lock);
                        }
                        Err(e) => {
                            shared.error = Some(format!("taking over partition {p}: {e}"));
                        }
                    }
                }
                let mut shared = self.shared.lock().expect("lock");
                if let Err(e) = consumer.assign(tpl) {
                    shared.error = Some(format!("assigning partitions: {e}"));
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut shared = self.shared.lock().expect("lock");
                for e in tpl.elements() {
                    info!(topic = %self.topic, partition = e.partition(), "partition revoked; lock released");
                    shared.revoked.push(e.partition());
                    shared.locks.remove(&e.partition());
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
    /// Dead-letter deliveries in flight, with the source offset each one is for.
    dlq: Vec<(i64, DeliveryFuture)>,
    dlq_reasons: BTreeMap<String, u64>,
    duplicates: u64,
    started: Instant,
}

struct PartitionState {
    /// Next offset expected; messages below it are replays of committed data and are skipped.
    next: i64,
    /// The lake's `committed_through` for this partition, as of this process's last commit.
    committed_through: i64,
    batch: Option<Batch>,
    at_eof: bool,
    dedupe: DedupeIndex,
    /// Whether the first message at the resume offset was seen (offsets are checked till then).
    resumed: bool,
    /// Re-reads from earlier offsets done to get past a broker that skipped the resume offset.
    rewinds: u32,
    /// When this partition last made progress towards its resume offset (assigned, re-read
    /// from earlier, or a message below it arrived).
    resume_progress: Instant,
    /// Which assignment of the partition this state belongs to: a commit that finishes after
    /// its partition was revoked (and perhaps assigned again) must not touch the new state.
    epoch: u64,
    /// Messages of the batch being committed; 0 when none is.
    committing: usize,
}

impl PartitionState {
    /// Read again from an earlier offset (1k, 10k, 100k, 1M back), `None` once that was tried
    /// [`MAX_REWINDS`] times.
    fn rewind(&mut self) -> Option<i64> {
        if self.rewinds >= MAX_REWINDS {
            return None;
        }
        let back = 1_000i64 * 10i64.pow(self.rewinds);
        self.rewinds += 1;
        self.resume_progress = Instant::now();
        Some((self.next - back).max(0))
    }
}

/// How long a partition may wait for its resume offset while the broker reports messages at or
/// after it, before it is read again from earlier.
const RESUME_STALL: Duration = Duration::from_secs(3);

/// Re-reads from ever earlier offsets (1k, 10k, 100k, 1M back) before a gap at the resume point
/// is taken as offsets the broker does not have.
const MAX_REWINDS: u32 = 4;

/// Source of [`PartitionState::epoch`]s.
static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A batch's commit, running beside the loop.
type Commit<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Committed>> + Send + 'a>>;

/// What the loop applies to a partition's state when its batch's commit finishes.
struct Committed {
    partition: i32,
    epoch: u64,
    /// The batch's number in the partition's dedupe index ([`DedupeIndex::seal`]).
    sealed: u64,
    last: i64,
    /// False if the partition was revoked before the commit succeeded: nothing was committed
    /// and the next owner replays the batch.
    done: bool,
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
        .set("fetch.wait.max.ms", "100")
        // Bound what librdkafka buffers ahead of the loop (poison messages can be 10 MB).
        .set("queued.max.messages.kbytes", "65536")
        // Fetch a partition's oversized message whole: a broker that does not hand out a
        // message bigger than the fetch size (tansu) would otherwise stall the partition on it.
        .set("fetch.message.max.bytes", "33554432")
        // Feeds the lag metric with the fetch responses' high watermarks.
        .set("statistics.interval.ms", "1000");
    if let Some(id) = &cfg.instance_id {
        cc.set("group.instance.id", id);
    }
    for (k, v) in &cfg.kafka_extra {
        cc.set(k, v);
    }
    info!(config = %redacted(&cc), "consumer");
    let ctx = Ctx {
        lake: lake.clone(),
        topic: cfg.topic.clone(),
        alerts: cfg.alerts.is_some(),
        shared: shared.clone(),
        high: Mutex::new(HashMap::new()),
    };
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        cc.create_with_context(ctx)
            .map_err(Error::kafka("creating the consumer"))?,
    );
    let mut pc = producer_config(&cfg.brokers, &[]);
    // Dead letters keep the original bytes, however large the poison message was.
    pc.set("message.max.bytes", "33554432");
    for (k, v) in &cfg.kafka_extra {
        pc.set(k, v);
    }
    let producer: FutureProducer = pc
        .create()
        .map_err(Error::kafka("creating the dead-letter producer"))?;
    consumer
        .subscribe(&[&cfg.topic])
        .map_err(Error::kafka(format!("subscribing to {}", cfg.topic)))?;

    let sink = match &cfg.clickhouse {
        Some(t) => {
            let ch = tokenmeter_aggregate::clickhouse::ClickHouse::new(t.clone())?;
            let shared = shared.clone();
            let owned: crate::chsink::Owned =
                Arc::new(move || shared.lock().expect("lock").locks.clone());
            info!(url = %t.url, table = %ch.parts_table(), "shipping hourly rollups to ClickHouse");
            Some(crate::chsink::Sink::start(
                ch,
                lake.clone(),
                cfg.topic.clone(),
                owned,
                metrics.clone(),
                cfg.clickhouse_sink.clone(),
            ))
        }
        None => None,
    };
    let alerts = match &cfg.alerts {
        Some(opts) => {
            let shared = shared.clone();
            let owned: crate::chsink::Owned =
                Arc::new(move || shared.lock().expect("lock").locks.clone());
            Some(crate::alerts::Alerts::start(
                opts.clone(),
                &cfg.brokers,
                &cfg.kafka_extra,
                lake.clone(),
                cfg.topic.clone(),
                Arc::new(book.clone()),
                owned,
                metrics.clone(),
            )?)
        }
        None => None,
    };
    let ctx = Loop {
        sink: sink.as_ref(),
        alerts: alerts.as_ref(),
        cfg: &cfg,
        book: &book,
        lake: &lake,
        metrics: &metrics,
        shared: &shared,
        producer: &producer,
    };
    let mut parts: HashMap<i32, PartitionState> = HashMap::new();
    let mut commits = Commits::default();
    let mut last_message = Instant::now();
    let mut last_progress = Instant::now();
    let mut progress_base = 0u64;
    // Housekeeping (age-based flushes, stalled resumes, progress, the idle exit) runs on this
    // tick, not per message: per message, the loop only handles it and flushes its partition's
    // batch once full (or the largest batch, when the batches held reach their budget).
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => { info!("shutdown requested: flushing"); break; }
            Some(done) = commits.running.next(), if !commits.running.is_empty() => {
                ctx.committed(&consumer, &mut parts, done?);
                continue;
            }
            _ = ticker.tick() => None,
            m = consumer.recv() => Some(m),
        };
        ctx.apply_assignment(&mut parts)?;
        match next {
            Some(Ok(msg)) => {
                last_message = Instant::now();
                metrics.consumed.fetch_add(1, Relaxed);
                let p = msg.partition();
                if let Some((p, off)) = ctx.handle_message(&mut parts, &msg)
                    && let Err(e) =
                        consumer.seek(&cfg.topic, p, Offset::Offset(off), Duration::from_secs(10))
                {
                    warn!(partition = p, offset = off, error = %e, "seek failed; the next message retries it");
                }
                drop(msg);
                if batch_len(&parts, p) >= cfg.flush_max_messages {
                    ctx.flush(&consumer, &mut parts, &mut commits, p).await?;
                }
                ctx.within_budget(&consumer, &mut parts, &mut commits)
                    .await?;
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(s) = parts.get_mut(&p) {
                    s.at_eof = true;
                }
            }
            Some(Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::AutoOffsetReset,
            ))) => {
                return Err(Error::Config(format!(
                    "a partition of {} no longer holds the offset after the lake's last commit: the broker deleted messages (retention) before they were aggregated. Those events are lost to billing unless the gateways can resend them; see the librdkafka warning above for the partition and offsets. tokenmeter will not skip the gap by itself: do not move or edit the state files in {}/_state (that hides committed data from every report). Raise the topic's retention so this cannot recur, and record the gap before any restart.",
                    cfg.topic,
                    cfg.data_dir.display()
                )));
            }
            Some(Err(e)) => warn!(error = %e, "kafka error; the client retries by itself"),
            None => {} // tick
        }
        // A resume offset inside the partition's *last* record batch: such a broker serves
        // nothing at all, though its fetch responses report messages from there on.
        for (p, off) in ctx.stalled_resumes(&consumer, &mut parts) {
            if let Err(e) =
                consumer.seek(&cfg.topic, p, Offset::Offset(off), Duration::from_secs(10))
            {
                warn!(partition = p, offset = off, error = %e, "seek failed; retried at the next check");
            }
        }
        // Start the commits of batches that are full or old and whose partition has no commit
        // running, as many as there are free cores; the rest wait for a later tick.
        let due: Vec<i32> = parts
            .iter()
            .filter(|(_, s)| {
                s.committing == 0
                    && s.batch.as_ref().is_some_and(|b| {
                        b.messages >= cfg.flush_max_messages
                            || b.started.elapsed() >= cfg.flush_interval
                    })
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            if commits.running.len() >= commits.cores {
                break;
            }
            ctx.flush(&consumer, &mut parts, &mut commits, p).await?;
        }
        if last_progress.elapsed() >= cfg.progress_interval {
            let consumed = metrics.consumed.load(Relaxed);
            let rate = (consumed - progress_base) as f64 / last_progress.elapsed().as_secs_f64();
            progress_base = consumed;
            last_progress = Instant::now();
            let lags = lag(&consumer, &parts);
            let lag: u64 = lags.values().sum();
            metrics.lag.store(lag, Relaxed);
            *metrics.partition_lag.lock().expect("metrics lock") = lags;
            metrics
                .dedupe_keys
                .store(parts.values().map(|s| s.dedupe.len() as u64).sum(), Relaxed);
            info!(
                events_per_s = rate as u64,
                consumed,
                committed = metrics.committed_events.load(Relaxed),
                duplicates = metrics.duplicates.load(Relaxed),
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
    // Every open batch, then every commit to its end.
    let open: Vec<i32> = parts.keys().copied().collect();
    for p in open {
        ctx.flush(&consumer, &mut parts, &mut commits, p).await?;
    }
    while let Some(done) = commits.running.next().await {
        ctx.committed(&consumer, &mut parts, done?);
    }
    drop(commits);
    // Offsets were committed asynchronously after each batch; make the last ones land.
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    if let Some(sink) = sink {
        sink.finish(Duration::from_secs(15)).await;
    }
    if let Some(alerts) = alerts {
        alerts.finish().await;
    }
    Ok(RunSummary {
        committed_events: metrics.committed_events.load(Relaxed),
        dead_lettered: metrics.dead_lettered.load(Relaxed),
        duplicates: metrics.duplicates.load(Relaxed),
        batches: metrics.batches.load(Relaxed),
        elapsed: started.elapsed(),
    })
}

/// Messages in partition `p`'s open batch (0 without one).
fn batch_len(parts: &HashMap<i32, PartitionState>, p: i32) -> usize {
    parts
        .get(&p)
        .and_then(|s| s.batch.as_ref())
        .map_or(0, |b| b.messages)
}

/// The commits running beside the loop.
struct Commits<'a> {
    running: futures::stream::FuturesUnordered<Commit<'a>>,
    /// At most this many at once (the machine's cores): more would only hold more batches'
    /// Arrow and Parquet buffers in memory together.
    cores: usize,
}

impl Default for Commits<'_> {
    fn default() -> Self {
        Self {
            running: futures::stream::FuturesUnordered::new(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What the consumer loop's steps share.
struct Loop<'a> {
    cfg: &'a AggregatorConfig,
    book: &'a PriceBook,
    lake: &'a Arc<Lake>,
    metrics: &'a Metrics,
    sink: Option<&'a crate::chsink::Sink>,
    alerts: Option<&'a crate::alerts::Alerts>,
    shared: &'a Mutex<Assignment>,
    producer: &'a FutureProducer,
}

impl Loop<'_> {
    fn lock_of(&self, p: i32) -> Option<Arc<PartitionLock>> {
        self.shared.lock().expect("lock").locks.get(&p).cloned()
    }

    fn apply_assignment(&self, parts: &mut HashMap<i32, PartitionState>) -> Result<()> {
        let mut s = self.shared.lock().expect("lock");
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
        if s.assigned.is_empty() {
            return Ok(());
        }
        let budget = self.cfg.dedupe_max_keys / s.locks.len().max(1);
        for (p, resume) in s.assigned.drain(..) {
            parts.insert(
                p,
                PartitionState {
                    next: resume,
                    committed_through: resume - 1,
                    batch: None,
                    at_eof: false,
                    dedupe: DedupeIndex::new(budget.max(10_000)),
                    resumed: false,
                    rewinds: 0,
                    resume_progress: Instant::now(),
                    epoch: EPOCHS.fetch_add(1, Relaxed),
                    committing: 0,
                },
            );
        }
        Ok(())
    }

    /// Partitions waiting for their resume offset for [`RESUME_STALL`] while the latest fetch
    /// responses report messages at or after it, with the earlier offset to read from instead.
    fn stalled_resumes(
        &self,
        consumer: &StreamConsumer<Ctx>,
        parts: &mut HashMap<i32, PartitionState>,
    ) -> Vec<(i32, i64)> {
        let high = consumer.context().high.lock().expect("lock");
        let mut seeks = Vec::new();
        for (p, s) in parts.iter_mut() {
            if s.resumed
                || s.resume_progress.elapsed() < RESUME_STALL
                || high.get(p).is_none_or(|h| *h <= s.next)
            {
                continue;
            }
            if let Some(target) = s.rewind() {
                warn!(
                    partition = p,
                    asked = s.next,
                    high = high[p],
                    rewind_to = target,
                    "the broker serves nothing at the resume point though the partition holds messages from there on; re-reading from an earlier offset"
                );
                seeks.push((*p, target));
            }
        }
        seeks
    }

    /// Handle one message; `Some((partition, offset))` asks the loop to seek there.
    fn handle_message(
        &self,
        parts: &mut HashMap<i32, PartitionState>,
        msg: &BorrowedMessage<'_>,
    ) -> Option<(i32, i64)> {
        let (p, offset) = (msg.partition(), msg.offset());
        let Some(state) = parts.get_mut(&p) else {
            debug!(
                partition = p,
                offset, "message of a partition not assigned any more; skipped"
            );
            return None;
        };
        state.at_eof = false;
        if offset < state.next {
            debug!(partition = p, offset, "offset already committed; skipped");
            state.resume_progress = Instant::now();
            return None;
        }
        if !state.resumed {
            // The broker answered a fetch at `next` with later offsets. Kafka returns the
            // record batch that contains `next`; a broker that serves whole batches from the
            // first one *starting* at or after the offset (tansu 0.6 does) skips the rest of
            // the batch `next` is in. Accepting would lose those events: read again from an
            // earlier offset and skip up to `next` instead.
            if offset > state.next
                && let Some(target) = state.rewind()
            {
                warn!(
                    partition = p,
                    asked = state.next,
                    got = offset,
                    rewind_to = target,
                    "the broker skipped offsets at the resume point; re-reading from an earlier offset"
                );
                return Some((p, target));
            }
            if offset > state.next {
                warn!(
                    partition = p,
                    expected = state.next,
                    got = offset,
                    "offsets missing from the broker at the resume point even when reading from earlier ones (compacted topic or transaction markers?)"
                );
            }
            state.resumed = true;
        }
        state.next = offset + 1;
        let batch = state.batch.get_or_insert_with(|| Batch {
            first: offset,
            last: offset,
            messages: 0,
            events: Vec::new(),
            dlq: Vec::new(),
            dlq_reasons: BTreeMap::new(),
            duplicates: 0,
            started: Instant::now(),
        });
        batch.last = offset;
        batch.messages += 1;
        let err = match validate(msg, &self.cfg.decode) {
            Ok(event) => {
                let priced = PricedEvent::new(event, self.book, p, offset);
                let date = priced.time.date_naive();
                if !state.dedupe.is_loaded(date) {
                    let keys = self.load_keys(p, date, state.committed_through);
                    self.metrics.dedupe_loads.fetch_add(1, Relaxed);
                    debug!(partition = p, %date, keys = keys.len(), "dedupe keys of a date loaded from the lake");
                    state.dedupe.load(date, keys);
                }
                let key = dedupe::key_of(&priced.event);
                match state.dedupe.check(date, key, priced.fingerprint) {
                    Verdict::New => {
                        if priced.price.is_none() {
                            self.metrics.unpriced.fetch_add(1, Relaxed);
                        }
                        batch.events.push(priced);
                        return None;
                    }
                    Verdict::Duplicate => {
                        debug!(partition = p, offset, source = %priced.event.source, id = %priced.event.id, "retry of a stored event dropped");
                        batch.duplicates += 1;
                        return None;
                    }
                    Verdict::Conflict { stored } => (
                        "conflict".to_string(),
                        ValidationError {
                            field: "id".into(),
                            rule: format!(
                                "conflict: an event with source {:?} and id {:?} was already accepted with different content (content fingerprint {stored:016x}, this message {:016x}); the first one stands, this one is not counted",
                                priced.event.source, priced.event.id, priced.fingerprint
                            ),
                        },
                    ),
                }
            }
            Err(e) => (e.reason().to_string(), e),
        };
        let (reason, err) = err;
        debug!(partition = p, offset, error = %err, "to the dead-letter topic");
        batch.dlq.push((
            offset,
            dead_letter(
                self.producer,
                &self.cfg.dlq_topic,
                &self.cfg.topic,
                msg,
                &err,
                &reason,
            ),
        ));
        *batch.dlq_reasons.entry(reason).or_default() += 1;
        None
    }

    /// The committed dedupe keys of a date, retried with backoff: an event cannot be judged
    /// new or duplicate without them.
    fn load_keys(
        &self,
        p: i32,
        date: chrono::NaiveDate,
        committed_through: i64,
    ) -> Vec<(dedupe::Key, u64)> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let res = match self.lock_of(p) {
                Some(lock) => self.lake.load_keys(&lock, date, committed_through),
                None => return Vec::new(), // revoked meanwhile: the batch is dropped anyway
            };
            match res {
                Ok(keys) => return keys,
                Err(e) => {
                    warn!(partition = p, %date, error = %e, retry_in_ms = backoff.as_millis() as u64, "reading dedupe keys from the lake failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    /// Start committing partition `p`'s open batch: after its previous batch's commit (one
    /// commit per partition at a time, in offset order) and once a core is free.
    async fn flush<'c>(
        &'c self,
        consumer: &StreamConsumer<Ctx>,
        parts: &mut HashMap<i32, PartitionState>,
        commits: &mut Commits<'c>,
        p: i32,
    ) -> Result<()> {
        if batch_len(parts, p) == 0 {
            return Ok(());
        }
        while parts.get(&p).is_some_and(|s| s.committing > 0)
            || commits.running.len() >= commits.cores
        {
            match commits.running.next().await {
                Some(done) => self.committed(consumer, parts, done?),
                None => break,
            }
        }
        let Some(state) = parts.get_mut(&p) else {
            return Ok(());
        };
        let Some(batch) = state.batch.take() else {
            return Ok(());
        };
        let Some(lock) = self.lock_of(p) else {
            info!(
                partition = p,
                "partition no longer owned: its batch is dropped, the next owner replays it"
            );
            return Ok(());
        };
        let sealed = state.dedupe.seal();
        state.committing = batch.messages;
        let epoch = state.epoch;
        commits.running.push(Box::pin(self.commit(
            p,
            epoch,
            sealed,
            batch,
            Arc::downgrade(&lock),
        )));
        Ok(())
    }

    /// Keep the messages held in memory (open batches and batches committing) within
    /// `max_buffered_messages`: start committing the largest open batch once the open batches
    /// hold half of it, so that the next half fills while they commit, and wait for commits
    /// to finish while everything held reaches it.
    async fn within_budget<'c>(
        &'c self,
        consumer: &StreamConsumer<Ctx>,
        parts: &mut HashMap<i32, PartitionState>,
        commits: &mut Commits<'c>,
    ) -> Result<()> {
        let budget = self.cfg.max_buffered_messages;
        loop {
            let open: usize = parts
                .values()
                .filter_map(|s| s.batch.as_ref())
                .map(|b| b.messages)
                .sum();
            let committing: usize = parts.values().map(|s| s.committing).sum();
            if open + committing >= budget && !commits.running.is_empty() {
                let done = commits.running.next().await.expect("a commit is running");
                self.committed(consumer, parts, done?);
            } else if open > 0 && open >= budget / 2 {
                // The largest batch, whichever partition it is.
                let largest = parts
                    .iter()
                    .max_by_key(|(q, s)| (s.batch.as_ref().map_or(0, |b| b.messages), **q))
                    .map(|(q, _)| *q)
                    .expect("an open batch");
                self.flush(consumer, parts, commits, largest).await?;
            } else {
                return Ok(());
            }
        }
    }

    /// A batch's commit has finished: apply it to its partition's state (unless the partition
    /// was revoked meanwhile) and commit the Kafka offset.
    fn committed(
        &self,
        consumer: &StreamConsumer<Ctx>,
        parts: &mut HashMap<i32, PartitionState>,
        c: Committed,
    ) {
        let Some(state) = parts.get_mut(&c.partition).filter(|s| s.epoch == c.epoch) else {
            return;
        };
        state.committing = 0;
        if !c.done {
            return;
        }
        state.committed_through = c.last;
        state.dedupe.committed(c.sealed);
        // 3. Kafka's offset, for lag tools; the lake is the source of truth.
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl
            .add_partition_offset(&self.cfg.topic, c.partition, Offset::Offset(c.last + 1))
            .and_then(|()| consumer.commit(&tpl, CommitMode::Async))
        {
            warn!(partition = c.partition, error = %e, "Kafka offset commit failed (harmless: the lake holds the position)");
        }
    }

    /// Commit one batch of partition `p`: its dead letters, then the lake. `lock` is the
    /// partition's lock as of the flush; each attempt holds it, and none is made once the
    /// partition was revoked (the lock is gone then: the next owner replays the batch).
    async fn commit(
        &self,
        p: i32,
        epoch: u64,
        sealed: u64,
        batch: Batch,
        lock: std::sync::Weak<PartitionLock>,
    ) -> Result<Committed> {
        let cfg = self.cfg;
        let t = Instant::now();
        let (first, last) = (batch.first, batch.last);
        let mut outcome = Committed {
            partition: p,
            epoch,
            sealed,
            last,
            done: false,
        };
        let revoked = || {
            info!(
                partition = p,
                first,
                last,
                "partition revoked before its batch was committed: the batch is dropped, the next owner replays it"
            );
        };
        // 1. Invalid messages are durably in the dead-letter topic before their offsets commit.
        let dlq_count = batch.dlq.len() as u64;
        for (offset, f) in batch.dlq {
            match f.await {
                Ok(Ok(d)) => {
                    debug!(
                        partition = p,
                        offset,
                        dlq_partition = d.partition,
                        dlq_offset = d.offset,
                        "dead letter delivered"
                    )
                }
                Ok(Err((e, _))) => {
                    return Err(Error::Kafka {
                        context: format!("delivering to dead-letter topic {}", cfg.dlq_topic),
                        source: e,
                    });
                }
                Err(_) => return Err(Error::Config("dead-letter producer dropped".into())),
            }
        }
        // 2. The batch into the lake, retried with backoff on I/O errors. Only the holder of
        //    the partition's lock can commit; each attempt holds it until it returns.
        let mut backoff = Duration::from_millis(100);
        let events = Arc::new(batch.events);
        loop {
            let Some(lk) = lock.upgrade() else {
                revoked();
                return Ok(outcome);
            };
            let (lake, ev) = (self.lake.clone(), events.clone());
            let res = tokio::task::spawn_blocking(move || lake.commit(&lk, first, last, &ev))
                .await
                .expect("commit task panicked");
            match res {
                Ok(report) => {
                    info!(
                        partition = p,
                        first,
                        last,
                        events = report.events,
                        duplicates = batch.duplicates,
                        dead_lettered = dlq_count,
                        files = report.files.len(),
                        bytes = report.bytes,
                        ms = t.elapsed().as_millis() as u64,
                        "batch committed"
                    );
                    if let Some(sink) = self.sink {
                        sink.committed(crate::chsink::Committed {
                            partition: p,
                            first,
                            last,
                            files: report.files,
                        });
                    }
                    if let Some(alerts) = self.alerts {
                        alerts.committed(crate::alerts::Committed {
                            partition: p,
                            first,
                            last,
                            events: events.clone(),
                        });
                    }
                    break;
                }
                Err(e @ tokenmeter_aggregate::Error::FailPoint(_)) => return Err(e.into()),
                Err(e) => {
                    self.metrics.commit_failures.fetch_add(1, Relaxed);
                    warn!(partition = p, first, last, error = %e, retry_in_ms = backoff.as_millis() as u64, "batch commit failed; retrying (nothing is acknowledged until it succeeds)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    let Some(lk) = lock.upgrade() else {
                        revoked();
                        return Ok(outcome);
                    };
                    // A failed attempt may have left an intent or temporary files: recover first.
                    match self.lake.recover(&lk) {
                        Ok(resume) if resume > last => {
                            // The intent was recorded: rolled forward. Which files it holds
                            // is on disk only: the sink re-lists the lake.
                            if let Some(sink) = self.sink {
                                sink.resync();
                            }
                            if let Some(alerts) = self.alerts {
                                alerts.resync();
                            }
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(partition = p, error = %e, "recovery after a failed commit failed; retrying")
                        }
                    }
                }
            }
        }
        let m = self.metrics;
        m.committed_events.fetch_add(events.len() as u64, Relaxed);
        m.duplicates.fetch_add(batch.duplicates, Relaxed);
        m.dead_lettered.fetch_add(dlq_count, Relaxed);
        m.add_dlq(&batch.dlq_reasons);
        m.batches.fetch_add(1, Relaxed);
        m.observe_flush(t.elapsed());
        outcome.done = true;
        Ok(outcome)
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
    reason: &str,
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
            value: Some(reason),
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

/// Consumer lag per partition: the high watermark of the latest fetch responses minus the next
/// offset to read. Taken from librdkafka's statistics (no broker round trip) rather than a
/// ListOffsets request, which tansu 0.6 answers with the base offset of its newest record batch
/// plus one, short by the rest of that batch.
fn lag(consumer: &StreamConsumer<Ctx>, parts: &HashMap<i32, PartitionState>) -> BTreeMap<i32, u64> {
    let high = consumer.context().high.lock().expect("lock");
    parts
        .iter()
        .filter_map(|(p, s)| Some((*p, (high.get(p)? - s.next).max(0) as u64)))
        .collect()
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
