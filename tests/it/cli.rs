//! The `tokenmeter` binary as a user runs it: the demo end to end, then the reports over the
//! demo's lake in each format, checked against totals computed independently from the same
//! generated traffic; and read-only SQL.

use crate::support::{Book, PRICES, expected, normalized};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::process::Command;
use std::str::FromStr;
use tokenmeter_ingest::generate::{GenConfig, Generator};

fn tokenmeter(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args(args)
        .output()
        .expect("run tokenmeter")
}

/// The valid payloads a generator config yields, and their totals from the independent oracle.
fn truth_of(cfg: GenConfig) -> (Vec<Vec<u8>>, BTreeMap<String, crate::support::Expected>) {
    let valid: Vec<Vec<u8>> = Generator::new(cfg)
        .filter(|m| m.event.is_some())
        .map(|m| m.payload)
        .collect();
    let want = normalized(expected(&valid, &Book::load(PRICES)));
    (valid, want)
}

fn ok(args: &[&str]) -> String {
    let out = tokenmeter(args);
    assert!(
        out.status.success(),
        "tokenmeter {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn demo_then_reports_in_every_format_match_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap();
    let events = 20_000u64;
    let stdout = ok(&[
        "demo",
        "--events",
        &events.to_string(),
        "--data-dir",
        lake_s,
    ]);
    assert!(
        stdout.contains("Cost report for the largest tenant"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Agent share per tenant and month"),
        "{stdout}"
    );

    // The same traffic the demo generated (its documented defaults), totalled independently.
    let (valid, want) = truth_of(GenConfig {
        events,
        tenants: 20,
        invalid_fraction: 0.005,
        ..Default::default()
    });

    for source in ["raw", "rollups"] {
        let csv = ok(&[
            "report",
            "cost",
            "--data-dir",
            lake_s,
            "--from",
            "2026-09-30",
            "--to",
            "2026-11-02",
            "--format",
            "csv",
            "--source",
            source,
        ]);
        let mut got: BTreeMap<String, (i64, Decimal)> = BTreeMap::new();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "tenant_id,provider,model,currency,token_type,tokens,cost"
        );
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            let e = got.entry(f[0].to_string()).or_default();
            e.0 += f[5].parse::<i64>().unwrap();
            if !f[6].is_empty() {
                e.1 += Decimal::from_str(f[6]).unwrap();
            }
        }
        let want: BTreeMap<String, (i64, Decimal)> = want
            .iter()
            .map(|(k, e)| (k.clone(), (e.tokens.iter().sum(), e.cost)))
            .collect();
        let got: BTreeMap<String, (i64, Decimal)> = got
            .into_iter()
            .map(|(k, (t, c))| (k, (t, c.normalize())))
            .collect();
        assert_eq!(got, want, "cost report ({source}) per tenant");
    }

    let json = ok(&[
        "report",
        "agent-share",
        "--data-dir",
        lake_s,
        "--from",
        "2026-10-01",
        "--to",
        "2026-10-31",
        "--granularity",
        "week",
        "--format",
        "json",
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert!(!rows.is_empty());
    for r in &rows {
        let share =
            Decimal::from_str(&r["agent_token_share"].to_string().replace('"', "")).unwrap();
        assert!(share >= Decimal::ZERO && share <= Decimal::ONE, "{r}");
    }

    let table = ok(&[
        "report",
        "cost",
        "--data-dir",
        lake_s,
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-01",
        "--tenant",
        "acme",
        "--tz",
        "Asia/Shanghai",
    ]);
    assert!(
        table.contains("acme") && table.contains("uncached_input"),
        "{table}"
    );

    let pq = dir.path().join("cost.parquet");
    ok(&[
        "report",
        "cost",
        "--data-dir",
        lake_s,
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-01",
        "--format",
        "parquet",
        "--output",
        pq.to_str().unwrap(),
    ]);
    let rows: usize = crate::support::read_parquet_files(&[pq])
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(rows > 0);

    let out = tokenmeter(&["sql", "--data-dir", lake_s, "DROP TABLE usage_events"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = ok(&[
        "sql",
        "--data-dir",
        lake_s,
        "--format",
        "csv",
        "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage_events",
    ]);
    assert_eq!(
        n.lines().nth(1).unwrap(),
        format!("{},{}", valid.len(), valid.len())
    );

    // A reader that stops reading (`| head`): the output commands end quietly, no panic, no
    // error. The pipe's read end is closed before the command starts, so every write fails.
    let all_rows = "SELECT * FROM usage_events";
    for args in [
        vec!["sql", "--data-dir", lake_s, all_rows],
        vec!["sql", "--data-dir", lake_s, "--format", "csv", all_rows],
        vec!["sql", "--data-dir", lake_s, "--format", "json", all_rows],
        vec!["restatements", "--data-dir", lake_s],
        vec![
            "demo",
            "--events",
            "100",
            "--data-dir",
            dir.path().join("d2").to_str().unwrap(),
        ],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked") && !stderr.contains("error"),
            "tokenmeter {args:?} into a closed pipe: {:?}\n{stderr}",
            out.status
        );
    }
}

/// The gateways' commands and the aggregator as separate processes against one broker (the
/// mock cluster, served on a loopback port by this test process): the aggregator is made to
/// SIGKILL itself right after a lake commit and before its Kafka offset commit,
/// then restarted; the lake must hold every valid event once.
#[test]
fn aggregate_process_crash_after_lake_commit_then_restart() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    cluster.create_topic("usage.events", 3, 1).unwrap();
    cluster.create_topic("usage.events.dlq", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("events.jsonl");
    let truth = dir.path().join("truth.json");
    let lake = dir.path().join("lake");
    let (jsonl_s, truth_s, lake_s) = (
        jsonl.to_str().unwrap(),
        truth.to_str().unwrap(),
        lake.to_str().unwrap(),
    );
    ok(&[
        "generate",
        "--events",
        "20000",
        "--seed",
        "3",
        "--invalid-fraction",
        "0.01",
        "--output",
        jsonl_s,
        "--truth",
        truth_s,
        "--prices",
        PRICES,
    ]);
    ok(&[
        "produce",
        "--brokers",
        &brokers,
        "--topic",
        "usage.events",
        jsonl_s,
    ]);

    // Settings come from all three layers: a config file, the environment, and flags.
    let config = dir.path().join("aggregate.toml");
    std::fs::write(&config, format!("brokers = \"{brokers}\"\nprices = \"{PRICES}\"\nflush_max_messages = 2500\n[kafka]\n\"client.id\" = \"it\"\n")).unwrap();
    let aggregate = |failpoint: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tokenmeter"));
        c.args([
            "aggregate",
            "--config",
            config.to_str().unwrap(),
            "--exit-when-idle",
            "1",
        ]);
        c.env("TOKENMETER_DATA_DIR", lake_s);
        if let Some(f) = failpoint {
            c.env("TOKENMETER_FAILPOINT", f);
        }
        c.output().unwrap()
    };
    let crashed = aggregate(Some("after_commit:2"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        crashed.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let done = aggregate(None);
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "broker = \"x\"\n").unwrap();
    let out = tokenmeter(&["aggregate", "--config", typo.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field `broker`"),
        "{err}"
    );
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );

    let (valid, want) = truth_of(GenConfig {
        events: 20_000,
        seed: 3,
        invalid_fraction: 0.01,
        tenants: 50,
        ..Default::default()
    });
    let (got, ids) =
        crate::support::totals_of_events(&crate::support::read_parquet_dir(&lake.join("events")));
    assert_eq!(ids.len(), valid.len());
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        ids.len(),
        "an event id appears twice"
    );
    assert_eq!(got, want);

    // The generator's own truth file agrees with the independent oracle.
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
    assert_eq!(t["valid"].as_u64().unwrap() as usize, valid.len());
    for (tenant, e) in &want {
        assert_eq!(
            t["tenants"][tenant]["tokens"]["cache_read"]
                .as_i64()
                .unwrap(),
            e.tokens[1],
            "{tenant}"
        );
        assert_eq!(
            Decimal::from_str(t["tenants"][tenant]["cost"].as_str().unwrap())
                .unwrap()
                .normalize(),
            e.cost,
            "{tenant}"
        );
    }
}

/// `tokenmeter bench --quick` on the mock cluster: every section is in the JSON, every phase saw
/// every generated event (and both lakes hold exactly them), every ratio is positive and finite.
/// Timings are never asserted: they depend on the machine.
#[test]
fn bench_quick_writes_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args(["bench", "--quick", "--out", out.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .expect("run tokenmeter bench");
    assert!(
        run.status.success(),
        "tokenmeter bench failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("aggregator peak RSS") && stdout.contains("DataFusion vs DuckDB"),
        "{stdout}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let n = doc["events"].as_u64().unwrap();
    assert_eq!(n, 20_000, "--quick generates 20,000 events");
    for section in [
        "raw_consume",
        "aggregator",
        "pipeline",
        "decode",
        "storage",
        "reports",
    ] {
        assert!(
            !doc[section].is_null(),
            "section {section} missing: {doc:#}"
        );
    }
    for path in [
        "/raw_consume/events",
        "/aggregator/events",
        "/aggregator/lake_events",
        "/pipeline/events",
        "/pipeline/lake_events",
    ] {
        assert_eq!(
            doc.pointer(path).and_then(|v| v.as_u64()),
            Some(n),
            "{path}"
        );
    }
    let positive = |path: &str| {
        let v = doc.pointer(path).and_then(|v| v.as_f64());
        assert!(
            v.is_some_and(|v| v.is_finite() && v > 0.0),
            "{path} = {v:?}, want a positive finite number"
        );
    };
    for path in [
        "/raw_consume/events_per_s",
        "/aggregator/events_per_s",
        "/aggregator/ratio_to_raw_consume",
        "/aggregator/peak_rss_kib",
        "/pipeline/events_per_s_per_core",
        "/decode/serde_json_mb_per_s",
        "/decode/sonic_rs_mb_per_s",
        "/storage/events_parquet_to_json",
        "/storage/all_parquet_to_json",
    ] {
        positive(path);
    }
    // Every report ran on both engines, which agreed on its rows, tokens and costs (the bench
    // fails otherwise), with the same threads.
    assert_eq!(
        doc.pointer("/reports/threads").and_then(|v| v.as_u64()),
        Some(std::thread::available_parallelism().unwrap().get() as u64)
    );
    let queries = doc["reports"]["queries"]
        .as_array()
        .expect("report queries");
    let names: Vec<&str> = queries.iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "cost, raw events",
            "agent share, raw events",
            "cost, rollups",
            "agent share, rollups",
            "ad-hoc query, raw events",
            "cost, one tenant-month, rollups",
        ]
    );
    for q in queries {
        for key in ["datafusion_s", "duckdb_s", "datafusion_to_duckdb"] {
            let v = q[key].as_f64();
            assert!(
                v.is_some_and(|v| v.is_finite() && v > 0.0),
                "{} {key} = {v:?}",
                q["name"]
            );
        }
        assert!(q["rows"].as_u64().unwrap() > 0, "{q}");
    }
    for stage in ["decode", "validate", "dedupe", "price", "fold", "encode"] {
        positive(&format!("/pipeline/stages/{stage}/share"));
    }
    // The compacted lake: every date of the generated month had files of several partitions,
    // so compaction left two per date (raw events and rollups), and each report gave the same
    // rows on it (the tokens and costs are checked against DuckDB's by the bench itself).
    let compacted = doc["reports"]["compacted_queries"]
        .as_array()
        .expect("compacted report queries");
    assert_eq!(compacted.len(), queries.len());
    for (q, c) in queries.iter().zip(compacted) {
        assert_eq!((&q["name"], &q["rows"]), (&c["name"], &c["rows"]));
    }
    let c = &doc["compaction"];
    let days = tokenmeter_ingest::generate::GenConfig::default().days as u64;
    assert!(c["before"]["events_files"].as_u64().unwrap() > days, "{c}");
    for table in ["events_files", "rollup_files"] {
        assert_eq!(c["after"][table].as_u64(), Some(days), "{table}: {c}");
    }
    positive("/compaction/events_per_s");
    positive("/compaction/events_parquet_to_json");
}

/// The `--brokers` path of the bench: it creates its topic on the real broker (tansu), and every
/// phase that uses a broker sees every event there.
#[test]
fn bench_quick_on_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let brokers = crate::services::brokers();
    let run = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args([
            "bench",
            "--quick",
            "--brokers",
            &brokers,
            "--partitions",
            "3",
        ])
        .args(["--out", out.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .expect("run tokenmeter bench");
    assert!(
        run.status.success(),
        "tokenmeter bench --brokers failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc["broker"], "external");
    assert_eq!(doc["partitions"], 3);
    for path in [
        "/events",
        "/raw_consume/events",
        "/aggregator/events",
        "/aggregator/lake_events",
    ] {
        assert_eq!(
            doc.pointer(path).and_then(|v| v.as_u64()),
            Some(20_000),
            "{path}"
        );
    }
}
