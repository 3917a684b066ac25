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
    let cfg = GenConfig {
        events,
        tenants: 20,
        invalid_fraction: 0.005,
        ..Default::default()
    };
    let valid: Vec<Vec<u8>> = Generator::new(cfg)
        .filter(|m| m.event.is_some())
        .map(|m| m.payload)
        .collect();
    let want = normalized(expected(&valid, &Book::load(PRICES)));

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
}
