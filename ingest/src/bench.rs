//! Measurements of `tokenmeter bench`: the aggregator's stages without a broker (decode,
//! validate, price, dedupe, fold, Parquet encode and commit) timed per stage over batches,
//! decoding alone, the lake's bytes on disk, and a consumer that only counts a topic's messages
//! (the ceiling the aggregator is compared with).
//!
//! It runs the real code — `decode_event`, `PricedEvent::new`, the `DedupeIndex`, the rollup
//! `fold` and `Lake::commit` — never a copy of it. Not here: the mock cluster, the aggregator run,
//! the reports and the summary (the CLI's `src/bench.rs`); no figure here is a pass/fail goal.

use crate::kafka::client_config;
use crate::{Error, Result};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use tokenmeter_aggregate::dedupe::{self, DedupeIndex, Verdict};
use tokenmeter_aggregate::lake::{Lake, LakeOptions};
use tokenmeter_aggregate::{PriceBook, PricedEvent, rollup};
use tokenmeter_schemas::{DecodeOptions, decode_event};

/// Time spent in each stage of the broker-free pipeline, summed over all batches.
#[derive(Debug, Clone, Default)]
pub struct Stages {
    /// JSON to a typed event (`decode_event` minus its validation).
    pub decode: Duration,
    /// The event's rules (`UsageEvent::validate`, timed by running it once more).
    pub validate: Duration,
    /// Retry keys checked against the partition's index.
    pub dedupe: Duration,
    /// `PricedEvent::new`: billable buckets, exact cost, content fingerprint.
    pub price: Duration,
    /// The hourly rollup fold over the batch (timed in a pass of its own).
    pub fold: Duration,
    /// `Lake::commit` minus the fold: Arrow batches, Parquet of events (zstd) and rollups (LZ4),
    /// fsync, rename, state file. (`Lake::commit` folds each date for its rollup file; that
    /// same work is counted under `fold`.)
    pub encode: Duration,
}

impl Stages {
    /// `(name, time)` in pipeline order.
    pub fn named(&self) -> [(&'static str, Duration); 6] {
        [
            ("decode", self.decode),
            ("validate", self.validate),
            ("dedupe", self.dedupe),
            ("price", self.price),
            ("fold", self.fold),
            ("encode", self.encode),
        ]
    }
}

/// What the broker-free pipeline did and how long it took.
#[derive(Debug, Clone, Default)]
pub struct PipelineRun {
    /// Messages fed in.
    pub messages: u64,
    /// Events committed to the lake.
    pub committed: u64,
    /// Messages that failed decoding or validation.
    pub invalid: u64,
    /// Retries and conflicts the dedupe index dropped.
    pub duplicates: u64,
    /// Batches committed.
    pub batches: u64,
    /// JSON bytes fed in.
    pub json_bytes: u64,
    /// Wall time of the whole loop on this one thread, without the fold's own timing pass
    /// (the aggregator folds once, inside `Lake::commit`).
    pub elapsed: Duration,
    pub stages: Stages,
}

/// Run `messages` through the aggregator's stages on this thread into a fresh lake at
/// `lake_dir` (topic `topic`, partition 0), committing every `batch` messages as the
/// aggregator does. The lake must be new: the bench measures a first pass, not a replay.
pub fn pipeline(
    messages: &[Vec<u8>],
    book: &PriceBook,
    lake_dir: &Path,
    topic: &str,
    batch: usize,
    opts: &DecodeOptions,
) -> Result<PipelineRun> {
    let lake = Lake::open(lake_dir, LakeOptions::default())?;
    let lock = lake.try_lock(topic, 0)?.ok_or_else(|| {
        Error::Config(format!(
            "the bench lake {} is locked by another process; give the bench a directory of its own",
            lake_dir.display()
        ))
    })?;
    let mut next = lake.recover(&lock)?;
    if next != 0 {
        return Err(Error::Config(format!(
            "{} already holds committed batches; the bench needs an empty directory",
            lake_dir.display()
        )));
    }
    let mut index = DedupeIndex::new(4_000_000);
    let mut run = PipelineRun {
        messages: messages.len() as u64,
        json_bytes: messages.iter().map(|m| m.len() as u64).sum(),
        ..Default::default()
    };
    let s = &mut run.stages;
    let started = Instant::now();
    for chunk in messages.chunks(batch.max(1)) {
        let first = next;
        let last = next + chunk.len() as i64 - 1;
        next = last + 1;

        let t = Instant::now();
        let mut events = Vec::with_capacity(chunk.len());
        for (i, m) in chunk.iter().enumerate() {
            match decode_event(m, opts) {
                Ok(e) => events.push((first + i as i64, e)),
                Err(_) => run.invalid += 1,
            }
        }
        let decoded = t.elapsed();
        let t = Instant::now();
        for (_, e) in &events {
            black_box(e.validate(opts)).ok();
        }
        let validated = t.elapsed();
        s.validate += validated;
        s.decode += decoded.saturating_sub(validated);

        let t = Instant::now();
        let priced: Vec<PricedEvent> = events
            .into_iter()
            .map(|(off, e)| PricedEvent::new(e, book, 0, off))
            .collect();
        s.price += t.elapsed();

        let t = Instant::now();
        let mut kept = Vec::with_capacity(priced.len());
        for p in priced {
            let date = p.time.date_naive();
            if !index.is_loaded(date) {
                index.load(date, lake.load_keys(&lock, date, first - 1)?);
            }
            match index.check(date, dedupe::key_of(&p.event), p.fingerprint) {
                Verdict::New => kept.push(p),
                Verdict::Duplicate | Verdict::Conflict { .. } => run.duplicates += 1,
            }
        }
        s.dedupe += t.elapsed();

        let t = Instant::now();
        black_box(rollup::fold(kept.iter()));
        let fold = t.elapsed();
        s.fold += fold;

        let t = Instant::now();
        let sealed = index.seal();
        lake.commit(&lock, first, last, &kept)?;
        index.committed(sealed);
        s.encode += t.elapsed().saturating_sub(fold);
        run.committed += kept.len() as u64;
        run.batches += 1;
    }
    run.elapsed = started.elapsed().saturating_sub(run.stages.fold);
    Ok(run)
}

/// Decode (and validate) every message with the real decoder; `(events, time)`.
pub fn decode_only(messages: &[Vec<u8>], opts: &DecodeOptions) -> (u64, Duration) {
    let t = Instant::now();
    let ok = messages
        .iter()
        .filter(|m| black_box(decode_event(m, opts)).is_ok())
        .count();
    (ok as u64, t.elapsed())
}

/// Bytes of the `.parquet` files under `dir` (recursively); 0 if it does not exist.
pub fn parquet_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(Error::io(format!("reading {}", path.display())))?;
        if meta.is_dir() {
            total += parquet_bytes(&path)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Consume `topic` from the beginning in consumer group `group` with the aggregator's fetch
/// settings, only counting messages, until `expected` have arrived; `(count, time)`. The time
/// starts before the group join, as the aggregator's does.
pub fn count_topic(
    brokers: &str,
    topic: &str,
    group: &str,
    expected: u64,
    timeout: Duration,
) -> Result<(u64, Duration)> {
    let mut cc = client_config(brokers, &[]);
    cc.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // It stops at a count, not at partition ends.
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "65536")
        .set("fetch.message.max.bytes", "33554432");
    let started = Instant::now();
    let consumer: BaseConsumer = cc
        .create()
        .map_err(Error::kafka("creating the counting consumer"))?;
    consumer
        .subscribe(&[topic])
        .map_err(Error::kafka(format!("subscribing to {topic}")))?;
    let mut count = 0u64;
    while count < expected {
        if started.elapsed() > timeout {
            return Err(Error::Config(format!(
                "the counting consumer saw {count} of {expected} messages of {topic} in {timeout:?}; is the broker up and the topic complete?"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                black_box(m.payload().map(<[u8]>::len));
                count += 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "kafka error; the client retries by itself"),
        }
    }
    Ok((count, started.elapsed()))
}

/// Messages `topic` holds now: the sum over its partitions of high − low watermark (what a
/// consumer from the beginning would read, on a topic without transactions or compaction).
pub fn topic_messages(brokers: &str, topic: &str) -> Result<u64> {
    let consumer: BaseConsumer = client_config(brokers, &[])
        .create()
        .map_err(Error::kafka("creating a metadata client"))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(Error::kafka(format!("reading the metadata of {topic}")))?;
    let mut total = 0u64;
    for p in md
        .topics()
        .first()
        .map(|t| t.partitions())
        .unwrap_or_default()
    {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(Error::kafka(format!(
                "reading the offsets of {topic}/{}",
                p.id()
            )))?;
        total += (high - low).max(0) as u64;
    }
    Ok(total)
}
