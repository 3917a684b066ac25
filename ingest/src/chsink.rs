//! The ClickHouse sink task of `tokenmeter aggregate --clickhouse-url`: ships the lake's
//! committed rollup files into ClickHouse, batch by batch in offset order per partition,
//! exactly once (the protocol is in `tokenmeter_aggregate::clickhouse` and ARCHITECTURE.md).
//!
//! It follows the lake, never leads it: the consumer loop commits a batch to the lake, then
//! notifies this task, which inserts on its own clock (about one INSERT per second, up to
//! [`MAX_INSERT_ROWS`] rows). ClickHouse down or slow delays only this task, which retries with
//! backoff; the lake and Kafka go on, and the task catches up from the lake when ClickHouse is
//! back. It ships only partitions whose lake lock this process holds, and holds those locks
//! through each INSERT, so a partition's next owner reads ClickHouse's progress only after the
//! last INSERT of the previous owner has finished.
//!
//! Not here: the tables and the insert itself (`tokenmeter_aggregate::clickhouse`).

use crate::metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokenmeter_aggregate::clickhouse::{
    ClickHouse, MAX_INSERT_ROWS, RollupFile, RollupRow, committed_rollup_files, read_rollup_file,
};
use tokenmeter_aggregate::lake::{Lake, PartitionLock};
use tokenmeter_schemas::layout::{self, FileId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// A batch the lake committed, with its rollup files (paths relative to the lake root).
#[derive(Debug, Clone)]
pub struct Committed {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub files: Vec<String>,
}

/// The lake locks this process holds, by partition (the consumer's rebalance callback keeps it).
pub type Owned = Arc<dyn Fn() -> HashMap<i32, Arc<PartitionLock>> + Send + Sync>;

/// Settings of the sink task.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Least time between two INSERTs.
    pub interval: Duration,
    /// Timeout of one INSERT (send and answer).
    pub timeout: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The consumer loop's handle on the sink task.
pub struct Sink {
    tx: mpsc::Sender<Committed>,
    /// Set when a notification could not be queued: the task re-lists the lake before shipping.
    overflow: Arc<AtomicBool>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Notifications queued at most; beyond, the task re-lists the lake instead.
const QUEUE: usize = 10_000;

impl Sink {
    /// Start the task.
    pub fn start(
        ch: ClickHouse,
        lake: Arc<Lake>,
        topic: String,
        owned: Owned,
        metrics: Arc<Metrics>,
        opts: SinkOptions,
    ) -> Sink {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(tokio::sync::Notify::new());
        metrics.ch_enabled.store(true, Ordering::Relaxed);
        let task = Task {
            ch,
            lake,
            topic,
            owned,
            metrics,
            opts,
            rx,
            overflow: overflow.clone(),
            pending: BTreeMap::new(),
            progress: None,
            owned_seen: BTreeSet::new(),
            rescan: true,
            attempt: 0,
            initialized: false,
            unsettled: None,
        };
        let task = tokio::spawn(task.run(stop.clone()));
        Sink {
            tx,
            overflow,
            stop,
            task,
        }
    }

    /// Tell the task about a committed batch (never blocks the consumer loop).
    pub fn committed(&self, c: Committed) {
        if c.files.is_empty() {
            return;
        }
        if self.tx.try_send(c).is_err() {
            self.overflow.store(true, Ordering::SeqCst);
        }
    }

    /// The lake changed in a way not notified (a commit rolled forward by recovery): list it
    /// again before shipping anything more.
    pub fn resync(&self) {
        self.overflow.store(true, Ordering::SeqCst);
    }

    /// Ship what is pending for up to `grace`, then stop. What is left stays in the lake and
    /// is shipped by the next run.
    pub async fn finish(self, grace: Duration) {
        self.stop.notify_one();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            warn!(
                grace_s = grace.as_secs(),
                "ClickHouse sink did not finish in time; the next run ships the rest from the lake"
            );
        }
    }
}

struct Task {
    ch: ClickHouse,
    lake: Arc<Lake>,
    topic: String,
    owned: Owned,
    metrics: Arc<Metrics>,
    opts: SinkOptions,
    rx: mpsc::Receiver<Committed>,
    overflow: Arc<AtomicBool>,
    /// Committed batches not yet in ClickHouse: (partition, first) → files.
    pending: BTreeMap<(i32, i64), Vec<RollupFile>>,
    /// ClickHouse's position per partition; `None` until read (again).
    progress: Option<BTreeMap<i32, i64>>,
    owned_seen: BTreeSet<i32>,
    rescan: bool,
    attempt: u64,
    /// Whether the tables were created (idempotent DDL, run once per process).
    initialized: bool,
    /// An INSERT whose outcome is unknown (its answer was lost): nothing is read or shipped
    /// until the server says it is no longer running. The locks of its partitions stay held
    /// till then, so their next owner cannot read a position that INSERT may still move.
    unsettled: Option<(String, Vec<Arc<PartitionLock>>)>,
}

impl Task {
    async fn run(mut self, stop: Arc<tokio::sync::Notify>) {
        let mut backoff = Duration::from_millis(200);
        let mut stopping = false;
        let mut last_insert = Instant::now() - self.opts.interval;
        loop {
            let wait = self.opts.interval.saturating_sub(last_insert.elapsed());
            if !stopping {
                tokio::select! {
                    _ = stop.notified() => { stopping = true; }
                    _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
                }
            }
            while let Ok(c) = self.rx.try_recv() {
                self.add(c);
            }
            if last_insert.elapsed() < self.opts.interval && !stopping {
                continue;
            }
            match self.step().await {
                Ok(shipped) => {
                    backoff = Duration::from_millis(200);
                    if shipped {
                        last_insert = Instant::now();
                    } else if stopping {
                        return;
                    }
                }
                Err(e) => {
                    self.metrics.ch_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ClickHouse sink: shipping rollups failed; retrying (the lake keeps every row, nothing is lost)");
                    self.progress = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn add(&mut self, c: Committed) {
        let prefix = format!("{}/", layout::ROLLUPS_DIR);
        let files: Vec<RollupFile> = c
            .files
            .into_iter()
            .filter(|f| f.starts_with(&prefix))
            .map(|rel| RollupFile {
                id: FileId {
                    topic: self.topic.clone(),
                    partition: c.partition,
                    first: c.first,
                    last: c.last,
                },
                rel,
            })
            .collect();
        if !files.is_empty() {
            self.pending.insert((c.partition, c.first), files);
        }
    }

    /// One shipping round; `Ok(true)` when an INSERT was made.
    async fn step(&mut self) -> tokenmeter_aggregate::Result<bool> {
        // The locks first: ClickHouse's progress read after them is final for these partitions
        // (no other process inserts for them while they are held).
        let owned = (self.owned)();
        let now: BTreeSet<i32> = owned.keys().copied().collect();
        if now != self.owned_seen {
            // Partitions came or went: another process may have shipped them meanwhile.
            self.owned_seen = now.clone();
            self.progress = None;
            self.rescan = true;
        }
        if self.overflow.swap(false, Ordering::SeqCst) {
            self.rescan = true;
        }
        if let Some((q, _locks)) = &self.unsettled {
            if self.ch.running(q).await? {
                return Err(tokenmeter_aggregate::Error::Config(format!(
                    "an earlier INSERT ({q}) is still running on the server; waiting for it to end before reading the sink's position"
                )));
            }
            self.unsettled = None;
        }
        if !self.initialized {
            self.ch.init().await?;
            self.initialized = true;
        }
        let progress = match &self.progress {
            Some(p) => p.clone(),
            None => {
                let p = self.ch.progress(&self.topic).await?;
                debug!(?p, "ClickHouse sink: progress read");
                self.progress = Some(p.clone());
                p
            }
        };
        if self.rescan {
            let mut committed = BTreeMap::new();
            for p in &now {
                committed.insert(*p, self.lake.state(&self.topic, *p)?.committed_through);
            }
            let (root, topic, after) = (
                self.lake.root().to_path_buf(),
                self.topic.clone(),
                progress.clone(),
            );
            let files = tokio::task::spawn_blocking(move || {
                committed_rollup_files(&root, &topic, &after, &committed)
            })
            .await
            .expect("listing task panicked")?;
            for f in files {
                let e = self
                    .pending
                    .entry((f.id.partition, f.id.first))
                    .or_default();
                if !e.contains(&f) {
                    e.push(f);
                }
            }
            self.rescan = false;
        }
        self.pending.retain(|(p, first), _| {
            now.contains(p) && progress.get(p).is_none_or(|done| first > done)
        });
        self.update_lag(&progress);
        // Whole batches, in offset order per partition, up to the row cap. Files are read
        // batch by batch and the reading stops at the first batch that does not fit (it waits
        // for the next INSERT), so at most one batch is read for nothing.
        if self.pending.is_empty() {
            return Ok(false);
        }
        let batches: Vec<Vec<RollupFile>> = self.pending.values().cloned().collect();
        let root: PathBuf = self.lake.root().to_path_buf();
        let (mut rows, shipped) = tokio::task::spawn_blocking(
            move || -> tokenmeter_aggregate::Result<(Vec<RollupRow>, Vec<FileId>)> {
                let mut rows: Vec<RollupRow> = Vec::new();
                let mut shipped = Vec::new();
                for files in batches {
                    let mut batch = Vec::new();
                    for f in &files {
                        batch.extend(read_rollup_file(&root, f)?);
                    }
                    if !rows.is_empty() && rows.len() + batch.len() > MAX_INSERT_ROWS {
                        break;
                    }
                    shipped.push(files[0].id.clone());
                    rows.extend(batch);
                }
                Ok((rows, shipped))
            },
        )
        .await
        .expect("reading task panicked")?;
        let shipped: Vec<(i32, i64, i64)> = shipped
            .iter()
            .map(|id| (id.partition, id.first, id.last))
            .collect();
        // Hold the locks of the shipped partitions through the INSERT.
        let held: Vec<Arc<PartitionLock>> = shipped
            .iter()
            .map(|(p, _, _)| *p)
            .collect::<BTreeSet<_>>()
            .iter()
            .filter_map(|p| owned.get(p).cloned())
            .collect();
        self.attempt += 1;
        let query_id = format!(
            "tokenmeter-{}-{}-{}-{}",
            self.topic,
            std::process::id(),
            self.attempt,
            chrono::Utc::now().timestamp_micros()
        );
        let t = Instant::now();
        let res = self
            .ch
            .insert(&mut rows, &query_id, self.opts.timeout)
            .await;
        if let Err(e) = res {
            // Its outcome is unknown until the server stops running it; then the progress is
            // read again (the next steps), so it is neither lost nor repeated.
            self.unsettled = Some((query_id, held));
            return Err(e);
        }
        drop(held);
        let progress = self.progress.get_or_insert_with(BTreeMap::new);
        for (p, first, last) in &shipped {
            self.pending.remove(&(*p, *first));
            let e = progress.entry(*p).or_insert(*last);
            *e = (*e).max(*last);
        }
        let m = &self.metrics;
        m.ch_inserts.fetch_add(1, Ordering::Relaxed);
        m.ch_rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let progress = progress.clone();
        self.update_lag(&progress);
        info!(
            rows = rows.len(),
            batches = shipped.len(),
            pending_batches = self.pending.len(),
            ms = t.elapsed().as_millis() as u64,
            "ClickHouse: rollups inserted"
        );
        Ok(true)
    }

    fn update_lag(&self, progress: &BTreeMap<i32, i64>) {
        let mut lag = 0i64;
        let mut last_pending: BTreeMap<i32, i64> = BTreeMap::new();
        for ((p, _), fs) in &self.pending {
            if let Some(f) = fs.first() {
                last_pending.insert(*p, f.id.last);
            }
        }
        for (p, last) in last_pending {
            lag += last - progress.get(&p).copied().unwrap_or(-1);
        }
        self.metrics
            .ch_pending_batches
            .store(self.pending.len() as u64, Ordering::Relaxed);
        self.metrics
            .ch_lag_messages
            .store(lag.max(0) as u64, Ordering::Relaxed);
    }
}
