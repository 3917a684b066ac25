//! `tokenmeter bench`: one process measures the pipeline on generated traffic — a consumer that
//! only counts vs the real aggregator on the same topic, the aggregator's stages without a
//! broker (per stage), decoding alone, Parquet bytes vs JSON bytes, the reports from raw events
//! and from rollups, and peak RSS — then prints one table and writes it as JSON.
//!
//! Absolute times depend on the machine and what else runs; the figures meant for comparison are
//! ratios measured in the same run. Not a test: it checks counts (every phase must see every
//! generated event) but sets no pass/fail threshold on any time. The measuring code lives in
//! `tokenmeter_ingest::bench`; this file orchestrates and reports.

use anyhow::{Context, Result, bail};
use clap::Args;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokenmeter_aggregate::PriceBook;
use tokenmeter_ingest::bench as m;
use tokenmeter_ingest::generate::{GenConfig, Generator};
use tokenmeter_ingest::{AggregatorConfig, Metrics};
use tokenmeter_query::{Granularity, ReportParams, Source};
use tokenmeter_schemas::DecodeOptions;

const EXAMPLE_PRICES: &str = include_str!("../schemas/prices.example.toml");

/// The aggregator's idle wait before its final flush; subtracted from its time.
const IDLE: Duration = Duration::from_millis(200);

#[derive(Args)]
pub struct BenchArgs {
    /// Events to generate (all valid, the generator's realistic mix).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// A small run (20,000 events) that finishes in seconds: checks the suite, measures little.
    #[arg(long)]
    quick: bool,
    /// Where the summary is written as JSON.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// A real Kafka broker (`host:port`) instead of librdkafka's in-process mock cluster. The
    /// bench produces to a new topic `tokenmeter.bench.<pid>.<time>`, which the broker must
    /// auto-create (or create it beforehand with enough partitions).
    #[arg(long)]
    brokers: Option<String>,
    /// Tenants in the generated traffic.
    #[arg(long, default_value_t = 50)]
    tenants: u32,
    /// Messages per committed batch in the broker-free pipeline (the aggregator's default
    /// flush size).
    #[arg(long, default_value_t = 250_000)]
    batch: usize,
    /// Directory for the bench's lakes (default: a new directory under the system temp dir,
    /// removed at the end). Must not exist yet.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn per_s(n: f64, d: Duration) -> f64 {
    n / d.as_secs_f64().max(1e-9)
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// Events in `usage_events` of a lake, read back through the query catalog.
async fn lake_events(dir: &Path) -> Result<u64> {
    let ctx = tokenmeter_query::open_catalog(dir).await?;
    let batches = ctx
        .sql("SELECT count(*) AS n FROM usage_events")
        .await?
        .collect()
        .await?;
    let col = batches
        .first()
        .context("count(*) returned no batch")?
        .column(0);
    let n = col.as_primitive::<Int64Type>().value(0);
    Ok(n as u64)
}

pub async fn run(a: BenchArgs) -> Result<()> {
    let events = if a.quick { 20_000 } else { a.events };
    if events == 0 {
        bail!("--events must be at least 1");
    }
    let work = match &a.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "tokenmeter-bench-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        )),
    };
    if work.exists() {
        bail!(
            "{} already exists; give --work-dir a new directory so the bench measures a fresh lake",
            work.display()
        );
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = measure(&a, events, &work).await;
    if a.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    let (table, doc) = result?;
    println!("{table}");
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("bench: results written to {}", a.out.display());
    Ok(())
}

async fn measure(a: &BenchArgs, events: u64, work: &Path) -> Result<(String, Value)> {
    let book = PriceBook::parse(EXAMPLE_PRICES, "schemas/prices.example.toml (built in)")?;
    let cfg = GenConfig {
        events,
        tenants: a.tenants.max(1),
        ..Default::default()
    };
    progress(&format!("generating {events} events"));
    let generated: Vec<_> = Generator::new(cfg.clone()).collect();
    if generated.iter().any(|m| m.event.is_none()) {
        bail!("the generator produced invalid messages; the bench expects only valid ones");
    }
    let payloads: Vec<Vec<u8>> = generated.iter().map(|m| m.payload.clone()).collect();
    let json_bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let opts = DecodeOptions::default();

    // (4) Decode alone.
    progress("decode alone");
    let (decoded, decode_time) = m::decode_only(&payloads, &opts);
    if decoded != events {
        bail!(
            "{decoded} of {events} generated events decoded; the generator and the decoder disagree"
        );
    }

    // (3) Broker-free pipeline, (5) storage.
    progress("broker-free pipeline (one thread)");
    let pipe_dir = work.join("pipeline");
    let run = m::pipeline(&payloads, &book, &pipe_dir, "usage.events", a.batch, &opts)?;
    let pipe_lake = lake_events(&pipe_dir).await?;
    let ev_bytes = m::parquet_bytes(&pipe_dir.join("events"))?;
    let ru_bytes = m::parquet_bytes(&pipe_dir.join("rollups"))?;

    // (1) Raw consume and (2) the aggregator, on one topic.
    let cluster: Option<MockCluster<'static, DefaultProducerContext>>;
    let (brokers, topic, partitions) = match &a.brokers {
        Some(b) => {
            cluster = None;
            let t = format!(
                "tokenmeter.bench.{}.{}",
                std::process::id(),
                chrono::Utc::now().timestamp()
            );
            (b.clone(), t, None)
        }
        None => {
            let c = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
            // The mock keeps about 5 MB or 100k messages per partition: enough partitions that
            // the whole run fits before anything is consumed.
            let parts = (json_bytes / (3 << 20) + 1).max(events / 50_000 + 1).max(4) as i32;
            let t = "usage.events".to_string();
            c.create_topic(&t, parts, 1)
                .context("creating the bench topic")?;
            c.create_topic("usage.events.dlq", 1, 1)
                .context("creating the dead-letter topic")?;
            let b = c.bootstrap_servers();
            cluster = Some(c);
            (b, t, Some(parts))
        }
    };
    progress(&format!(
        "producing {events} events to {topic} at {brokers}"
    ));
    let sent = AtomicU64::new(0);
    let produced = tokenmeter_ingest::produce::produce_all(
        &brokers,
        &topic,
        &[],
        generated.into_iter().map(|m| (m.key, m.payload)),
        &sent,
    )
    .await?;
    if produced != events {
        bail!("{produced} of {events} events were produced; the broker refused the rest");
    }

    progress("raw consume (counting consumer)");
    let (b2, t2) = (brokers.clone(), topic.clone());
    let (raw_count, raw_time) = tokio::task::spawn_blocking(move || {
        m::count_topic(
            &b2,
            &t2,
            "tokenmeter-bench-count",
            events,
            Duration::from_secs(600),
        )
    })
    .await??;

    progress("aggregator");
    let agg_dir = work.join("aggregator");
    let mut acfg = AggregatorConfig::new(brokers.clone(), agg_dir.clone());
    acfg.topic = topic.clone();
    acfg.dlq_topic = format!("{topic}.dlq");
    acfg.group = "tokenmeter-bench-aggregate".into();
    acfg.exit_when_idle = Some(IDLE);
    acfg.flush_interval = Duration::from_secs(3600);
    acfg.progress_interval = Duration::from_secs(3600);
    let metrics = Arc::new(Metrics::default());
    let started = Instant::now();
    let summary = tokenmeter_ingest::run_aggregator(acfg, book.clone(), metrics.clone(), async {
        std::future::pending::<()>().await
    })
    .await?;
    let agg_time = started.elapsed().saturating_sub(IDLE);
    let agg_lake = lake_events(&agg_dir).await?;
    if summary.committed_events != events || agg_lake != events {
        bail!(
            "the aggregator committed {} events ({agg_lake} in its lake) of {events} produced",
            summary.committed_events
        );
    }
    drop(cluster);

    // (6) Reports, hot: one run to warm, one timed.
    progress("reports");
    let ctx = tokenmeter_query::open_catalog(&agg_dir).await?;
    let start = cfg.start.date_naive();
    let end = start + chrono::Days::new(cfg.days as u64 + 1);
    let mut reports = serde_json::Map::new();
    let mut report_rows = Vec::new();
    for source in [Source::Raw, Source::Rollups] {
        let params = ReportParams {
            from: start,
            to: end,
            tenant: None,
            tz: chrono_tz::UTC,
            source,
        };
        tokenmeter_query::cost_report(&ctx, &params).await?;
        let t = Instant::now();
        tokenmeter_query::cost_report(&ctx, &params).await?;
        let cost = t.elapsed().as_secs_f64();
        tokenmeter_query::agent_share_report(&ctx, &params, Granularity::Month).await?;
        let t = Instant::now();
        tokenmeter_query::agent_share_report(&ctx, &params, Granularity::Month).await?;
        let share = t.elapsed().as_secs_f64();
        reports.insert(
            source.as_str().into(),
            json!({"cost_s": cost, "agent_share_s": share}),
        );
        report_rows.push((source.as_str(), cost, share));
    }

    // (7) Peak RSS, of the whole process (every phase above).
    let rss = m::peak_rss_kib();

    let n = events as f64;
    let raw_eps = per_s(raw_count as f64, raw_time);
    let agg_eps = per_s(n, agg_time);
    let pipe_eps = per_s(n, run.elapsed);
    let decode_mbs = per_s(json_bytes as f64 / 1e6, decode_time);
    let stage_total: Duration = run.stages.named().iter().map(|(_, d)| *d).sum();
    let stages: serde_json::Map<String, Value> = run
        .stages
        .named()
        .iter()
        .map(|(name, d)| {
            (
                (*name).to_string(),
                json!({
                    "seconds": d.as_secs_f64(),
                    "events_per_s": per_s(n, *d),
                    "mb_per_s": per_s(json_bytes as f64 / 1e6, *d),
                    "share": d.as_secs_f64() / stage_total.as_secs_f64().max(1e-9),
                }),
            )
        })
        .collect();
    let doc = json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "events": events,
        "json_bytes": json_bytes,
        "broker": if a.brokers.is_some() { "external" } else { "librdkafka mock cluster" },
        "partitions": partitions,
        "raw_consume": {"events": raw_count, "seconds": raw_time.as_secs_f64(), "events_per_s": raw_eps},
        "aggregator": {
            "events": summary.committed_events,
            "lake_events": agg_lake,
            "batches": summary.batches,
            "seconds": agg_time.as_secs_f64(),
            "events_per_s": agg_eps,
            "ratio_to_raw_consume": agg_eps / raw_eps,
        },
        "pipeline": {
            "events": run.committed,
            "lake_events": pipe_lake,
            "batches": run.batches,
            "seconds": run.elapsed.as_secs_f64(),
            "events_per_s_per_core": pipe_eps,
            "stages": stages,
        },
        "decode": {"events": decoded, "seconds": decode_time.as_secs_f64(), "mb_per_s": decode_mbs},
        "storage": {
            "json_bytes": json_bytes,
            "events_parquet_bytes": ev_bytes,
            "rollups_parquet_bytes": ru_bytes,
            "events_parquet_to_json": ev_bytes as f64 / json_bytes as f64,
            "all_parquet_to_json": (ev_bytes + ru_bytes) as f64 / json_bytes as f64,
        },
        "reports": reports,
        "peak_rss_kib": rss,
    });

    let mut rows: Vec<(String, String)> = vec![
        (
            "events (valid, generated)".into(),
            format!("{events} ({:.1} MB JSON)", json_bytes as f64 / 1e6),
        ),
        ("raw consume".into(), format!("{raw_eps:.0} events/s")),
        (
            "aggregator".into(),
            format!(
                "{agg_eps:.0} events/s = {:.3} x raw consume",
                agg_eps / raw_eps
            ),
        ),
        (
            "pipeline, no broker".into(),
            format!("{pipe_eps:.0} events/s per core"),
        ),
    ];
    for (name, d) in run.stages.named() {
        rows.push((
            format!("  {name}"),
            format!(
                "{:>5.1}%  {:.0} events/s",
                100.0 * d.as_secs_f64() / stage_total.as_secs_f64().max(1e-9),
                per_s(n, d)
            ),
        ));
    }
    rows.push(("decode alone".into(), format!("{decode_mbs:.1} MB/s")));
    rows.push((
        "Parquet / JSON bytes".into(),
        format!(
            "{:.3} events, {:.3} with rollups",
            ev_bytes as f64 / json_bytes as f64,
            (ev_bytes + ru_bytes) as f64 / json_bytes as f64
        ),
    ));
    for (source, cost, share) in &report_rows {
        rows.push((
            format!("reports from {source}"),
            format!("cost {cost:.3}s, agent share {share:.3}s"),
        ));
    }
    rows.push((
        "peak RSS (whole process)".into(),
        rss.map_or("unknown (no /proc)".into(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        }),
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut table = format!(
        "tokenmeter bench ({} build, {})\n",
        doc["build"].as_str().unwrap_or("?"),
        doc["broker"].as_str().unwrap_or("?")
    );
    for (k, v) in rows {
        table.push_str(&format!("{k:<width$}  {v}\n"));
    }
    Ok((table, doc))
}
