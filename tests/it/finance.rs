//! Finance end to end, through the binary: an invoice priced by a tenant's contract (billing
//! currency, FX, discount) against an independent oracle; an unpriced model refused until a
//! price is added and the month repriced; reports before and after the restatement (`--as-of`);
//! repricing again is a no-op; closing the month freezes its invoice, late events become
//! adjustment lines of the next month, and repricing the closed month is refused.

use crate::support::{Book, PRICES};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use tokenmeter_aggregate::lake::{Lake, LakeOptions};
use tokenmeter_aggregate::{PriceBook, PricedEvent};
use tokenmeter_ingest::generate::{GenConfig, Generator};
use tokenmeter_query::catalog::{View, open_view};
use tokenmeter_query::{ReportParams, Source, cost_report};
use tokenmeter_schemas::{DecodeOptions, decode_event};

const TENANT: &str = "acme";

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, out, err) = run(args);
    assert!(success, "tokenmeter {args:?} failed:\n{out}\n{err}");
    out
}

/// Per (provider, model, token_type, unit price): tokens, from the JSON with `book`.
type Lines = BTreeMap<(String, String, String, Decimal), i64>;

const TYPES: [&str; 5] = [
    "uncached_input",
    "cache_read",
    "cache_write",
    "output",
    "reasoning",
];

fn oracle_lines(payloads: &[&Vec<u8>], book: &Book, tenant: &str) -> Lines {
    let mut out = Lines::new();
    for p in payloads {
        let v: Value = serde_json::from_slice(p).unwrap();
        if v["subject"] != tenant {
            continue;
        }
        let tokens = crate::support::billable(&v);
        let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap())
            .unwrap()
            .to_utc();
        let (provider, model) = (
            v["data"]["provider"].as_str().unwrap(),
            v["data"]["model"].as_str().unwrap(),
        );
        let prices = book.price(provider, model, t).expect("priced");
        for k in 0..5 {
            if tokens[k] != 0 {
                *out.entry((
                    provider.into(),
                    model.into(),
                    TYPES[k].into(),
                    prices[k].normalize(),
                ))
                .or_default() += tokens[k];
            }
        }
    }
    out
}

/// Oracle amount of a line: tokens × price per million × 7.1 CNY/USD × 0.9, half-even to fen.
fn oracle_amount(tokens: i64, price: Decimal) -> Decimal {
    (Decimal::from(tokens) * price / Decimal::from(1_000_000)
        * Decimal::from_str("7.1").unwrap()
        * Decimal::from_str("0.9").unwrap())
    .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven)
}

/// The lines of an invoice JSON of `kind`, keyed like the oracle, with their amounts.
fn invoice_lines(
    v: &Value,
    kind: &str,
) -> BTreeMap<(String, String, String, Decimal), (i64, Decimal)> {
    let mut out = BTreeMap::new();
    for l in v["lines"].as_array().unwrap() {
        if l["kind"] != kind {
            continue;
        }
        let s = |k: &str| l[k].as_str().unwrap().to_string();
        let d = |k: &str| Decimal::from_str(l[k].as_str().unwrap()).unwrap();
        let key = (
            s("provider"),
            s("model"),
            s("token_type"),
            d("unit_price").normalize(),
        );
        assert_eq!(s("fx_rate"), "7.1");
        assert_eq!(s("discount_pct"), "10");
        let prev = out.insert(key, (l["tokens"].as_i64().unwrap(), d("amount")));
        assert!(prev.is_none(), "one line per key: {l}");
    }
    out
}

fn commit(lake: &Lake, book: &PriceBook, msgs: &[&Vec<u8>], first: i64) {
    let evs: Vec<PricedEvent> = msgs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            PricedEvent::new(
                decode_event(p, &DecodeOptions::default()).unwrap(),
                book,
                0,
                first + i as i64,
            )
        })
        .collect();
    let lock = lake.try_lock("usage.events", 0).unwrap().unwrap();
    for (k, chunk) in evs.chunks(2_000).enumerate() {
        let f = first + (k * 2_000) as i64;
        lake.commit(&lock, f, f + chunk.len() as i64 - 1, chunk)
            .unwrap();
    }
}

async fn cost_total(
    dir: &Path,
    as_of: Option<chrono::DateTime<chrono::Utc>>,
    source: Source,
) -> String {
    let ctx = open_view(dir, View { as_of, cut: None }).await.unwrap();
    let p = ReportParams {
        from: "2026-10-01".parse().unwrap(),
        to: "2026-11-01".parse().unwrap(),
        tenant: Some(TENANT.into()),
        tz: chrono_tz::UTC,
        source,
    };
    let b = cost_report(&ctx, &p).await.unwrap();
    datafusion::arrow::util::pretty::pretty_format_batches(&b)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoice_reprice_close_and_adjustments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lake");
    let lake_dir = dir.to_str().unwrap();
    let msgs: Vec<_> = Generator::new(GenConfig {
        events: 8_000,
        tenants: 4,
        seed: 21,
        invalid_fraction: 0.0,
        ..Default::default()
    })
    .collect();
    let payloads: Vec<&Vec<u8>> = msgs
        .iter()
        .filter(|m| m.event.is_some())
        .map(|m| &m.payload)
        .collect();
    // The last 10 % arrive late: after October is closed.
    let cut = payloads.len() * 9 / 10;
    let (early, late) = payloads.split_at(cut);

    // Book A: the example list prices (one model is missing from it).
    let list_text = std::fs::read_to_string(PRICES).unwrap();
    let book_a = PriceBook::parse(&list_text, "a").unwrap();
    let lake = Lake::open(&dir, LakeOptions::default()).unwrap();
    commit(&lake, &book_a, early, 0);

    // Book B: the same list plus acme's contract, billed in CNY at 7.1, 10 % off.
    let contract = r#"
[[fx]]
from = "USD"
to = "CNY"
rate = "7.1"
effective = "2026-01-01"

[[tenant]]
id = "acme"
billing_currency = "CNY"

[[tenant.discount]]
percent = "10"
"#;
    let b_path = tmp.path().join("b.toml");
    std::fs::write(&b_path, format!("{list_text}\n{contract}")).unwrap();
    let b = b_path.to_str().unwrap();
    let inv = |month: &str, prices: &str| -> (bool, String, String) {
        run(&[
            "report",
            "invoice",
            "--data-dir",
            lake_dir,
            "--prices",
            prices,
            "--tenant",
            TENANT,
            "--month",
            month,
            "--format",
            "json",
        ])
    };
    // The unpriced model stops the invoice, with advice.
    let (success, _, err) = inv("2026-10", b);
    assert!(!success);
    assert!(
        err.contains("moonshot/") && err.contains("reprice"),
        "{err}"
    );

    // Book C: B plus a price for the missing model and a new gpt-4.1-mini price from Oct 15.
    let extra = r#"
[[price]]
provider = "moonshot"
model = "kimi-k2"
effective_from = "2025-01-01T00:00:00Z"
input = "0.60"
cache_read = "0.15"
output = "2.50"

[[price]]
provider = "openai"
model = "gpt-4.1-mini"
effective_from = "2026-10-15T00:00:00Z"
input = "0.35"
cache_read = "0.09"
output = "1.40"
"#;
    let c_text = format!("{list_text}\n{extra}\n{contract}");
    let c_path = tmp.path().join("c.toml");
    std::fs::write(&c_path, &c_text).unwrap();
    let c = c_path.to_str().unwrap();
    let oracle_c = Book::load(c);
    let oracle_a = Book::load(PRICES);

    let before_reprice = chrono::Utc::now();
    let original = cost_total(&dir, None, Source::Raw).await;
    let out = ok(&[
        "reprice",
        "--data-dir",
        lake_dir,
        "--prices",
        c,
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-01",
        "--by",
        "finance-test",
    ]);
    assert!(out.contains("restatement 1"), "{out}");
    // Same book again: nothing changes, nothing is written.
    let out = ok(&[
        "reprice",
        "--data-dir",
        lake_dir,
        "--prices",
        c,
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-01",
    ]);
    assert!(out.contains("no change"), "{out}");
    let audit = ok(&["restatements", "--data-dir", lake_dir]);
    assert!(
        audit.contains("restatement 1")
            && audit.contains("finance-test")
            && !audit.contains("restatement 2"),
        "{audit}"
    );

    // Reports: latest = restated (raw and rollups agree); --as-of before = original.
    let restated = cost_total(&dir, None, Source::Raw).await;
    assert_ne!(restated, original);
    assert_eq!(restated, cost_total(&dir, None, Source::Rollups).await);
    assert_eq!(
        original,
        cost_total(&dir, Some(before_reprice), Source::Raw).await
    );
    assert_eq!(
        original,
        cost_total(&dir, Some(before_reprice), Source::Rollups).await
    );
    // The restated cost equals the oracle with book C; the original the oracle with book A.
    let sum_cost = |t: &str| -> Decimal {
        t.lines()
            .filter(|l| l.starts_with("| acme"))
            .map(|l| Decimal::from_str(l.split('|').nth(7).unwrap().trim()).unwrap_or_default())
            .sum()
    };
    let exp = |book: &Book| {
        crate::support::expected(
            &early.iter().map(|p| (*p).clone()).collect::<Vec<_>>(),
            book,
        )[TENANT]
            .cost
    };
    assert_eq!(sum_cost(&restated), exp(&oracle_c));
    assert_eq!(sum_cost(&original), exp(&oracle_a));

    // The invoice: every line against the oracle, total = sum of lines.
    let (success, out, err) = inv("2026-10", c);
    assert!(success, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["tenant_id"].as_str(),
            v["month"].as_str(),
            v["currency"].as_str()
        ),
        (Some(TENANT), Some("2026-10"), Some("CNY"))
    );
    let got = invoice_lines(&v, "usage");
    let want = oracle_lines(early, &oracle_c, TENANT);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let mut total = Decimal::ZERO;
    for (k, (tokens, amount)) in &got {
        assert_eq!(*tokens, want[k], "{k:?}");
        assert_eq!(*amount, oracle_amount(*tokens, k.3), "{k:?}");
        total += amount;
    }
    assert_eq!(
        Decimal::from_str(v["total"].as_str().unwrap()).unwrap(),
        total
    );
    assert!(
        got.keys()
            .any(|k| k.1 == "gpt-4.1-mini" && k.3 == Decimal::from_str("0.35").unwrap())
    );
    // The other formats carry the same total.
    let html = ok(&[
        "report",
        "invoice",
        "--data-dir",
        lake_dir,
        "--prices",
        c,
        "--tenant",
        TENANT,
        "--month",
        "2026-10",
        "--format",
        "html",
    ]);
    assert!(
        html.contains(&format!("<td class=\"n\" id=\"total\">{total}</td>")),
        "html total"
    );
    // A real browser renders it; its PDF holds the tenant, every line's amount and the total.
    let html_path = tmp.path().join("invoice.html");
    std::fs::write(&html_path, &html).unwrap();
    let text = pdf_text(&html_path, &tmp.path().join("invoice.pdf"));
    assert!(text.contains("Invoice") && text.contains(TENANT), "{text}");
    assert!(text.contains(&total.to_string()), "{text}");
    for (_, amount) in got.values() {
        assert!(text.contains(&amount.to_string()), "{amount} in {text}");
    }
    let csv = ok(&[
        "report",
        "invoice",
        "--data-dir",
        lake_dir,
        "--prices",
        c,
        "--tenant",
        TENANT,
        "--month",
        "2026-10",
        "--format",
        "csv",
    ]);
    assert_eq!(csv.lines().count(), got.len() + 1);
    // October in Los Angeles (PDT, UTC−7): [2026-10-01T07:00Z, 2026-11-01T07:00Z); the events
    // of the first seven UTC hours of October belong to September there.
    let (start, end) = (
        chrono::DateTime::parse_from_rfc3339("2026-10-01T07:00:00Z").unwrap(),
        chrono::DateTime::parse_from_rfc3339("2026-11-01T07:00:00Z").unwrap(),
    );
    let in_la_october: Vec<&Vec<u8>> = early
        .iter()
        .copied()
        .filter(|p| {
            let v: Value = serde_json::from_slice(p).unwrap();
            let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
            start <= t && t < end
        })
        .collect();
    assert!(in_la_october.len() < early.len());
    let la = ok(&[
        "report",
        "invoice",
        "--data-dir",
        lake_dir,
        "--prices",
        c,
        "--tenant",
        TENANT,
        "--month",
        "2026-10",
        "--tz",
        "America/Los_Angeles",
        "--format",
        "json",
    ]);
    let la = invoice_lines(&serde_json::from_str(&la).unwrap(), "usage");
    assert_eq!(
        la.iter()
            .map(|(k, (t, _))| (k.clone(), *t))
            .collect::<Lines>(),
        oracle_lines(&in_la_october, &oracle_c, TENANT)
    );

    // Close October; the late events arrive; October's invoice does not move.
    let out = ok(&[
        "close",
        "--data-dir",
        lake_dir,
        "--month",
        "2026-10",
        "--by",
        "finance-test",
    ]);
    assert!(out.contains("closed 2026-10"), "{out}");
    assert!(
        ok(&["close", "--data-dir", lake_dir, "--month", "2026-10"]).contains("already closed")
    );
    // The aggregator runs with book C by now.
    let book_c = PriceBook::parse(&c_text, "c").unwrap();
    commit(&lake, &book_c, late, early.len() as i64);
    let (_, again, _) = inv("2026-10", c);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["status"], "closed");
    assert_eq!(
        (&again["lines"], &again["total"]),
        (&v["lines"], &v["total"]),
        "a closed month's invoice is frozen"
    );
    // They are November's adjustments (priced by the terms of October).
    let (success, nov, err) = inv("2026-11", c);
    assert!(success, "{err}");
    let nov: Value = serde_json::from_str(&nov).unwrap();
    let adj = invoice_lines(&nov, "adjustment");
    // The invoice takes the list price the lake holds for them: book C's.
    let want = oracle_lines(late, &oracle_c, TENANT);
    assert_eq!(
        adj.iter()
            .map(|(k, (t, _))| (k.clone(), *t))
            .collect::<Lines>(),
        want
    );
    for l in nov["lines"].as_array().unwrap() {
        assert_eq!(l["period"], "2026-10");
    }
    let report = ok(&[
        "report",
        "adjustments",
        "--data-dir",
        lake_dir,
        "--month",
        "2026-11",
        "--tenant",
        TENANT,
        "--format",
        "csv",
    ]);
    // Golden: the adjustments report as a table (every tenant); its token sums are checked
    // against the oracle just below for acme. Checked by hand: claude-3-5-haiku uncached input
    // 51,322 × $0.80/M = 0.0410576; claude-sonnet-4 cache write 2,161 × $3.75/M = 0.00810375;
    // deepseek-chat cache read 17,543 × $0.0028/M = 0.0000491204.
    let table = ok(&[
        "report",
        "adjustments",
        "--data-dir",
        lake_dir,
        "--month",
        "2026-11",
    ]);
    insta::assert_snapshot!("adjustments_table", table);
    let late_tokens: i64 = want.values().sum();
    let listed: i64 = report
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(6).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(listed, late_tokens);
    // December carries nothing of October.
    let (success, dec, _) = inv("2026-12", c);
    assert!(success);
    assert_eq!(
        serde_json::from_str::<Value>(&dec).unwrap()["lines"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // A closed month cannot be repriced.
    let (success, _, err) = run(&[
        "reprice",
        "--data-dir",
        lake_dir,
        "--prices",
        c,
        "--from",
        "2026-10-31",
        "--to",
        "2026-11-02",
    ]);
    assert!(
        !success && err.contains("2026-10") && err.contains("closed"),
        "{err}"
    );
}

/// A lake of `n` generated events of October 2026 (seed `seed`) priced with `book`, in batches.
fn small_lake(dir: &Path, book: &PriceBook, n: u64, seed: u64) {
    let msgs: Vec<_> = Generator::new(GenConfig {
        events: n,
        tenants: 3,
        seed,
        invalid_fraction: 0.0,
        ..Default::default()
    })
    .collect();
    let payloads: Vec<&Vec<u8>> = msgs.iter().map(|m| &m.payload).collect();
    let lake = Lake::open(dir, LakeOptions::default()).unwrap();
    commit(&lake, book, &payloads, 0);
}

/// The golden book: the example list prices, a price for the model they lack, USD→CNY rates
/// that change mid-month, and acme's contract with an override, discounts and a graduated tier.
fn golden_book() -> String {
    let list = std::fs::read_to_string(PRICES).unwrap();
    format!(
        r#"{list}
[[price]]
provider = "moonshot"
model = "kimi-k2"
effective_from = "2025-01-01T00:00:00Z"
input = "0.60"
output = "2.50"

[[fx]]
from = "USD"
to = "CNY"
rate = "7.1"
effective = "2026-10-01"

[[fx]]
from = "USD"
to = "CNY"
rate = "7.12"
effective = "2026-10-16"

[[tenant]]
id = "acme"
billing_currency = "CNY"

[[tenant.price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2026-10-20T00:00:00Z"
input = "1.80"
cache_read = "0.45"
output = "7.20"

[[tenant.discount]]
percent = "5"

[[tenant.discount]]
provider = "anthropic"
percent = "12.5"

[[tenant.tier]]
provider = "openai"
model = "gpt-4.1-mini"
token_types = ["uncached_input", "output"]
bands = [{{ up_to = 100000, discount = "0" }}, {{ discount = "20" }}]
"#
    )
}

/// Golden snapshots of the invoice (table and JSON) over a fixed lake and book. Figures checked
/// by hand on the first run:
/// - tier: gpt-4.1-mini's first 100,000 uncached input + output tokens of the month (time order)
///   are band 1 (82,392 + 17,608 = 100,000); 82,392 × $0.40/M × 7.1 × 0.95 = ¥0.2223 → 0.22;
///   band 2 38,070 × $0.40/M × 7.1 × 0.95 × 0.8 = ¥0.0822 → 0.08;
/// - override: gpt-4.1 from 2026-10-20 at $1.80/M: 120,513 × 1.8/M × 7.12 × 0.95 = ¥1.4673 → 1.47;
/// - most specific discount: Anthropic 12.5 %: 79,457 × $0.80/M × 7.1 × 0.875 = ¥0.3949 → 0.39;
/// - default cache_read = input: kimi-k2 204,127 × $0.60/M × 7.1 × 0.95 = ¥0.8261 → 0.83.
#[test]
fn invoice_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lake");
    let text = golden_book();
    let book = PriceBook::parse(&text, "golden").unwrap();
    small_lake(&dir, &book, 1_500, 3);
    let b_path = tmp.path().join("golden.toml");
    std::fs::write(&b_path, &text).unwrap();
    let args = |format: &'static str| {
        vec![
            "report".to_string(),
            "invoice".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--prices".into(),
            b_path.display().to_string(),
            "--tenant".into(),
            TENANT.into(),
            "--month".into(),
            "2026-10".into(),
            "--format".into(),
            format.into(),
        ]
    };
    let table = ok(&args("table").iter().map(String::as_str).collect::<Vec<_>>());
    insta::assert_snapshot!("invoice_table", table);
    let json: Value = serde_json::from_str(&ok(&args("json")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()))
    .unwrap();
    let mut redacted = json.clone();
    redacted["prices_hash"] = "[hash]".into();
    insta::assert_snapshot!(
        "invoice_json",
        serde_json::to_string_pretty(&redacted).unwrap()
    );
    // Whatever the golden figures, the total is the sum of the lines.
    let sum: Decimal = json["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| Decimal::from_str(l["amount"].as_str().unwrap()).unwrap())
        .sum();
    assert_eq!(
        Decimal::from_str(json["total"].as_str().unwrap()).unwrap(),
        sum
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4))]

    /// Repricing with the book that priced the lake changes nothing and writes nothing; after a
    /// real change, repricing again with the new book is a no-op too.
    #[test]
    fn repricing_with_the_same_book_is_a_no_op(seed in 0u64..1_000, n in 50u64..300) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lake");
        let text = golden_book();
        let book = PriceBook::parse(&text, "golden").unwrap();
        small_lake(&dir, &book, n, seed);
        let at = chrono::Utc::now();
        let from: chrono::NaiveDate = "2026-10-01".parse().unwrap();
        let to: chrono::NaiveDate = "2026-11-01".parse().unwrap();
        let r = rt.block_on(tokenmeter_query::reprice::reprice(&dir, &book, "b", from, to, "t", at)).unwrap();
        proptest::prop_assert!(matches!(r, tokenmeter_query::reprice::Repriced::NoChange { events } if events > 0), "{r:?}");
        proptest::prop_assert!(!dir.join("_restatements").join("000001.json").exists());
        let cheaper = PriceBook::parse(&text.replace("input = \"0.60\"", "input = \"0.50\"").replace("input = \"2.00\"\ncache_read = \"0.50\"", "input = \"1.90\"\ncache_read = \"0.50\"").replace("input = \"0.40\"\ncache_read = \"0.10\"", "input = \"0.41\"\ncache_read = \"0.10\""), "c").unwrap();
        let r = rt.block_on(tokenmeter_query::reprice::reprice(&dir, &cheaper, "c", from, to, "t", at)).unwrap();
        proptest::prop_assert!(matches!(r, tokenmeter_query::reprice::Repriced::Restated(_)));
        let r = rt.block_on(tokenmeter_query::reprice::reprice(&dir, &cheaper, "c", from, to, "t", at)).unwrap();
        proptest::prop_assert!(matches!(r, tokenmeter_query::reprice::Repriced::NoChange { .. }), "{r:?}");
    }
}

/// Print an HTML file to PDF with headless Chromium and return the PDF's text (pdftotext).
fn pdf_text(html: &Path, pdf: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs (tests/run.sh installs Debian's chromium)");
    assert!(
        out.status.success() && pdf.exists(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("pdftotext")
        .arg(pdf)
        .arg("-")
        .output()
        .expect("pdftotext runs (tests/run.sh installs poppler-utils)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The golden book `text` with one input price a cent higher: a reprice with it changes costs.
fn dearer_book(text: &str) -> PriceBook {
    PriceBook::parse(
        &text.replace(
            "input = \"0.40\"\ncache_read = \"0.10\"",
            "input = \"0.41\"\ncache_read = \"0.10\"",
        ),
        "c",
    )
    .unwrap()
}

/// A reprice that crashed after writing files but before its manifest leaves nothing visible,
/// and the next reprice deletes its files and never reuses its generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_reprice_is_invisible_and_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lake");
    let text = golden_book();
    let book = PriceBook::parse(&text, "golden").unwrap();
    small_lake(&dir, &book, 600, 9);
    let before = cost_total(&dir, None, Source::Raw).await;
    // Generation 1 "crashed": its intent and a copy of every data file under its name exist,
    // its manifest does not.
    let rdir = dir.join("_restatements");
    std::fs::create_dir_all(&rdir).unwrap();
    std::fs::write(
        rdir.join("000001.intent.json"),
        r#"{"generation":1,"from":"2026-10-01","to":"2026-11-01"}"#,
    )
    .unwrap();
    let mut planted = Vec::new();
    for f in crate::support::files_under(&dir) {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(stem) = name.strip_suffix(".parquet") {
            let copy = f.with_file_name(format!("{stem}.r000001.parquet"));
            std::fs::copy(&f, &copy).unwrap();
            planted.push(copy);
        }
    }
    assert!(!planted.is_empty());
    assert_eq!(cost_total(&dir, None, Source::Raw).await, before);
    assert_eq!(cost_total(&dir, None, Source::Rollups).await, before);
    // The next reprice (another price) cleans generation 1 up and publishes generation 2.
    let dearer = dearer_book(&text);
    let r = tokenmeter_query::reprice::reprice(
        &dir,
        &dearer,
        "c",
        "2026-10-01".parse().unwrap(),
        "2026-11-01".parse().unwrap(),
        "t",
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let tokenmeter_query::reprice::Repriced::Restated(m) = r else {
        panic!("expected a restatement, got {r:?}")
    };
    assert_eq!(m.generation, 2);
    assert!(
        planted.iter().all(|p| !p.exists()),
        "generation 1's files are deleted"
    );
    assert!(!rdir.join("000001.intent.json").exists());
    let after = cost_total(&dir, None, Source::Raw).await;
    assert_ne!(after, before);
    assert_eq!(after, cost_total(&dir, None, Source::Rollups).await);
}

/// `prices show` explains which price applies and why.
#[test]
fn prices_show_explains_the_price() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("golden.toml");
    std::fs::write(&path, golden_book()).unwrap();
    let p = path.to_str().unwrap();
    let out = ok(&[
        "prices",
        "show",
        "--prices",
        p,
        "--model",
        "gpt-4.1",
        "--tenant",
        TENANT,
        "--at",
        "2026-10-21T00:00:00Z",
    ]);
    assert!(
        out.contains("openai/gpt-4.1") && out.contains("billed in CNY"),
        "{out}"
    );
    assert!(
        out.contains("contract price") && out.contains("input 1.800000"),
        "{out}"
    );
    assert!(out.contains("discount: 5%"), "{out}");
    assert!(
        out.contains("fx: 1 USD = 7.12 CNY (effective 2026-10-16)"),
        "{out}"
    );
    let out = ok(&[
        "prices",
        "show",
        "--prices",
        p,
        "--model",
        "gpt-4.1-mini",
        "--tenant",
        TENANT,
        "--at",
        "2026-10-21T00:00:00Z",
    ]);
    assert!(out.contains("applies: the list entry"), "{out}");
    assert!(
        out.contains("tier (output): openai/gpt-4.1-mini graduated"),
        "{out}"
    );
    let (success, _, err) = run(&["prices", "show", "--prices", p, "--model", "nope"]);
    assert!(
        !success && err.contains("no price for a model named \"nope\""),
        "{err}"
    );
}

/// Every row of the raw events and every sum of the hourly rollups, as text.
async fn dump(dir: &Path) -> (String, String) {
    let ctx = open_view(dir, View::default()).await.unwrap();
    let text = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            datafusion::arrow::util::pretty::pretty_format_batches(&b)
                .unwrap()
                .to_string()
        }
    };
    (
        text("SELECT * FROM usage_events ORDER BY kafka_partition, kafka_offset").await,
        text("SELECT * FROM usage_hourly ORDER BY tenant_id, hour, provider, model, agent_id, currency").await,
    )
}

/// Panic with the first differing line of two dumps (whole dumps are too long to read).
fn assert_same(got: &(String, String), want: &(String, String), what: &str) {
    for (table, g, w) in [("raw", &got.0, &want.0), ("hourly", &got.1, &want.1)] {
        if let Some((i, (a, b))) = g
            .lines()
            .zip(w.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
        {
            panic!("{what}: {table} line {i} differs:\n got {a}\nwant {b}");
        }
        assert_eq!(g.lines().count(), w.lines().count(), "{what}: {table} rows");
    }
}

/// Compaction keeps every row and every figure in one file per date and table: a lake
/// compacted between two commits reads exactly as a lake given the same events and never
/// compacted; a second compaction takes in what came after the first, a third has nothing to
/// do; repricing a compacted lake gives what repricing the other gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_row_and_figure_in_fewer_files() {
    use tokenmeter_query::reprice::{Compacted, Repriced, compact, reprice};
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let text = golden_book();
    let book = PriceBook::parse(&text, "golden").unwrap();
    let msgs: Vec<_> = Generator::new(GenConfig {
        events: 6_000,
        tenants: 3,
        seed: 5,
        invalid_fraction: 0.0,
        days: 3,
        ..Default::default()
    })
    .collect();
    let payloads: Vec<&Vec<u8>> = msgs.iter().map(|m| &m.payload).collect();
    let (from, to) = ("2026-10-01".parse().unwrap(), "2026-11-01".parse().unwrap());
    let now = chrono::Utc::now();
    // Batches of 500 events: about four per date, each a raw-event and a rollup file.
    let commit_500 = |lake: &Lake, msgs: &[&Vec<u8>], first: i64| {
        for (k, chunk) in msgs.chunks(500).enumerate() {
            commit(lake, &book, chunk, first + 500 * k as i64);
        }
    };
    // b: every event, never compacted.
    commit_500(
        &Lake::open(&b, LakeOptions::default()).unwrap(),
        &payloads,
        0,
    );
    // a: the first two dates' events, compacted, then the rest.
    let lake_a = Lake::open(&a, LakeOptions::default()).unwrap();
    commit_500(&lake_a, &payloads[..4_000], 0);
    let before = dump(&a).await;
    let Compacted::Compacted { manifest, dates } = compact(&a, from, to, "t", now).await.unwrap()
    else {
        panic!("a lake of two batches per date has something to compact")
    };
    assert_eq!(
        manifest.kind,
        tokenmeter_schemas::layout::RestatementKind::Compaction
    );
    assert!(manifest.totals.iter().all(|t| t.old_cost == t.new_cost));
    assert!(!dates.is_empty());
    assert!(dates.iter().all(|d| d.files_before >= 8), "{dates:?}");
    // Each compacted date holds all of its events (counted here from the messages).
    let mut per_date: BTreeMap<chrono::NaiveDate, i64> = BTreeMap::new();
    for p in &payloads[..4_000] {
        let e = decode_event(p, &DecodeOptions::default()).unwrap();
        *per_date.entry(e.time_utc().date_naive()).or_default() += 1;
    }
    for d in &dates {
        assert_eq!(d.events, per_date[&d.date], "{d:?}");
    }
    assert!(dates.len() >= 2, "{dates:?}");
    assert_same(
        &dump(&a).await,
        &before,
        "compaction changed what readers see",
    );
    // The compacted file of a date holds its rows ordered by tenant.
    let d = dates[0].date;
    let f = a.join(format!("events/date={d}/compacted.r000001.parquet"));
    let tenants: Vec<String> = crate::support::read_parquet_files(&[f])
        .iter()
        .flat_map(|batch| {
            use datafusion::arrow::array::{Array, AsArray};
            let c = batch.column(batch.schema().index_of("tenant_id").unwrap());
            let c = c.as_string::<i32>();
            (0..c.len())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(tenants.len() as i64, dates[0].events);
    assert!(tenants.windows(2).all(|w| w[0] <= w[1]));

    // Batches committed after the compaction are visible beside it.
    commit_500(&lake_a, &payloads[4_000..], 4_000);
    let want = dump(&b).await;
    assert_same(
        &dump(&a).await,
        &want,
        "a compacted lake reads as one never compacted",
    );
    // Again, through the command: it takes in the new batch; a third time finds nothing.
    let out = ok(&[
        "compact",
        "--data-dir",
        a.to_str().unwrap(),
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-01",
    ]);
    assert!(
        out.contains("compaction 2 of 2026-10-01..2026-11-01"),
        "{out}"
    );
    assert_eq!(dump(&a).await, want);
    assert!(matches!(
        compact(&a, from, to, "t", now).await.unwrap(),
        Compacted::NoChange { events: 6_000 }
    ));

    // Repricing composes with it.
    let dearer = dearer_book(&text);
    for lake in [&a, &b] {
        let r = reprice(lake, &dearer, "c", from, to, "t", now)
            .await
            .unwrap();
        assert!(matches!(r, Repriced::Restated(_)), "{r:?}");
    }
    assert_same(
        &dump(&a).await,
        &dump(&b).await,
        "repriced after compaction",
    );
    assert_ne!(dump(&b).await, want, "the reprice changed costs");
}
