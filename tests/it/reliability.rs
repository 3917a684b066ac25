//! Nothing lost, nothing twice, against the real broker (tansu, started by tests/services.sh):
//! the aggregator process SIGKILLed over and over while a million events flow, gateway retries
//! up to 35 days late, conflicting retries, and the lake checked against totals computed
//! independently from the JSON (`support`).
//!
//! The other fault tests (rebalances, broker restart, write failures, poison messages) live in
//! `faults`; this module holds the traffic they share and the kill loop.

use crate::services::{
    Aggregator, assert_ranges_disjoint, assert_table_files_valid, brokers, caught_up, count_lines,
    create_topics, read_topic, unique_topic, wait_logged,
};
use crate::support::{
    Book, Expected, PRICES, expected, normalized, read_parquet_dir, totals_of_events,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokenmeter_ingest::generate::{GenConfig, Generator};

/// Generated traffic with gateway retries mixed in, and what the lake and the dead-letter topic
/// must end up holding.
pub struct Traffic {
    /// In production order.
    pub messages: Vec<(Option<String>, Vec<u8>)>,
    /// Each valid event once (the truth).
    pub valid: Vec<Vec<u8>>,
    /// Payloads the dead-letter topic must hold: invalid messages and conflicting retries.
    pub dead: HashSet<Vec<u8>>,
    pub retries: usize,
    pub conflicts: usize,
    /// The conflicting retries among `dead`.
    pub conflict_payloads: HashSet<Vec<u8>>,
}

/// `events` generated events over 30 days; `retry` of the valid ones are sent again after a
/// random delay of up to 35 days of event time (the stream covers 30 days, so a delay past its
/// end puts the retry at the end); 1% of the retries carry other content (a conflict).
pub fn traffic(events: u64, seed: u64, invalid: f64, retry: f64) -> Traffic {
    let generated: Vec<_> = Generator::new(GenConfig {
        events,
        tenants: 60,
        seed,
        invalid_fraction: invalid,
        ..Default::default()
    })
    .collect();
    let n = generated.len();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut later: Vec<Vec<(Option<String>, Vec<u8>)>> = vec![Vec::new(); n + 1];
    let mut t = Traffic {
        messages: Vec::with_capacity(n + n / 10),
        valid: Vec::new(),
        dead: HashSet::new(),
        retries: 0,
        conflicts: 0,
        conflict_payloads: HashSet::new(),
    };
    for (i, m) in generated.iter().enumerate() {
        if m.event.is_none() {
            t.dead.insert(m.payload.clone());
            continue;
        }
        t.valid.push(m.payload.clone());
        if rng.random::<f64>() >= retry {
            continue;
        }
        let delay_days: f64 = rng.random_range(0.0..35.0);
        let at = (i + (delay_days / 30.0 * n as f64) as usize).min(n);
        let payload = if rng.random::<f64>() < 0.01 {
            // Same source and id, other content: a conflict, never counted.
            let mut v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let out = v["data"]["usage"]["output_tokens"].as_u64().unwrap();
            v["data"]["usage"]["output_tokens"] = (out + 1).into();
            let p = serde_json::to_vec(&v).unwrap();
            t.dead.insert(p.clone());
            t.conflict_payloads.insert(p.clone());
            t.conflicts += 1;
            p
        } else {
            t.retries += 1;
            m.payload.clone()
        };
        later[at].push((m.key.clone(), payload));
    }
    for (i, m) in generated.into_iter().enumerate() {
        t.messages.push((m.key, m.payload));
        t.messages.append(&mut later[i]);
    }
    t.messages.append(&mut later[n]);
    t
}

/// Produce in a background thread (its own runtime) so the test can kill processes meanwhile.
pub fn produce_in_background(
    brokers: String,
    topic: String,
    messages: Vec<(Option<String>, Vec<u8>)>,
) -> (std::thread::JoinHandle<u64>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let h = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(tokenmeter_ingest::produce::produce_all(
                &brokers,
                &topic,
                &[],
                messages,
                &s,
            ))
            .unwrap()
    });
    (h, sent)
}

/// Per-tenant totals of the rollup files (requests, tokens per bucket, cost).
pub fn totals_of_rollups(lake: &Path) -> BTreeMap<String, Expected> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for b in read_parquet_dir(&lake.join("rollups")) {
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let tenant = col("tenant_id");
        let tenant = tenant.as_string::<i32>();
        let req = col("requests");
        let req = req.as_primitive::<Int64Type>();
        let cost = col("cost");
        let cost = cost.as_primitive::<Decimal128Type>();
        let toks: Vec<_> = tokenmeter_schemas::Buckets::NAMES
            .iter()
            .map(|n| {
                col(&format!("tokens_{n}"))
                    .as_primitive::<Int64Type>()
                    .clone()
            })
            .collect();
        for r in 0..b.num_rows() {
            let e = out.entry(tenant.value(r).to_string()).or_default();
            e.requests += req.value(r);
            for (s, c) in e.tokens.iter_mut().zip(&toks) {
                *s += c.value(r);
            }
            if cost.is_null(r) {
                e.unpriced_requests += req.value(r);
            } else {
                e.cost += rust_decimal::Decimal::from_i128_with_scale(cost.value(r), 12);
            }
        }
    }
    normalized(out)
}

/// The lake (raw events and rollups) holds exactly the truth: per tenant and bucket, tokens and
/// cost equal, every event once.
pub fn assert_lake_exact(lake: &Path, t: &Traffic) {
    let want = normalized(expected(&t.valid, &Book::load(PRICES)));
    let (got, ids) = totals_of_events(&read_parquet_dir(&lake.join("events")));
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an event id appears twice in the lake"
    );
    assert_eq!(ids.len(), t.valid.len(), "events in the lake");
    assert_eq!(
        got, want,
        "per-tenant tokens per bucket and cost (raw events)"
    );
    assert_eq!(totals_of_rollups(lake), want, "per-tenant totals (rollups)");
}

/// The dead-letter topic holds every invalid message and conflicting retry, and nothing else.
pub fn assert_dead_letters(brokers: &str, dlq: &str, t: &Traffic) {
    let got: HashSet<Vec<u8>> = read_topic(brokers, dlq, 1)
        .into_iter()
        .map(|m| m.payload)
        .collect();
    let missing: Vec<String> = t
        .dead
        .difference(&got)
        .map(|p| String::from_utf8_lossy(&p[..p.len().min(300)]).into_owned())
        .collect();
    assert!(missing.is_empty(), "dead letters missing: {missing:?}");
    assert_eq!(got.len(), t.dead.len(), "distinct dead letters");
    assert!(
        got == t.dead,
        "dead letters differ from the invalid messages and conflicts"
    );
}

pub fn aggregate_args<'a>(
    brokers: &'a str,
    topic: &'a str,
    dlq: &'a str,
    lake: &'a str,
    group: &'a str,
) -> Vec<&'a str> {
    vec![
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--dlq-topic",
        dlq,
        "--group",
        group,
        "--data-dir",
        lake,
        "--prices",
        PRICES,
    ]
}

/// ≥ 1,000,000 events (plus 5% retries and 0.5% invalid) through the real broker while the
/// aggregator is SIGKILLed 20 times — at random moments and at each step of the commit protocol
/// (mid-write, before and after the intent, mid-rename, between the lake commit and the Kafka
/// offset commit) — and restarted each time.
#[test]
fn sigkill_loop_over_a_million_events_loses_nothing_and_doubles_nothing() {
    let brokers = brokers();
    let topic = unique_topic("crash");
    let dlq = format!("{topic}.dlq");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_topics(&brokers, &[(&topic, 4), (&dlq, 1)]));
    let t = traffic(1_000_000, 11, 0.005, 0.05);
    assert!(
        t.retries > 40_000 && t.conflicts > 300,
        "{} retries, {} conflicts",
        t.retries,
        t.conflicts
    );
    let total = t.messages.len() as u64;
    let (producer, sent) =
        produce_in_background(brokers.clone(), topic.clone(), t.messages.clone());
    // Produce first: tansu (sqlite) serves fetches slowly while it ingests at full speed.
    let produced = producer.join().unwrap();
    assert_eq!(produced, total);
    assert!(sent.load(Ordering::Relaxed) == total);

    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let log = dir.path().join("aggregate.log");
    // Each run joins a consumer group of its own: the lake, not the group, holds the position,
    // and tansu 0.6 leaves a group whose member was SIGKILLed stuck (dynamic members for minutes,
    // static ones sometimes too); with Kafka the dead member would expire after its session
    // timeout.
    let groups: Vec<String> = (0..=20).map(|i| format!("crash-{i}")).collect();
    // The ClickHouse sink is on: after every kill, ClickHouse must agree with the lake.
    let (ch_url, ch_port) = (
        crate::clickhouse::clickhouse_url(),
        crate::clickhouse::tcp_port(),
    );
    let db = crate::clickhouse::unique_database("crash");
    let args_for = |run: usize| {
        let mut a = aggregate_args(&brokers, &topic, &dlq, &lake_s, &groups[run]);
        a.extend(["--flush-max-messages", "20000", "--flush-interval", "2"]);
        a.extend(["--clickhouse-url", &ch_url, "--clickhouse-database", &db]);
        a
    };
    let mut rng = StdRng::seed_from_u64(7);
    let points = [
        "mid_write",
        "before_intent",
        "after_intent",
        "mid_rename",
        "after_commit",
    ];
    let started = Instant::now();
    let mut kills = 0;
    let mut by_point = 0;
    while kills < 20 {
        let args = args_for(kills);
        let fp;
        let assigned = count_lines(&log, "partition assigned and locked");
        let a = if kills % 2 == 1 {
            fp = format!(
                "{}:{}",
                points[(kills / 2) % points.len()],
                rng.random_range(1..=3)
            );
            Aggregator::start(&args, &[("TOKENMETER_FAILPOINT", &fp)], &log)
        } else {
            fp = String::new();
            Aggregator::start(&args, &[], &log)
        };
        let status = if fp.is_empty() {
            // Kill while it works: after it has its partitions, at a random moment.
            wait_logged(
                "the restarted aggregator to get its partitions",
                Duration::from_secs(120),
                &log,
                || count_lines(&log, "partition assigned and locked") > assigned,
            );
            std::thread::sleep(Duration::from_millis(rng.random_range(300..4_000)));
            a.kill9()
        } else {
            // The process SIGKILLs itself when it reaches the point (or is killed here if the
            // backlog ran out before its Nth commit).
            a.wait_or_kill(Duration::from_secs(60))
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "run {kills} ({fp}) ended with {status}"
        );
        kills += 1;
        by_point += usize::from(!fp.is_empty());
        // After every kill: nothing torn or temporary is visible to queries, and ClickHouse
        // agrees with the lake's raw events and rollups up to the last batch it holds (it may
        // lag, never differ).
        assert_table_files_valid(&lake);
        let (ok, text) = crate::clickhouse::reconcile(&lake, &ch_url, &db, true);
        assert!(ok, "after kill {kills}: {text}");
    }
    let killed_for = started.elapsed();

    // A last run drains the topic and exits when idle.
    let mut last = args_for(20);
    last.extend(["--exit-when-idle", "3"]);
    let status = Aggregator::start(&last, &[], &log).wait(Duration::from_secs(900));
    assert!(
        status.success(),
        "final run: {}",
        crate::services::tail(&log, 30)
    );
    assert!(caught_up(&brokers, &lake, &topic, 4));
    assert_table_files_valid(&lake);
    assert!(assert_ranges_disjoint(&lake, &topic) > 0);
    assert_lake_exact(&lake, &t);
    assert_dead_letters(&brokers, &dlq, &t);
    // ClickHouse caught up (the last run ships what is left before it exits) and is exact.
    let (ok, text) = crate::clickhouse::reconcile(&lake, &ch_url, &db, false);
    assert!(ok, "final reconcile: {text}");
    assert_eq!(
        crate::clickhouse::clickhouse_totals(&ch_port, &db),
        normalized(expected(&t.valid, &Book::load(PRICES))),
        "ClickHouse per-tenant totals after 20 SIGKILLs"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    let fail_points = log_text.matches("fail point reached: SIGKILL").count();
    assert!(
        fail_points >= by_point * 2 / 3,
        "{fail_points} of {by_point} fail-point runs died at their point"
    );
    eprintln!(
        "kill loop: {total} messages ({} retries, {} conflicts), {kills} SIGKILLs ({fail_points} at commit-protocol points) in {:.0?}, total {:.0?}",
        t.retries,
        t.conflicts,
        killed_for,
        started.elapsed()
    );
}
