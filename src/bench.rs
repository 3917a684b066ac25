//! `tokenmeter bench`: measures the pipeline on generated traffic in one run — a consumer that
//! only counts vs the real aggregator (`tokenmeter aggregate`, a child process) on the same
//! topic, with the aggregator's peak RSS; the aggregator's stages without a broker (per stage);
//! decoding alone with serde_json and with sonic-rs; Parquet bytes vs JSON bytes; the reports on
//! DataFusion vs DuckDB on the same Parquet files — then prints one table and writes it as JSON.
//!
//! Absolute times depend on the machine and what else runs; the figures meant for comparison are
//! ratios measured in the same run. Not a test: it checks counts and results (every phase must
//! see every generated event, DuckDB must return what DataFusion returns) but sets no pass/fail
//! threshold on any time. The measuring code lives in `tokenmeter_ingest::bench`; DuckDB's side
//! in `benches/duckdb_reports.py`; this file orchestrates and reports.

use anyhow::{Context, Result, bail};
use chrono::Datelike as _;
use clap::Args;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use datafusion::prelude::SessionContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokenmeter_aggregate::PriceBook;
use tokenmeter_ingest::bench as m;
use tokenmeter_ingest::generate::{GenConfig, Generator};
use tokenmeter_query::{Granularity, ReportParams, Source};
use tokenmeter_schemas::{DecodeOptions, JsonParser};

const EXAMPLE_PRICES: &str = include_str!("../schemas/prices.example.toml");
/// DuckDB's side of the reports, run with `python3`.
const DUCKDB_SCRIPT: &str = include_str!("../benches/duckdb_reports.py");
/// The ad-hoc analyst query both engines run.
const ADHOC_SQL: &str = include_str!("../benches/adhoc.sql");

/// The aggregator's idle wait before its final flush; subtracted from its time.
const IDLE: Duration = Duration::from_millis(200);
/// Hot runs of each report per engine; the median is reported.
const REPORT_RUNS: usize = 3;

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
    /// bench creates a new topic `tokenmeter.bench.<pid>.<time>` (and its `.dlq`) there.
    #[arg(long)]
    brokers: Option<String>,
    /// Partitions of the topic created on --brokers.
    #[arg(long, default_value_t = 4, requires = "brokers")]
    partitions: i32,
    /// Tenants in the generated traffic.
    #[arg(long, default_value_t = 50)]
    tenants: u32,
    /// Distinct (tenant, agent) pairs in the generated traffic, shared out by the tenants'
    /// traffic, with agent runs frequent enough that nearly all occur [default: 5 to 24 per
    /// tenant, and the usual single-digit agent share].
    #[arg(long)]
    agents: Option<u32>,
    /// Messages per committed batch in the broker-free pipeline (the aggregator's default
    /// flush size).
    #[arg(long, default_value_t = 250_000)]
    batch: usize,
    /// Directory for the bench's lakes (default: a new directory under the system temp dir,
    /// removed at the end). Must not exist yet.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The Python interpreter with DuckDB (`benches/setup.sh` installs it).
    #[arg(long, default_value = "python3", env = "TOKENMETER_BENCH_PYTHON")]
    python: String,
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
    duckdb_version(&a.python)?;
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
    outln!("{table}");
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("bench: results written to {}", a.out.display());
    Ok(())
}

/// DuckDB's version in `python`, or advice on installing it.
fn duckdb_version(python: &str) -> Result<String> {
    let out = Command::new(python)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output()
        .with_context(|| format!("running {python} (--python) to find DuckDB"))?;
    if !out.status.success() {
        bail!(
            "the bench compares the reports with DuckDB, which {python} cannot import: run benches/setup.sh (it installs duckdb from PyPI), or point --python at an interpreter that has it\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the aggregator process reported at its exit (`tokenmeter aggregate --summary-json`).
struct AggregatorRun {
    committed: u64,
    batches: u64,
    elapsed: Duration,
    peak_rss_kib: Option<u64>,
}

/// Run `tokenmeter aggregate` (this executable) on `topic` into `lake` until the topic is
/// drained, as an operator runs it; its stderr goes to `work/aggregator.log`.
fn aggregator_process(
    brokers: &str,
    topic: &str,
    lake: &Path,
    prices: &Path,
    work: &Path,
) -> Result<AggregatorRun> {
    let exe = std::env::current_exe().context("finding the tokenmeter executable")?;
    let summary = work.join("aggregator-summary.json");
    let log_path = work.join("aggregator.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let status = Command::new(&exe)
        .arg("aggregate")
        .args(["--brokers", brokers, "--topic", topic])
        .args(["--dlq-topic", &format!("{topic}.dlq")])
        .args(["--group", "tokenmeter-bench-aggregate"])
        .arg("--data-dir")
        .arg(lake)
        .arg("--prices")
        .arg(prices)
        .args(["--exit-when-idle", &IDLE.as_secs_f64().to_string()])
        .args(["--flush-interval", "3600"])
        .arg("--summary-json")
        .arg(&summary)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("starting {} aggregate", exe.display()))?;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "the aggregator process failed ({status}); the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let doc: Value = serde_json::from_slice(
        &std::fs::read(&summary).with_context(|| format!("reading {}", summary.display()))?,
    )?;
    let num = |k: &str| {
        doc[k]
            .as_u64()
            .with_context(|| format!("{k} in the summary"))
    };
    Ok(AggregatorRun {
        committed: num("committed_events")?,
        batches: num("batches")?,
        elapsed: Duration::from_secs_f64(doc["seconds"].as_f64().context("seconds")?),
        peak_rss_kib: doc["peak_rss_kib"].as_u64(),
    })
}

/// What runs a query on DataFusion: the product's report function, or the SQL as it is.
enum Kind {
    Cost,
    AgentShare,
    Sql,
}

/// One report query of the comparison.
struct Query {
    name: &'static str,
    kind: Kind,
    /// The SQL both engines run (DataFusion's; `benches/duckdb_reports.py` rewrites two
    /// DataFusion-only spellings for DuckDB).
    sql: String,
    params: ReportParams,
    /// The result's token column and cost column, summed to check both engines agree.
    tokens: &'static str,
    cost: &'static str,
}

/// Rows, the sum of the token column and the exact sum of the cost column of a result: what
/// both engines must agree on.
fn checks(batches: &[RecordBatch], tokens: &str, cost: &str) -> Result<(u64, i128, Decimal)> {
    let (mut rows, mut tok, mut cst, mut scale) = (0u64, 0i128, 0i128, 0i8);
    for b in batches {
        rows += b.num_rows() as u64;
        let t = cast(
            b.column_by_name(tokens).context("token column")?,
            &DataType::Int64,
        )?;
        tok += t
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .map(i128::from)
            .sum::<i128>();
        let c = b.column_by_name(cost).context("cost column")?;
        let DataType::Decimal128(_, s) = c.data_type() else {
            bail!("{cost} is {}, not a decimal", c.data_type());
        };
        scale = *s;
        cst += c
            .as_primitive::<Decimal128Type>()
            .iter()
            .flatten()
            .sum::<i128>();
    }
    let cst = Decimal::try_from_i128_with_scale(cst, scale.max(0) as u32)
        .with_context(|| format!("the sum of {cost} is beyond a 96-bit decimal"))?;
    Ok((rows, tok, cst))
}

async fn run_query(ctx: &SessionContext, q: &Query) -> Result<Vec<RecordBatch>> {
    Ok(match q.kind {
        Kind::Cost => tokenmeter_query::cost_report(ctx, &q.params).await?,
        Kind::AgentShare => {
            tokenmeter_query::agent_share_report(ctx, &q.params, Granularity::Month).await?
        }
        Kind::Sql => ctx.sql(&q.sql).await?.collect().await?,
    })
}

/// The UTC dates `[start, end)` of the generated traffic (its window, and the minute of jitter
/// past its end).
fn traffic_dates(cfg: &GenConfig) -> (chrono::NaiveDate, chrono::NaiveDate) {
    let start = cfg.start.date_naive();
    (start, start + chrono::Days::new(cfg.days as u64 + 1))
}

/// The queries DataFusion and DuckDB both run over the lake of `cfg`'s traffic; `tenant` is
/// the busiest tenant (its month is the tenant-month query).
fn queries(cfg: &GenConfig, tenant: &str) -> Result<Vec<Query>> {
    let (start, end) = traffic_dates(cfg);
    let params = |source, tenant: Option<&str>, from, to| ReportParams {
        from,
        to,
        tenant: tenant.map(String::from),
        tz: chrono_tz::UTC,
        source,
    };
    let month_start = start.with_day(1).context("first of the month")?;
    let month_end = month_start + chrono::Months::new(1);
    let mut out = Vec::new();
    for (source, cost_name, share_name) in [
        (Source::Raw, "cost, raw events", "agent share, raw events"),
        (Source::Rollups, "cost, rollups", "agent share, rollups"),
    ] {
        let p = params(source, None, start, end);
        out.push(Query {
            name: cost_name,
            kind: Kind::Cost,
            sql: tokenmeter_query::reports::cost_report_sql(&p)?,
            params: p.clone(),
            tokens: "tokens",
            cost: "cost",
        });
        out.push(Query {
            name: share_name,
            kind: Kind::AgentShare,
            sql: tokenmeter_query::reports::agent_share_report_sql(&p, Granularity::Month)?,
            params: p,
            tokens: "total_tokens",
            cost: "total_cost",
        });
    }
    let p = params(Source::Raw, None, start, end);
    out.push(Query {
        name: "ad-hoc query, raw events",
        kind: Kind::Sql,
        sql: ADHOC_SQL.to_string(),
        params: p,
        tokens: "tokens",
        cost: "cost",
    });
    let p = params(Source::Rollups, Some(tenant), month_start, month_end);
    out.push(Query {
        name: "cost, one tenant-month, rollups",
        kind: Kind::Cost,
        sql: tokenmeter_query::reports::cost_report_sql(&p)?,
        params: p,
        tokens: "tokens",
        cost: "cost",
    });
    Ok(out)
}

/// The JSON of one set of report figures.
fn report_json(rows: &[ReportRow]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            json!({
                "name": r.name,
                "rows": r.rows,
                "datafusion_s": r.datafusion,
                "duckdb_s": r.duckdb,
                "datafusion_to_duckdb": r.datafusion / r.duckdb.max(1e-9),
            })
        })
        .collect()
}

/// One report's figures on both engines.
struct ReportRow {
    name: &'static str,
    datafusion: f64,
    duckdb: f64,
    rows: u64,
}

/// Run every query hot on DataFusion (the lake's catalog) and on DuckDB (the same Parquet files),
/// with the same number of threads; check both return the same rows, tokens and costs.
async fn compare_reports(
    lake: &Path,
    work: &Path,
    python: &str,
    qs: &[Query],
) -> Result<(Vec<ReportRow>, usize, String)> {
    let ctx = tokenmeter_query::open_catalog(lake).await?;
    let threads = ctx.copied_config().target_partitions();
    let mut df = Vec::new();
    for q in qs {
        progress(&format!("report on DataFusion: {}", q.name));
        run_query(&ctx, q).await?;
        let mut times = Vec::new();
        let mut last = Vec::new();
        for _ in 0..REPORT_RUNS {
            let t = Instant::now();
            last = run_query(&ctx, q).await?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        df.push((times[times.len() / 2], checks(&last, q.tokens, q.cost)?));
    }

    progress("reports on DuckDB (benches/duckdb_reports.py)");
    let files = |dir| -> Result<Vec<PathBuf>> {
        Ok(tokenmeter_query::lake_store::visible_files(lake, dir)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    };
    let spec = json!({
        "lake": lake,
        "files": {
            "usage_events": files(tokenmeter_schemas::layout::EVENTS_DIR)?,
            "usage_hourly_parts": files(tokenmeter_schemas::layout::ROLLUPS_DIR)?,
        },
        "threads": threads,
        "runs": REPORT_RUNS,
        "queries": qs.iter().map(|q| -> Result<Value> {
            let r = q.params.utc_range()?;
            Ok(json!({
                "name": q.name,
                "sql": q.sql,
                "params": {
                    "from_ts": r.start.to_rfc3339(),
                    "to_ts": r.end.to_rfc3339(),
                    "from_date": r.first_date.to_string(),
                    "last_date": r.last_date.to_string(),
                    "tenant": q.params.tenant,
                },
                "tokens": q.tokens,
                "cost": q.cost,
            }))
        }).collect::<Result<Vec<_>>>()?,
    });
    let script = work.join("duckdb_reports.py");
    std::fs::write(&script, DUCKDB_SCRIPT)?;
    let spec_path = work.join("duckdb-spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let out = Command::new(python)
        .arg(&script)
        .stdin(std::fs::File::open(&spec_path)?)
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "DuckDB's side of the reports failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let duck: Value = serde_json::from_slice(&out.stdout).context("reading DuckDB's results")?;
    let version = duck["duckdb"].as_str().unwrap_or("?").to_string();
    let mut rows = Vec::new();
    for (q, (df_s, (n, tokens, cost))) in qs.iter().zip(df) {
        let d = &duck["results"][q.name];
        let got = (
            d["rows"].as_u64().unwrap_or(u64::MAX),
            d["tokens"].as_str().and_then(|t| t.parse::<i128>().ok()),
            d["cost"]
                .as_str()
                .map_or(Some(Decimal::ZERO), |c| Decimal::from_str(c).ok()),
        );
        if got != (n, Some(tokens), Some(cost)) {
            bail!(
                "DataFusion and DuckDB disagree on \"{}\": DataFusion {n} rows, {tokens} tokens, cost {cost}; DuckDB {} rows, {} tokens, cost {}",
                q.name,
                got.0,
                d["tokens"],
                d["cost"]
            );
        }
        rows.push(ReportRow {
            name: q.name,
            datafusion: df_s,
            duckdb: d["seconds"].as_f64().context("DuckDB's seconds")?,
            rows: n,
        });
    }
    Ok((rows, threads, version))
}

async fn measure(a: &BenchArgs, events: u64, work: &Path) -> Result<(String, Value)> {
    let book = PriceBook::parse(EXAMPLE_PRICES, "schemas/prices.example.toml (built in)")?;
    let prices_path = work.join("prices.toml");
    std::fs::write(&prices_path, EXAMPLE_PRICES)?;
    let cfg = GenConfig {
        events,
        tenants: a.tenants.max(1),
        agents: a.agents,
        ..Default::default()
    };
    progress(&format!(
        "generating {events} events ({} tenants)",
        cfg.tenants
    ));
    // Only the bytes are kept: at 10M events the typed events would not fit beside them.
    let mut keys = Vec::with_capacity(events as usize);
    let mut payloads = Vec::with_capacity(events as usize);
    let mut per_tenant: HashMap<String, u64> = HashMap::new();
    let mut agent_pairs = HashSet::new();
    for msg in Generator::new(cfg.clone()) {
        let Some(e) = msg.event else {
            bail!("the generator produced an invalid message; the bench expects only valid ones");
        };
        if let Some(agent) = e.data.agent {
            agent_pairs.insert((e.tenant_id.clone(), agent.id));
        }
        *per_tenant.entry(e.tenant_id).or_default() += 1;
        keys.push(msg.key);
        payloads.push(msg.payload);
    }
    let busiest = per_tenant
        .iter()
        .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
        .map(|(t, _)| t.clone())
        .context("no events")?;
    let agents = agent_pairs.len();
    let json_bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();

    // (4) Decode alone, with each parser.
    let mut decode = Vec::new();
    for parser in [JsonParser::SerdeJson, JsonParser::SonicRs] {
        progress(&format!("decode alone ({parser:?})"));
        let opts = DecodeOptions {
            parser,
            ..Default::default()
        };
        let (decoded, time) = m::decode_only(&payloads, &opts);
        if decoded != events {
            bail!(
                "{decoded} of {events} generated events decoded with {parser:?}; the generator and the decoder disagree"
            );
        }
        decode.push((parser, per_s(json_bytes as f64 / 1e6, time)));
    }

    // (3) Broker-free pipeline, (5) storage.
    progress("broker-free pipeline (one thread)");
    let opts = DecodeOptions::default();
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
            let parts = a.partitions.max(1);
            tokenmeter_ingest::kafka::create_topics(b, &[(&t, parts), (&format!("{t}.dlq"), 1)])
                .await?;
            (b.clone(), t, Some(parts))
        }
        None => {
            let c = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
            // The mock keeps at most 5 MB (as stored: lz4-compressed record batches, about half
            // the JSON) or 100,000 record batches per partition and drops the oldest beyond:
            // enough partitions that the whole run fits (checked after producing), but no
            // more, since each partition adds files per date to the lake.
            let parts = (json_bytes / (8 << 20) + 1).max(4) as i32;
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
        keys.into_iter().zip(payloads.iter().cloned()),
        &sent,
    )
    .await?;
    if produced != events {
        bail!("{produced} of {events} events were produced; the broker refused the rest");
    }
    drop(payloads);
    // Only the mock drops messages by itself. (tansu 0.6 reports the start of a partition's
    // last record batch as its high watermark, so watermarks undercount there; on a real broker
    // the counting consumer's exact count is the check.)
    let (b2, t2) = (brokers.clone(), topic.clone());
    let kept = match cluster {
        Some(_) => tokio::task::spawn_blocking(move || m::topic_messages(&b2, &t2)).await??,
        None => events,
    };
    if kept != events {
        bail!(
            "the topic holds {kept} of the {events} events produced: the broker dropped the oldest (the mock cluster keeps 5 MB per partition); give the bench a real broker with --brokers"
        );
    }

    progress("raw consume (counting consumer)");
    let (b2, t2) = (brokers.clone(), topic.clone());
    let (raw_count, raw_time) = tokio::task::spawn_blocking(move || {
        m::count_topic(
            &b2,
            &t2,
            "tokenmeter-bench-count",
            events,
            Duration::from_secs(3600),
        )
    })
    .await??;

    progress("aggregator (tokenmeter aggregate, a child process)");
    let agg_dir = work.join("aggregator");
    let (b2, t2, d2, p2, w2) = (
        brokers.clone(),
        topic.clone(),
        agg_dir.clone(),
        prices_path.clone(),
        work.to_path_buf(),
    );
    let agg =
        tokio::task::spawn_blocking(move || aggregator_process(&b2, &t2, &d2, &p2, &w2)).await??;
    let agg_time = agg.elapsed.saturating_sub(IDLE);
    let agg_lake = lake_events(&agg_dir).await?;
    if agg.committed != events || agg_lake != events {
        bail!(
            "the aggregator committed {} events ({agg_lake} in its lake) of {events} produced",
            agg.committed
        );
    }
    drop(cluster);

    // (6) Reports, hot, DataFusion vs DuckDB on the aggregator's lake.
    let qs = queries(&cfg, &busiest)?;
    let (reports, threads, duckdb) = compare_reports(&agg_dir, work, &a.python, &qs).await?;

    // (8) The aggregator's lake compacted (`tokenmeter compact`): its files and bytes, and the
    // reports again on the compacted lake.
    let lake_files = |table| -> Result<(usize, u64)> {
        let f = tokenmeter_query::lake_store::visible_files(&agg_dir, table)?;
        Ok((f.len(), f.iter().map(|(_, n)| n).sum()))
    };
    let (ev_dir, ru_dir) = (
        tokenmeter_schemas::layout::EVENTS_DIR,
        tokenmeter_schemas::layout::ROLLUPS_DIR,
    );
    let before = (lake_files(ev_dir)?, lake_files(ru_dir)?);
    progress("compaction of the aggregator's lake (tokenmeter compact)");
    let (first_date, end_date) = traffic_dates(&cfg);
    let t = Instant::now();
    tokenmeter_query::reprice::compact(
        &agg_dir,
        first_date,
        end_date,
        "tokenmeter bench",
        chrono::Utc::now(),
    )
    .await?;
    let compact_time = t.elapsed();
    let compact_lake = lake_events(&agg_dir).await?;
    if compact_lake != events {
        bail!("the compacted lake shows {compact_lake} events of {events}");
    }
    let after = (lake_files(ev_dir)?, lake_files(ru_dir)?);
    let (reports_compacted, _, _) = compare_reports(&agg_dir, work, &a.python, &qs).await?;

    let n = events as f64;
    let raw_eps = per_s(raw_count as f64, raw_time);
    let agg_eps = per_s(n, agg_time);
    let pipe_eps = per_s(n, run.elapsed);
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
    let (serde_mbs, sonic_mbs) = (decode[0].1, decode[1].1);
    let doc = json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "events": events,
        "tenants": cfg.tenants,
        "agents": agents,
        "json_bytes": json_bytes,
        "broker": if a.brokers.is_some() { "external" } else { "librdkafka mock cluster" },
        "partitions": partitions,
        "raw_consume": {"events": raw_count, "seconds": raw_time.as_secs_f64(), "events_per_s": raw_eps},
        "aggregator": {
            "events": agg.committed,
            "lake_events": agg_lake,
            "batches": agg.batches,
            "seconds": agg_time.as_secs_f64(),
            "events_per_s": agg_eps,
            "ratio_to_raw_consume": agg_eps / raw_eps,
            "peak_rss_kib": agg.peak_rss_kib,
        },
        "pipeline": {
            "events": run.committed,
            "lake_events": pipe_lake,
            "batches": run.batches,
            "seconds": run.elapsed.as_secs_f64(),
            "events_per_s_per_core": pipe_eps,
            "stages": stages,
        },
        "decode": {
            "serde_json_mb_per_s": serde_mbs,
            "sonic_rs_mb_per_s": sonic_mbs,
            "sonic_rs_to_serde_json": sonic_mbs / serde_mbs,
            "pipeline_parser": format!("{:?}", DecodeOptions::default().parser),
        },
        "storage": {
            "json_bytes": json_bytes,
            "events_parquet_bytes": ev_bytes,
            "rollups_parquet_bytes": ru_bytes,
            "events_parquet_to_json": ev_bytes as f64 / json_bytes as f64,
            "all_parquet_to_json": (ev_bytes + ru_bytes) as f64 / json_bytes as f64,
        },
        "reports": {
            "threads": threads,
            "runs": REPORT_RUNS,
            "duckdb": duckdb,
            "tenant_month": {"tenant": busiest, "events": per_tenant[&busiest]},
            "queries": report_json(&reports),
            "compacted_queries": report_json(&reports_compacted),
        },
        "compaction": {
            "seconds": compact_time.as_secs_f64(),
            "events_per_s": per_s(n, compact_time),
            "before": {
                "events_files": before.0.0, "events_bytes": before.0.1,
                "rollup_files": before.1.0, "rollup_bytes": before.1.1,
            },
            "after": {
                "events_files": after.0.0, "events_bytes": after.0.1,
                "rollup_files": after.1.0, "rollup_bytes": after.1.1,
            },
            "events_parquet_to_json": after.0.1 as f64 / json_bytes as f64,
            "all_parquet_to_json": (after.0.1 + after.1.1) as f64 / json_bytes as f64,
        },
    });

    let mut rows: Vec<(String, String)> = vec![
        (
            "events (valid, generated)".into(),
            format!(
                "{events} ({:.1} MB JSON), {} tenants, {agents} agents",
                json_bytes as f64 / 1e6,
                cfg.tenants
            ),
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
            "aggregator peak RSS".into(),
            agg.peak_rss_kib.map_or("unknown (no /proc)".into(), |k| {
                format!("{:.1} MiB", k as f64 / 1024.0)
            }),
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
    rows.push((
        "decode alone".into(),
        format!(
            "serde_json {serde_mbs:.1} MB/s, sonic-rs {sonic_mbs:.1} MB/s = {:.2} x",
            sonic_mbs / serde_mbs
        ),
    ));
    rows.push((
        "Parquet / JSON bytes".into(),
        format!(
            "{:.3} events, {:.3} with rollups",
            ev_bytes as f64 / json_bytes as f64,
            (ev_bytes + ru_bytes) as f64 / json_bytes as f64
        ),
    ));
    let ratio = |(files, bytes): (usize, u64)| (files, bytes as f64 / json_bytes as f64);
    let (eb, rb, ea, ra) = (
        ratio(before.0),
        ratio(before.1),
        ratio(after.0),
        ratio(after.1),
    );
    rows.push((
        "compaction, aggregator lake".into(),
        format!(
            "{:.0} events/s; files {} -> {}; Parquet / JSON {:.3} -> {:.3} events, {:.3} -> {:.3} with rollups",
            per_s(n, compact_time),
            eb.0 + rb.0,
            ea.0 + ra.0,
            eb.1,
            ea.1,
            eb.1 + rb.1,
            ea.1 + ra.1
        ),
    ));
    for (title, rs) in [
        ("reports", &reports),
        ("reports, compacted lake", &reports_compacted),
    ] {
        rows.push((
            format!("{title} ({threads} threads)"),
            format!("DataFusion vs DuckDB {duckdb}, median of {REPORT_RUNS} hot runs"),
        ));
        for r in rs.iter() {
            rows.push((
                format!("  {}", r.name),
                format!(
                    "{:.3}s vs {:.3}s = {:.2} x ({} rows)",
                    r.datafusion,
                    r.duckdb,
                    r.datafusion / r.duckdb.max(1e-9),
                    r.rows
                ),
            ));
        }
    }
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
