//! Both reports computed from the hourly rollups equal the same reports computed from the raw
//! events, on a lake written by the real commit protocol in many batches (so rollup rows of one
//! key are spread over several files), for several time zones, granularities and tenants; and
//! the cost report reconciles with totals computed independently from the JSON. Golden snapshots
//! of the reports, the anomalies report included.

use crate::support::{Book, PRICES, expected, normalized};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tokenmeter_aggregate::lake::{Lake, LakeOptions};
use tokenmeter_aggregate::{PriceBook, PricedEvent};
use tokenmeter_ingest::generate::{GenConfig, Generator};
use tokenmeter_query::{
    AnomalyParams, Granularity, ReportParams, Source, agent_share_report, anomalies_report,
    cost_report, open_catalog,
};
use tokenmeter_schemas::{DecodeOptions, decode_event};

fn text(b: &[RecordBatch]) -> String {
    pretty_format_batches(b).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_reports_equal_raw_reports() {
    let book = PriceBook::load(std::path::Path::new(PRICES)).unwrap();
    let cfg = GenConfig {
        events: 30_000,
        tenants: 12,
        seed: 5,
        days: 40,
        ..Default::default()
    };
    let msgs: Vec<_> = Generator::new(cfg).collect();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path(), LakeOptions::default()).unwrap();
    // Two partitions, interleaved, batches of 4,000: every hour's rows are split across files.
    for part in 0..2i32 {
        let evs: Vec<PricedEvent> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as i32) % 2 == part)
            .enumerate()
            .map(|(off, (_, m))| {
                PricedEvent::new(
                    decode_event(&m.payload, &DecodeOptions::default()).unwrap(),
                    &book,
                    part,
                    off as i64,
                )
            })
            .collect();
        for (k, chunk) in evs.chunks(4_000).enumerate() {
            let first = (k * 4_000) as i64;
            let lock = lake.try_lock("usage.events", part).unwrap().unwrap();
            lake.commit(&lock, first, first + chunk.len() as i64 - 1, chunk)
                .unwrap();
        }
    }
    let ctx = open_catalog(dir.path()).await.unwrap();
    let from = chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
    let to = chrono::NaiveDate::from_ymd_opt(2026, 11, 10).unwrap();
    let mut compared = 0;
    for tz in [
        chrono_tz::UTC,
        chrono_tz::Asia::Shanghai,
        chrono_tz::America::New_York,
    ] {
        for tenant in [None, Some("acme".to_string())] {
            let p = |source| ReportParams {
                from: from + chrono::Days::new(3),
                to: to - chrono::Days::new(5),
                tenant: tenant.clone(),
                tz,
                source,
            };
            let raw = cost_report(&ctx, &p(Source::Raw)).await.unwrap();
            let rolled = cost_report(&ctx, &p(Source::Rollups)).await.unwrap();
            assert!(raw.iter().map(|b| b.num_rows()).sum::<usize>() > 10);
            assert_eq!(text(&raw), text(&rolled), "cost report, {tz}, {tenant:?}");
            for g in [Granularity::Day, Granularity::Week, Granularity::Month] {
                let raw = agent_share_report(&ctx, &p(Source::Raw), g).await.unwrap();
                let rolled = agent_share_report(&ctx, &p(Source::Rollups), g)
                    .await
                    .unwrap();
                assert_eq!(
                    text(&raw),
                    text(&rolled),
                    "agent share, {tz}, {g:?}, {tenant:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 18);

    // Over the whole window the cost report reconciles with the independent oracle.
    let valid: Vec<Vec<u8>> = msgs.iter().map(|m| m.payload.clone()).collect();
    let want = normalized(expected(&valid, &Book::load(PRICES)));
    let params = ReportParams {
        from,
        to,
        tenant: None,
        tz: chrono_tz::UTC,
        source: Source::Rollups,
    };
    let report = cost_report(&ctx, &params).await.unwrap();
    let mut got: BTreeMap<String, ([i64; 5], Decimal)> = BTreeMap::new();
    for b in &report {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};
        let tenant = b.column_by_name("tenant_id").unwrap().as_string::<i32>();
        let ty = b.column_by_name("token_type").unwrap().as_string::<i32>();
        let tokens = b
            .column_by_name("tokens")
            .unwrap()
            .as_primitive::<Int64Type>();
        let cost = b
            .column_by_name("cost")
            .unwrap()
            .as_primitive::<Decimal128Type>();
        for r in 0..b.num_rows() {
            let e = got.entry(tenant.value(r).to_string()).or_default();
            let k = tokenmeter_schemas::Buckets::NAMES
                .iter()
                .position(|n| *n == ty.value(r))
                .unwrap();
            e.0[k] += tokens.value(r);
            if !cost.is_null(r) {
                e.1 += Decimal::from_i128_with_scale(cost.value(r), 12);
            }
        }
    }
    let got: BTreeMap<_, _> = got
        .into_iter()
        .map(|(k, (t, c))| (k, (t, c.normalize())))
        .collect();
    let want: BTreeMap<_, _> = want
        .into_iter()
        .map(|(k, e)| (k, (e.tokens, e.cost)))
        .collect();
    assert_eq!(got, want);
}

/// Golden outputs: both reports over a lake holding the valid example corpus (every provider,
/// agent and non-agent, the 10⁹-token maximum, a time offset that crosses a year in UTC, an
/// unpriced model). A change to any figure or column shows up as a snapshot diff to review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_reports_over_the_example_corpus() {
    let book = PriceBook::load(std::path::Path::new(PRICES)).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/valid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let opts = DecodeOptions {
        now: Some(
            chrono::DateTime::parse_from_rfc3339("2026-11-21T00:00:00Z")
                .unwrap()
                .to_utc(),
        ),
        ..Default::default()
    };
    let events: Vec<PricedEvent> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            PricedEvent::new(
                decode_event(&std::fs::read(f).unwrap(), &opts).unwrap(),
                &book,
                0,
                i as i64,
            )
        })
        .collect();
    let lake_dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(lake_dir.path(), LakeOptions::default()).unwrap();
    let lock = lake.try_lock("usage.events", 0).unwrap().unwrap();
    lake.commit(&lock, 0, events.len() as i64 - 1, &events)
        .unwrap();
    let ctx = open_catalog(lake_dir.path()).await.unwrap();
    let csv = |b: &[RecordBatch]| {
        let mut out = Vec::new();
        tokenmeter_query::output::write_to(b, tokenmeter_query::Format::Csv, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let p = ReportParams {
        from: chrono::NaiveDate::from_ymd_opt(2025, 6, 1).unwrap(),
        to: chrono::NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
        tenant: None,
        tz: chrono_tz::UTC,
        source: Source::Raw,
    };
    insta::assert_snapshot!(
        "cost_report_corpus_utc",
        csv(&cost_report(&ctx, &p).await.unwrap())
    );
    let p = ReportParams {
        tz: chrono_tz::Asia::Shanghai,
        source: Source::Rollups,
        ..p
    };
    insta::assert_snapshot!(
        "agent_share_corpus_shanghai_month",
        csv(&agent_share_report(&ctx, &p, Granularity::Month)
            .await
            .unwrap())
    );
}

/// Every row of `batches` as display strings (NULL as an empty string).
pub fn rows(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<Vec<String>> {
    use datafusion::arrow::util::display::array_value_to_string;
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(r) {
                            String::new()
                        } else {
                            array_value_to_string(c, r).unwrap()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// Golden output of the anomalies report (table form) over a hand-built lake, figures checked by
/// hand. Prices: openai/gpt-4.1 at 2.00 input, 0.50 cache read, 8.00 output per million tokens.
///
/// - acme: one request an hour from 11-01 00:30 to 11-02 05:30 (30 hours), 1,000 in + 250 out:
///   0.002 + 0.002 = 0.004 USD an hour. At 11-02 06:15, 8,000 in + 3,000 out: 0.016 + 0.024 =
///   0.040 USD, 10 × the median of its 30 baseline hours (0.004) > 5 × → one spend_spike, ratio
///   10. The hours 11-02 00:00 … 05:00 and 07:00 equal their median: no spike. At 09:10 an
///   unpriced request of 70,000 + 2,000 = 72,000 tokens > 50,000 → large_request (no spend).
/// - globex: at 11:00, 48,000 in (40,000 of them cache reads) + 2,500 out = 50,500 > 50,000 →
///   large_request (cost 0.016 + 0.020 + 0.020 = 0.056, but one hour of usage: no spend
///   verdict); at 12:00, 45,000 + 5,000 = exactly 50,000 → not a large request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_anomalies_report() {
    let event = |id: &str, time: String, tenant: &str, model: &str, usage: &str, agent: &str| {
        let (provider, model) = model.split_once('/').unwrap();
        format!(
            r#"{{"specversion":"1.0","type":"gen_ai.usage","id":"{id}","source":"gw","time":"{time}","subject":"{tenant}","data":{{"provider":"{provider}","model":"{model}"{agent},"usage":{usage}}}}}"#
        )
    };
    let plain =
        |input: i64, output: i64| format!(r#"{{"input_tokens":{input},"output_tokens":{output}}}"#);
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:30:00Z")
        .unwrap()
        .to_utc();
    let mut payloads: Vec<String> = (0..30)
        .chain([31])
        .map(|h| {
            let t = (base + chrono::Duration::hours(h)).to_rfc3339();
            event(
                &format!("acme-{h:02}"),
                t,
                "acme",
                "openai/gpt-4.1",
                &plain(1_000, 250),
                "",
            )
        })
        .collect();
    payloads.extend([
        event(
            "acme-spike",
            "2026-11-02T06:15:00Z".into(),
            "acme",
            "openai/gpt-4.1",
            &plain(8_000, 3_000),
            "",
        ),
        event(
            "acme-big",
            "2026-11-02T09:10:00Z".into(),
            "acme",
            "acme-ai/internal-1",
            &plain(70_000, 2_000),
            r#","agent":{"id":"lobster-42"}"#,
        ),
        event(
            "globex-big",
            "2026-11-02T11:00:00Z".into(),
            "globex",
            "openai/gpt-4.1",
            r#"{"input_tokens":48000,"cache_read_input_tokens":40000,"output_tokens":2500}"#,
            "",
        ),
        event(
            "globex-exact",
            "2026-11-02T12:00:00Z".into(),
            "globex",
            "openai/gpt-4.1",
            &plain(45_000, 5_000),
            "",
        ),
    ]);
    let book = PriceBook::load(std::path::Path::new(PRICES)).unwrap();
    let opts = DecodeOptions {
        now: Some(
            chrono::DateTime::parse_from_rfc3339("2026-11-21T00:00:00Z")
                .unwrap()
                .to_utc(),
        ),
        ..Default::default()
    };
    let events: Vec<PricedEvent> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let e = decode_event(p.as_bytes(), &opts).unwrap_or_else(|e| panic!("{p}: {e:?}"));
            PricedEvent::new(e, &book, 0, i as i64)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path(), LakeOptions::default()).unwrap();
    let lock = lake.try_lock("usage.events", 0).unwrap().unwrap();
    // Two batches: the rollups of 11-02 are in two files.
    let half = events.len() / 2;
    lake.commit(&lock, 0, half as i64 - 1, &events[..half])
        .unwrap();
    lake.commit(&lock, half as i64, events.len() as i64 - 1, &events[half..])
        .unwrap();
    let ctx = open_catalog(dir.path()).await.unwrap();
    let table = |b: &[RecordBatch]| {
        let mut out = Vec::new();
        tokenmeter_query::output::write_to(b, tokenmeter_query::Format::Table, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let p = AnomalyParams::new(day(2), day(3));
    insta::assert_snapshot!(
        "anomalies_report_utc",
        table(&anomalies_report(&ctx, &p).await.unwrap())
    );
    // k = 10: a spend of exactly 10 × the median is not a spike; the large requests remain.
    let p = AnomalyParams {
        spend_factor: "10".parse().unwrap(),
        ..p
    };
    let kinds: Vec<String> = rows(&anomalies_report(&ctx, &p).await.unwrap())
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(kinds, ["large_request", "large_request"]);
}
