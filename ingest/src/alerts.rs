//! The budget alerts task of `tokenmeter aggregate --alerts-topic`: follows the lake's commits,
//! keeps each owned partition's month-to-date spend per budgeted tenant and agent, and raises
//! one alert per (tenant, agent, month, threshold) — a JSON message on the alerts topic, exactly
//! once, and an HTTP `POST` to the webhook, at least once with a stable `Idempotency-Key`
//! (ARCHITECTURE.md, "Budget alerts invariant").
//!
//! - Alerts are evaluated on **committed** data only: the consumer loop hands each batch to this
//!   task after its lake commit (never blocking: a full queue makes the task read the lake
//!   instead), and spend is rebuilt from the lake's committed raw events. A replay after a crash
//!   sees the same spend, so finds the same crossings.
//! - Per input partition, the holder of its lake lock owns its budgets (tenants are message keys,
//!   so a tenant's events live in one partition) and its alert ledger
//!   (`_state/{topic}/alerts/p{N}.json`, written atomically under the lock): `evaluated_through`
//!   and each alert's state, intent → on the alerts topic → webhook delivered.
//! - An alert is recorded (intent) before it is produced; an intent whose outcome is not known
//!   (the process died, or the produce failed) is looked up on the alerts topic — read to its end,
//!   not sized by ListOffsets — before it is produced again.
//! - Webhook deliveries run in a task of their own with backoff up to 30 s: a webhook that is down
//!   delays only webhook deliveries.
//!
//! Nothing here can fail or delay a lake commit: errors are logged and retried with backoff.
//!
//! Not here: the budgets' arithmetic and the ledger's format ([`tokenmeter_aggregate::budgets`]),
//! the files ([`tokenmeter_aggregate::lake`]), the HTTP client ([`crate::webhook`]).

use crate::kafka::{client_config, producer_config};
use crate::metrics::Metrics;
use crate::webhook::{Outcome, Webhook};
use crate::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokenmeter_aggregate::budgets::{
    self, Budgets, Due, KafkaAck, Ledger, Period, Scope, SpendEvent, Tracker, WebhookState,
};
use tokenmeter_aggregate::lake::{EventFile, FailAction, FailPoint, Lake, PartitionLock, trip};
use tokenmeter_aggregate::{Money, PriceBook, PricedEvent};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Header carrying the alert id on alerts-topic messages (the payload's `id` too).
pub const ALERT_ID_HEADER: &str = "tokenmeter.alert.id";

/// Settings of the alerts task.
#[derive(Debug, Clone)]
pub struct AlertsOptions {
    /// Topic the alerts are produced to (must exist).
    pub topic: String,
    /// Webhook URL (`http://`), if alerts are also to be POSTed.
    pub webhook: Option<String>,
    /// Timeout of one webhook request.
    pub webhook_timeout: Duration,
    /// Longest wait between two attempts (webhook and alerts topic).
    pub max_backoff: Duration,
    /// How long a stopping aggregator waits for alerts to be sent and delivered.
    pub shutdown_grace: Duration,
    /// Test hook: fail at an alert fail point ([`FailPoint::AlertAfterIntent`],
    /// [`FailPoint::AlertAfterSend`], [`FailPoint::WebhookAfterPost`]).
    pub fail_point: Option<(FailPoint, u64)>,
    pub fail_action: FailAction,
}

impl AlertsOptions {
    /// Defaults for a topic.
    pub fn new(topic: impl Into<String>) -> Self {
        AlertsOptions {
            topic: topic.into(),
            webhook: None,
            webhook_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            fail_point: None,
            fail_action: FailAction::Error,
        }
    }
}

/// A batch the lake committed, with its events.
#[derive(Debug, Clone)]
pub struct Committed {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub events: Arc<Vec<PricedEvent>>,
}

/// Notifications queued at most; beyond, the task reads the lake instead.
const QUEUE: usize = 64;
/// How long one produce to the alerts topic may take before its outcome is taken as unknown.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the alerts topic may take to be read to its end.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// The consumer loop's handle on the alerts task.
pub struct Alerts {
    tx: mpsc::Sender<Committed>,
    overflow: Arc<AtomicBool>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    grace: Duration,
}

impl Alerts {
    /// Check the settings and the alerts topic, and start the task. `owned` gives the lake locks
    /// this process holds (the consumer's rebalance callback keeps them).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        opts: AlertsOptions,
        brokers: &str,
        kafka_extra: &[(String, String)],
        lake: Arc<Lake>,
        input_topic: String,
        book: Arc<PriceBook>,
        owned: crate::chsink::Owned,
        metrics: Arc<Metrics>,
    ) -> Result<Alerts> {
        let budgets = Arc::new(Budgets::from_book(&book));
        if budgets.is_empty() {
            warn!(book = %book.origin, "--alerts-topic is set but the price book has no [[tenant.budget]]: no alert will be raised");
        }
        let webhook = opts
            .webhook
            .as_deref()
            .map(|u| Webhook::new(u, opts.webhook_timeout))
            .transpose()?;
        let mut pc = producer_config(brokers, kafka_extra);
        // A produce that is not acknowledged within this is looked up before it is retried.
        pc.set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string());
        let producer: FutureProducer = pc
            .create()
            .map_err(Error::kafka("creating the alerts producer"))?;
        check_topic(&producer, &opts.topic)?;
        info!(topic = %opts.topic, webhook = ?webhook.as_ref().map(|w| w.uri().to_string()), budgets = budgets.len(), "budget alerts on");
        metrics.alerts_enabled.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(tokio::sync::Notify::new());
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (jobs, hook_task) = match webhook {
            Some(w) => {
                let (jtx, jrx) = mpsc::unbounded_channel();
                let h = tokio::spawn(deliver(w, jrx, done_tx, metrics.clone(), opts.clone()));
                (Some(jtx), Some(h))
            }
            None => (None, None),
        };
        let grace = opts.shutdown_grace;
        let task = Task {
            lake,
            topic: input_topic,
            book,
            budgets,
            owned,
            metrics,
            brokers: brokers.to_string(),
            kafka_extra: kafka_extra.to_vec(),
            producer,
            rx,
            overflow: overflow.clone(),
            parts: BTreeMap::new(),
            queue: VecDeque::new(),
            jobs,
            hook_task,
            done_rx,
            delivered: Vec::new(),
            intents: 0,
            sends: 0,
            opts,
        };
        let task = tokio::spawn(task.run(stop.clone()));
        Ok(Alerts {
            tx,
            overflow,
            stop,
            task,
            grace,
        })
    }

    /// Tell the task about a committed batch (never blocks the consumer loop).
    pub fn committed(&self, c: Committed) {
        if self.tx.try_send(c).is_err() {
            self.overflow.store(true, Ordering::SeqCst);
        }
    }

    /// The lake changed in a way not notified (a commit rolled forward by recovery): evaluate
    /// from the lake before going on.
    pub fn resync(&self) {
        self.overflow.store(true, Ordering::SeqCst);
    }

    /// Evaluate what is queued and send and deliver what is pending, for up to the shutdown
    /// grace; then stop. What is left stays in the ledgers and the lake for the next run.
    pub async fn finish(self) {
        self.stop.notify_one();
        let limit = self.grace + Duration::from_secs(5);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            warn!(
                grace_s = limit.as_secs(),
                "the alerts task did not finish in time; the next run sends what is left"
            );
        }
    }
}

/// Fail early on an alerts topic the brokers do not have (a broker that cannot be reached is
/// only logged: the task retries).
fn check_topic(producer: &FutureProducer, topic: &str) -> Result<()> {
    use rdkafka::producer::Producer;
    match producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
    {
        Ok(md) => match md.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(Error::Config(format!(
                "the alerts topic {topic:?} does not exist on the brokers: create it (any number of partitions; alerts are keyed by tenant), or fix --alerts-topic"
            ))),
        },
        Err(e) => {
            warn!(topic, error = %e, "cannot check the alerts topic now; alerts are retried until it can be reached");
            Ok(())
        }
    }
}

/// One owned input partition's budgets.
struct Part {
    /// The partition's lake lock as the consumer holds it. Weak: a revoked partition's lock is
    /// released as soon as no operation of this task is using it; each operation (a ledger
    /// write, a produce, reading the lake) holds it for its duration.
    lock: Weak<PartitionLock>,
    ledger: Ledger,
    ids: HashSet<String>,
    tracker: Tracker,
    /// Intents whose produce outcome is unknown: looked up on the alerts topic first.
    unknown: HashSet<String>,
    /// Alerts handed to the webhook task.
    queued: HashSet<String>,
}

/// A webhook delivery to make.
struct Job {
    partition: i32,
    id: String,
    body: bytes::Bytes,
    /// The partition's lock when the job was queued: once it is gone (the partition moved), the
    /// new owner delivers instead.
    lock: Weak<PartitionLock>,
}

struct Task {
    lake: Arc<Lake>,
    topic: String,
    book: Arc<PriceBook>,
    budgets: Arc<Budgets>,
    owned: crate::chsink::Owned,
    metrics: Arc<Metrics>,
    brokers: String,
    kafka_extra: Vec<(String, String)>,
    producer: FutureProducer,
    rx: mpsc::Receiver<Committed>,
    overflow: Arc<AtomicBool>,
    parts: BTreeMap<i32, Part>,
    queue: VecDeque<Committed>,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    hook_task: Option<tokio::task::JoinHandle<()>>,
    done_rx: mpsc::UnboundedReceiver<(i32, String)>,
    delivered: Vec<(i32, String)>,
    /// Fail-point counters: intents recorded and sends acknowledged by this process.
    intents: u64,
    sends: u64,
    opts: AlertsOptions,
}

/// What evaluating committed batches found: the tracker after them, the alerts due with the
/// offset of the batch that reached each, and events that could not be rated.
struct Evaluated {
    tracker: Tracker,
    due: Vec<(Due, i64)>,
    unrated: u64,
    first_error: Option<String>,
}

impl Part {
    /// The partition's lock, held by the caller for an operation; an error once the partition
    /// moved to another owner (its budgets are then its business).
    fn lock(&self, p: i32) -> Result<Arc<PartitionLock>> {
        self.lock.upgrade().ok_or_else(|| {
            Error::Alerts(format!(
                "partition {p} is no longer owned; its next owner evaluates its budgets"
            ))
        })
    }
}

impl Task {
    async fn run(mut self, stop: Arc<tokio::sync::Notify>) {
        let mut backoff = MIN_BACKOFF;
        let mut deadline: Option<Instant> = None;
        loop {
            let wait = if deadline.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                _ = stop.notified(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + self.opts.shutdown_grace);
                }
                Some(c) = self.rx.recv() => self.queue.push_back(c),
                Some(d) = self.done_rx.recv() => self.delivered.push(d),
                _ = tokio::time::sleep(wait) => {}
            }
            while let Ok(c) = self.rx.try_recv() {
                self.queue.push_back(c);
            }
            while let Ok(d) = self.done_rx.try_recv() {
                self.delivered.push(d);
            }
            match self.step().await {
                Ok(()) => backoff = MIN_BACKOFF,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "budget alerts: a step failed; retrying (the lake and its commits are not affected)");
                    let pause = deadline.map_or(backoff, |d| {
                        backoff.min(d.saturating_duration_since(Instant::now()))
                    });
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(self.opts.max_backoff);
                }
            }
            self.update_gauges();
            if let Some(d) = deadline {
                if self.idle() {
                    break;
                }
                if Instant::now() >= d {
                    warn!(
                        unsent = self.metrics.alerts_unsent.load(Ordering::Relaxed),
                        webhook_pending =
                            self.metrics.alerts_webhook_pending.load(Ordering::Relaxed),
                        "stopping with alerts not sent or delivered yet: they are in the ledgers, and the next owner of their partitions sends them"
                    );
                    break;
                }
            }
        }
        if let Some(h) = self.hook_task.take() {
            h.abort();
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty()
            && self.rx.is_empty()
            && !self.overflow.load(Ordering::SeqCst)
            && self.parts.values().all(|p| {
                p.ledger.unsent().next().is_none()
                    && (self.jobs.is_none() || p.ledger.undelivered().next().is_none())
            })
    }

    fn update_gauges(&self) {
        let unsent: usize = self.parts.values().map(|p| p.ledger.unsent().count()).sum();
        let pending: usize = self
            .parts
            .values()
            .map(|p| p.ledger.undelivered().count())
            .sum();
        self.metrics
            .alerts_unsent
            .store(unsent as u64, Ordering::Relaxed);
        self.metrics.alerts_webhook_pending.store(
            if self.jobs.is_some() { pending } else { 0 } as u64,
            Ordering::Relaxed,
        );
    }

    async fn step(&mut self) -> Result<()> {
        let owned = (self.owned)();
        // Partitions that went, or came back under a new lock (another owner may have written
        // their ledgers meanwhile), are rebuilt from disk.
        self.parts.retain(|p, part| {
            owned
                .get(p)
                .is_some_and(|l| Weak::ptr_eq(&Arc::downgrade(l), &part.lock))
        });
        let new: Vec<(i32, Arc<PartitionLock>)> = owned
            .into_iter()
            .filter(|(p, _)| !self.parts.contains_key(p))
            .collect();
        for (p, id) in std::mem::take(&mut self.delivered) {
            self.mark_delivered(p, &id).await?;
        }
        // Each new partition's lock is held while it is taken over, not beyond.
        for (p, lock) in new {
            self.init(p, lock).await?;
        }
        while let Some(c) = self.queue.pop_front() {
            if let Err(e) = self.apply(&c).await {
                self.parts.remove(&c.partition);
                return Err(e);
            }
        }
        if self.overflow.swap(false, Ordering::SeqCst) {
            let ps: Vec<i32> = self.parts.keys().copied().collect();
            for p in ps {
                if let Err(e) = self.catch_up(p).await {
                    self.parts.remove(&p);
                    self.overflow.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        self.send().await?;
        self.queue_webhooks();
        Ok(())
    }

    /// Take over a partition's budgets: its ledger (created if missing), then every committed
    /// batch it has not evaluated.
    async fn init(&mut self, p: i32, lock: Arc<PartitionLock>) -> Result<()> {
        let (lake, lk) = (self.lake.clone(), lock.clone());
        let ledger = tokio::task::spawn_blocking(move || lake.ensure_ledger(&lk))
            .await
            .expect("ledger task panicked")?;
        // Intents of an earlier run may be on the topic already.
        let unknown: HashSet<String> = ledger.unsent().map(|e| e.alert.id.clone()).collect();
        info!(
            partition = p,
            evaluated_through = ledger.evaluated_through,
            alerts = ledger.alerts.len(),
            unsent = unknown.len(),
            "budgets: partition taken over"
        );
        self.parts.insert(
            p,
            Part {
                lock: Arc::downgrade(&lock),
                ids: ledger.ids(),
                ledger,
                tracker: Tracker::default(),
                unknown,
                queued: HashSet::new(),
            },
        );
        if let Err(e) = self.catch_up(p).await {
            self.parts.remove(&p);
            return Err(e);
        }
        Ok(())
    }

    /// One committed batch: folded in if it follows what was evaluated, else the lake is read.
    async fn apply(&mut self, c: &Committed) -> Result<()> {
        let Some(part) = self.parts.get_mut(&c.partition) else {
            return Ok(()); // not owned (any more): its owner evaluates it from the lake
        };
        let e = part.ledger.evaluated_through;
        if c.last <= e {
            return Ok(()); // already evaluated from the lake
        }
        if c.first != e + 1 {
            return self.catch_up(c.partition).await;
        }
        let lock = part.lock(c.partition)?;
        let tracker = std::mem::take(&mut part.tracker);
        let (lake, book, budgets) = (self.lake.clone(), self.book.clone(), self.budgets.clone());
        let (ids, events, last) = (part.ids.clone(), c.events.clone(), c.last);
        let ev = tokio::task::spawn_blocking(move || {
            fold(
                &lake, &lock, &book, &budgets, tracker, ids, e, &events, last,
            )
        })
        .await
        .expect("budget task panicked")?;
        self.record(c.partition, ev, last).await
    }

    /// Evaluate every committed batch of a partition after its `evaluated_through`, batch by
    /// batch in offset order, from the lake's files.
    async fn catch_up(&mut self, p: i32) -> Result<()> {
        let part = self.parts.get_mut(&p).expect("owned partition");
        let through = self.lake.state(&self.topic, p)?.committed_through;
        let e = part.ledger.evaluated_through;
        if through <= e {
            return Ok(());
        }
        let lock = part.lock(p)?;
        let tracker = std::mem::take(&mut part.tracker);
        let (lake, book, budgets, ids) = (
            self.lake.clone(),
            self.book.clone(),
            self.budgets.clone(),
            part.ids.clone(),
        );
        let t = Instant::now();
        let ev = tokio::task::spawn_blocking(move || {
            evaluate_lake(&lake, &lock, &book, &budgets, tracker, ids, e, through)
        })
        .await
        .expect("budget task panicked")?;
        info!(
            partition = p,
            from = e + 1,
            through,
            alerts = ev.due.len(),
            ms = t.elapsed().as_millis() as u64,
            "budgets: committed batches evaluated from the lake"
        );
        self.record(p, ev, through).await
    }

    /// Record the alerts found (intents) and the new `evaluated_through` in the ledger.
    async fn record(&mut self, p: i32, ev: Evaluated, through: i64) -> Result<()> {
        if ev.unrated > 0 {
            warn!(
                partition = p,
                events = ev.unrated,
                error = ev.first_error.as_deref().unwrap_or_default(),
                "budgets: events left out of the spend because they cannot be rated; fix the price book and restart"
            );
        }
        let webhook = self.jobs.is_some();
        let part = self.parts.get_mut(&p).expect("owned partition");
        part.tracker = ev.tracker;
        let now = chrono::Utc::now();
        let n = ev.due.len();
        for (d, at) in ev.due {
            let a = d.alert(&self.topic, p, at, now);
            info!(id = %a.id, spend = %a.spend, budget = %a.budget, currency = %a.currency, through_offset = at, "budget threshold reached");
            part.ids.insert(a.id.clone());
            part.ledger.record(a, webhook);
        }
        part.ledger.evaluated_through = through;
        if let Err(e) = persist(&self.lake, part).await {
            self.parts.remove(&p);
            return Err(e);
        }
        for _ in 0..n {
            self.intents += 1;
            trip(
                self.opts.fail_point,
                self.opts.fail_action,
                FailPoint::AlertAfterIntent,
                self.intents,
            )?;
        }
        Ok(())
    }

    /// Put every recorded alert on the alerts topic: look up those whose outcome is unknown,
    /// produce the others, and record each acknowledgement.
    async fn send(&mut self) -> Result<()> {
        if self.parts.values().all(|p| p.unknown.is_empty()) {
            // nothing to look up
        } else {
            let (brokers, extra, topic) = (
                self.brokers.clone(),
                self.kafka_extra.clone(),
                self.opts.topic.clone(),
            );
            let t = Instant::now();
            let found = tokio::task::spawn_blocking(move || {
                read_alert_ids(&brokers, &extra, &topic, LOOKUP_TIMEOUT)
            })
            .await
            .expect("lookup task panicked")?;
            info!(
                alerts_on_topic = found.len(),
                ms = t.elapsed().as_millis() as u64,
                "alerts topic read to its end to look up alerts of unknown outcome"
            );
            let ps: Vec<i32> = self.parts.keys().copied().collect();
            for p in ps {
                let part = self.parts.get_mut(&p).expect("owned partition");
                let mut changed = false;
                for id in std::mem::take(&mut part.unknown) {
                    let Some(e) = part.ledger.get_mut(&id).filter(|e| e.kafka.is_none()) else {
                        continue;
                    };
                    match found.get(&id) {
                        Some(ack) => {
                            info!(%id, partition = ack.partition, offset = ack.offset, "alert found on the alerts topic: not produced again");
                            e.kafka = Some(*ack);
                            changed = true;
                        }
                        None => {
                            info!(%id, "alert of unknown outcome is not on the alerts topic: producing it")
                        }
                    }
                }
                if changed && let Err(e) = persist(&self.lake, part).await {
                    self.parts.remove(&p);
                    return Err(e);
                }
            }
        }
        let ps: Vec<i32> = self.parts.keys().copied().collect();
        for p in ps {
            let part = self.parts.get(&p).expect("owned partition");
            let unsent: Vec<budgets::Alert> =
                part.ledger.unsent().map(|e| e.alert.clone()).collect();
            for alert in unsent {
                // The partition's lock is held through the produce and the ledger write: its
                // next owner reads the ledger only after both.
                let lock = match self.parts[&p].lock(p) {
                    Ok(l) => l,
                    Err(e) => {
                        self.parts.remove(&p);
                        return Err(e);
                    }
                };
                let payload = serde_json::to_vec(&alert).expect("alert serializes");
                let headers = OwnedHeaders::new().insert(Header {
                    key: ALERT_ID_HEADER,
                    value: Some(alert.id.as_str()),
                });
                let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.opts.topic)
                    .key(alert.tenant_id.as_str())
                    .payload(payload.as_slice())
                    .headers(headers);
                let res = self
                    .producer
                    .send(record, Timeout::After(SEND_TIMEOUT))
                    .await;
                let part = self.parts.get_mut(&p).expect("owned partition");
                match res {
                    Ok(d) => {
                        self.sends += 1;
                        trip(
                            self.opts.fail_point,
                            self.opts.fail_action,
                            FailPoint::AlertAfterSend,
                            self.sends,
                        )?;
                        let e = part.ledger.get_mut(&alert.id).expect("recorded alert");
                        e.kafka = Some(KafkaAck {
                            partition: d.partition,
                            offset: d.offset,
                        });
                        self.metrics.add_alert(alert.threshold);
                        info!(id = %alert.id, partition = d.partition, offset = d.offset, "budget alert on the alerts topic");
                        if let Err(e) = persist(&self.lake, part).await {
                            self.parts.remove(&p);
                            return Err(e);
                        }
                    }
                    Err((e, _)) => {
                        // It may have been written anyway: look it up before producing again.
                        part.unknown.insert(alert.id.clone());
                        return Err(Error::Kafka {
                            context: format!("producing alert {} to {}", alert.id, self.opts.topic),
                            source: e,
                        });
                    }
                }
                drop(lock);
            }
        }
        Ok(())
    }

    /// Hand alerts on the topic whose webhook delivery is pending to the webhook task.
    fn queue_webhooks(&mut self) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        for (p, part) in self.parts.iter_mut() {
            for e in part.ledger.undelivered() {
                if part.queued.insert(e.alert.id.clone()) {
                    let body = serde_json::to_vec(&e.alert).expect("alert serializes");
                    let _ = jobs.send(Job {
                        partition: *p,
                        id: e.alert.id.clone(),
                        body: body.into(),
                        lock: part.lock.clone(),
                    });
                }
            }
        }
    }

    async fn mark_delivered(&mut self, p: i32, id: &str) -> Result<()> {
        let Some(part) = self.parts.get_mut(&p) else {
            return Ok(()); // rebuilt from its ledger: queued again, and the task skips the POST
        };
        let Some(e) = part.ledger.get_mut(id) else {
            return Ok(());
        };
        if e.webhook == WebhookState::Delivered {
            return Ok(());
        }
        e.webhook = WebhookState::Delivered;
        if let Err(e) = persist(&self.lake, part).await {
            self.parts.remove(&p);
            return Err(e);
        }
        Ok(())
    }
}

/// Write a partition's ledger under its lock (off the async threads).
async fn persist(lake: &Arc<Lake>, part: &Part) -> Result<()> {
    let p = part.ledger.partition;
    let (lake, lock, ledger) = (lake.clone(), part.lock(p)?, part.ledger.clone());
    tokio::task::spawn_blocking(move || lake.write_ledger(&lock, &ledger))
        .await
        .expect("ledger task panicked")?;
    Ok(())
}

/// Spend per budgeted scope of one month, from the partition's committed events of its dates
/// with offsets ≤ `through`.
fn load_month(
    lake: &Lake,
    lock: &PartitionLock,
    book: &PriceBook,
    budgets: &Budgets,
    period: Period,
    through: i64,
) -> Result<(HashMap<Scope, Money>, u64, Option<String>)> {
    let files = lake.committed_event_files(lock, Some(&period.days()), through)?;
    let mut events = Vec::new();
    for f in &files {
        events.extend(lake.read_spend_events(f, |t| budgets.watches(t))?);
    }
    let rated = budgets::rate(book, budgets, &events);
    let spend = rated
        .spend
        .into_iter()
        .filter(|((p, _), _)| *p == period)
        .map(|((_, s), v)| (s, v))
        .collect();
    Ok((spend, rated.unrated, rated.first_error))
}

/// Fold one committed batch (in memory) into the tracker, loading the months it touches first.
#[allow(clippy::too_many_arguments)]
fn fold(
    lake: &Lake,
    lock: &PartitionLock,
    book: &PriceBook,
    budgets: &Budgets,
    mut tracker: Tracker,
    alerted: HashSet<String>,
    evaluated: i64,
    events: &[PricedEvent],
    last: i64,
) -> Result<Evaluated> {
    let events: Vec<SpendEvent> = events
        .iter()
        .filter(|e| budgets.watches(&e.event.tenant_id))
        .map(SpendEvent::of)
        .collect();
    let rated = budgets::rate(book, budgets, &events);
    let (mut unrated, mut first_error) = (rated.unrated, rated.first_error);
    let months: BTreeSet<Period> = rated.spend.keys().map(|(p, _)| *p).collect();
    for m in months {
        if !tracker.is_loaded(m) {
            let (spend, u, err) = load_month(lake, lock, book, budgets, m, evaluated)?;
            unrated += u;
            first_error = first_error.or(err);
            tracker.load(m, spend);
        }
    }
    let touched = tracker.add(&rated.spend);
    let due = tracker
        .due(budgets, &touched, &alerted)
        .into_iter()
        .map(|d| (d, last))
        .collect();
    tracker.trim();
    Ok(Evaluated {
        tracker,
        due,
        unrated,
        first_error,
    })
}

/// Evaluate the committed batches `(evaluated, through]` from the lake's files, batch by batch in
/// offset order, as [`fold`] would have one at a time.
#[allow(clippy::too_many_arguments)]
fn evaluate_lake(
    lake: &Lake,
    lock: &PartitionLock,
    book: &PriceBook,
    budgets: &Budgets,
    mut tracker: Tracker,
    mut alerted: HashSet<String>,
    evaluated: i64,
    through: i64,
) -> Result<Evaluated> {
    let files = lake.committed_event_files(lock, None, through)?;
    let mut batches: BTreeMap<(i64, i64), Vec<&EventFile>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.id.last > evaluated) {
        batches.entry((f.id.first, f.id.last)).or_default().push(f);
    }
    let (mut unrated, mut first_error) = (0, None);
    let mut due = Vec::new();
    for ((_, last), fs) in batches {
        let mut events = Vec::new();
        for f in fs {
            events.extend(lake.read_spend_events(f, |t| budgets.watches(t))?);
        }
        let rated = budgets::rate(book, budgets, &events);
        unrated += rated.unrated;
        first_error = first_error.or(rated.first_error);
        let months: BTreeSet<Period> = rated.spend.keys().map(|(p, _)| *p).collect();
        for m in months {
            if !tracker.is_loaded(m) {
                // The month as of `evaluated`: the batches after it are added one by one.
                let (spend, u, err) = load_month(lake, lock, book, budgets, m, evaluated)?;
                unrated += u;
                first_error = first_error.or(err);
                tracker.load(m, spend);
            }
        }
        let touched = tracker.add(&rated.spend);
        for d in tracker.due(budgets, &touched, &alerted) {
            alerted.insert(d.id.clone());
            due.push((d, last));
        }
    }
    tracker.trim();
    Ok(Evaluated {
        tracker,
        due,
        unrated,
        first_error,
    })
}

/// Every alert id on the alerts topic with its position, read from the beginning of every
/// partition to its end (end as fetches report it: ListOffsets is not trusted, see
/// /work/shared/field-notes.md on tansu).
pub fn read_alert_ids(
    brokers: &str,
    extra: &[(String, String)],
    topic: &str,
    limit: Duration,
) -> Result<HashMap<String, KafkaAck>> {
    let mut cc = client_config(brokers, extra);
    cc.set("group.id", "tokenmeter-alert-lookup")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let c: BaseConsumer = cc
        .create()
        .map_err(Error::kafka("creating the alerts-topic reader"))?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(Error::kafka(format!("reading the metadata of {topic}")))?;
    let n = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    if n == 0 {
        return Err(Error::Alerts(format!(
            "the alerts topic {topic:?} has no partitions: create it (alerts are looked up there before they are produced again)"
        )));
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .map_err(Error::kafka("building the partition list"))?;
    }
    c.assign(&tpl)
        .map_err(Error::kafka(format!("reading {topic}")))?;
    let mut found = HashMap::new();
    let mut at_end = HashSet::new();
    let started = Instant::now();
    while (at_end.len() as i32) < n {
        if started.elapsed() > limit {
            return Err(Error::Alerts(format!(
                "the alerts topic {topic} was not read to its end within {limit:?} (partitions at their end: {at_end:?}); is the broker reachable? Alerts of unknown outcome wait until it is"
            )));
        }
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let id = m
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|x| x.key == ALERT_ID_HEADER)
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                    .or_else(|| {
                        m.payload()
                            .and_then(|p| serde_json::from_slice::<budgets::Alert>(p).ok())
                            .map(|a| a.id)
                    });
                if let Some(id) = id {
                    found.entry(id).or_insert(KafkaAck {
                        partition: m.partition(),
                        offset: m.offset(),
                    });
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => {
                return Err(Error::Kafka {
                    context: format!("reading {topic}"),
                    source: e,
                });
            }
            None => {}
        }
    }
    Ok(found)
}

/// The webhook task: POSTs each alert until a 2xx, with backoff up to `max_backoff`, and
/// reports deliveries back.
async fn deliver(
    hook: Webhook,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<(i32, String)>,
    metrics: Arc<Metrics>,
    opts: AlertsOptions,
) {
    let mut delivered: HashSet<String> = HashSet::new();
    let mut posts = 0u64;
    while let Some(job) = jobs.recv().await {
        if delivered.contains(&job.id) {
            let _ = done.send((job.partition, job.id));
            continue;
        }
        let mut backoff = MIN_BACKOFF;
        loop {
            if job.lock.upgrade().is_none() {
                debug!(id = %job.id, "partition no longer owned: its next owner delivers this alert");
                break;
            }
            match hook.post(&job.id, job.body.clone()).await {
                Outcome::Delivered(status) => {
                    posts += 1;
                    if let Err(e) = trip(
                        opts.fail_point,
                        opts.fail_action,
                        FailPoint::WebhookAfterPost,
                        posts,
                    ) {
                        warn!(error = %e, "webhook delivery not recorded");
                        break;
                    }
                    info!(id = %job.id, status, "budget alert delivered to the webhook");
                    delivered.insert(job.id.clone());
                    let _ = done.send((job.partition, job.id.clone()));
                    break;
                }
                Outcome::Failed(why) => {
                    metrics
                        .alert_webhook_failures
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(id = %job.id, url = %hook.uri(), error = %why, retry_in_ms = backoff.as_millis() as u64, "webhook delivery failed; retrying with backoff (alerts on the topic are not delayed)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
            }
        }
    }
}
