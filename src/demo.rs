//! `tokenmeter demo`: the whole pipeline in one process with nothing to install — librdkafka's
//! in-process mock cluster as the broker, the generator as the gateways, the real aggregator, and
//! both reports read back from the Parquet lake with DataFusion.
//!
//! Not a test harness: the integration tests drive the same pieces with exact assertions.

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokenmeter_aggregate::PriceBook;
use tokenmeter_ingest::generate::{GenConfig, Generator, Truth};
use tokenmeter_ingest::{AggregatorConfig, Metrics};
use tokenmeter_query::{Format, Granularity, ReportParams, Source};

/// The example USD price book, built in so the demo needs no file.
const EXAMPLE_PRICES: &str = include_str!("../schemas/prices.example.toml");

#[derive(Args)]
pub struct DemoArgs {
    /// Events to generate.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Where the lake goes; a previous demo lake there is replaced.
    #[arg(long, default_value = "./tokenmeter-data")]
    data_dir: PathBuf,
    /// Tenants in the generated traffic.
    #[arg(long, default_value_t = 20)]
    tenants: u32,
    /// Kafka partitions of the demo topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Price book (default: the built-in example USD book).
    #[arg(long)]
    prices: Option<PathBuf>,
}

fn bar(len: u64, msg: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Remove a previous demo lake; refuse to touch a directory that holds anything else.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let lake = ["events", "rollups", "_state", "_staging"];
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let name = entry?.file_name();
            if !lake.contains(&name.to_string_lossy().as_ref()) {
                bail!(
                    "{} holds {:?}, which is not part of a tokenmeter lake; pick another --data-dir so the demo does not overwrite it",
                    dir.display(),
                    name
                );
            }
        }
        for d in lake {
            let p = dir.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    Ok(())
}

pub async fn run(a: DemoArgs) -> Result<()> {
    prepare_dir(&a.data_dir)?;
    let book = match &a.prices {
        Some(p) => PriceBook::load(p)?,
        None => PriceBook::parse(EXAMPLE_PRICES, "schemas/prices.example.toml (built in)")?,
    };
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    let topic = "usage.events";
    cluster
        .create_topic(topic, a.partitions, 1)
        .context("creating the demo topic")?;
    cluster
        .create_topic("usage.events.dlq", 1, 1)
        .context("creating the dead-letter topic")?;
    outln!(
        "tokenmeter demo: Kafka mock cluster at {brokers}, topic {topic} ({} partitions)",
        a.partitions
    );

    // Gateways and the aggregator run together, as in production. librdkafka's mock cluster keeps
    // only ~5 MB per partition, so the gateways pause while the aggregator is more than
    // `MAX_AHEAD` messages behind (a real broker's retention is days; the aggregator refuses to
    // skip what retention deleted).
    const MAX_AHEAD: u64 = 40_000;
    let cfg = GenConfig {
        events: a.events,
        tenants: a.tenants.max(1),
        invalid_fraction: 0.005,
        ..Default::default()
    };
    let mut truth = Truth::default();
    let messages: Vec<_> = Generator::new(cfg.clone())
        .inspect(|m| truth.add(m, Some(&book)))
        .map(|m| (m.key, m.payload))
        .collect();

    let mut acfg = AggregatorConfig::new(brokers.clone(), a.data_dir.clone());
    acfg.flush_interval = Duration::from_secs(5);
    acfg.progress_interval = Duration::from_secs(3600);
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let agg = tokio::spawn(tokenmeter_ingest::run_aggregator(
        acfg,
        book.clone(),
        metrics.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let bars = MultiProgress::new();
    let pb_produce = bars.add(bar(a.events, "produce"));
    let pb_agg = bars.add(bar(a.events, "aggregate"));
    let sent = Arc::new(AtomicU64::new(0));
    let mut produced = 0u64;
    let mut chunks = messages.into_iter().peekable();
    while chunks.peek().is_some() {
        while produced > metrics.consumed.load(Relaxed) + MAX_AHEAD {
            if agg.is_finished() {
                break;
            }
            pb_agg.set_position(metrics.consumed.load(Relaxed));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let chunk: Vec<_> = chunks.by_ref().take(10_000).collect();
        produced +=
            tokenmeter_ingest::produce::produce_all(&brokers, topic, &[], chunk, &sent).await?;
        pb_produce.set_position(produced);
        pb_agg.set_position(metrics.consumed.load(Relaxed));
    }
    pb_produce.finish_with_message("produced");
    while metrics.consumed.load(Relaxed) < produced && !agg.is_finished() {
        pb_agg.set_position(metrics.consumed.load(Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    let summary = agg.await??;
    pb_agg.set_position(metrics.consumed.load(Relaxed));
    pb_agg.finish_with_message("aggregated");
    let secs = started.elapsed().as_secs_f64();
    outln!(
        "\naggregated {} events into the lake and {} invalid messages into usage.events.dlq in {:.1}s ({:.0} messages/s end to end, generation and production included)",
        summary.committed_events,
        summary.dead_lettered,
        secs,
        a.events as f64 / secs.max(0.001),
    );
    if summary.committed_events != truth.valid || summary.dead_lettered != truth.invalid {
        bail!(
            "the lake does not match what was produced: {} valid and {} invalid produced, {} and {} committed",
            truth.valid,
            truth.invalid,
            summary.committed_events,
            summary.dead_lettered
        );
    }

    // 3. Reports, from the lake.
    let ctx = tokenmeter_query::open_catalog(&a.data_dir).await?;
    let start = cfg.start.date_naive();
    // One day past the window: the last agent runs may finish after midnight.
    let end = start + chrono::Days::new(cfg.days as u64 + 1);
    let top = truth
        .tenants
        .iter()
        .max_by_key(|(_, t)| t.input_tokens + t.output_tokens)
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    let params = ReportParams {
        from: start,
        to: end,
        tenant: Some(top.clone()),
        tz: chrono_tz::UTC,
        source: Source::Auto,
    };
    outln!("\nCost report for the largest tenant, {top}, {start} to {end} (exclusive), UTC:");
    let cost = tokenmeter_query::cost_report(&ctx, &params).await?;
    tokenmeter_query::write_batches(
        &tokenmeter_query::cost_table_with_totals(&cost)?,
        Format::Table,
        None,
    )?;
    let params = ReportParams {
        tenant: None,
        tz: chrono_tz::Asia::Shanghai,
        ..params
    };
    outln!("\nAgent share per tenant and month, Asia/Shanghai:");
    let share = tokenmeter_query::agent_share_report(&ctx, &params, Granularity::Month).await?;
    tokenmeter_query::write_batches(&share, Format::Table, None)?;

    let dir = a.data_dir.display();
    outln!(
        "\nThe lake is in {dir}: raw events in {dir}/events/date=*/, hourly rollups in {dir}/rollups/hourly/date=*/,"
    );
    outln!("commit state in {dir}/_state/. Try:");
    outln!(
        "  tokenmeter report cost --data-dir {dir} --from {start} --to {end} --tz Asia/Shanghai"
    );
    outln!(
        "  tokenmeter report agent-share --data-dir {dir} --from {start} --to {end} --granularity week"
    );
    outln!(
        "  tokenmeter sql --data-dir {dir} \"SELECT tenant_id, sum(cost) FROM usage_hourly GROUP BY 1 ORDER BY 2 DESC LIMIT 5\""
    );
    Ok(())
}
