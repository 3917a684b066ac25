//! The finance commands: `report invoice`, `report adjustments`, `reprice`, `restatements`,
//! `close` and `prices show`. Argument parsing and printing only; the work is in
//! `tokenmeter-query` (invoice, periods, reprice) and `tokenmeter-aggregate` (prices, billing).

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use tokenmeter_aggregate::PriceBook;
use tokenmeter_aggregate::prices::{
    PriceEntry, PriceSource, TierMode, format_fx, format_micro, format_percent,
};
use tokenmeter_query::invoice::{self, InvoiceDoc};
use tokenmeter_query::periods::{self, Closed};
use tokenmeter_query::reprice::{self, Compacted, Repriced};
use tokenmeter_schemas::Buckets;
use tokenmeter_schemas::layout::RestatementKind;

/// The user recorded in audit entries: `--by`, else `$USER`, else "unknown".
fn who(by: &Option<String>) -> String {
    by.clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Parse `--as-of` (RFC 3339).
pub fn parse_as_of(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{s:?} must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z"))
}

fn load_book(path: &std::path::Path) -> Result<PriceBook> {
    PriceBook::load(path)
        .with_context(|| "loading the price book (see schemas/prices.example.toml for the format)")
}

#[derive(Clone, Copy, ValueEnum)]
pub enum InvoiceFormat {
    Table,
    Csv,
    Json,
    Html,
}

#[derive(Args)]
pub struct InvoiceArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    /// The price book with the tenant's contract, billing currency and FX rates.
    #[arg(long, env = "TOKENMETER_PRICES")]
    prices: PathBuf,
    #[arg(long)]
    tenant: String,
    /// The month, YYYY-MM.
    #[arg(long)]
    month: String,
    /// IANA time zone whose midnights bound the month (closed months: the zone they were closed in).
    #[arg(long, default_value = "UTC")]
    tz: chrono_tz::Tz,
    /// Use the restatements made at or before this time (RFC 3339); default: the latest.
    #[arg(long, value_parser = parse_as_of)]
    as_of: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = InvoiceFormat::Table)]
    format: InvoiceFormat,
    /// Write to this file instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn print_table(doc: &InvoiceDoc, w: &mut dyn Write) -> Result<()> {
    writeln!(
        w,
        "Invoice {} {} ({}), {}{}",
        doc.tenant,
        doc.month,
        doc.tz,
        doc.currency,
        match doc.closed_at {
            Some(t) => format!(", closed {}", t.format("%Y-%m-%d %H:%M UTC")),
            None => ", open".into(),
        }
    )?;
    let batch = invoice::lines_batch(doc)?;
    let table = datafusion::arrow::util::pretty::pretty_format_batches(&[batch])?;
    writeln!(w, "{table}")?;
    let amount = rust_decimal::Decimal::from_i128_with_scale(doc.total, doc.minor);
    writeln!(
        w,
        "Total {} {amount} ({} lines)",
        doc.currency,
        doc.lines.len()
    )?;
    Ok(())
}

pub async fn run_invoice(a: InvoiceArgs) -> Result<()> {
    let book = load_book(&a.prices)?;
    let month = periods::parse_month(&a.month)?;
    let doc = invoice::invoice(&a.data_dir, &book, &a.tenant, month, a.tz, a.as_of).await?;
    let mut out: Box<dyn Write + Send> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    match a.format {
        InvoiceFormat::Table => print_table(&doc, &mut out)?,
        InvoiceFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &invoice::to_json(&doc))?;
            writeln!(out)?;
        }
        InvoiceFormat::Html => out.write_all(invoice::to_html(&doc).as_bytes())?,
        InvoiceFormat::Csv => {
            let batch = invoice::lines_batch(&doc)?;
            tokenmeter_query::output::write_to(&[batch], tokenmeter_query::Format::Csv, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}

#[derive(Args)]
pub struct AdjustmentsArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    /// The month whose invoice carries the adjustments, YYYY-MM.
    #[arg(long)]
    month: String,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long, default_value = "UTC")]
    tz: chrono_tz::Tz,
    #[arg(long, value_parser = parse_as_of)]
    as_of: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = crate::FormatArg::Table)]
    format: crate::FormatArg,
    #[arg(long)]
    output: Option<PathBuf>,
}

pub async fn run_adjustments(a: AdjustmentsArgs) -> Result<()> {
    let month = periods::parse_month(&a.month)?;
    let batch =
        invoice::adjustments(&a.data_dir, month, a.tz, a.tenant.as_deref(), a.as_of).await?;
    tokenmeter_query::write_batches(&[batch], a.format.into(), a.output.as_deref())?;
    Ok(())
}

/// The lake, UTC dates and author of a restatement (reprice, compact).
#[derive(Args)]
pub struct RestateArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    /// First UTC date, inclusive (YYYY-MM-DD).
    #[arg(long)]
    from: NaiveDate,
    /// Last UTC date, exclusive.
    #[arg(long)]
    to: NaiveDate,
    /// Who restates, for the audit record (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

#[derive(Args)]
pub struct RepriceArgs {
    #[command(flatten)]
    range: RestateArgs,
    #[arg(long, env = "TOKENMETER_PRICES")]
    prices: PathBuf,
}

pub async fn run_reprice(r: RepriceArgs) -> Result<()> {
    let (a, book) = (r.range, load_book(&r.prices)?);
    let path = r.prices.display().to_string();
    eprintln!("repricing {}..{} (UTC dates) with {path} …", a.from, a.to);
    match reprice::reprice(
        &a.data_dir,
        &book,
        &path,
        a.from,
        a.to,
        &who(&a.by),
        Utc::now(),
    )
    .await?
    {
        Repriced::NoChange { events } => {
            outln!(
                "no change: the book prices all {events} events of {}..{} as the lake does; nothing written",
                a.from,
                a.to
            );
        }
        Repriced::Restated(r) => {
            outln!(
                "restatement {} of {}..{} by {} at {} (book {} {}), {} files:",
                r.generation,
                r.from,
                r.to,
                r.created_by,
                r.created_at.to_rfc3339(),
                r.prices_path,
                r.prices_hash,
                r.files.len()
            );
            print_totals(&r)?;
        }
    }
    Ok(())
}

fn print_totals(r: &tokenmeter_schemas::layout::Restatement) -> Result<()> {
    outln!(
        "{:<24} {:>8} {:>10} {:>26} {:>26}",
        "tenant",
        "currency",
        "events",
        "old cost",
        "new cost"
    );
    for t in &r.totals {
        let n = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        outln!(
            "{:<24} {:>8} {:>10} {:>26} {:>26}",
            t.tenant_id,
            t.currency.as_deref().unwrap_or("unpriced"),
            t.events,
            n(&t.old_cost),
            n(&t.new_cost)
        );
    }
    Ok(())
}

/// Compact dates once they are quiet (yesterday and before): batches committed after a
/// compaction stay visible beside it, as small files again.
#[derive(Args)]
pub struct CompactArgs {
    #[command(flatten)]
    range: RestateArgs,
}

pub async fn run_compact(c: CompactArgs) -> Result<()> {
    let a = c.range;
    eprintln!("compacting {}..{} (UTC dates) …", a.from, a.to);
    match reprice::compact(&a.data_dir, a.from, a.to, &who(&a.by), Utc::now()).await? {
        Compacted::NoChange { events } => outln!(
            "nothing to compact: every date of {}..{} has at most one file per table ({events} events)",
            a.from,
            a.to
        ),
        Compacted::Compacted { manifest, dates } => {
            outln!(
                "compaction {} of {}..{} by {} at {}:",
                manifest.generation,
                manifest.from,
                manifest.to,
                manifest.created_by,
                manifest.created_at.to_rfc3339()
            );
            outln!(
                "{:<10} {:>10} {:>12} {:>14} {:>14}",
                "date",
                "events",
                "files",
                "bytes before",
                "bytes after"
            );
            for d in &dates {
                outln!(
                    "{:<10} {:>10} {:>7} -> 2 {:>14} {:>14}",
                    d.date.to_string(),
                    d.events,
                    d.files_before,
                    d.bytes_before,
                    d.bytes_after
                );
            }
            outln!(
                "the original files stay on disk (views as of earlier cuts and the aggregator's dedupe read them)"
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct RestatementsArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
}

pub fn run_restatements(a: RestatementsArgs) -> Result<()> {
    let all = reprice::restatements(&a.data_dir)?;
    if all.is_empty() {
        outln!("no restatements: every cost is as the aggregator priced it");
    }
    for r in all {
        let what = match r.kind {
            RestatementKind::Reprice => format!("book {} {}", r.prices_path, r.prices_hash),
            RestatementKind::Compaction => "compaction: rows and costs unchanged".to_string(),
        };
        outln!(
            "\nrestatement {} of {}..{} by {} at {} ({what})",
            r.generation,
            r.from,
            r.to,
            r.created_by,
            r.created_at.to_rfc3339(),
        );
        print_totals(&r)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct CloseArgs {
    #[arg(long, env = "TOKENMETER_DATA_DIR")]
    data_dir: PathBuf,
    /// The month to close, YYYY-MM.
    #[arg(long)]
    month: String,
    /// IANA time zone whose midnights bound the month (the same for every close of a lake).
    #[arg(long, default_value = "UTC")]
    tz: chrono_tz::Tz,
    /// Who closes, for the record (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

pub fn run_close(a: CloseArgs) -> Result<()> {
    let month = periods::parse_month(&a.month)?;
    match periods::close_month(&a.data_dir, month, a.tz, &who(&a.by), Utc::now())? {
        Closed::Now(c) => outln!(
            "closed {} ({}) at {} by {}: its invoices are frozen at the lake's offsets of now; later events of the month go to the next open month's invoice as adjustments (`tokenmeter report adjustments --month {}`)",
            c.month,
            c.tz,
            c.closed_at.to_rfc3339(),
            c.closed_by,
            periods::month_name(periods::next_month(month))
        ),
        Closed::Already(c) => outln!(
            "{} was already closed at {} by {}; nothing changed",
            c.month,
            c.closed_at.to_rfc3339(),
            c.closed_by
        ),
    }
    Ok(())
}

#[derive(Args)]
pub struct ShowArgs {
    #[arg(long, env = "TOKENMETER_PRICES")]
    prices: PathBuf,
    /// The model, as events name it.
    #[arg(long)]
    model: String,
    /// Its provider (needed when several providers have a model of that name).
    #[arg(long)]
    provider: Option<String>,
    /// The tenant whose contract applies.
    #[arg(long)]
    tenant: Option<String>,
    /// The time (RFC 3339); default: now.
    #[arg(long, value_parser = parse_as_of)]
    at: Option<DateTime<Utc>>,
}

fn rates_line(e: &PriceEntry) -> String {
    Buckets::NAMES
        .iter()
        .zip(e.rates.0)
        .map(|(n, v)| format!("{n} {}", format_micro(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn range(e: &PriceEntry) -> String {
    format!(
        "[{}, {})",
        e.effective_from.to_rfc3339(),
        e.effective_to
            .map_or("next entry".to_string(), |t| t.to_rfc3339())
    )
}

pub fn run_show(a: ShowArgs) -> Result<()> {
    let book = load_book(&a.prices)?;
    let at = a.at.unwrap_or_else(Utc::now);
    let provider = match a.provider {
        Some(p) => p,
        None => {
            let mut all = book.list().providers_of(&a.model);
            if let Some(c) = a.tenant.as_deref().and_then(|t| book.contract(t)) {
                all.extend(c.overrides.providers_of(&a.model));
            }
            all.sort_unstable();
            all.dedup();
            match all.as_slice() {
                [one] => one.to_string(),
                [] => bail!(
                    "no price for a model named {:?} in {} (list or contract); names are as events carry them",
                    a.model,
                    a.prices.display()
                ),
                many => bail!(
                    "{} providers have a model named {:?} ({}): pass --provider",
                    many.len(),
                    a.model,
                    many.join(", ")
                ),
            }
        }
    };
    let tenant = a.tenant.as_deref().unwrap_or("");
    let billing = book.billing_currency(tenant).to_string();
    outln!(
        "{provider}/{} at {}{}",
        a.model,
        at.to_rfc3339(),
        a.tenant
            .as_deref()
            .map(|t| format!(" for tenant {t} (billed in {billing})"))
            .unwrap_or_default()
    );
    outln!("\nlist price history (per 1M tokens):");
    for e in book.list().history(&provider, &a.model) {
        let mark = if book.lookup(&provider, &a.model, at) == Some(e) {
            "→"
        } else {
            " "
        };
        outln!(
            "  {mark} line {:>4}  {}  {}: {}",
            e.line,
            range(e),
            e.currency,
            rates_line(e)
        );
    }
    let Some((entry, source)) = book.tenant_price(tenant, &provider, &a.model, at) else {
        outln!(
            "\nno price is in force at {}: usage then is stored unpriced (cost null) until a price is added and the period repriced",
            at.to_rfc3339()
        );
        return Ok(());
    };
    match source {
        PriceSource::List => outln!(
            "\napplies: the list entry on line {} (in force since {})",
            entry.line,
            entry.effective_from.to_rfc3339()
        ),
        PriceSource::Override => outln!(
            "\napplies: tenant {tenant}'s contract price on line {}, {} {}: {} (replaces the list price)",
            entry.line,
            range(entry),
            entry.currency,
            rates_line(entry)
        ),
    }
    let Some(c) = a.tenant.as_deref().and_then(|t| book.contract(t)) else {
        if a.tenant.is_some() {
            outln!("tenant {tenant} has no contract: list prices, billed in {billing}");
        }
        return Ok(());
    };
    match c.discount(&provider, &a.model, at) {
        Some(d) => outln!(
            "discount: {}% (line {}, scope {}{})",
            format_percent(d.percent),
            d.line,
            match (&d.provider, &d.model) {
                (Some(p), Some(m)) => format!("{p}/{m}"),
                (Some(p), None) => format!("{p}/*"),
                _ => "all models".into(),
            },
            if c.discounts.len() > 1 {
                "; the most specific discount in force applies"
            } else {
                ""
            }
        ),
        None => outln!("discount: none"),
    }
    for (b, name) in Buckets::NAMES.iter().enumerate() {
        if let Some(t) = c.tier(&provider, &a.model, b) {
            let bands: Vec<String> = t
                .bands
                .iter()
                .map(|x| {
                    format!(
                        "[{}, {}) -{}%",
                        x.from,
                        x.up_to.map_or("∞".into(), |u| u.to_string()),
                        format_percent(x.percent)
                    )
                })
                .collect();
            outln!(
                "tier ({name}): {} {} on the month's tokens (line {}): {}",
                t.scope(),
                if t.mode == TierMode::Volume {
                    "volume"
                } else {
                    "graduated"
                },
                t.line,
                bands.join(", ")
            );
        }
    }
    if entry.currency != billing {
        match book.fx_entry(&entry.currency, &billing, at.date_naive()) {
            Some(r) => outln!(
                "fx: 1 {} = {} {} (effective {})",
                r.from,
                format_fx(r.rate),
                r.to,
                r.effective
            ),
            None => outln!(
                "fx: no {}→{billing} rate in force on {}: invoices for that day fail until one is added",
                entry.currency,
                at.date_naive()
            ),
        }
    }
    Ok(())
}
