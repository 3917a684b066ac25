//! ClickHouse: the real server (Debian's 18.16, started by tests/services.sh) and the real
//! client (`clickhouse-client`). The DDL runs (twice); events go through the real broker into
//! an aggregator with both sinks; ClickHouse's per-tenant totals, read by clickhouse-client,
//! equal the oracle's; `tokenmeter reconcile` passes; the ClickHouse dashboard SQL gives the
//! DataFusion reports' numbers; ClickHouse killed for a while mid-run loses nothing.

use crate::faults::{runtime, scrape, stop};
use crate::reliability::{
    Traffic, aggregate_args, assert_lake_exact, produce_in_background, traffic,
};
use crate::services::{Aggregator, brokers, create_topics, free_port, unique_topic, wait_logged};
use crate::support::{Book, Expected, PRICES, expected, normalized};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

/// The test server's HTTP URL, from `TOKENMETER_TEST_CLICKHOUSE`.
pub fn clickhouse_url() -> String {
    std::env::var("TOKENMETER_TEST_CLICKHOUSE").unwrap_or_else(|_| {
        panic!(
            "TOKENMETER_TEST_CLICKHOUSE is not set: these tests need the real ClickHouse server. \
             Start it with `eval \"$(tests/services.sh up)\"` (or run `bash tests/run.sh`)."
        )
    })
}

pub fn tcp_port() -> String {
    std::env::var("TOKENMETER_TEST_CLICKHOUSE_TCP_PORT")
        .expect("TOKENMETER_TEST_CLICKHOUSE_TCP_PORT: run `eval \"$(tests/services.sh up)\"`")
}

/// A database name no other test uses.
pub fn unique_database(prefix: &str) -> String {
    unique_topic(prefix).replace('-', "_")
}

/// Run a query with the real `clickhouse-client` on `port`; its TabSeparated output.
pub fn client_query(port: &str, sql: &str) -> String {
    let out = Command::new("clickhouse-client")
        .args(["--port", port, "--query", sql])
        .output()
        .expect("clickhouse-client (tests/services.sh installs it)");
    assert!(
        out.status.success(),
        "clickhouse-client failed on `{sql}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Per-tenant totals of `db.usage_hourly`, as a dashboard author would query them, through
/// the real client.
pub fn clickhouse_totals(port: &str, db: &str) -> BTreeMap<String, Expected> {
    let text = client_query(
        port,
        &format!(
            "SELECT tenant_id, sum(requests), sum(tokens_uncached_input), sum(tokens_cache_read), \
             sum(tokens_cache_write), sum(tokens_output), sum(tokens_reasoning), sum(cost), \
             sumIf(requests, isNull(cost)) FROM {db}.usage_hourly GROUP BY tenant_id \
             ORDER BY tenant_id FORMAT TabSeparated"
        ),
    );
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let n = |i: usize| f[i].parse::<i64>().unwrap();
        let cost = match f[7] {
            "\\N" => Decimal::ZERO,
            c => Decimal::from_str(c).unwrap(),
        };
        out.insert(
            f[0].to_string(),
            Expected {
                requests: n(1),
                tokens: [n(2), n(3), n(4), n(5), n(6)],
                cost,
                unpriced_requests: n(8),
            },
        );
    }
    normalized(out)
}

/// `tokenmeter reconcile` over the whole traffic window: (success, output).
pub fn reconcile(lake: &Path, url: &str, db: &str, allow_lag: bool) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokenmeter"));
    c.args(["reconcile", "--data-dir"])
        .arg(lake)
        .args([
            "--from",
            "2026-09-01",
            "--to",
            "2027-01-01",
            "--tz",
            "Asia/Shanghai",
        ])
        .args(["--clickhouse-url", url, "--clickhouse-database", db]);
    if allow_lag {
        c.arg("--allow-lag");
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn init(url: &str, db: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args([
            "clickhouse",
            "init",
            "--clickhouse-url",
            url,
            "--database",
            db,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "clickhouse init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn clickhouse_init_is_idempotent_and_makes_the_contract_tables() {
    let (url, port) = (clickhouse_url(), tcp_port());
    let db = unique_database("init");
    init(&url, &db);
    init(&url, &db); // twice is fine
    let tables = client_query(&port, &format!("SHOW TABLES FROM {db}"));
    assert_eq!(
        tables.lines().collect::<Vec<_>>(),
        [
            "usage_hourly",
            "usage_hourly_complete",
            "usage_hourly_parts"
        ]
    );
    let cols: Vec<String> = client_query(&port, &format!("DESCRIBE TABLE {db}.usage_hourly"))
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    for c in [
        "hour",
        "tenant_id",
        "provider",
        "model",
        "is_agent",
        "agent_id",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost",
        "currency",
    ] {
        assert!(cols.iter().any(|x| x == c), "{c} missing from {cols:?}");
    }
    // Money is Decimal(38, 12) all the way.
    let ty = client_query(
        &port,
        &format!(
            "SELECT type FROM system.columns WHERE database = '{db}' AND table = 'usage_hourly_parts' AND name = 'cost'"
        ),
    );
    assert_eq!(ty.trim(), "Nullable(Decimal(38, 12))");
    let bad = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args([
            "clickhouse",
            "init",
            "--clickhouse-url",
            &url,
            "--database",
            "x; DROP",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("plain identifier"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Run an aggregator over `topic` until idle, with both sinks on.
fn aggregate_until_idle(brokers: &str, topic: &str, dlq: &str, lake: &Path, url: &str, db: &str) {
    let lake_s = lake.to_str().unwrap();
    let group = format!("{topic}-g");
    let mut args = aggregate_args(brokers, topic, dlq, lake_s, &group);
    args.extend([
        "--flush-interval",
        "1",
        "--exit-when-idle",
        "3",
        "--clickhouse-url",
        url,
        "--clickhouse-database",
        db,
    ]);
    let log = lake.with_extension("log");
    let mut a = Aggregator::start(&args, &[], &log);
    let status = a.child.wait().unwrap();
    assert!(
        status.success(),
        "aggregator failed: {}",
        crate::services::tail(&log, 30)
    );
}

fn produce(brokers: &str, topic: &str, t: &Traffic) {
    let (h, _) = produce_in_background(brokers.to_string(), topic.to_string(), t.messages.clone());
    assert_eq!(h.join().unwrap(), t.messages.len() as u64);
}

#[test]
fn both_sinks_agree_with_the_truth_and_reconcile_and_dashboards_match() {
    let (brokers, url, port) = (brokers(), clickhouse_url(), tcp_port());
    let topic = unique_topic("ch-e2e");
    let dlq = format!("{topic}.dlq");
    runtime().block_on(create_topics(&brokers, &[(&topic, 2), (&dlq, 1)]));
    let db = unique_database("e2e");
    let t = traffic(40_000, 41, 0.005, 0.05);
    produce(&brokers, &topic, &t);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    aggregate_until_idle(&brokers, &topic, &dlq, &lake, &url, &db);
    assert_lake_exact(&lake, &t);
    let want = normalized(expected(&t.valid, &Book::load(PRICES)));
    assert_eq!(
        clickhouse_totals(&port, &db),
        want,
        "ClickHouse per-tenant totals"
    );
    let (ok, text) = reconcile(&lake, &url, &db, false);
    assert!(ok, "reconcile: {text}");
    assert!(text.contains("agree on"), "{text}");
    // Tamper with ClickHouse: reconcile must see it.
    client_query(
        &port,
        &format!(
            "INSERT INTO {db}.usage_hourly_parts SELECT * FROM {db}.usage_hourly_parts LIMIT 1"
        ),
    );
    let (ok, text) = reconcile(&lake, &url, &db, false);
    assert!(!ok, "reconcile passed over a doubled row: {text}");
    assert!(text.contains("differences"), "{text}");
    client_query(&port, &format!("DROP TABLE {db}.usage_hourly_parts"));
    // A fresh table: a restarted aggregator ships everything again from the lake, once.
    aggregate_until_idle(&brokers, &topic, &dlq, &lake, &url, &db);
    assert_eq!(
        clickhouse_totals(&port, &db),
        want,
        "after a reload from the lake"
    );
    let (ok, text) = reconcile(&lake, &url, &db, false);
    assert!(ok, "reconcile after the reload: {text}");
    dashboards_match_reports(&lake, &url, &db);
}

/// The ClickHouse dashboard SQL (query/sql/clickhouse) gives the DataFusion reports' numbers for
/// the biggest tenant and one month, by day, by model, and its agent share.
fn dashboards_match_reports(lake: &Path, url: &str, db: &str) {
    use tokenmeter_query::dashboards::Dashboard;
    use tokenmeter_query::{Granularity, ReportParams, Source};
    let rt = runtime();
    let tz = chrono_tz::Asia::Shanghai;
    let (from, to) = (
        chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap(),
        chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
    );
    let params = ReportParams {
        from,
        to,
        tenant: Some("acme".into()),
        tz,
        source: Source::Raw,
    };
    let ctx = rt.block_on(tokenmeter_query::open_catalog(lake)).unwrap();
    let dec = |s: &str| -> String {
        if s.is_empty() || s == "NULL" {
            "NULL".into()
        } else {
            Decimal::from_str(s).unwrap().normalize().to_string()
        }
    };
    let money = |v: Option<i128>| {
        v.map(|v| Decimal::from_i128_with_scale(v, 12).normalize().to_string())
            .unwrap_or_else(|| "NULL".into())
    };
    let cur = |c: &Option<String>| c.clone().unwrap_or_else(|| "NULL".into());
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_validation(false);
    let d = Dashboard::new(db, "usage_hourly").unwrap();
    let range = d.range(tz, from, to);

    // By model: the cost report summed over token types.
    let report = rt
        .block_on(tokenmeter_query::cost_report(&ctx, &params))
        .unwrap();
    let mut want: BTreeMap<(String, String, String), (i64, String)> = BTreeMap::new();
    let mut sums: BTreeMap<(String, String, String), (i64, Decimal, bool)> = BTreeMap::new();
    for r in crate::reports::rows(&report) {
        // tenant_id, provider, model, currency, token_type, tokens, cost
        let e = sums
            .entry((
                r[1].clone(),
                r[2].clone(),
                if r[3].is_empty() {
                    "NULL".into()
                } else {
                    r[3].clone()
                },
            ))
            .or_insert((0, Decimal::ZERO, false));
        e.0 += r[5].parse::<i64>().unwrap();
        if r[6].is_empty() || r[6] == "NULL" {
            e.2 = true;
        } else {
            e.1 += Decimal::from_str(&r[6]).unwrap();
        }
    }
    for (k, (tokens, cost, null)) in sums {
        let c = if null {
            "NULL".into()
        } else {
            cost.normalize().to_string()
        };
        want.insert(k, (tokens, c));
    }
    let got: BTreeMap<_, _> = rt
        .block_on(d.cost_by_model(&client, "acme", range))
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                (r.provider, r.model, cur(&r.currency)),
                (r.tokens, money(r.cost)),
            )
        })
        .collect();
    assert!(!got.is_empty());
    let diff: Vec<_> = got
        .iter()
        .filter(|(k, v)| want.get(*k) != Some(*v))
        .map(|(k, v)| (k, v, want.get(k)))
        .collect();
    assert!(
        diff.is_empty() && got.len() == want.len(),
        "cost by model: ClickHouse dashboard vs cost report: {diff:?}"
    );

    // By day and the month's agent share: the agent-share report.
    let per = |g: Granularity| {
        rt.block_on(tokenmeter_query::agent_share_report(&ctx, &params, g))
            .unwrap()
    };
    let want: BTreeMap<(String, String), String> = crate::reports::rows(&per(Granularity::Day))
        .into_iter()
        // tenant_id, period_start, currency, agent_tokens, total_tokens, share, agent_cost, total_cost, share
        .map(|r| {
            (
                (
                    r[1].clone(),
                    if r[2].is_empty() {
                        "NULL".into()
                    } else {
                        r[2].clone()
                    },
                ),
                dec(&r[7]),
            )
        })
        .collect();
    let got: BTreeMap<(String, String), String> = rt
        .block_on(d.cost_by_day(&client, "acme", tz, range))
        .unwrap()
        .into_iter()
        .map(|r| ((r.day, cur(&r.currency)), money(r.cost)))
        .collect();
    assert!(got.len() > 20, "{got:?}");
    assert_eq!(
        got, want,
        "cost by day: ClickHouse dashboard vs agent-share report"
    );

    let want: BTreeMap<String, (i64, i64, String, String)> =
        crate::reports::rows(&per(Granularity::Month))
            .into_iter()
            .map(|r| {
                (
                    if r[2].is_empty() {
                        "NULL".into()
                    } else {
                        r[2].clone()
                    },
                    (
                        r[3].parse().unwrap(),
                        r[4].parse().unwrap(),
                        dec(&r[6]),
                        dec(&r[7]),
                    ),
                )
            })
            .collect();
    let got: BTreeMap<String, (i64, i64, String, String)> = rt
        .block_on(d.agent_share(&client, "acme", range))
        .unwrap()
        .into_iter()
        .map(|r| {
            let priced = r.currency.is_some();
            let agent_cost = if priced {
                money(Some(r.agent_cost.unwrap_or(0)))
            } else {
                money(r.agent_cost)
            };
            (
                cur(&r.currency),
                (
                    r.agent_tokens,
                    r.total_tokens,
                    agent_cost,
                    money(r.total_cost),
                ),
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "agent share: ClickHouse dashboard vs agent-share report"
    );
}

/// ClickHouse SIGKILLed mid-run and started again on its data: the aggregator keeps filling the
/// lake meanwhile, the sink retries with backoff and catches up; nothing lost or doubled.
#[test]
fn clickhouse_down_for_a_while_loses_nothing() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let chdir = dir.path().join("clickhouse");
    let (http, tcp) = (free_port(), free_port());
    let up = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services.sh"))
        .args([
            "clickhouse-at",
            chdir.to_str().unwrap(),
            &http.to_string(),
            &tcp.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    /// Stops the private server however the test ends.
    struct Reaper(std::path::PathBuf);
    impl Drop for Reaper {
        fn drop(&mut self) {
            if let Some(pid) = std::fs::read_to_string(self.0.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _reaper = Reaper(chdir.clone());
    let url = format!("http://127.0.0.1:{http}");
    let port = tcp.to_string();
    let pid = || -> i32 {
        std::fs::read_to_string(chdir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let topic = unique_topic("ch-down");
    let dlq = format!("{topic}.dlq");
    runtime().block_on(create_topics(&brokers, &[(&topic, 2), (&dlq, 1)]));
    let db = "tokenmeter";
    let t = traffic(30_000, 43, 0.005, 0.05);
    let half = t.messages.len() / 2;
    let (first, _) =
        produce_in_background(brokers.clone(), topic.clone(), t.messages[..half].to_vec());
    first.join().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let group = format!("{topic}-g");
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut args = aggregate_args(&brokers, &topic, &dlq, &lake_s, &group);
    args.extend([
        "--flush-interval",
        "1",
        "--clickhouse-url",
        &url,
        "--metrics-addr",
        &metrics_addr,
    ]);
    let log = dir.path().join("agg.log");
    let a = Aggregator::start(&args, &[], &log);
    let inserted = |log: &Path| crate::services::count_lines(log, "ClickHouse: rollups inserted");
    wait_logged(
        "a first ClickHouse insert",
        Duration::from_secs(120),
        &log,
        || inserted(&log) > 0,
    );
    // Down: SIGKILL, the harshest stop.
    // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
    unsafe { libc::kill(pid(), libc::SIGKILL) };
    let (second, _) =
        produce_in_background(brokers.clone(), topic.clone(), t.messages[half..].to_vec());
    second.join().unwrap();
    wait_logged(
        "the sink to meet the dead server",
        Duration::from_secs(120),
        &log,
        || crate::services::count_lines(&log, "shipping rollups failed; retrying") > 0,
    );
    wait_logged(
        "the lake to take every message while ClickHouse is down",
        Duration::from_secs(300),
        &log,
        || crate::services::caught_up(&brokers, &lake, &topic, 2),
    );
    let metrics = scrape(metrics_port);
    let pending = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokenmeter_clickhouse_pending_batches "))
        .expect("pending-batches metric")
        .parse::<u64>()
        .unwrap();
    assert!(
        pending > 0,
        "no batch waits for ClickHouse while it is down:\n{metrics}"
    );
    // Up again on the same data.
    let mut server = Command::new("clickhouse-server")
        .arg(format!("--config-file={}/config.xml", chdir.display()))
        .current_dir(&chdir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(chdir.join("pid"), server.id().to_string()).unwrap();
    wait_logged(
        "the sink to catch up",
        Duration::from_secs(180),
        &log,
        || reconcile(&lake, &url, db, false).0,
    );
    stop(a);
    assert_lake_exact(&lake, &t);
    let want = normalized(expected(&t.valid, &Book::load(PRICES)));
    assert_eq!(
        clickhouse_totals(&port, db),
        want,
        "ClickHouse after its outage"
    );
    // SAFETY: as above.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    server.wait().unwrap();
    let _ = std::fs::remove_file(chdir.join("pid"));
}

/// A client killed mid-INSERT: ClickHouse 18.16 keeps the rows it received before the
/// connection broke (ClickHouse/ClickHouse#9666). Such rows must count nowhere: not in the views
/// readers use, not in the sink's position, and the batch must be shipped again whole.
#[test]
fn an_insert_cut_short_counts_nowhere_and_its_batch_ships_again() {
    use std::io::{Read, Write};
    use tokenmeter_aggregate::clickhouse::{ClickHouse, RollupRow, Target};
    let (url, port) = (clickhouse_url(), tcp_port());
    let db = unique_database("cut");
    init(&url, &db);
    let ch = ClickHouse::new(Target {
        url: url.clone(),
        database: db.clone(),
        table: "usage_hourly".into(),
        user: None,
        password: None,
    })
    .unwrap();
    let row = |requests: i64| RollupRow {
        hour: 1_790_000_000 / 3600 * 3600,
        tenant_id: "acme".into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        is_agent: 0,
        agent_id: None,
        requests,
        errors: 0,
        input_tokens: 100 * requests,
        output_tokens: 10 * requests,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
        reasoning_output_tokens: 0,
        tokens_uncached_input: 100 * requests,
        tokens_cache_read: 0,
        tokens_cache_write: 0,
        tokens_output: 10 * requests,
        tokens_reasoning: 0,
        cost_uncached_input: None,
        cost_cache_read: None,
        cost_cache_write: None,
        cost_output: None,
        cost_reasoning: None,
        cost: None,
        currency: None,
        src_topic: "t".into(),
        src_partition: 0,
        batch_first: 0,
        batch_last: 9,
        insert_id: String::new(),
        insert_rows: 0,
    };
    let mut rows: Vec<RollupRow> = (1..=4).map(row).collect();

    // The first two of the batch's four rows, then the connection ends without HTTP's last
    // chunk, as when the aggregator is SIGKILLed mid-INSERT.
    let body: String = rows[..2]
        .iter()
        .map(|r| {
            format!(
                "{{\"hour\":\"{}\",\"tenant_id\":\"acme\",\"provider\":\"openai\",\"model\":\"gpt-4o\",\"requests\":{},\"src_topic\":\"t\",\"src_partition\":0,\"batch_first\":0,\"batch_last\":9,\"insert_id\":\"cut-short\",\"insert_rows\":4}}\n",
                chrono::DateTime::from_timestamp(i64::from(r.hour), 0)
                    .unwrap()
                    .format("%Y-%m-%d %H:%M:%S"),
                r.requests
            )
        })
        .collect();
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /?query=INSERT%20INTO%20{db}.usage_hourly_parts%20FORMAT%20JSONEachRow HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
        body.len()
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer); // the server has handled the request once it closes
    let count = |table: &str| {
        client_query(
            &port,
            &format!("SELECT count() FROM {db}.{table} WHERE insert_id = 'cut-short'"),
        )
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    let version = client_query(&port, "SELECT version()");
    if version.starts_with("18.") {
        // The hazard is real on the server under test: the cut-short rows are in the table.
        assert_eq!(count("usage_hourly_parts"), 2, "ClickHouse {version}");
    }
    assert_eq!(count("usage_hourly_complete"), 0);
    let acme = || {
        client_query(
            &port,
            &format!("SELECT count(), sum(requests) FROM {db}.usage_hourly WHERE tenant_id = 'acme' FORMAT TabSeparated"),
        )
        .trim()
        .to_string()
    };
    assert_eq!(
        acme(),
        "0\t0",
        "the view counts rows of an INSERT cut short"
    );
    let rt = runtime();
    assert!(
        rt.block_on(ch.progress("t")).unwrap().is_empty(),
        "the sink's position counts an INSERT cut short"
    );

    // Shipped again whole, the batch counts once.
    let want: i64 = rows.iter().map(|r| r.requests).sum();
    rt.block_on(ch.insert(&mut rows, "whole-1", Duration::from_secs(30)))
        .unwrap();
    assert_eq!(
        rt.block_on(ch.progress("t")).unwrap(),
        BTreeMap::from([(0, 9)])
    );
    assert_eq!(acme(), format!("1\t{want}"));
}
