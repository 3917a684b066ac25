//! End to end on librdkafka's mock cluster: generated traffic with invalid messages goes through
//! the real aggregator; the lake must equal totals computed independently from the JSON, the
//! dead-letter topic must hold exactly the invalid messages, and a crash between the lake commit
//! and the Kafka offset commit must replay nothing twice.

use crate::support::{Book, PRICES, expected, normalized, read_parquet_dir, totals_of_events};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokenmeter_aggregate::PriceBook;
use tokenmeter_aggregate::lake::FailPoint;
use tokenmeter_ingest::aggregator::dlq_headers;
use tokenmeter_ingest::generate::{GenConfig, Generator, Message as GenMessage};
use tokenmeter_ingest::{AggregatorConfig, Metrics, run_aggregator};

const TOPIC: &str = "usage.events";
const DLQ: &str = "usage.events.dlq";

struct Setup {
    /// `None` on the real broker (tests/services.sh).
    _cluster: Option<MockCluster<'static, DefaultProducerContext>>,
    topic: String,
    dlq: String,
    brokers: String,
    messages: Vec<GenMessage>,
}

async fn setup(events: u64, invalid: f64, seed: u64) -> Setup {
    setup_on(false, events, invalid, seed).await
}

/// On the mock cluster, or on the real broker with topics of its own.
async fn setup_on(real: bool, events: u64, invalid: f64, seed: u64) -> Setup {
    let (cluster, brokers, topic, dlq) = if real {
        let brokers = crate::services::brokers();
        let topic = crate::services::unique_topic("e2e");
        let dlq = format!("{topic}.dlq");
        crate::services::create_topics(&brokers, &[(&topic, 4), (&dlq, 1)]).await;
        (None, brokers, topic, dlq)
    } else {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 4, 1).unwrap();
        cluster.create_topic(DLQ, 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        (Some(cluster), brokers, TOPIC.to_string(), DLQ.to_string())
    };
    let messages: Vec<_> = Generator::new(GenConfig {
        events,
        tenants: 30,
        seed,
        invalid_fraction: invalid,
        ..Default::default()
    })
    .collect();
    let sent = AtomicU64::new(0);
    let n = tokenmeter_ingest::produce::produce_all(
        &brokers,
        &topic,
        &[],
        messages.iter().map(|m| (m.key.clone(), m.payload.clone())),
        &sent,
    )
    .await
    .unwrap();
    assert_eq!(n, events);
    Setup {
        _cluster: cluster,
        topic,
        dlq,
        brokers,
        messages,
    }
}

fn config(s: &Setup, dir: &std::path::Path) -> AggregatorConfig {
    let mut cfg = AggregatorConfig::new(s.brokers.clone(), dir);
    cfg.topic = s.topic.clone();
    cfg.dlq_topic = s.dlq.clone();
    cfg.exit_when_idle = Some(Duration::from_millis(1500));
    cfg.flush_max_messages = 7_000;
    cfg
}

/// A stuck aggregator (say, retrying a failing commit forever) fails the test instead of
/// hanging CI.
async fn within_limit<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(300), f)
        .await
        .expect("the aggregator did not finish within 300 s")
}

fn book() -> PriceBook {
    PriceBook::load(std::path::Path::new(PRICES)).unwrap()
}

/// Read the whole dead-letter topic: (payload, source partition/offset, reason) per message.
fn read_dlq(brokers: &str, dlq: &str) -> Vec<(Vec<u8>, String, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::services::unique_topic("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    c.subscribe(&[dlq]).unwrap();
    let mut out = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "dead-letter topic not read to its end in 60s"
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let h = m.headers().unwrap();
                let get = |k: &str| {
                    h.iter()
                        .find(|x| x.key == k)
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let src = format!(
                    "{}/{}",
                    get(dlq_headers::PARTITION),
                    get(dlq_headers::OFFSET)
                );
                out.push((
                    m.payload().unwrap_or_default().to_vec(),
                    src,
                    get(dlq_headers::ERROR),
                ));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    out
}

fn check_lake(dir: &std::path::Path, messages: &[GenMessage]) {
    let valid: Vec<Vec<u8>> = messages
        .iter()
        .filter(|m| m.event.is_some())
        .map(|m| m.payload.clone())
        .collect();
    let want = normalized(expected(&valid, &Book::load(PRICES)));
    let (got, ids) = totals_of_events(&read_parquet_dir(&dir.join("events")));
    assert_eq!(ids.len(), valid.len(), "events in the lake");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "an event id appears twice"
    );
    assert_eq!(got, want, "per-tenant tokens per bucket and cost");
    assert!(
        want.values().any(|e| e.unpriced_requests > 0),
        "the traffic should include unpriced usage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_and_every_invalid_message_is_dead_lettered() {
    end_to_end(false).await;
}

/// The same on the real broker (tansu).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_on_the_real_broker() {
    end_to_end(true).await;
}

async fn end_to_end(real: bool) {
    let s = setup_on(real, 60_000, 0.01, 11).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let summary = within_limit(run_aggregator(
        config(&s, dir.path()),
        book(),
        metrics,
        std::future::pending(),
    ))
    .await
    .unwrap();
    let invalid: Vec<&GenMessage> = s.messages.iter().filter(|m| m.event.is_none()).collect();
    assert!(
        invalid.len() > 300,
        "expected about 1% invalid, got {}",
        invalid.len()
    );
    assert_eq!(summary.dead_lettered, invalid.len() as u64);
    assert_eq!(
        summary.committed_events,
        (s.messages.len() - invalid.len()) as u64
    );
    check_lake(dir.path(), &s.messages);

    let dlq = read_dlq(&s.brokers, &s.dlq);
    assert_eq!(dlq.len(), invalid.len(), "dead-letter messages");
    let got: BTreeSet<&[u8]> = dlq.iter().map(|d| d.0.as_slice()).collect();
    let want: BTreeSet<&[u8]> = invalid.iter().map(|m| m.payload.as_slice()).collect();
    assert_eq!(
        got, want,
        "the dead-letter topic holds exactly the invalid payloads"
    );
    assert_eq!(
        dlq.iter().map(|d| &d.1).collect::<HashSet<_>>().len(),
        dlq.len(),
        "one dead letter per source offset"
    );
    assert!(
        dlq.iter().all(|d| !d.2.is_empty()),
        "every dead letter says why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_lake_commit_and_kafka_commit_replays_nothing() {
    let s = setup(50_000, 0.0, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s, dir.path());
    cfg.lake.fail_point = Some((FailPoint::AfterCommit, 3));
    let err = within_limit(run_aggregator(
        cfg,
        book(),
        Arc::new(Metrics::default()),
        std::future::pending(),
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("AfterCommit"), "{err}");

    // The crash left Kafka's committed offset behind the lake for the crashed batch's partition.
    let lake = tokenmeter_aggregate::lake::Lake::open(dir.path(), Default::default()).unwrap();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", "tokenmeter")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(TOPIC, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let behind = (0..4).any(|p| {
        let kafka = match committed.find_partition(TOPIC, p).unwrap().offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        };
        kafka < lake.state(TOPIC, p).unwrap().committed_through + 1
    });
    assert!(
        behind,
        "the test did not produce the crash it means to test"
    );
    drop(c);

    let metrics = Arc::new(Metrics::default());
    within_limit(run_aggregator(
        config(&s, dir.path()),
        book(),
        metrics,
        std::future::pending(),
    ))
    .await
    .unwrap();
    check_lake(dir.path(), &s.messages);
}

/// Batches commit beside the consumer loop, and what the loop holds, open and committing,
/// stays within `max_buffered_messages`: the largest open batch is flushed once the open
/// batches hold half of it, so no batch is larger than that half. Many small commits, each
/// running while the next batches fill, still land every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_commit_beside_consumption_within_the_memory_budget() {
    let s = setup(20_000, 0.0, 13).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s, dir.path());
    cfg.flush_max_messages = 1_000_000; // never by size: only the budget flushes
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.max_buffered_messages = 2_000;
    let summary = within_limit(run_aggregator(
        cfg,
        book(),
        Arc::new(Metrics::default()),
        std::future::pending(),
    ))
    .await
    .unwrap();
    assert_eq!(summary.committed_events, 20_000);
    check_lake(dir.path(), &s.messages);
    // Batches from the events files' names: {topic}-p{P}-{first:020}-{last:020}.parquet.
    let mut batches = BTreeSet::new();
    for date in std::fs::read_dir(dir.path().join("events")).unwrap() {
        for f in std::fs::read_dir(date.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".parquet").unwrap();
            let mut parts = stem.rsplitn(3, '-');
            let last: i64 = parts.next().unwrap().parse().unwrap();
            let first: i64 = parts.next().unwrap().parse().unwrap();
            batches.insert((parts.next().unwrap().to_string(), first, last));
        }
    }
    assert!(
        batches.len() >= 20,
        "20,000 messages in batches of at most 1,000 need at least 20 batches, got {}",
        batches.len()
    );
    for (partition, first, last) in &batches {
        assert!(
            last - first < 1_000,
            "batch {partition} {first}..={last} holds more than half the budget of 2,000 messages"
        );
    }
}
