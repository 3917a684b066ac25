//! Budget alerts end to end through the real broker (tansu): a book with budgets for two
//! tenants (one tenant-level with a contract discount, one agent-level billed in EUR) and one
//! that is never reached; traffic across a month boundary, with gateway retries; an in-test HTTP
//! webhook that answers 500 to its first requests; and the aggregator SIGKILLed again and again —
//! at random moments, between an alert's intent and its produce, between the alerts topic's ack
//! and the ledger write, between a webhook's 2xx and the ledger write, and between a batch's lake
//! commit and its evaluation. A second test moves the partitions between two aggregators of one
//! group while alerts are raised.
//!
//! The expected alerts are computed here from the generated JSON and the TOML with rust_decimal
//! (none of tokenmeter's rating code): the alerts topic must hold exactly those ids, once each;
//! each alert's spend must be one of its scope's month-to-date sums in stream order and at least
//! the threshold; the webhook must have answered 2xx for every id, duplicates only under the same
//! `Idempotency-Key`.

use crate::faults::runtime;
use crate::reliability::aggregate_args;
use crate::services::{
    Aggregator, brokers, caught_up, committed, count_lines, create_topics, read_topic, tail,
    unique_topic, wait_logged,
};
use crate::support::{Book, PRICES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenmeter_ingest::generate::{GenConfig, Generator};

/// Tenant-level budget (with a 12.5 % contract discount).
const TENANT_A: &str = "globex";
/// Agent-level budget of one of its agents (billed in EUR).
const TENANT_B: &str = "acme";
/// A budget never reached.
const TENANT_C: &str = "initech";
const DISCOUNT_A: &str = "12.5";
/// Thresholds of A's budget (the default) and of B's agent budget.
const THRESHOLDS_A: [u32; 3] = [50, 80, 100];
const THRESHOLDS_B: [u32; 7] = [10, 30, 50, 70, 90, 100, 120];
const FX_USD_EUR: &str = "0.9234";

/// (tenant, agent) as alert ids spell a scope.
type ScopeKey = (String, Option<String>);
/// A Kafka message to produce: key and payload.
type Msg = (Option<String>, Vec<u8>);

/// One webhook request as the in-test server saw it.
#[derive(Debug, Clone)]
struct Hit {
    key: Option<String>,
    body: Vec<u8>,
    status: u16,
}

/// An HTTP/1.1 server on loopback (tokio, keep-alive) that records every request and answers
/// 500 to the first `fail_first`, 200 to the rest.
struct WebhookServer {
    port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl WebhookServer {
    fn start(fail_first: usize) -> WebhookServer {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = hits.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve_connection(sock, h.clone(), fail_first));
                }
            });
        });
        WebhookServer {
            port,
            hits,
            _thread: thread,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/budget", self.port)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Requests on one connection until the client closes it.
async fn serve_connection(
    mut sock: tokio::net::TcpStream,
    hits: Arc<Mutex<Vec<Hit>>>,
    fail_first: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let status = {
            let mut h = hits.lock().unwrap();
            let status = if h.len() < fail_first { 500 } else { 200 };
            h.push(Hit {
                key: header("idempotency-key"),
                body,
                status,
            });
            status
        };
        let reason = if status == 200 {
            "OK"
        } else {
            "Internal Server Error"
        };
        let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n");
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One valid event as the oracle reads it from its JSON.
struct Ev {
    tenant: String,
    agent: Option<String>,
    month: String,
    /// List cost in USD, exact.
    cost: Decimal,
}

fn parse_event(payload: &[u8], book: &Book) -> Ev {
    let v: Value = serde_json::from_slice(payload).unwrap();
    let tokens = crate::support::billable(&v);
    let time = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap())
        .unwrap()
        .to_utc();
    let cost = book
        .price(
            v["data"]["provider"].as_str().unwrap(),
            v["data"]["model"].as_str().unwrap(),
            time,
        )
        .map(|p| {
            (0..5)
                .map(|k| Decimal::from(tokens[k]) * p[k] / Decimal::from(1_000_000))
                .sum()
        })
        .unwrap_or_default();
    Ev {
        tenant: v["subject"].as_str().unwrap().to_string(),
        agent: v["data"]["agent"]["id"].as_str().map(str::to_string),
        month: time.format("%Y-%m").to_string(),
        cost,
    }
}

/// The amount budgets count for an event of a tenant: list cost, then the tenant's FX and
/// discount, rounded half-even to 12 places per event.
fn amount(e: &Ev) -> Decimal {
    let x = match e.tenant.as_str() {
        TENANT_A => {
            e.cost * (Decimal::ONE - Decimal::from_str(DISCOUNT_A).unwrap() / Decimal::from(100))
        }
        TENANT_B => e.cost * Decimal::from_str(FX_USD_EUR).unwrap(),
        _ => e.cost,
    };
    x.round_dp_with_strategy(12, RoundingStrategy::MidpointNearestEven)
}

/// Month-to-date sums of a scope's events in stream order, per month.
type Prefixes = BTreeMap<(ScopeKey, String), Vec<Decimal>>;

fn prefixes(valid: &[Vec<u8>], book: &Book, agent_b: &str) -> Prefixes {
    let mut out: Prefixes = BTreeMap::new();
    for p in valid {
        let e = parse_event(p, book);
        let mut scopes: Vec<ScopeKey> = Vec::new();
        if e.tenant == TENANT_A || e.tenant == TENANT_C {
            scopes.push((e.tenant.clone(), None));
        }
        if e.tenant == TENANT_B && e.agent.as_deref() == Some(agent_b) {
            scopes.push((e.tenant.clone(), e.agent.clone()));
        }
        let a = amount(&e);
        for s in scopes {
            let v = out.entry((s, e.month.clone())).or_default();
            let prev = v.last().copied().unwrap_or_default();
            v.push(prev + a);
        }
    }
    out
}

/// The agent of `TENANT_B` with the most list cost in the first month of the traffic.
fn top_agent(valid: &[Vec<u8>], book: &Book, month: &str) -> String {
    let mut by: BTreeMap<String, Decimal> = BTreeMap::new();
    for p in valid {
        let e = parse_event(p, book);
        if e.tenant == TENANT_B
            && e.month == month
            && let Some(a) = e.agent
        {
            *by.entry(a).or_default() += e.cost;
        }
    }
    by.into_iter().max_by_key(|(_, c)| *c).unwrap().0
}

/// The example book plus an FX rate and three tenants' contracts with budgets.
fn budget_book(budget_a: Decimal, agent_b: &str, budget_b: Decimal) -> String {
    let base = std::fs::read_to_string(PRICES).unwrap();
    format!(
        r#"{base}

[[fx]]
from = "USD"
to = "EUR"
rate = "{FX_USD_EUR}"
effective = "2026-01-01"

[[tenant]]
id = "{TENANT_A}"

[[tenant.discount]]
percent = "{DISCOUNT_A}"

[[tenant.budget]]
amount = "{budget_a}"

[[tenant]]
id = "{TENANT_B}"
billing_currency = "EUR"

[[tenant.budget]]
agent = "{agent_b}"
amount = "{budget_b}"
thresholds = {THRESHOLDS_B:?}

[[tenant]]
id = "{TENANT_C}"

[[tenant.budget]]
amount = "1000000000"
"#
    )
}

/// Whether every ledger has evaluated its partition's committed batches and holds no alert
/// that is not on the topic or not delivered to the webhook.
fn ledgers_settled(lake: &Path, topic: &str, partitions: i32) -> bool {
    let c = committed(lake, topic, partitions);
    (0..partitions).all(|p| {
        let Ok(bytes) = std::fs::read(lake.join(format!("_state/{topic}/alerts/p{p}.json"))) else {
            return c[&p] < 0;
        };
        let l: Value = serde_json::from_slice(&bytes).unwrap();
        l["evaluated_through"].as_i64() == Some(c[&p])
            && l["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["kafka"].is_object() && a["webhook"].as_str() == Some("delivered"))
    })
}

/// Every alert id on the alerts topic, with how often it is there; panics on one twice.
fn alert_ids_once(brokers: &str, topic: &str, when: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for m in read_topic(brokers, topic, 2) {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(
            m.headers.get("tokenmeter.alert.id"),
            Some(&id),
            "header and payload id differ"
        );
        assert!(
            ids.insert(id.clone()),
            "{when}: alert {id} is on the topic twice"
        );
    }
    ids
}

/// Traffic, budgets and the alerts they must raise.
struct Scenario {
    messages: Vec<Msg>,
    retries: usize,
    /// The book's text (the example book plus the budgets).
    book: String,
    budgets: BTreeMap<ScopeKey, (Decimal, &'static str, &'static [u32])>,
    prefix: Prefixes,
    expected: BTreeSet<String>,
}

/// Traffic from 2026-10-20 to 2026-11-08 (two budget periods) with 3 % gateway retries, and
/// budgets set from the oracle's October totals: A at about 90 % of its budget (50 and 80 %
/// reached, 100 % not), B's busiest agent at about 125 % (every threshold up to 120 %).
fn scenario(seed: u64) -> Scenario {
    let generated: Vec<_> = Generator::new(GenConfig {
        events: 30_000,
        tenants: 12,
        seed,
        invalid_fraction: 0.0,
        start: chrono::DateTime::parse_from_rfc3339("2026-10-20T00:00:00Z")
            .unwrap()
            .to_utc(),
        days: 20,
        agents: None,
    })
    .collect();
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let mut messages: Vec<Msg> = Vec::new();
    let mut valid = Vec::new();
    let mut retries: Vec<(usize, Msg)> = Vec::new();
    for (i, m) in generated.iter().enumerate() {
        valid.push(m.payload.clone());
        messages.push((m.key.clone(), m.payload.clone()));
        if rng.random::<f64>() < 0.03 {
            retries.push((
                i + rng.random_range(1..2_000),
                (m.key.clone(), m.payload.clone()),
            ));
        }
        while let Some(pos) = retries.iter().position(|(at, _)| *at <= i) {
            messages.push(retries.remove(pos).1);
        }
    }
    let n_retries = messages.len() - valid.len() + retries.len();
    messages.extend(retries.into_iter().map(|(_, m)| m));

    let book = Book::load(PRICES);
    let agent_b = top_agent(&valid, &book, "2026-10");
    let oct_a: Decimal = valid
        .iter()
        .map(|p| parse_event(p, &book))
        .filter(|e| e.tenant == TENANT_A && e.month == "2026-10")
        .map(|e| amount(&e))
        .sum();
    let oct_b: Decimal = valid
        .iter()
        .map(|p| parse_event(p, &book))
        .filter(|e| {
            e.tenant == TENANT_B && e.month == "2026-10" && e.agent.as_deref() == Some(&agent_b)
        })
        .map(|e| amount(&e))
        .sum();
    let budget_a = (oct_a / Decimal::from_str("0.9").unwrap()).round_dp(2);
    let budget_b = (oct_b / Decimal::from_str("1.25").unwrap()).round_dp(2);
    let budgets: BTreeMap<ScopeKey, (Decimal, &'static str, &'static [u32])> = BTreeMap::from([
        (
            (TENANT_A.to_string(), None),
            (budget_a, "USD", &THRESHOLDS_A[..]),
        ),
        (
            (TENANT_B.to_string(), Some(agent_b.clone())),
            (budget_b, "EUR", &THRESHOLDS_B[..]),
        ),
        (
            (TENANT_C.to_string(), None),
            (Decimal::from(1_000_000_000), "USD", &THRESHOLDS_A[..]),
        ),
    ]);
    let prefix = prefixes(&valid, &book, &agent_b);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for ((scope, month), sums) in &prefix {
        let (budget, _, thresholds) = budgets[scope];
        let total = *sums.last().unwrap();
        for &t in thresholds {
            if total * Decimal::from(100) >= budget * Decimal::from(t) {
                expected.insert(format!(
                    "budget:{}:{}:{month}:{t}",
                    scope.0,
                    scope.1.as_deref().unwrap_or("*")
                ));
            }
        }
    }
    let a_oct_100 = format!("budget:{TENANT_A}:*:2026-10:100");
    assert!(
        expected.len() >= 10
            && !expected.contains(&a_oct_100)
            && expected.iter().any(|id| id.contains(":2026-11:"))
            && !expected.iter().any(|id| id.contains(TENANT_C)),
        "the traffic does not exercise what it should: {expected:?}"
    );
    Scenario {
        messages,
        retries: n_retries,
        book: budget_book(budget_a, &agent_b, budget_b),
        budgets,
        prefix,
        expected,
    }
}

/// The end state: the alerts topic holds exactly the expected ids, once each, keyed by tenant,
/// with exact figures; the webhook accepted every id, each request under its id's key and with
/// the topic's bytes. Returns (webhook requests, answered 500, duplicate deliveries).
fn assert_alerts(
    brokers: &str,
    alerts_topic: &str,
    topic: &str,
    sc: &Scenario,
    hook: &WebhookServer,
) -> (usize, usize, usize) {
    let (expected, budgets, prefix) = (&sc.expected, &sc.budgets, &sc.prefix);
    // The alerts topic: exactly the expected ids, once each, keyed by tenant, with exact figures.
    let msgs = read_topic(brokers, alerts_topic, 2);
    let ids = alert_ids_once(brokers, alerts_topic, "at the end");
    assert_eq!(&ids, expected, "alert ids on the topic");
    for m in &msgs {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let id = v["id"].as_str().unwrap();
        let tenant = v["tenant_id"].as_str().unwrap().to_string();
        assert_eq!(m.key.as_deref(), Some(tenant.as_bytes()), "{id}: key");
        let scope: ScopeKey = (tenant, v["agent_id"].as_str().map(str::to_string));
        let month = v["period"].as_str().unwrap().to_string();
        let t = v["threshold"].as_u64().unwrap();
        assert_eq!(
            id,
            format!(
                "budget:{}:{}:{month}:{t}",
                scope.0,
                scope.1.as_deref().unwrap_or("*")
            )
        );
        let (budget, currency, _) = budgets[&scope];
        let dec = |k: &str| Decimal::from_str(v[k].as_str().unwrap()).unwrap();
        assert_eq!(dec("budget"), budget, "{id}: budget");
        assert_eq!(v["currency"].as_str(), Some(currency), "{id}: currency");
        let threshold_amount = budget * Decimal::from(t) / Decimal::from(100);
        assert_eq!(dec("threshold_amount"), threshold_amount, "{id}");
        let spend = dec("spend");
        assert!(
            spend >= threshold_amount,
            "{id}: spend {spend} < {threshold_amount}"
        );
        assert!(
            prefix[&(scope.clone(), month.clone())].contains(&spend),
            "{id}: spend {spend} is not a month-to-date sum of the scope's events"
        );
        assert_eq!(v["topic"].as_str(), Some(topic));
    }

    // The webhook: a 2xx for every expected id; every request's key is its body's id.
    let hits = hook.hits();
    let mut ok_per_id: BTreeMap<String, usize> = BTreeMap::new();
    for h in &hits {
        let v: Value = serde_json::from_slice(&h.body).unwrap();
        let id = v["id"].as_str().unwrap();
        assert_eq!(
            h.key.as_deref(),
            Some(id),
            "Idempotency-Key is the alert id"
        );
        assert!(
            msgs.iter().any(|m| m.payload == h.body),
            "{id}: the webhook body differs from the topic's message"
        );
        if h.status == 200 {
            *ok_per_id.entry(id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(
        &ok_per_id.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "ids the webhook accepted"
    );
    let duplicates: usize = ok_per_id.values().map(|n| n - 1).sum();
    let failed = hits.iter().filter(|h| h.status != 200).count();
    (hits.len(), failed, duplicates)
}

#[test]
fn budget_alerts_exactly_once_on_the_topic_through_sigkills_and_a_failing_webhook() {
    let brokers = brokers();
    let topic = unique_topic("budgets");
    let dlq = format!("{topic}.dlq");
    let alerts_topic = format!("{topic}.alerts");
    runtime().block_on(create_topics(
        &brokers,
        &[(&topic, 4), (&dlq, 1), (&alerts_topic, 2)],
    ));

    let sc = scenario(77);
    let (messages, expected) = (&sc.messages, &sc.expected);
    let mut rng = StdRng::seed_from_u64(7);
    let dir = tempfile::tempdir().unwrap();
    let book_path = dir.path().join("prices.toml");
    std::fs::write(&book_path, &sc.book).unwrap();
    let book_s = book_path.to_str().unwrap().to_string();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let log = dir.path().join("aggregate.log");
    let hook = WebhookServer::start(4);
    let url = hook.url();
    let groups: Vec<String> = (0..10).map(|i| format!("{topic}-run{i}")).collect();
    let args_for = |run: usize| {
        let mut a = aggregate_args(&brokers, &topic, &dlq, &lake_s, &groups[run]);
        let at = a.iter().position(|x| *x == "--prices").unwrap();
        a[at + 1] = &book_s;
        a.extend(["--flush-max-messages", "400", "--flush-interval", "1"]);
        a.extend(["--alerts-topic", &alerts_topic, "--alerts-webhook", &url]);
        a
    };

    // Runs: each gets the next slice of the traffic, then dies. `None`: killed here at a
    // random moment after it has its partitions.
    let plan: [Option<&str>; 8] = [
        None,
        Some("alert_after_send:1"),
        Some("webhook_after_post:1"),
        Some("after_commit:2"),
        None,
        Some("alert_after_intent:1"),
        Some("alert_after_send:1"),
        Some("alert_after_intent:1"),
    ];
    let chunk = messages.len().div_ceil(plan.len());
    let mut kills = 0;
    let mut fired_at: Vec<&str> = Vec::new();
    for (run, fp) in plan.iter().enumerate() {
        let slice = messages
            [(run * chunk).min(messages.len())..((run + 1) * chunk).min(messages.len())]
            .to_vec();
        let sent = AtomicU64::new(0);
        runtime()
            .block_on(tokenmeter_ingest::produce::produce_all(
                &brokers,
                &topic,
                &[],
                slice,
                &sent,
            ))
            .unwrap();
        let assigned = count_lines(&log, "partition assigned and locked");
        let reached = count_lines(&log, "fail point reached: SIGKILL");
        let args = args_for(run);
        let mut a = match fp {
            Some(fp) => Aggregator::start(&args, &[("TOKENMETER_FAILPOINT", fp)], &log),
            None => Aggregator::start(&args, &[], &log),
        };
        wait_logged(
            "the aggregator to get its partitions",
            Duration::from_secs(120),
            &log,
            || {
                count_lines(&log, "partition assigned and locked") >= assigned + 4
                    || a.child.try_wait().unwrap().is_some()
            },
        );
        match fp {
            None => std::thread::sleep(Duration::from_millis(rng.random_range(300..3_000))),
            // It SIGKILLs itself at its point, or is killed once it has done all there is.
            Some(_) => wait_logged(
                "the aggregator to reach its fail point or settle",
                Duration::from_secs(180),
                &log,
                || {
                    a.child.try_wait().unwrap().is_some()
                        || (caught_up(&brokers, &lake, &topic, 4)
                            && ledgers_settled(&lake, &topic, 4))
                },
            ),
        }
        // A process that died at its fail point is reaped already: never signal its pid again.
        let status = match a.child.try_wait().unwrap() {
            Some(s) => s,
            None => a.kill9(),
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "run {run} ({fp:?}) ended with {status}: {}",
            tail(&log, 30)
        );
        kills += 1;
        // Exactly once at every moment: never an id twice on the topic.
        let on_topic = alert_ids_once(&brokers, &alerts_topic, &format!("after kill {kills}"));
        assert!(
            on_topic.is_subset(expected),
            "unexpected alerts: {:?}",
            on_topic.difference(expected).collect::<Vec<_>>()
        );
        let died_at_point = count_lines(&log, "fail point reached: SIGKILL") > reached;
        if died_at_point {
            fired_at.push(fp.unwrap_or_default());
        }
        eprintln!(
            "budgets: run {run} ({}): {}; {} alerts on the topic",
            fp.unwrap_or("random kill"),
            if died_at_point {
                "died at its fail point"
            } else {
                "killed"
            },
            on_topic.len()
        );
    }
    let fired = fired_at.len();
    for point in [
        "alert_after_intent",
        "alert_after_send",
        "webhook_after_post",
    ] {
        assert!(
            fired_at.iter().any(|f| f.starts_with(point)),
            "no run died at {point} (died at: {fired_at:?})"
        );
    }

    // A last run drains what is left, sends and delivers everything, and exits when idle.
    let mut last = args_for(plan.len());
    last.extend(["--exit-when-idle", "3"]);
    let status = Aggregator::start(&last, &[], &log).wait(Duration::from_secs(300));
    assert!(status.success(), "final run: {}", tail(&log, 40));
    assert!(caught_up(&brokers, &lake, &topic, 4));
    assert!(
        ledgers_settled(&lake, &topic, 4),
        "ledgers not settled: {}",
        tail(&log, 40)
    );

    let (requests, failed, duplicates) = assert_alerts(&brokers, &alerts_topic, &topic, &sc, &hook);
    let retries_logged = count_lines(&log, "webhook delivery failed; retrying");
    assert!(
        failed >= 4 && retries_logged >= 4,
        "{failed} 500s, {retries_logged} retries logged"
    );
    // Both outcomes of an intent whose produce was not known to land were met: found on the
    // topic (died after the ack) and not found, so produced (died after the intent).
    let found = count_lines(&log, "alert found on the alerts topic: not produced again");
    let produced_after_lookup = count_lines(&log, "is not on the alerts topic: producing it");
    let from_lake = count_lines(&log, "committed batches evaluated from the lake");
    assert!(
        found >= 1 && produced_after_lookup >= 1,
        "{found} found, {produced_after_lookup} not found"
    );
    eprintln!(
        "budgets: {} alerts expected and on the topic once each ({} messages, {} gateway retries), {kills} SIGKILLs ({fired} at fail points: {fired_at:?}), alerts of unknown outcome after a crash: {found} found on the topic, {produced_after_lookup} produced; {from_lake} evaluations of committed batches from the lake after a restart; webhook: {} requests, {failed} answered 500, {duplicates} duplicate deliveries (same Idempotency-Key)",
        expected.len(),
        messages.len(),
        sc.retries,
        requests
    );
}

/// Partitions move between two aggregators of one group while alerts are raised: B joins and
/// leaves (SIGTERM) four times while A keeps running, sometimes right after the rebalance that
/// gave it partitions, sometimes once it caught up. A revoked partition's alerts (intents,
/// webhook deliveries) are finished by its next owner from the ledger; nothing waits forever on
/// a lock and no id reaches the topic twice.
#[test]
fn budget_alerts_exactly_once_while_partitions_move_between_two_aggregators() {
    let brokers = brokers();
    let topic = unique_topic("budgets-pair");
    let dlq = format!("{topic}.dlq");
    let alerts_topic = format!("{topic}.alerts");
    runtime().block_on(create_topics(
        &brokers,
        &[(&topic, 4), (&dlq, 1), (&alerts_topic, 2)],
    ));
    let sc = scenario(77);
    let dir = tempfile::tempdir().unwrap();
    let book_path = dir.path().join("prices.toml");
    std::fs::write(&book_path, &sc.book).unwrap();
    let book_s = book_path.to_str().unwrap().to_string();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let hook = WebhookServer::start(2);
    let url = hook.url();
    let group = format!("{topic}-group");
    let mut args = aggregate_args(&brokers, &topic, &dlq, &lake_s, &group);
    let at = args.iter().position(|x| *x == "--prices").unwrap();
    args[at + 1] = &book_s;
    args.extend(["--flush-max-messages", "400", "--flush-interval", "1"]);
    args.extend(["--alerts-topic", &alerts_topic, "--alerts-webhook", &url]);
    let chunks = sc.messages.chunks(sc.messages.len().div_ceil(6));
    let produce = |m: &[Msg]| {
        let sent = AtomicU64::new(0);
        runtime()
            .block_on(tokenmeter_ingest::produce::produce_all(
                &brokers,
                &topic,
                &[],
                m.to_vec(),
                &sent,
            ))
            .unwrap();
    };
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let assigned = |log: &Path| count_lines(log, "partition assigned and locked");
    let mut chunks = chunks.into_iter();
    produce(chunks.next().unwrap());
    let a = Aggregator::start(&args, &[], &log_a);
    wait_logged("A to join", Duration::from_secs(90), &log_a, || {
        assigned(&log_a) >= 4
    });
    for cycle in 0..4 {
        produce(chunks.next().unwrap());
        let (before_a, before_b) = (assigned(&log_a), assigned(&log_b));
        let b = Aggregator::start(&args, &[], &log_b);
        wait_logged(
            "the group to rebalance over A and B",
            Duration::from_secs(90),
            &log_b,
            || assigned(&log_b) > before_b && assigned(&log_a) > before_a,
        );
        if cycle % 2 == 1 {
            wait_logged(
                "A and B to catch up",
                Duration::from_secs(180),
                &log_b,
                || caught_up(&brokers, &lake, &topic, 4),
            );
        }
        let before_a = assigned(&log_a);
        crate::faults::stop(b);
        wait_logged(
            "A to take every partition back",
            Duration::from_secs(90),
            &log_a,
            || assigned(&log_a) >= before_a + 4,
        );
        let on_topic = alert_ids_once(&brokers, &alerts_topic, &format!("after cycle {cycle}"));
        assert!(on_topic.is_subset(&sc.expected));
        eprintln!(
            "budgets pair: cycle {cycle}: {} alerts on the topic",
            on_topic.len()
        );
    }
    for c in chunks {
        produce(c);
    }
    wait_logged(
        "A to catch up and settle every alert",
        Duration::from_secs(300),
        &log_a,
        || caught_up(&brokers, &lake, &topic, 4) && ledgers_settled(&lake, &topic, 4),
    );
    crate::faults::stop(a);
    let (requests, failed, duplicates) = assert_alerts(&brokers, &alerts_topic, &topic, &sc, &hook);
    let handovers = count_lines(&log_a, "budgets: partition taken over")
        + count_lines(&log_b, "budgets: partition taken over");
    eprintln!(
        "budgets pair: {} alerts on the topic once each, 4 joins and leaves, {handovers} partition takeovers by the alerts tasks, webhook: {requests} requests, {failed} answered 500, {duplicates} duplicate deliveries",
        sc.expected.len()
    );
}
