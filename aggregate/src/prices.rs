//! The price book (format v2, which reads every v1 file) and exact cost arithmetic.
//!
//! A book is TOML:
//! - `currency`: the book's default currency (of entries without their own, and the default
//!   billing currency of tenants);
//! - `[[price]]`: list prices per (provider, model), per million tokens of each bucket, in force
//!   from `effective_from` until `effective_to` (exclusive) or the next entry of the model, each
//!   in its own `currency` (default: the book's);
//! - `[[fx]]`: exchange rates (`from`, `to`, `rate`, `effective` date), in force from their date
//!   (00:00 UTC) until the next rate of the pair;
//! - `[[tenant]]`: contracts — billing currency, price overrides (`[[tenant.price]]`, same form
//!   as list prices), percentage discounts (`[[tenant.discount]]`), committed-use tiers
//!   (`[[tenant.tier]]`) and monthly budgets (`[[tenant.budget]]`).
//!
//! Prices have at most 6 decimal places per million tokens and are held as integer micro-units:
//! the cost of `n` tokens at `p` micro-units per million is `n × p` units of 10⁻¹², exactly a
//! Decimal128(38, 12) — no division, no rounding, no floats. FX rates have at most 8 decimal
//! places, percentages at most 2.
//!
//! Validation happens on load; an error names the file, the line, the entry and the rule.
//!
//! Not here: applying contracts, FX and tiers to usage (see [`crate::billing`]); the lake keeps
//! list cost in the list price's currency.

use crate::{Error, Result};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use tokenmeter_schemas::Buckets;
use toml::Spanned;

/// Money at scale 12 (units of 10⁻¹²): the unscaled value of a Decimal128(38, 12).
pub type Money = i128;

/// Decimal places a price may have.
pub const PRICE_SCALE: u32 = 6;
/// Decimal places an FX rate may have.
pub const FX_SCALE: u32 = 8;
/// Decimal places a percentage may have.
pub const PERCENT_SCALE: u32 = 2;

/// ISO 4217 codes the book accepts, with their minor units (decimal places of an invoice
/// amount). A code outside this table is refused as unknown.
pub const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KZT", 2),
    ("LKR", 2),
    ("MOP", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("QAR", 2),
    ("RON", 2),
    ("RUB", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// Minor units of an accepted currency code.
pub fn minor_units(code: &str) -> Option<u32> {
    CURRENCIES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| CURRENCIES[i].1)
}

/// Per-million prices of the five buckets, in micro-units (10⁻⁶), in `Buckets::NAMES` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates(pub [i64; 5]);

impl Rates {
    /// Exact cost of each bucket, in units of 10⁻¹².
    pub fn costs(&self, b: &Buckets) -> [Money; 5] {
        let t = b.as_array();
        std::array::from_fn(|i| t[i] as Money * self.0[i] as Money)
    }
}

/// One price entry (list or tenant override), in force on `[effective_from, effective_to)`;
/// without `effective_to`, until the next entry of the same model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceEntry {
    pub provider: String,
    pub model: String,
    pub effective_from: DateTime<Utc>,
    pub effective_to: Option<DateTime<Utc>>,
    pub currency: String,
    pub rates: Rates,
    /// 1-based line of the entry in the book, for explanations.
    pub line: usize,
}

/// Price entries per provider, then model, each list sorted by `effective_from`. Nested maps so
/// a lookup by `&str` allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct PriceTable(HashMap<String, HashMap<String, Vec<PriceEntry>>>);

impl PriceTable {
    /// The entry in force at `time`: the latest `effective_from` ≤ `time`, if its
    /// `effective_to` is after `time`.
    pub fn lookup(&self, provider: &str, model: &str, time: DateTime<Utc>) -> Option<&PriceEntry> {
        let list = self.0.get(provider)?.get(model)?;
        let idx = list.partition_point(|e| e.effective_from <= time);
        let e = &list[idx.checked_sub(1)?];
        e.effective_to.is_none_or(|to| time < to).then_some(e)
    }

    /// Every entry of one model, by time.
    pub fn history(&self, provider: &str, model: &str) -> &[PriceEntry] {
        self.0
            .get(provider)
            .and_then(|m| m.get(model))
            .map_or(&[], Vec::as_slice)
    }

    /// All entries.
    pub fn entries(&self) -> impl Iterator<Item = &PriceEntry> {
        self.0.values().flat_map(HashMap::values).flatten()
    }

    /// Providers having a model of this name.
    pub fn providers_of(&self, model: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, m)| m.contains_key(model))
            .map(|(p, _)| p.as_str())
            .collect();
        v.sort_unstable();
        v
    }
}

/// An exchange rate: one unit of `from` is `rate` (scale [`FX_SCALE`]) units of `to`, from
/// `effective` (00:00 UTC) until the next rate of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FxRate {
    pub from: String,
    pub to: String,
    pub effective: NaiveDate,
    /// Units of 10⁻⁸.
    pub rate: i64,
}

/// A percentage discount of a contract, for every model (no provider), a provider's models, or
/// one model, on `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discount {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Percent at scale 2 (`1250` = 12.5 %).
    pub percent: i64,
    pub line: usize,
}

impl Discount {
    fn covers(&self, provider: &str, model: &str, t: DateTime<Utc>) -> bool {
        self.provider.as_deref().is_none_or(|p| p == provider)
            && self.model.as_deref().is_none_or(|m| m == model)
            && self.from.is_none_or(|f| f <= t)
            && self.to.is_none_or(|e| t < e)
    }

    /// 0 for a global discount, 1 for a provider's, 2 for a model's: the most specific applies.
    fn specificity(&self) -> u8 {
        u8::from(self.provider.is_some()) + u8::from(self.model.is_some())
    }
}

/// How a tier's bands price a month's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierMode {
    /// Each band's tokens at that band's discount (the first 100M at list, the rest at −20 %).
    Graduated,
    /// Every token of the month at the discount of the band the month's total falls in.
    Volume,
}

/// One band of a tier: tokens `[from, up_to)` of the month, at `percent` off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    pub from: u64,
    /// `None` for the last, open band.
    pub up_to: Option<u64>,
    /// Percent at scale 2.
    pub percent: i64,
}

/// A committed-use tier of a contract on the monthly tokens of a provider (or one of its
/// models), counting the token types it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub provider: String,
    pub model: Option<String>,
    /// Which buckets count and are discounted, `Buckets::NAMES` order.
    pub token_types: [bool; 5],
    pub mode: TierMode,
    pub bands: Vec<Band>,
    pub line: usize,
}

impl Tier {
    /// Whether bucket `b` of (provider, model) falls under this tier.
    pub fn covers(&self, provider: &str, model: &str, b: usize) -> bool {
        self.provider == provider
            && self.model.as_deref().is_none_or(|m| m == model)
            && self.token_types[b]
    }

    /// A short name of the tier's scope.
    pub fn scope(&self) -> String {
        match &self.model {
            Some(m) => format!("{}/{m}", self.provider),
            None => format!("{}/*", self.provider),
        }
    }
}

/// A monthly budget of a tenant (or of one of its agents) in the tenant's billing currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub agent: Option<String>,
    /// Scale 12.
    pub amount: Money,
    /// Percentages of `amount` that raise an alert, ascending.
    pub thresholds: Vec<u32>,
}

/// A tenant's contract.
#[derive(Debug, Clone, Default)]
pub struct Contract {
    pub tenant: String,
    /// The currency the tenant is billed in; `None`: the book's.
    pub billing_currency: Option<String>,
    pub overrides: PriceTable,
    pub discounts: Vec<Discount>,
    pub tiers: Vec<Tier>,
    pub budgets: Vec<Budget>,
}

impl Contract {
    /// The most specific discount in force for (provider, model) at `t`.
    pub fn discount(&self, provider: &str, model: &str, t: DateTime<Utc>) -> Option<&Discount> {
        self.discounts
            .iter()
            .filter(|d| d.covers(provider, model, t))
            .max_by_key(|d| d.specificity())
    }

    /// The tier bucket `b` of (provider, model) falls under.
    pub fn tier(&self, provider: &str, model: &str, b: usize) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.covers(provider, model, b))
    }
}

/// Where the price applied to a tenant's usage came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource {
    List,
    /// The tenant's contract overrides the list price.
    Override,
}

/// A loaded, validated price book.
#[derive(Debug, Clone)]
pub struct PriceBook {
    /// The default currency: of entries without one, and of tenants' bills.
    pub currency: String,
    /// Where the book came from (a path), for errors and audits.
    pub origin: String,
    /// XXH3-128 of the book's bytes, hex: identifies the book in audit records.
    pub hash: String,
    list: PriceTable,
    /// Rates per (from, to), sorted by date.
    fx: HashMap<(String, String), Vec<FxRate>>,
    contracts: BTreeMap<String, Contract>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    /// ISO 4217 code: the default currency of prices and bills.
    currency: Spanned<String>,
    #[serde(default)]
    price: Vec<PriceFile>,
    #[serde(default)]
    fx: Vec<FxFile>,
    #[serde(default)]
    tenant: Vec<TenantFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    provider: Spanned<String>,
    model: String,
    /// RFC 3339 time from which the entry is in force.
    effective_from: Spanned<String>,
    /// RFC 3339 time from which it no longer is (exclusive); default: the next entry's start.
    effective_to: Option<Spanned<String>>,
    /// ISO 4217 code of this entry's prices; default: the book's `currency`.
    currency: Option<Spanned<String>>,
    /// Per million uncached input tokens.
    input: Spanned<String>,
    /// Per million cache-read tokens; default: `input`.
    cache_read: Option<Spanned<String>>,
    /// Per million cache-write tokens; default: `input`.
    cache_write: Option<Spanned<String>>,
    /// Per million output tokens (reasoning excluded).
    output: Spanned<String>,
    /// Per million reasoning tokens; default: `output`.
    reasoning: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FxFile {
    from: Spanned<String>,
    to: String,
    /// Units of `to` per unit of `from`, a decimal string with at most 8 places.
    rate: Spanned<String>,
    /// Date (UTC) from which the rate is in force, `YYYY-MM-DD`.
    effective: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    id: Spanned<String>,
    /// ISO 4217 code the tenant is billed in; default: the book's `currency`.
    billing_currency: Option<Spanned<String>>,
    #[serde(default)]
    price: Vec<PriceFile>,
    #[serde(default)]
    discount: Vec<DiscountFile>,
    #[serde(default)]
    tier: Vec<TierFile>,
    #[serde(default)]
    budget: Vec<BudgetFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscountFile {
    provider: Option<String>,
    /// Requires `provider`.
    model: Option<String>,
    /// Percent off, e.g. "12.5".
    percent: Spanned<String>,
    effective_from: Option<Spanned<String>>,
    effective_to: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    provider: Spanned<String>,
    model: Option<String>,
    /// Buckets counted and discounted; default: all five.
    token_types: Option<Vec<String>>,
    /// "graduated" (default) or "volume".
    mode: Option<String>,
    bands: Vec<BandFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BandFile {
    /// First token of the band (default: the previous band's `up_to`, or 0).
    from: Option<u64>,
    /// First token after the band; omitted on the last band only.
    up_to: Option<u64>,
    /// Percent off the price in this band.
    discount: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    /// Budget of one agent of the tenant; default: the whole tenant.
    agent: Option<String>,
    /// Monthly amount in the tenant's billing currency.
    amount: Spanned<String>,
    /// Percentages that raise an alert; default [50, 80, 100].
    thresholds: Option<Vec<u32>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parse a non-negative decimal with at most `scale` places into units of 10^-scale.
fn parse_scaled(s: &str, scale: u32, example: &str) -> std::result::Result<i64, String> {
    let d = Decimal::from_str(s.trim()).map_err(|_| {
        format!("{s:?} is not a decimal number (write it as a string, e.g. \"{example}\")")
    })?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(format!("{s:?} is negative"));
    }
    let n = d.normalize();
    if n.scale() > scale {
        return Err(format!(
            "{s:?} has {} decimal places; at most {scale} are allowed",
            n.scale()
        ));
    }
    n.checked_mul(Decimal::from(10i64.pow(scale)))
        .and_then(|m| m.to_i64())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parse a per-million price into micro-units, rejecting more than [`PRICE_SCALE`] places.
pub fn parse_price(s: &str) -> std::result::Result<i64, String> {
    parse_scaled(s, PRICE_SCALE, "2.50")
}

/// Parse a percentage (0 to 100, at most 2 places) into units of 0.01 %.
pub fn parse_percent(s: &str) -> std::result::Result<i64, String> {
    let p = parse_scaled(s, PERCENT_SCALE, "12.5")?;
    if p > 100 * 100 {
        return Err(format!("{s:?} is over 100 percent"));
    }
    Ok(p)
}

/// Parse a money amount (at most 12 places) into units of 10⁻¹².
pub fn parse_money(s: &str) -> std::result::Result<Money, String> {
    let d = Decimal::from_str(s.trim())
        .map_err(|_| format!("{s:?} is not a decimal number (e.g. \"5000.00\")"))?;
    if d.is_sign_negative() {
        return Err(format!("{s:?} is negative"));
    }
    let n = d.normalize();
    if n.scale() > 12 {
        return Err(format!("{s:?} has more than 12 decimal places"));
    }
    Ok(n.mantissa() * 10i128.pow(12 - n.scale()))
}

/// Format micro-units as a decimal string with 6 places.
pub fn format_micro(v: i64) -> String {
    Decimal::new(v, PRICE_SCALE).to_string()
}

/// Format money (units of 10⁻¹²) as a decimal string with 12 places.
pub fn format_money(v: Money) -> String {
    Decimal::from_i128_with_scale(v, 12).to_string()
}

/// Format an FX rate (units of 10⁻⁸), without trailing zeros.
pub fn format_fx(v: i64) -> String {
    Decimal::new(v, FX_SCALE).normalize().to_string()
}

/// Format a percentage (units of 0.01 %), without trailing zeros.
pub fn format_percent(v: i64) -> String {
    Decimal::new(v, PERCENT_SCALE).normalize().to_string()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Parses and checks one file; collects the first error with its line.
struct Loader<'a> {
    text: &'a str,
    origin: &'a str,
    default_currency: String,
}

impl Loader<'_> {
    fn err(&self, at: usize, entry: &str, message: String) -> Error {
        Error::PriceBook {
            path: self.origin.to_string(),
            message: format!("line {}: {entry}: {message}", line_of(self.text, at)),
        }
    }

    fn currency(&self, s: &Spanned<String>, entry: &str, field: &str) -> Result<String> {
        let c = s.get_ref();
        if minor_units(c).is_none() {
            let hint = if c.len() == 3
                && c.bytes().all(|b| b.is_ascii_alphabetic())
                && minor_units(&c.to_ascii_uppercase()).is_some()
            {
                format!("; codes are upper case (\"{}\")", c.to_ascii_uppercase())
            } else {
                String::new()
            };
            return Err(self.err(
                s.span().start,
                entry,
                format!(
                    "`{field}` {c:?} is not a known ISO 4217 currency code (e.g. \"USD\", \"CNY\"){hint}"
                ),
            ));
        }
        Ok(c.clone())
    }

    /// A contract time: invoices price usage per UTC hour, so contract terms change on whole
    /// UTC hours.
    fn hour(&self, s: &Spanned<String>, entry: &str, field: &str) -> Result<DateTime<Utc>> {
        let t = self.time(s, entry, field)?;
        if t.timestamp() % 3600 != 0 {
            return Err(self.err(
                s.span().start,
                entry,
                format!(
                    "`{field}` {t} is not on a whole UTC hour: contract terms change on whole hours (invoices price usage per UTC hour)"
                ),
            ));
        }
        Ok(t)
    }

    fn time(&self, s: &Spanned<String>, entry: &str, field: &str) -> Result<DateTime<Utc>> {
        parse_time(s.get_ref()).ok_or_else(|| {
            self.err(
                s.span().start,
                entry,
                format!(
                    "`{field}` {:?} must be an RFC 3339 time with offset, e.g. \"2025-04-14T00:00:00Z\"",
                    s.get_ref()
                ),
            )
        })
    }

    /// Parse `[[price]]` entries (list or one tenant's overrides) into a validated table.
    fn prices(&self, files: Vec<PriceFile>, what: &str, contract: bool) -> Result<PriceTable> {
        let mut table = PriceTable::default();
        for p in files {
            let entry = format!("{what} {}/{}", p.provider.get_ref(), p.model);
            let start = p.provider.span().start;
            if p.provider.get_ref().is_empty() || p.model.is_empty() {
                return Err(self.err(start, &entry, "provider and model must not be empty".into()));
            }
            let price = |name: &str, s: &Spanned<String>| {
                parse_price(s.get_ref())
                    .map_err(|m| self.err(s.span().start, &entry, format!("`{name}` = {m}")))
            };
            let input = price("input", &p.input)?;
            let output = price("output", &p.output)?;
            let opt = |name: &str, s: &Option<Spanned<String>>, default: i64| match s {
                Some(s) => price(name, s),
                None => Ok(default),
            };
            let rates = Rates([
                input,
                opt("cache_read", &p.cache_read, input)?,
                opt("cache_write", &p.cache_write, input)?,
                output,
                opt("reasoning", &p.reasoning, output)?,
            ]);
            let time = |s: &Spanned<String>, field: &str| {
                if contract {
                    self.hour(s, &entry, field)
                } else {
                    self.time(s, &entry, field)
                }
            };
            let effective_from = time(&p.effective_from, "effective_from")?;
            let effective_to = match &p.effective_to {
                Some(s) => {
                    let to = time(s, "effective_to")?;
                    if to <= effective_from {
                        return Err(self.err(
                            s.span().start,
                            &entry,
                            format!(
                                "effective_to {to} is not after effective_from {effective_from}"
                            ),
                        ));
                    }
                    Some(to)
                }
                None => None,
            };
            let currency = match &p.currency {
                Some(c) => self.currency(c, &entry, "currency")?,
                None => self.default_currency.clone(),
            };
            table
                .0
                .entry(p.provider.get_ref().clone())
                .or_default()
                .entry(p.model.clone())
                .or_default()
                .push(PriceEntry {
                    provider: p.provider.into_inner(),
                    model: p.model,
                    effective_from,
                    effective_to,
                    currency,
                    rates,
                    line: line_of(self.text, start),
                });
        }
        for list in table.0.values_mut().flat_map(HashMap::values_mut) {
            list.sort_by_key(|e| e.effective_from);
            for w in list.windows(2) {
                let (a, b) = (&w[0], &w[1]);
                let entry = format!("{what} {}/{}", b.provider, b.model);
                if a.effective_from == b.effective_from {
                    return Err(Error::PriceBook {
                        path: self.origin.to_string(),
                        message: format!(
                            "line {}: {entry}: two entries are effective from {} (the other is on line {})",
                            b.line, b.effective_from, a.line
                        ),
                    });
                }
                if let Some(to) = a.effective_to.filter(|&to| to > b.effective_from) {
                    return Err(Error::PriceBook {
                        path: self.origin.to_string(),
                        message: format!(
                            "line {}: {entry}: effective ranges overlap: the entry on line {} runs until {to}, after this one starts at {}",
                            b.line, a.line, b.effective_from
                        ),
                    });
                }
            }
        }
        Ok(table)
    }

    fn fx(&self, files: Vec<FxFile>) -> Result<HashMap<(String, String), Vec<FxRate>>> {
        let mut fx: HashMap<(String, String), Vec<FxRate>> = HashMap::new();
        for f in files {
            let entry = format!("[[fx]] {}→{}", f.from.get_ref(), f.to);
            let from = self.currency(&f.from, &entry, "from")?;
            let to_span = Spanned::new(f.from.span(), f.to.clone());
            let to = self.currency(&to_span, &entry, "to")?;
            if from == to {
                return Err(self.err(
                    f.from.span().start,
                    &entry,
                    "`from` and `to` are the same currency (its rate is 1 by definition)".into(),
                ));
            }
            let rate = parse_scaled(f.rate.get_ref(), FX_SCALE, "0.1408")
                .map_err(|m| self.err(f.rate.span().start, &entry, format!("`rate` = {m}")))?;
            if rate == 0 {
                return Err(self.err(f.rate.span().start, &entry, "`rate` must be above 0".into()));
            }
            let effective =
                NaiveDate::parse_from_str(f.effective.get_ref(), "%Y-%m-%d").map_err(|_| {
                    self.err(
                        f.effective.span().start,
                        &entry,
                        format!(
                            "`effective` {:?} must be a date, e.g. \"2026-10-01\"",
                            f.effective.get_ref()
                        ),
                    )
                })?;
            let list = fx.entry((from.clone(), to.clone())).or_default();
            if list.iter().any(|r| r.effective == effective) {
                return Err(self.err(
                    f.effective.span().start,
                    &entry,
                    format!("two rates of {from}→{to} are effective on {effective}"),
                ));
            }
            list.push(FxRate {
                from,
                to,
                effective,
                rate,
            });
        }
        for list in fx.values_mut() {
            list.sort_by_key(|r| r.effective);
        }
        Ok(fx)
    }

    fn tenant(&self, t: TenantFile) -> Result<Contract> {
        let id = t.id.get_ref().clone();
        let who = format!("[[tenant]] {id}");
        if id.is_empty() {
            return Err(self.err(t.id.span().start, &who, "`id` must not be empty".into()));
        }
        let billing_currency = match &t.billing_currency {
            Some(c) => Some(self.currency(c, &who, "billing_currency")?),
            None => None,
        };
        let overrides = self.prices(t.price, &format!("{who} [[tenant.price]]"), true)?;
        let mut discounts = Vec::new();
        for d in t.discount {
            let at = d.percent.span().start;
            let scope = match (&d.provider, &d.model) {
                (Some(p), Some(m)) => format!("{p}/{m}"),
                (Some(p), None) => format!("{p}/*"),
                (None, None) => "all models".into(),
                (None, Some(_)) => {
                    return Err(self.err(
                        at,
                        &format!("{who} [[tenant.discount]]"),
                        "`model` needs `provider` (model names are per provider)".into(),
                    ));
                }
            };
            let entry = format!("{who} [[tenant.discount]] {scope}");
            let percent = parse_percent(d.percent.get_ref())
                .map_err(|m| self.err(at, &entry, format!("`percent` = {m}")))?;
            let from = d
                .effective_from
                .as_ref()
                .map(|s| self.hour(s, &entry, "effective_from"))
                .transpose()?;
            let to = d
                .effective_to
                .as_ref()
                .map(|s| self.hour(s, &entry, "effective_to"))
                .transpose()?;
            if let (Some(f), Some(e)) = (from, to)
                && e <= f
            {
                return Err(self.err(
                    at,
                    &entry,
                    format!("effective_to {e} is not after effective_from {f}"),
                ));
            }
            let new = Discount {
                provider: d.provider,
                model: d.model,
                from,
                to,
                percent,
                line: line_of(self.text, at),
            };
            if let Some(old) = discounts.iter().find(|o: &&Discount| {
                o.provider == new.provider
                    && o.model == new.model
                    && o.from.is_none_or(|of| new.to.is_none_or(|nt| of < nt))
                    && new.from.is_none_or(|nf| o.to.is_none_or(|ot| nf < ot))
            }) {
                return Err(self.err(
                    at,
                    &entry,
                    format!(
                        "effective ranges overlap with the discount of the same scope on line {}",
                        old.line
                    ),
                ));
            }
            discounts.push(new);
        }
        let mut tiers: Vec<Tier> = Vec::new();
        for tf in t.tier {
            let at = tf.provider.span().start;
            let scope = match &tf.model {
                Some(m) => format!("{}/{m}", tf.provider.get_ref()),
                None => format!("{}/*", tf.provider.get_ref()),
            };
            let entry = format!("{who} [[tenant.tier]] {scope}");
            let err = |m: String| self.err(at, &entry, m);
            let token_types = match &tf.token_types {
                None => [true; 5],
                Some(list) => {
                    let mut set = [false; 5];
                    for name in list {
                        let i = Buckets::NAMES
                            .iter()
                            .position(|b| b == name)
                            .ok_or_else(|| {
                                err(format!(
                                    "token type {name:?} is not one of {}",
                                    Buckets::NAMES.join(", ")
                                ))
                            })?;
                        set[i] = true;
                    }
                    if list.is_empty() {
                        return Err(err("`token_types` is empty".into()));
                    }
                    set
                }
            };
            let mode = match tf.mode.as_deref() {
                None | Some("graduated") => TierMode::Graduated,
                Some("volume") => TierMode::Volume,
                Some(m) => {
                    return Err(err(format!(
                        "`mode` {m:?} must be \"graduated\" or \"volume\""
                    )));
                }
            };
            if tf.bands.is_empty() {
                return Err(err("a tier needs at least one band".into()));
            }
            let mut bands = Vec::new();
            let mut next_from = 0u64;
            let n = tf.bands.len();
            for (i, b) in tf.bands.iter().enumerate() {
                let from = b.from.unwrap_or(next_from);
                if from != next_from {
                    let rule = if from > next_from { "gap" } else { "overlap" };
                    return Err(err(format!(
                        "band {} starts at {from} but the previous band ends at {next_from}: bands must not {} (a {rule})",
                        i + 1,
                        if from > next_from {
                            "leave gaps"
                        } else {
                            "overlap"
                        }
                    )));
                }
                match (b.up_to, i + 1 == n) {
                    (Some(u), _) if u <= from => {
                        return Err(err(format!(
                            "band {} ends at {u}, not after its start {from}",
                            i + 1
                        )));
                    }
                    (Some(_), true) => {
                        return Err(err(format!(
                            "the last band ({}) must be open: drop its `up_to` so every token of the month has a price",
                            i + 1
                        )));
                    }
                    (None, false) => {
                        return Err(err(format!(
                            "band {} has no `up_to`; only the last band may be open",
                            i + 1
                        )));
                    }
                    _ => {}
                }
                let percent = parse_percent(&b.discount)
                    .map_err(|m| err(format!("band {} `discount` = {m}", i + 1)))?;
                bands.push(Band {
                    from,
                    up_to: b.up_to,
                    percent,
                });
                next_from = b.up_to.unwrap_or(u64::MAX);
            }
            let tier = Tier {
                provider: tf.provider.into_inner(),
                model: tf.model,
                token_types,
                mode,
                bands,
                line: line_of(self.text, at),
            };
            for o in &tiers {
                let models_meet =
                    o.model.is_none() || tier.model.is_none() || o.model == tier.model;
                let types_meet = (0..5).any(|b| o.token_types[b] && tier.token_types[b]);
                if o.provider == tier.provider && models_meet && types_meet {
                    return Err(err(format!(
                        "overlaps the tier on line {}: a token may count toward one tier only",
                        o.line
                    )));
                }
            }
            tiers.push(tier);
        }
        let mut budgets: Vec<Budget> = Vec::new();
        for b in t.budget {
            let at = b.amount.span().start;
            let entry = format!(
                "{who} [[tenant.budget]]{}",
                b.agent
                    .as_deref()
                    .map(|a| format!(" agent {a}"))
                    .unwrap_or_default()
            );
            let amount = parse_money(b.amount.get_ref())
                .map_err(|m| self.err(at, &entry, format!("`amount` = {m}")))?;
            if amount == 0 {
                return Err(self.err(at, &entry, "`amount` must be above 0".into()));
            }
            let thresholds = b.thresholds.unwrap_or_else(|| vec![50, 80, 100]);
            if thresholds.is_empty()
                || thresholds.windows(2).any(|w| w[0] >= w[1])
                || thresholds[0] == 0
            {
                return Err(self.err(
                    at,
                    &entry,
                    format!("`thresholds` {thresholds:?} must be ascending percentages above 0"),
                ));
            }
            if budgets.iter().any(|o| o.agent == b.agent) {
                return Err(self.err(at, &entry, "a second budget for the same scope".into()));
            }
            budgets.push(Budget {
                agent: b.agent,
                amount,
                thresholds,
            });
        }
        Ok(Contract {
            tenant: id,
            billing_currency,
            overrides,
            discounts,
            tiers,
            budgets,
        })
    }
}

impl PriceBook {
    /// Load and validate a book from a file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::PriceBook {
            path: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate a book; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let file: BookFile = toml::from_str(text).map_err(|e| Error::PriceBook {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut loader = Loader {
            text,
            origin,
            default_currency: String::new(),
        };
        let currency = loader.currency(&file.currency, "book", "currency")?;
        loader.default_currency = currency.clone();
        let list = loader.prices(file.price, "[[price]]", false)?;
        let fx = loader.fx(file.fx)?;
        let mut contracts = BTreeMap::new();
        for t in file.tenant {
            let at = t.id.span().start;
            let c = loader.tenant(t)?;
            if contracts.contains_key(&c.tenant) {
                return Err(loader.err(
                    at,
                    &format!("[[tenant]] {}", c.tenant),
                    "a second contract for the same tenant".into(),
                ));
            }
            contracts.insert(c.tenant.clone(), c);
        }
        let hash = twox_hash::XxHash3_128::oneshot(text.as_bytes());
        Ok(Self {
            currency,
            origin: origin.to_string(),
            hash: format!("{hash:032x}"),
            list,
            fx,
            contracts,
        })
    }

    /// The list entry in force at `time`.
    pub fn lookup(&self, provider: &str, model: &str, time: DateTime<Utc>) -> Option<&PriceEntry> {
        self.list.lookup(provider, model, time)
    }

    /// The list prices.
    pub fn list(&self) -> &PriceTable {
        &self.list
    }

    /// The contract of `tenant`, if it has one.
    pub fn contract(&self, tenant: &str) -> Option<&Contract> {
        self.contracts.get(tenant)
    }

    /// Every contract, by tenant.
    pub fn contracts(&self) -> impl Iterator<Item = &Contract> {
        self.contracts.values()
    }

    /// The currency `tenant` is billed in.
    pub fn billing_currency(&self, tenant: &str) -> &str {
        self.contract(tenant)
            .and_then(|c| c.billing_currency.as_deref())
            .unwrap_or(&self.currency)
    }

    /// The price of `tenant`'s usage of (provider, model) at `time`: its contract's override if
    /// one is in force, else the list price.
    pub fn tenant_price(
        &self,
        tenant: &str,
        provider: &str,
        model: &str,
        time: DateTime<Utc>,
    ) -> Option<(&PriceEntry, PriceSource)> {
        if let Some(e) = self
            .contract(tenant)
            .and_then(|c| c.overrides.lookup(provider, model, time))
        {
            return Some((e, PriceSource::Override));
        }
        self.lookup(provider, model, time)
            .map(|e| (e, PriceSource::List))
    }

    /// The rate converting `from` into `to` on `date` (units of 10⁻⁸): 1 for the same currency,
    /// else the latest rate of the pair effective on or before `date`. A missing rate is an
    /// error naming the pair and the date — never a silent 1.
    pub fn fx_rate(&self, from: &str, to: &str, date: NaiveDate) -> Result<i64> {
        if from == to {
            return Ok(10i64.pow(FX_SCALE));
        }
        self.fx_entry(from, to, date)
            .map(|r| r.rate)
            .ok_or_else(|| Error::MissingFx {
                from: from.to_string(),
                to: to.to_string(),
                date,
                origin: self.origin.clone(),
            })
    }

    /// The rate entry of `from`→`to` in force on `date`.
    pub fn fx_entry(&self, from: &str, to: &str, date: NaiveDate) -> Option<&FxRate> {
        let list = self.fx.get(&(from.to_string(), to.to_string()))?;
        let idx = list.partition_point(|r| r.effective <= date);
        idx.checked_sub(1).map(|i| &list[i])
    }

    /// Number of list entries.
    pub fn len(&self) -> usize {
        self.list.entries().count()
    }

    /// Whether the book has no list entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All list entries.
    pub fn entries(&self) -> impl Iterator<Item = &PriceEntry> {
        self.list.entries()
    }
}

/// Midnight UTC of a date.
pub fn date_start(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOK: &str = r#"
currency = "USD"
[[price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2025-04-14T00:00:00Z"
input = "2.00"
cache_read = "0.50"
output = "8.00"

[[price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2025-09-01T00:00:00Z"
input = "1.5"
output = "6"

[[price]]
provider = "tiny"
model = "m"
effective_from = "2025-01-01T00:00:00Z"
input = "0.000001"
output = "0"
"#;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn entry_in_force_and_defaults() {
        let b = PriceBook::parse(BOOK, "test").unwrap();
        assert!(
            b.lookup("openai", "gpt-4.1", t("2025-04-13T23:59:59Z"))
                .is_none()
        );
        let e = b
            .lookup("openai", "gpt-4.1", t("2025-04-14T00:00:00Z"))
            .unwrap();
        // cache_write defaults to input, reasoning to output.
        assert_eq!(
            e.rates,
            Rates([2_000_000, 500_000, 2_000_000, 8_000_000, 8_000_000])
        );
        let e = b
            .lookup("openai", "gpt-4.1", t("2026-01-01T00:00:00Z"))
            .unwrap();
        assert_eq!(
            e.rates,
            Rates([1_500_000, 1_500_000, 1_500_000, 6_000_000, 6_000_000])
        );
    }

    #[test]
    fn one_token_at_the_smallest_price_is_exact() {
        let b = PriceBook::parse(BOOK, "test").unwrap();
        let e = b.lookup("tiny", "m", t("2025-06-01T00:00:00Z")).unwrap();
        let costs = e.rates.costs(&Buckets {
            uncached_input: 1,
            ..Default::default()
        });
        // 1 token × 0.000001 per million = 1e-12 exactly: one unit at scale 12.
        assert_eq!(costs, [1, 0, 0, 0, 0]);
        assert_eq!(format_money(costs[0]), "0.000000000001");
    }

    #[test]
    fn seven_decimal_places_are_rejected_with_the_line() {
        let bad = "currency = \"USD\"\n[[price]]\nprovider = \"a\"\nmodel = \"b\"\neffective_from = \"2025-01-01T00:00:00Z\"\ninput = \"0.0000001\"\noutput = \"1\"\n";
        let e = PriceBook::parse(bad, "bad.toml").unwrap_err().to_string();
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("7 decimal places"), "{e}");
        // Trailing zeros are not extra precision.
        assert_eq!(parse_price("2.5000000000"), Ok(2_500_000));
        // Too large for micro-units (even for a Decimal once scaled): an error, not a panic.
        assert!(parse_price("99999999999999999999999999").is_err());
        assert!(parse_price("9223372036854.775808").is_err());
    }

    #[test]
    fn the_example_books_load() {
        for (text, cur) in [
            (include_str!("../../schemas/prices.example.toml"), "USD"),
            (include_str!("../../schemas/prices.example.cny.toml"), "CNY"),
        ] {
            let b = PriceBook::parse(text, "example").unwrap();
            assert_eq!(b.currency, cur);
            assert!(b.len() >= 8);
        }
        let b =
            PriceBook::parse(include_str!("../../schemas/prices.example.v2.toml"), "v2").unwrap();
        assert_eq!(b.billing_currency("acme"), "CNY");
        assert_eq!(b.contract("acme").unwrap().tiers.len(), 1);
    }

    #[test]
    fn unknown_keys_and_bad_currency_are_rejected() {
        assert!(PriceBook::parse("currency = \"USD\"\nfoo = 1\n", "x").is_err());
        assert!(PriceBook::parse("currency = \"usd\"\n", "x").is_err());
    }
    const V2: &str = r#"
currency = "USD"

[[price]]
provider = "deepseek"
model = "deepseek-chat"
currency = "CNY"
effective_from = "2026-01-01T00:00:00Z"
effective_to = "2026-06-01T00:00:00Z"
input = "2"
output = "8"

[[price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2025-04-14T00:00:00Z"
input = "2.00"
output = "8.00"

[[fx]]
from = "CNY"
to = "USD"
rate = "0.14"
effective = "2026-01-01"

[[fx]]
from = "CNY"
to = "USD"
rate = "0.1425"
effective = "2026-03-01"

[[tenant]]
id = "acme"
billing_currency = "CNY"

[[tenant.price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2026-02-01T00:00:00Z"
input = "1.00"
output = "4.00"

[[tenant.discount]]
percent = "5"

[[tenant.discount]]
provider = "openai"
percent = "12.5"

[[tenant.tier]]
provider = "openai"
model = "gpt-4.1"
token_types = ["output"]
bands = [{ up_to = 100000000, discount = "0" }, { discount = "20" }]

[[tenant.budget]]
amount = "5000"
"#;

    fn book_err(text: &str) -> String {
        PriceBook::parse(text, "b.toml").unwrap_err().to_string()
    }

    #[test]
    fn v2_currency_ranges_fx_and_contracts() {
        let b = PriceBook::parse(V2, "v2").unwrap();
        let e = b
            .lookup("deepseek", "deepseek-chat", t("2026-05-31T23:59:59Z"))
            .unwrap();
        assert_eq!(e.currency, "CNY");
        // effective_to is exclusive and leaves a gap.
        assert!(
            b.lookup("deepseek", "deepseek-chat", t("2026-06-01T00:00:00Z"))
                .is_none()
        );
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            b.fx_rate("CNY", "USD", d("2026-02-28")).unwrap(),
            14_000_000
        );
        assert_eq!(
            b.fx_rate("CNY", "USD", d("2026-03-01")).unwrap(),
            14_250_000
        );
        assert_eq!(
            b.fx_rate("USD", "USD", d("2020-01-01")).unwrap(),
            100_000_000
        );
        let e = b
            .fx_rate("USD", "CNY", d("2026-03-01"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("USD→CNY") && e.contains("2026-03-01"), "{e}");
        let e = b
            .fx_rate("CNY", "USD", d("2025-12-31"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2025-12-31"), "{e}");

        assert_eq!(b.billing_currency("acme"), "CNY");
        assert_eq!(b.billing_currency("other"), "USD");
        let (p, src) = b
            .tenant_price("acme", "openai", "gpt-4.1", t("2026-02-01T00:00:00Z"))
            .unwrap();
        assert_eq!((p.rates.0[0], src), (1_000_000, PriceSource::Override));
        let (p, src) = b
            .tenant_price("acme", "openai", "gpt-4.1", t("2026-01-31T23:00:00Z"))
            .unwrap();
        assert_eq!((p.rates.0[0], src), (2_000_000, PriceSource::List));
        let c = b.contract("acme").unwrap();
        let now = t("2026-02-01T00:00:00Z");
        // The most specific discount applies.
        assert_eq!(c.discount("openai", "gpt-4.1", now).unwrap().percent, 1250);
        assert_eq!(
            c.discount("deepseek", "deepseek-chat", now)
                .unwrap()
                .percent,
            500
        );
        assert!(c.tier("openai", "gpt-4.1", 3).is_some());
        assert!(c.tier("openai", "gpt-4.1", 0).is_none());
        assert_eq!(c.budgets[0].thresholds, [50, 80, 100]);
        assert_eq!(c.budgets[0].amount, 5000 * 10i128.pow(12));
    }

    #[test]
    fn v2_rules_name_the_entry_and_the_rule() {
        let overlap = V2.replace(
            "effective_from = \"2025-04-14T00:00:00Z\"\ninput = \"2.00\"",
            "effective_from = \"2025-04-14T00:00:00Z\"\neffective_to = \"2027-01-01T00:00:00Z\"\ninput = \"2.00\"",
        ) + "\n[[price]]\nprovider = \"openai\"\nmodel = \"gpt-4.1\"\neffective_from = \"2026-01-01T00:00:00Z\"\ninput = \"1\"\noutput = \"1\"\n";
        let e = book_err(&overlap);
        assert!(e.contains("overlap") && e.contains("openai/gpt-4.1"), "{e}");
        let e = book_err(&V2.replace(
            "currency = \"CNY\"\neffective_from",
            "currency = \"XYZ\"\neffective_from",
        ));
        assert!(e.contains("\"XYZ\" is not a known ISO 4217"), "{e}");
        assert!(e.contains("line 7") && !e.contains("upper case"), "{e}");
        let e = book_err(&V2.replace("input = \"2\"", "input = \"-2\""));
        assert!(
            e.contains("negative") && e.contains("deepseek/deepseek-chat"),
            "{e}"
        );
        let e = book_err(&V2.replace(
            "{ discount = \"20\" }",
            "{ from = 200000000, discount = \"20\" }",
        ));
        assert!(e.contains("gap"), "{e}");
        let e = book_err(&V2.replace(
            "{ discount = \"20\" }",
            "{ up_to = 300000000, discount = \"20\" }",
        ));
        assert!(e.contains("must be open"), "{e}");
        let e = book_err(&V2.replace("rate = \"0.14\"", "rate = \"0\""));
        assert!(e.contains("above 0"), "{e}");
        let e = book_err(&V2.replace("percent = \"5\"", "percent = \"105\""));
        assert!(e.contains("over 100"), "{e}");
        let e = book_err(
            &(V2.to_string()
                + "\n[[tenant.tier]]\nprovider = \"openai\"\nbands = [{ discount = \"1\" }]\n"),
        );
        assert!(e.contains("a token may count toward one tier only"), "{e}");
        let e = book_err(&V2.replace("effective = \"2026-03-01\"", "effective = \"2026-01-01\""));
        assert!(e.contains("two rates"), "{e}");
    }
}
