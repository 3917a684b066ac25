//! The `tokenmeter` command line: the aggregator service, the gateways' tools (generate,
//! produce), the reports and analyst SQL over the lake, and the one-command demo.
//!
//! This file parses arguments and wires the library crates together; the work is done in
//! `tokenmeter-ingest`, `tokenmeter-aggregate` and `tokenmeter-query`.

/// `println!` for a command's output, returning an error where `println!` would panic: when
/// stdout is closed (`tokenmeter restatements | head` reads ten lines and goes). `main` ends
/// quietly on that error ([`output_closed`]). Usable in functions returning `anyhow::Result`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod bench;
mod config;
mod demo;
mod finance_cmd;
mod prices_cmd;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokenmeter_aggregate::PriceBook;
use tokenmeter_ingest::generate::{GenConfig, Generator, Truth};
use tokenmeter_ingest::{AggregatorConfig, Metrics};
use tokenmeter_query::{Format, Granularity, ReportParams, Source};

/// Exact token metering and billing analytics for LLM agent platforms.
#[derive(Parser)]
#[command(name = "tokenmeter", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on an in-process Kafka mock cluster: generate, aggregate, report.
    Demo(demo::DemoArgs),
    /// Measure the pipeline on generated traffic (consume, aggregate, stages, storage, reports)
    /// and write the figures as a table and JSON; see BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Consume usage events from Kafka into the exactly-once Parquet lake.
    Aggregate(Box<AggregateArgs>),
    /// Generate deterministic, realistic usage events (to a JSON-lines file or to Kafka).
    Generate(GenerateArgs),
    /// Produce a JSON-lines file of events to Kafka, keyed by tenant, with an idempotent producer.
    Produce(ProduceArgs),
    /// Reports over the lake.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Run read-only SQL over the lake's tables (usage_events, usage_hourly).
    Sql(SqlArgs),
    /// ClickHouse tables of the rollups.
    #[command(subcommand)]
    Clickhouse(ClickHouseCommand),
    /// Compare the lake's raw events, its rollups and ClickHouse per tenant, day and currency;
    /// exit 1 on any difference.
    Reconcile(ReconcileArgs),
    /// Price books.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Recompute the cost of UTC dates from the raw events with a price book, as an audited
    /// restatement (reports show the latest; --as-of an earlier one).
    Reprice(finance_cmd::RepriceArgs),
    /// Compact UTC dates: each date's many small files (one per partition and batch) become one
    /// raw-event file and one rollup file, same rows and costs, ordered by tenant and time.
    Compact(finance_cmd::CompactArgs),
    /// List the restatements of a lake with their audit records.
    Restatements(finance_cmd::RestatementsArgs),
    /// Close a month: freeze its invoices; later events of it become adjustments of the next
    /// open month.
    Close(finance_cmd::CloseArgs),
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Convert LiteLLM's model_prices_and_context_window.json into a price book, exactly.
    ImportLitellm(prices_cmd::ImportLitellmArgs),
    /// Which price applies to a model (for a tenant, at a time) and why.
    Show(finance_cmd::ShowArgs),
}

#[derive(Subcommand)]
enum ClickHouseCommand {
    /// Create the database, the rollup table and its view (idempotent).
    Init(ClickHouseInitArgs),
}

#[derive(Args)]
struct ClickHouseInitArgs {
    /// HTTP URL of the server, e.g. http://127.0.0.1:8123.
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_URL", value_name = "URL")]
    clickhouse_url: String,
    /// Database to create.
    #[arg(long, default_value = "tokenmeter")]
    database: String,
    /// Rollup view to create; the table is NAME_parts.
    #[arg(long, default_value = "usage_hourly")]
    table: String,
    /// ClickHouse user.
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// ClickHouse password (prefer the environment variable).
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
}

#[derive(Args)]
struct AggregateArgs {
    /// Configuration file (TOML; see src/config.rs for the keys). Flags and TOKENMETER_*
    /// variables override it.
    #[arg(long, env = "TOKENMETER_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT].
    #[arg(long, env = "TOKENMETER_BROKERS")]
    brokers: Option<String>,
    /// Root directory of the Parquet lake.
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Price book (TOML).
    #[arg(long, env = "TOKENMETER_PRICES")]
    prices: Option<PathBuf>,
    /// Topic of usage events [default: usage.events].
    #[arg(long, env = "TOKENMETER_TOPIC")]
    topic: Option<String>,
    /// Dead-letter topic [default: usage.events.dlq].
    #[arg(long, env = "TOKENMETER_DLQ_TOPIC")]
    dlq_topic: Option<String>,
    /// Consumer group [default: tokenmeter].
    #[arg(long, env = "TOKENMETER_GROUP")]
    group: Option<String>,
    /// Static group membership id (Kafka group.instance.id), unique per process: a restart with
    /// the same id takes its partitions back without rebalancing the group.
    #[arg(long, env = "TOKENMETER_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Once every assigned partition is at its end and nothing arrived for SECONDS, flush and exit 0.
    #[arg(long, value_name = "SECONDS")]
    exit_when_idle: Option<f64>,
    /// Flush a partition's batch at this many messages [default: 250000].
    #[arg(long, env = "TOKENMETER_FLUSH_MAX_MESSAGES")]
    flush_max_messages: Option<usize>,
    /// Messages held in all partitions' batches together, open and committing: the largest
    /// open batch is flushed once the open ones hold half of it, and consumption waits for a
    /// commit when all of them reach it. Bounds memory however many partitions are assigned
    /// [default: 500000].
    #[arg(long, env = "TOKENMETER_MAX_BUFFERED_MESSAGES")]
    max_buffered_messages: Option<usize>,
    /// Flush a partition's batch when its first message is this many seconds old [default: 10].
    #[arg(long, env = "TOKENMETER_FLUSH_INTERVAL")]
    flush_interval: Option<f64>,
    /// How far (seconds) an event's time may be ahead of this machine's clock [default: 300].
    #[arg(long, env = "TOKENMETER_MAX_FUTURE_SKEW")]
    max_future_skew: Option<i64>,
    /// Dedupe keys kept in memory across partitions [default: 4000000]; beyond it, dates are
    /// re-read from the lake when a retry of theirs arrives.
    #[arg(long, env = "TOKENMETER_DEDUPE_MAX_KEYS")]
    dedupe_max_keys: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464.
    #[arg(long, env = "TOKENMETER_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Extra librdkafka setting KEY=VALUE (repeatable), e.g. -X security.protocol=ssl.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_kv)]
    kafka: Vec<(String, String)>,
    /// At a clean exit, write the run's summary here as JSON: committed_events, duplicates,
    /// dead_lettered, batches, seconds, and peak_rss_kib (the process's peak resident set).
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
    /// Budget alerts: watch the price book's [[tenant.budget]] entries (calendar months in UTC)
    /// and produce one alert per tenant or agent, month and threshold to this topic (it must
    /// exist; alerts are keyed by tenant).
    #[arg(long, env = "TOKENMETER_ALERTS_TOPIC", value_name = "TOPIC")]
    alerts_topic: Option<String>,
    /// Also POST each alert's JSON to this http:// URL with `Idempotency-Key: <alert id>`,
    /// retried with backoff (up to 30 s) until it answers 2xx. Needs --alerts-topic.
    #[arg(long, env = "TOKENMETER_ALERTS_WEBHOOK", value_name = "URL")]
    alerts_webhook: Option<String>,
}

/// Where the ClickHouse rollup tables are.
#[derive(Args, Clone)]
struct ClickHouseArgs {
    /// Also write the hourly rollups into ClickHouse at this HTTP URL, e.g.
    /// http://127.0.0.1:8123 (tables: `tokenmeter clickhouse init`).
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_URL", value_name = "URL")]
    clickhouse_url: Option<String>,
    /// ClickHouse database [default: tokenmeter].
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_DATABASE", value_name = "NAME")]
    clickhouse_database: Option<String>,
    /// ClickHouse rollup view; the table is NAME_parts [default: usage_hourly].
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_TABLE", value_name = "NAME")]
    clickhouse_table: Option<String>,
    /// ClickHouse user [default: the server's default user].
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// ClickHouse password (prefer the environment variable).
    #[arg(long, env = "TOKENMETER_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
}

impl ClickHouseArgs {
    /// The target, flags over the config file's keys; `None` without a URL.
    fn target(
        self,
        file: &config::ClickHouseFile,
    ) -> Option<tokenmeter_aggregate::clickhouse::Target> {
        let url = self.clickhouse_url.or(file.url.clone())?;
        Some(tokenmeter_aggregate::clickhouse::Target {
            url,
            database: self
                .clickhouse_database
                .or(file.database.clone())
                .unwrap_or_else(|| "tokenmeter".into()),
            table: self
                .clickhouse_table
                .or(file.table.clone())
                .unwrap_or_else(|| "usage_hourly".into()),
            user: self.clickhouse_user.or(file.user.clone()),
            password: self.clickhouse_password.or(file.password.clone()),
        })
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    #[arg(long, default_value_t = 50)]
    tenants: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of deliberately invalid messages, 0..1.
    #[arg(long, default_value_t = 0.0)]
    invalid_fraction: f64,
    /// First day of the time window (UTC).
    #[arg(long, default_value = "2026-10-01")]
    start: NaiveDate,
    /// Days in the time window.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Distinct (tenant, agent) pairs, shared out by the tenants' traffic, with agent runs
    /// frequent enough that nearly all occur [default: 5 to 24 per tenant, usual agent share].
    #[arg(long)]
    agents: Option<u32>,
    /// Write JSON lines here.
    #[arg(long, conflicts_with = "brokers", required_unless_present = "brokers")]
    output: Option<PathBuf>,
    /// Or produce to Kafka at these brokers.
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    #[arg(long)]
    topic: Option<String>,
    /// Write the expected totals per tenant and bucket here (JSON).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Price the truth's costs with this book.
    #[arg(long)]
    prices: Option<PathBuf>,
}

#[derive(Args)]
struct ProduceArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "usage.events")]
    topic: String,
    /// JSON-lines file, one event per line.
    file: PathBuf,
    /// Extra librdkafka setting KEY=VALUE (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_kv)]
    kafka: Vec<(String, String)>,
}

#[derive(Args, Clone)]
struct ReportArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    /// First day, inclusive (YYYY-MM-DD, in --tz).
    #[arg(long)]
    from: NaiveDate,
    /// Last day, exclusive (YYYY-MM-DD, in --tz).
    #[arg(long)]
    to: NaiveDate,
    #[arg(long)]
    tenant: Option<String>,
    /// IANA time zone of the day boundaries, e.g. Asia/Shanghai.
    #[arg(long, default_value = "UTC")]
    tz: chrono_tz::Tz,
    /// Compute from the hourly rollups or the raw events (auto: rollups when the zone allows).
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    source: SourceArg,
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Use the restatements made at or before this time (RFC 3339); default: the latest.
    #[arg(long, value_parser = finance_cmd::parse_as_of)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Tokens and cost per tenant, provider, model and token type.
    Cost(ReportArgs),
    /// Share of tokens and cost that went to agent workloads, per tenant and period.
    AgentShare {
        #[command(flatten)]
        args: ReportArgs,
        #[arg(long, value_enum, default_value_t = GranularityArg::Day)]
        granularity: GranularityArg,
    },
    /// Large requests and hourly spend spikes, one table ordered by time.
    Anomalies(AnomaliesArgs),
    /// A tenant's invoice for a month: lines per provider, model and token type, priced by its
    /// contract in its billing currency.
    Invoice(finance_cmd::InvoiceArgs),
    /// Late events of closed months that a month's invoices carry as adjustments.
    Adjustments(finance_cmd::AdjustmentsArgs),
}

#[derive(Args)]
struct AnomaliesArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    /// First day, inclusive (YYYY-MM-DD, in --tz).
    #[arg(long)]
    from: NaiveDate,
    /// Last day, exclusive (YYYY-MM-DD, in --tz).
    #[arg(long)]
    to: NaiveDate,
    #[arg(long)]
    tenant: Option<String>,
    /// IANA time zone of the day boundaries and of the times shown, e.g. Asia/Shanghai.
    #[arg(long, default_value = "UTC")]
    tz: chrono_tz::Tz,
    /// A request of more than this many tokens (input + output as reported) is a large_request.
    #[arg(long, default_value_t = tokenmeter_query::anomalies::DEFAULT_MAX_TOKENS)]
    max_tokens: i64,
    /// An hour whose spend is more than this many times the baseline median is a spend_spike.
    #[arg(long, default_value = "5")]
    spend_factor: tokenmeter_query::SpendFactor,
    /// The baseline: the hours with usage among this many hours before each hour.
    #[arg(long, default_value_t = tokenmeter_query::anomalies::DEFAULT_BASELINE_HOURS)]
    baseline_hours: u32,
    /// No spend verdict for an hour whose baseline holds fewer hours with usage.
    #[arg(long, default_value_t = tokenmeter_query::anomalies::DEFAULT_MIN_BASELINE_HOURS)]
    min_baseline_hours: u32,
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct SqlArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    #[arg(long)]
    output: Option<PathBuf>,
    /// Use the restatements made at or before this time (RFC 3339); default: the latest.
    #[arg(long, value_parser = finance_cmd::parse_as_of)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// The query (SELECT / WITH / EXPLAIN only).
    query: String,
}

#[derive(Args)]
struct ReconcileArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    /// First day, inclusive (YYYY-MM-DD, in --tz).
    #[arg(long)]
    from: NaiveDate,
    /// Last day, exclusive (YYYY-MM-DD, in --tz).
    #[arg(long)]
    to: NaiveDate,
    /// IANA time zone of the day boundaries (whole-hour offsets only: rollups hold UTC hours).
    #[arg(long, default_value = "UTC")]
    tz: chrono_tz::Tz,
    /// Do not fail when ClickHouse has not loaded every committed batch yet (the comparison is
    /// made at the last batch both hold either way).
    #[arg(long)]
    allow_lag: bool,
    /// Format of the differences table.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceArg {
    Auto,
    Raw,
    Rollups,
}

#[derive(Clone, Copy, ValueEnum)]
enum GranularityArg {
    Day,
    Week,
    Month,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Csv => Format::Csv,
            FormatArg::Json => Format::Json,
            FormatArg::Parquet => Format::Parquet,
        }
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Demo(_) | Command::Bench(_)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output has gone (`| head`): what it read was complete, and nothing is
        // left to say to it.
        Err(e) if output_closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `e` is a write to our stdout after its reader has gone (`EPIPE`: Rust ignores
/// `SIGPIPE`, so writes fail instead of killing the process; the servers rely on that for their
/// sockets). Both must hold: a `BrokenPipe` from a socket (ClickHouse, a webhook) while stdout
/// is still read is a failure to report.
fn output_closed(e: &anyhow::Error) -> bool {
    let broken_pipe = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    broken_pipe && stdout_reader_gone()
}

/// Whether stdout is a pipe (or socket) whose reader has gone: it polls as `POLLERR`. A file or
/// a terminal never does.
fn stdout_reader_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd, borrowed exclusively for the call, and `nfds` is 1;
    // a timeout of 0 returns at once. poll(2) only writes `revents`.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLERR != 0
}

/// The error and its causes, each cause only if the text so far does not already say it (many
/// library errors repeat their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn init_tracing(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter =
        EnvFilter::try_from_env("TOKENMETER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(a) => demo::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Aggregate(a) => aggregate(*a).await,
        Command::Generate(a) => generate(a).await,
        Command::Produce(a) => {
            let messages = tokenmeter_ingest::produce::read_jsonl(&a.file)?;
            let n = messages.len();
            let sent = AtomicU64::new(0);
            let delivered = tokenmeter_ingest::produce::produce_all(
                &a.brokers, &a.topic, &a.kafka, messages, &sent,
            )
            .await?;
            eprintln!("produced {delivered} of {n} messages to {}", a.topic);
            Ok(())
        }
        Command::Report(ReportCommand::Cost(a)) => {
            let ctx = open_view(&a.data_dir, a.as_of).await?;
            let batches = tokenmeter_query::cost_report(&ctx, &report_params(&a)?).await?;
            let batches = if matches!(a.format, FormatArg::Table) {
                tokenmeter_query::cost_table_with_totals(&batches)?
            } else {
                batches
            };
            tokenmeter_query::write_batches(&batches, a.format.into(), a.output.as_deref())?;
            Ok(())
        }
        Command::Report(ReportCommand::AgentShare { args, granularity }) => {
            let ctx = open_view(&args.data_dir, args.as_of).await?;
            let g = match granularity {
                GranularityArg::Day => Granularity::Day,
                GranularityArg::Week => Granularity::Week,
                GranularityArg::Month => Granularity::Month,
            };
            let batches =
                tokenmeter_query::agent_share_report(&ctx, &report_params(&args)?, g).await?;
            tokenmeter_query::write_batches(&batches, args.format.into(), args.output.as_deref())?;
            Ok(())
        }
        Command::Report(ReportCommand::Anomalies(a)) => {
            if matches!(a.format, FormatArg::Parquet) && a.output.is_none() {
                bail!("--format parquet writes a file: add --output FILE.parquet");
            }
            let ctx = tokenmeter_query::open_catalog(&a.data_dir).await?;
            let params = tokenmeter_query::AnomalyParams {
                tenant: a.tenant,
                tz: a.tz,
                max_tokens: a.max_tokens,
                spend_factor: a.spend_factor,
                baseline_hours: a.baseline_hours,
                min_baseline_hours: a.min_baseline_hours,
                ..tokenmeter_query::AnomalyParams::new(a.from, a.to)
            };
            let batches = tokenmeter_query::anomalies_report(&ctx, &params).await?;
            tokenmeter_query::write_batches(&batches, a.format.into(), a.output.as_deref())?;
            Ok(())
        }
        Command::Sql(a) => {
            let ctx = open_view(&a.data_dir, a.as_of).await?;
            let batches = tokenmeter_query::run_sql(&ctx, &a.query).await?;
            tokenmeter_query::write_batches(&batches, a.format.into(), a.output.as_deref())?;
            Ok(())
        }
        Command::Clickhouse(ClickHouseCommand::Init(a)) => {
            let ch = tokenmeter_aggregate::clickhouse::ClickHouse::new(
                tokenmeter_aggregate::clickhouse::Target {
                    url: a.clickhouse_url,
                    database: a.database,
                    table: a.table,
                    user: a.clickhouse_user,
                    password: a.clickhouse_password,
                },
            )?;
            let version = ch.version().await?;
            ch.init().await?;
            let t = ch.target();
            outln!(
                "ClickHouse {version} at {}: database {}, table {}, views {} and {}.{} ready",
                t.url,
                t.database,
                ch.parts_table(),
                ch.complete_table(),
                t.database,
                t.table
            );
            Ok(())
        }
        Command::Reconcile(a) => reconcile(a).await,
        Command::Prices(PricesCommand::ImportLitellm(a)) => prices_cmd::run(a),
        Command::Prices(PricesCommand::Show(a)) => finance_cmd::run_show(a),
        Command::Report(ReportCommand::Invoice(a)) => finance_cmd::run_invoice(a).await,
        Command::Report(ReportCommand::Adjustments(a)) => finance_cmd::run_adjustments(a).await,
        Command::Reprice(a) => finance_cmd::run_reprice(a).await,
        Command::Compact(a) => finance_cmd::run_compact(a).await,
        Command::Restatements(a) => finance_cmd::run_restatements(a),
        Command::Close(a) => finance_cmd::run_close(a),
    }
}

async fn reconcile(a: ReconcileArgs) -> Result<()> {
    use tokenmeter_query::reconcile::{ClickHouseSource, ReconcileParams};
    let Some(target) = a.clickhouse.target(&Default::default()) else {
        bail!(
            "--clickhouse-url is required: the HTTP URL of the ClickHouse server the aggregator writes to"
        );
    };
    let ch = tokenmeter_aggregate::clickhouse::ClickHouse::new(target)?;
    let src = ClickHouseSource {
        client: ch.client().clone(),
        complete_table: ch.complete_table(),
    };
    let params = ReconcileParams {
        from: a.from,
        to: a.to,
        tz: a.tz,
    };
    let r = tokenmeter_query::reconcile::reconcile(&a.data_dir, &src, &params).await?;
    let diffs = r.differences();
    let keys = r.raw.len().max(r.rollups.len()).max(r.clickhouse.len());
    for c in &r.cuts {
        eprintln!(
            "{} partition {}: lake committed through {}, ClickHouse through {}{}",
            c.topic,
            c.partition,
            c.lake,
            c.clickhouse,
            if c.rows_behind > 0 {
                format!(" ({} rollup rows not loaded yet)", c.rows_behind)
            } else {
                String::new()
            }
        );
    }
    let ahead = r.ahead();
    let behind = r.rows_behind();
    if diffs.is_empty() {
        eprintln!(
            "raw events, rollups and ClickHouse agree on {keys} (tenant, day, currency) rows from {} to {} ({}), compared at the last batch both hold",
            a.from, a.to, a.tz
        );
    } else {
        eprintln!("{} differences:", diffs.len());
        tokenmeter_query::write_batches(&[r.differences_batch()?], a.format.into(), None)?;
    }
    if !ahead.is_empty() {
        eprintln!(
            "ClickHouse holds batches the lake has not committed in {} partition(s): the lake lost data or another lake feeds this table",
            ahead.len()
        );
    }
    if behind > 0 {
        eprintln!(
            "ClickHouse is behind the lake by {behind} rollup rows{}",
            if a.allow_lag {
                " (allowed by --allow-lag)"
            } else {
                "; run the aggregator with --clickhouse-url until it catches up, or pass --allow-lag"
            }
        );
    }
    if !diffs.is_empty() || !ahead.is_empty() || (behind > 0 && !a.allow_lag) {
        std::process::exit(1);
    }
    Ok(())
}

fn report_params(a: &ReportArgs) -> Result<ReportParams> {
    if a.to <= a.from {
        bail!(
            "--to ({}) must be after --from ({}): --to is exclusive",
            a.to,
            a.from
        );
    }
    if matches!(a.format, FormatArg::Parquet) && a.output.is_none() {
        bail!("--format parquet writes a file: add --output FILE.parquet");
    }
    Ok(ReportParams {
        from: a.from,
        to: a.to,
        tenant: a.tenant.clone(),
        tz: a.tz,
        source: match a.source {
            SourceArg::Auto => Source::Auto,
            SourceArg::Raw => Source::Raw,
            SourceArg::Rollups => Source::Rollups,
        },
    })
}

/// The lake with the restatements in force at `as_of` (default: the latest).
async fn open_view(
    dir: &Path,
    as_of: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<datafusion::prelude::SessionContext> {
    Ok(tokenmeter_query::catalog::open_view(
        dir,
        tokenmeter_query::catalog::View { as_of, cut: None },
    )
    .await?)
}

fn load_prices(path: &Path) -> Result<PriceBook> {
    PriceBook::load(path)
        .with_context(|| "loading the price book (see schemas/prices.example.toml for the format)")
}

async fn aggregate(a: AggregateArgs) -> Result<()> {
    let file = a
        .config
        .as_deref()
        .map(config::AggregateFile::load)
        .transpose()?
        .unwrap_or_default();
    let required = |flag: &str, key: &str, env: &str| {
        anyhow::anyhow!(
            "{flag} is required: pass it, set {env}, or put `{key} = …` in the --config file"
        )
    };
    let brokers = a
        .brokers
        .or(file.brokers)
        .ok_or_else(|| required("--brokers", "brokers", "TOKENMETER_BROKERS"))?;
    let data_dir = a
        .data_dir
        .or(file.data_dir)
        .ok_or_else(|| required("--data-dir", "data_dir", "TOKENMETER_DATA_DIR"))?;
    let prices = a
        .prices
        .or(file.prices)
        .ok_or_else(|| required("--prices", "prices", "TOKENMETER_PRICES"))?;
    let book = load_prices(&prices)?;
    let mut cfg = AggregatorConfig::new(brokers, data_dir);
    if let Some(t) = a.topic.or(file.topic) {
        cfg.topic = t;
    }
    if let Some(t) = a.dlq_topic.or(file.dlq_topic) {
        cfg.dlq_topic = t;
    }
    if let Some(g) = a.group.or(file.group) {
        cfg.group = g;
    }
    cfg.instance_id = a.instance_id.or(file.instance_id);
    cfg.exit_when_idle = a.exit_when_idle.map(Duration::from_secs_f64);
    if let Some(n) = a.flush_max_messages.or(file.flush_max_messages) {
        cfg.flush_max_messages = n.max(1);
    }
    if let Some(n) = a.max_buffered_messages.or(file.max_buffered_messages) {
        cfg.max_buffered_messages = n.max(1);
    }
    if let Some(s) = a.flush_interval.or(file.flush_interval_secs) {
        cfg.flush_interval = Duration::from_secs_f64(s.max(0.0));
    }
    if let Some(s) = a.max_future_skew.or(file.max_future_skew_secs) {
        cfg.decode.max_future_skew = chrono::Duration::seconds(s);
    }
    if let Some(n) = a.dedupe_max_keys.or(file.dedupe_max_keys) {
        cfg.dedupe_max_keys = n;
    }
    let mut kafka = file.kafka;
    kafka.extend(a.kafka);
    cfg.kafka_extra = kafka.into_iter().collect();
    // Test hook: SIGKILL this process at a point of the commit protocol.
    if let Ok(fp) = std::env::var("TOKENMETER_FAILPOINT") {
        cfg.lake.fail_point =
            Some(tokenmeter_ingest::aggregator::parse_fail_point(&fp).map_err(anyhow::Error::msg)?);
        cfg.lake.fail_action = tokenmeter_aggregate::lake::FailAction::Kill;
    }
    cfg.clickhouse = a.clickhouse.target(&file.clickhouse);
    let alerts_topic = a.alerts_topic.or(file.alerts.topic);
    let alerts_webhook = a.alerts_webhook.or(file.alerts.webhook);
    match (alerts_topic, alerts_webhook) {
        (Some(topic), webhook) => {
            let mut o = tokenmeter_ingest::alerts::AlertsOptions::new(topic);
            o.webhook = webhook;
            o.fail_point = cfg.lake.fail_point;
            o.fail_action = cfg.lake.fail_action;
            cfg.alerts = Some(o);
        }
        (None, Some(_)) => bail!(
            "--alerts-webhook needs --alerts-topic (TOKENMETER_ALERTS_TOPIC, or `topic` under [alerts] in the --config file): alerts go to the topic exactly once, then to the webhook"
        ),
        (None, None) => {
            if book.contracts().any(|c| !c.budgets.is_empty()) {
                tracing::info!(
                    "the price book has budgets; pass --alerts-topic to raise their alerts"
                );
            }
        }
    }
    let summary_json = a.summary_json;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = a.metrics_addr.or(file.metrics_addr) {
        let server = tokenmeter_ingest::metrics::serve(addr, metrics.clone())
            .await
            .with_context(|| format!("serving metrics on {addr} (--metrics-addr)"))?;
        tokio::spawn(server);
    }
    match tokenmeter_ingest::run_aggregator(cfg, book, metrics, shutdown_signal()).await {
        Ok(s) => {
            tracing::info!(
                committed_events = s.committed_events,
                duplicates = s.duplicates,
                dead_lettered = s.dead_lettered,
                batches = s.batches,
                seconds = s.elapsed.as_secs_f64(),
                "aggregator stopped cleanly"
            );
            if let Some(path) = summary_json {
                let doc = serde_json::json!({
                    "committed_events": s.committed_events,
                    "duplicates": s.duplicates,
                    "dead_lettered": s.dead_lettered,
                    "batches": s.batches,
                    "seconds": s.elapsed.as_secs_f64(),
                    "peak_rss_kib": tokenmeter_ingest::metrics::peak_rss_kib(),
                });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
                    .with_context(|| format!("writing the summary to {}", path.display()))?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn generate(a: GenerateArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.invalid_fraction) {
        bail!(
            "--invalid-fraction must be between 0 and 1, got {}",
            a.invalid_fraction
        );
    }
    let cfg = GenConfig {
        events: a.events,
        tenants: a.tenants.max(1),
        seed: a.seed,
        invalid_fraction: a.invalid_fraction,
        start: a.start.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        days: a.days.max(1),
        agents: a.agents,
    };
    let book = a.prices.as_deref().map(load_prices).transpose()?;
    let mut truth = Truth::default();
    let messages: Vec<_> = Generator::new(cfg)
        .inspect(|m| truth.add(m, book.as_ref()))
        .map(|m| (m.key, m.payload))
        .collect();
    if let Some(path) = &a.output {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for (_, p) in &messages {
            w.write_all(p)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        eprintln!(
            "wrote {} messages ({} invalid) to {}",
            truth.messages,
            truth.invalid,
            path.display()
        );
    } else if let (Some(brokers), Some(topic)) = (&a.brokers, &a.topic) {
        let sent = AtomicU64::new(0);
        let n =
            tokenmeter_ingest::produce::produce_all(brokers, topic, &[], messages, &sent).await?;
        eprintln!(
            "produced {n} messages ({} invalid) to {topic}",
            truth.invalid
        );
    }
    if let Some(path) = &a.truth {
        std::fs::write(path, serde_json::to_vec_pretty(&truth)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
