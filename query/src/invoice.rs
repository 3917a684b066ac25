//! Invoices and adjustments: a tenant's month read from the lake as usage segments and rated by
//! its contract ([`tokenmeter_aggregate::billing`]), with the late events of closed months as
//! adjustment lines ([`crate::periods`]); printed as a table, CSV, JSON or an HTML document.
//!
//! The lake supplies usage and list cost (after restatements, as of `--as-of`); the price book
//! supplies the contract: billing currency, overrides, discounts, tiers and FX rates.
//!
//! Not here: the arithmetic (pure, in `tokenmeter-aggregate`), closing months.

use crate::Result;
use crate::catalog::{View, open_view};
use crate::lake_store::CommittedOffsets;
use crate::periods::{adjustment_windows, check_tz, month_name, month_range, own_cut, read_closes};
use crate::sqlq::read_only_options;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, Int64Type, Schema, TimestampMicrosecondType,
};
use datafusion::common::ScalarValue;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokenmeter_aggregate::PriceBook;
use tokenmeter_aggregate::billing::{self, Invoice, Line, ListCost, Segment};
use tokenmeter_aggregate::prices::Money;
use tokenmeter_schemas::Buckets;

/// The invoice usage query.
pub const INVOICE_USAGE_SQL: &str = include_str!("../sql/invoice_usage.sql");

/// Usage segments per tenant.
pub type TenantSegments = BTreeMap<String, Vec<Segment>>;

fn strings(a: &ArrayRef) -> Result<StringArray> {
    Ok(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
}

/// The usage segments of `tenant` (or every tenant) in `[start, end)` from a catalog.
pub async fn usage_segments(
    ctx: &datafusion::prelude::SessionContext,
    tenant: Option<&str>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<TenantSegments> {
    let ts = |t: DateTime<Utc>| {
        ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
    };
    let date = |d: NaiveDate| ScalarValue::Date32(Some(d.to_epoch_days()));
    let last = (end - chrono::Duration::microseconds(1)).date_naive();
    let df = ctx
        .sql_with_options(INVOICE_USAGE_SQL, read_only_options())
        .await?
        .with_param_values(vec![
            ("from_ts", ts(start)),
            ("to_ts", ts(end)),
            ("from_date", date(start.date_naive())),
            ("last_date", date(last)),
            ("tenant", ScalarValue::Utf8(tenant.map(str::to_string))),
        ])?;
    let mut out = TenantSegments::new();
    for b in df.collect().await? {
        let tenant = strings(b.column(0))?;
        let hour = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let provider = strings(b.column(2))?;
        let model = strings(b.column(3))?;
        let currency = strings(b.column(4))?;
        let from = b.column(5).as_primitive::<TimestampMicrosecondType>();
        let tokens: Vec<&Int64Array> = (6..11)
            .map(|i| b.column(i).as_primitive::<Int64Type>())
            .collect();
        let costs: Vec<&Decimal128Array> = (11..16)
            .map(|i| b.column(i).as_primitive::<Decimal128Type>())
            .collect();
        for r in 0..b.num_rows() {
            let micros = |v: i64| DateTime::from_timestamp_micros(v).expect("valid timestamp");
            let list = (!currency.is_null(r) && !from.is_null(r)).then(|| ListCost {
                currency: currency.value(r).to_string(),
                effective_from: micros(from.value(r)),
                costs: std::array::from_fn(|i| {
                    if costs[i].is_null(r) {
                        0
                    } else {
                        costs[i].value(r)
                    }
                }),
            });
            out.entry(tenant.value(r).to_string())
                .or_default()
                .push(Segment {
                    hour: micros(hour.value(r)),
                    provider: provider.value(r).to_string(),
                    model: model.value(r).to_string(),
                    tokens: std::array::from_fn(|i| tokens[i].value(r)),
                    list,
                });
        }
    }
    Ok(out)
}

/// Whether an invoice line is the month's own usage or a late event of a closed month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Usage,
    Adjustment,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::Adjustment => "adjustment",
        }
    }
}

/// One line of an invoice document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocLine {
    pub kind: LineKind,
    /// The month the usage belongs to (`YYYY-MM`).
    pub period: String,
    pub line: Line,
}

/// A tenant's invoice for a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceDoc {
    pub tenant: String,
    pub month: String,
    pub tz: String,
    pub currency: String,
    pub minor: u32,
    /// `Some(time)` when the month is closed.
    pub closed_at: Option<DateTime<Utc>>,
    pub lines: Vec<DocLine>,
    /// Sum of the lines' amounts (integer at `minor` scale).
    pub total: i128,
    pub prices_hash: String,
    pub as_of: Option<DateTime<Utc>>,
}

impl InvoiceDoc {
    fn amount(&self, v: i128) -> String {
        rust_decimal::Decimal::from_i128_with_scale(v, self.minor).to_string()
    }
}

async fn segments_at(
    root: &Path,
    cut: Option<CommittedOffsets>,
    as_of: Option<DateTime<Utc>>,
    tenant: Option<&str>,
    month: NaiveDate,
    tz: Tz,
) -> Result<TenantSegments> {
    let ctx = open_view(root, View { as_of, cut }).await?;
    let (start, end) = month_range(month, tz);
    usage_segments(&ctx, tenant, start, end).await
}

fn empty(book: &PriceBook, tenant: &str) -> Result<Invoice> {
    Ok(billing::rate(book, tenant, &[])?)
}

/// The invoice of `tenant` for `month` (its first day) in `tz`.
pub async fn invoice(
    root: &Path,
    book: &PriceBook,
    tenant: &str,
    month: NaiveDate,
    tz: Tz,
    as_of: Option<DateTime<Utc>>,
) -> Result<InvoiceDoc> {
    let closes = read_closes(root)?;
    check_tz(&closes, tz)?;
    let name = month_name(month);
    let own = segments_at(
        root,
        own_cut(&closes, month),
        as_of,
        Some(tenant),
        month,
        tz,
    )
    .await?;
    let inv = match own.get(tenant) {
        Some(s) => billing::rate(book, tenant, s)?,
        None => empty(book, tenant)?,
    };
    let mut lines: Vec<DocLine> = inv
        .lines
        .iter()
        .map(|l| DocLine {
            kind: LineKind::Usage,
            period: name.clone(),
            line: l.clone(),
        })
        .collect();
    if let Some(w) = adjustment_windows(&closes, month)? {
        for c in w.months {
            let before =
                segments_at(root, Some(w.before.clone()), as_of, Some(tenant), c, tz).await?;
            let after = segments_at(root, w.after.clone(), as_of, Some(tenant), c, tz).await?;
            if before.get(tenant) == after.get(tenant) {
                continue;
            }
            let rate = |s: Option<&Vec<Segment>>| match s {
                Some(s) => billing::rate(book, tenant, s),
                None => billing::rate(book, tenant, &[]),
            };
            let delta = billing::delta(&rate(before.get(tenant))?, &rate(after.get(tenant))?);
            lines.extend(delta.into_iter().map(|l| DocLine {
                kind: LineKind::Adjustment,
                period: month_name(c),
                line: l,
            }));
        }
    }
    let total = lines.iter().map(|l| l.line.amount).sum();
    Ok(InvoiceDoc {
        tenant: tenant.to_string(),
        month: name.clone(),
        tz: tz.name().to_string(),
        currency: inv.currency,
        minor: inv.minor,
        closed_at: closes.iter().find(|c| c.month == name).map(|c| c.closed_at),
        lines,
        total,
        prices_hash: book.hash.clone(),
        as_of,
    })
}

/// The invoice's lines as one record batch: kind, period, provider, model, token_type, tokens,
/// unit_price, price_currency, price (list or contract), fx_rate, discount_pct, tier, amount.
pub fn lines_batch(doc: &InvoiceDoc) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&DocLine) -> Option<String>| -> ArrayRef {
        Arc::new(doc.lines.iter().map(f).collect::<StringArray>())
    };
    let dec = |v: Vec<i128>, p: u8, scale: i8| -> Result<ArrayRef> {
        Ok(Arc::new(
            Decimal128Array::from(v).with_precision_and_scale(p, scale)?,
        ))
    };
    let minor = doc.minor as i8;
    let cols: Vec<ArrayRef> = vec![
        s(&|l| Some(l.kind.as_str().into())),
        s(&|l| Some(l.period.clone())),
        s(&|l| Some(l.line.key.provider.clone())),
        s(&|l| Some(l.line.key.model.clone())),
        s(&|l| Some(l.line.token_type().into())),
        Arc::new(Int64Array::from_iter_values(
            doc.lines.iter().map(|l| l.line.tokens),
        )),
        dec(
            doc.lines
                .iter()
                .map(|l| l.line.key.unit_price as i128)
                .collect(),
            38,
            6,
        )?,
        s(&|l| Some(l.line.key.price_currency.clone())),
        s(&|l| {
            Some(
                if l.line.key.contract_price {
                    "contract"
                } else {
                    "list"
                }
                .into(),
            )
        }),
        dec(
            doc.lines
                .iter()
                .map(|l| l.line.key.fx_rate as i128)
                .collect(),
            38,
            8,
        )?,
        dec(
            doc.lines
                .iter()
                .map(|l| l.line.key.discount as i128)
                .collect(),
            38,
            2,
        )?,
        s(&|l| l.line.key.tier.as_ref().map(|t| t.label())),
        dec(doc.lines.iter().map(|l| l.line.amount).collect(), 38, minor)?,
    ];
    let field = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
    let schema = Schema::new(vec![
        field("kind", DataType::Utf8, false),
        field("period", DataType::Utf8, false),
        field("provider", DataType::Utf8, false),
        field("model", DataType::Utf8, false),
        field("token_type", DataType::Utf8, false),
        field("tokens", DataType::Int64, false),
        field("unit_price", DataType::Decimal128(38, 6), false),
        field("price_currency", DataType::Utf8, false),
        field("price", DataType::Utf8, false),
        field("fx_rate", DataType::Decimal128(38, 8), false),
        field("discount_pct", DataType::Decimal128(38, 2), false),
        field("tier", DataType::Utf8, true),
        field("amount", DataType::Decimal128(38, minor), false),
    ]);
    Ok(RecordBatch::try_new(Arc::new(schema), cols)?)
}

/// The invoice as a JSON object: `tenant_id`, `month`, `currency`, `lines` (each with
/// `provider`, `model`, `token_type`, `tokens`, `unit_price`, `amount` and the rest), `total`.
/// Decimals are strings.
pub fn to_json(doc: &InvoiceDoc) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = doc
        .lines
        .iter()
        .map(|l| {
            let k = &l.line.key;
            serde_json::json!({
                "kind": l.kind.as_str(),
                "period": l.period,
                "provider": k.provider,
                "model": k.model,
                "token_type": l.line.token_type(),
                "tokens": l.line.tokens,
                "unit_price": l.line.unit_price_str(),
                "unit": "per 1M tokens",
                "price_currency": k.price_currency,
                "price": if k.contract_price { "contract" } else { "list" },
                "fx_rate": l.line.fx_str(),
                "discount_pct": l.line.discount_str(),
                "tier": k.tier.as_ref().map(|t| t.label()),
                "amount": doc.amount(l.line.amount),
            })
        })
        .collect();
    serde_json::json!({
        "tenant_id": doc.tenant,
        "month": doc.month,
        "time_zone": doc.tz,
        "currency": doc.currency,
        "status": if doc.closed_at.is_some() { "closed" } else { "open" },
        "closed_at": doc.closed_at,
        "as_of": doc.as_of,
        "prices_hash": doc.prices_hash,
        "lines": lines,
        "total": doc.amount(doc.total),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The invoice as a self-contained HTML document (print it to PDF from a browser).
pub fn to_html(doc: &InvoiceDoc) -> String {
    let mut rows = String::new();
    for l in &doc.lines {
        let k = &l.line.key;
        rows.push_str(&format!(
            "<tr class=\"{kind}\"><td>{period}</td><td>{p}</td><td>{m}</td><td>{tt}</td><td class=\"n\">{tokens}</td><td class=\"n\">{unit} {pc}</td><td>{src}</td><td class=\"n\">{fx}</td><td class=\"n\">{disc}%</td><td>{tier}</td><td class=\"n\">{amount}</td></tr>\n",
            kind = l.kind.as_str(),
            period = esc(&l.period),
            p = esc(&k.provider),
            m = esc(&k.model),
            tt = l.line.token_type(),
            tokens = l.line.tokens,
            unit = l.line.unit_price_str(),
            pc = esc(&k.price_currency),
            src = if k.contract_price { "contract" } else { "list" },
            fx = l.line.fx_str(),
            disc = l.line.discount_str(),
            tier = esc(&k.tier.as_ref().map(|t| t.label()).unwrap_or_default()),
            amount = doc.amount(l.line.amount),
        ));
    }
    let status = match doc.closed_at {
        Some(t) => format!("closed {}", t.format("%Y-%m-%d %H:%M UTC")),
        None => "open (may still change)".into(),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Invoice {tenant} {month}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }}
dt {{ font-weight: 600; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.5em; text-align: left; }}
td.n, th.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.adjustment {{ background: #fff8e1; }}
tfoot td {{ font-weight: 700; border-top: 2px solid #222; }}
@media print {{ body {{ margin: 0; }} }}
</style>
</head>
<body>
<h1>Invoice — {tenant}</h1>
<dl>
<dt>Tenant</dt><dd id="tenant">{tenant}</dd>
<dt>Period</dt><dd id="month">{month} ({tz})</dd>
<dt>Currency</dt><dd id="currency">{currency}</dd>
<dt>Status</dt><dd>{status}</dd>
<dt>Price book</dt><dd><code>{hash}</code></dd>
</dl>
<table>
<thead><tr><th>Period</th><th>Provider</th><th>Model</th><th>Token type</th><th class="n">Tokens</th><th class="n">Unit price (per 1M)</th><th>Price</th><th class="n">FX</th><th class="n">Discount</th><th>Tier</th><th class="n">Amount ({currency})</th></tr></thead>
<tbody>
{rows}</tbody>
<tfoot><tr><td colspan="10">Total</td><td class="n" id="total">{total}</td></tr></tfoot>
</table>
<p>Amounts are rounded half-even to the currency's minor unit on each line; the total is the sum of the lines. Adjustment lines are usage of closed months committed after they were closed.</p>
</body>
</html>
"#,
        tenant = esc(&doc.tenant),
        month = esc(&doc.month),
        tz = esc(&doc.tz),
        currency = esc(&doc.currency),
        hash = esc(&doc.prices_hash),
        total = doc.amount(doc.total),
    )
}

/// Late events of closed months carried by `month`: per tenant, original period, provider,
/// model, currency and token type, the tokens and list cost committed after the period's close
/// (in the window [`adjustment_windows`] gives). Columns `tenant_id, period, provider, model,
/// currency, token_type, tokens, list_cost`.
pub async fn adjustments(
    root: &Path,
    month: NaiveDate,
    tz: Tz,
    tenant: Option<&str>,
    as_of: Option<DateTime<Utc>>,
) -> Result<RecordBatch> {
    let closes = read_closes(root)?;
    check_tz(&closes, tz)?;
    type Key = (String, String, String, String, Option<String>, usize);
    let mut rows: BTreeMap<Key, (i64, Option<Money>)> = BTreeMap::new();
    if let Some(w) = adjustment_windows(&closes, month)? {
        for c in w.months {
            let before = segments_at(root, Some(w.before.clone()), as_of, tenant, c, tz).await?;
            let after = segments_at(root, w.after.clone(), as_of, tenant, c, tz).await?;
            for (sign, segs) in [(-1i64, &before), (1, &after)] {
                for (t, list) in segs {
                    for s in list {
                        let cur = s.list.as_ref().map(|l| l.currency.clone());
                        for b in 0..5 {
                            let key = (
                                t.clone(),
                                month_name(c),
                                s.provider.clone(),
                                s.model.clone(),
                                cur.clone(),
                                b,
                            );
                            let e = rows.entry(key).or_insert((0, cur.as_ref().map(|_| 0)));
                            e.0 += sign * s.tokens[b];
                            if let (Some(v), Some(l)) = (e.1.as_mut(), &s.list) {
                                *v += sign as i128 * l.costs[b];
                            }
                        }
                    }
                }
            }
        }
    }
    rows.retain(|_, (t, c)| *t != 0 || c.is_some_and(|c| c != 0));
    let keys: Vec<&Key> = rows.keys().collect();
    let s = |f: &dyn Fn(&Key) -> Option<String>| -> ArrayRef {
        Arc::new(keys.iter().map(|k| f(k)).collect::<StringArray>())
    };
    let cols: Vec<ArrayRef> = vec![
        s(&|k| Some(k.0.clone())),
        s(&|k| Some(k.1.clone())),
        s(&|k| Some(k.2.clone())),
        s(&|k| Some(k.3.clone())),
        s(&|k| k.4.clone()),
        s(&|k| Some(Buckets::NAMES[k.5].to_string())),
        Arc::new(Int64Array::from_iter_values(rows.values().map(|v| v.0))),
        Arc::new(
            Decimal128Array::from(rows.values().map(|v| v.1).collect::<Vec<_>>())
                .with_precision_and_scale(38, 12)?,
        ),
    ];
    let schema = Schema::new(vec![
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("period", DataType::Utf8, false),
        Field::new("provider", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("currency", DataType::Utf8, true),
        Field::new("token_type", DataType::Utf8, false),
        Field::new("tokens", DataType::Int64, false),
        Field::new("list_cost", DataType::Decimal128(38, 12), true),
    ]);
    Ok(RecordBatch::try_new(Arc::new(schema), cols)?)
}
