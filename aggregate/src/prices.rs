//! Price book v1 and exact cost arithmetic.
//!
//! A book is TOML with one currency and `[[price]]` entries per (provider, model), each in force
//! from its `effective_from`. Prices are per million tokens with at most 6 decimal places, held as
//! integer micro-units; the cost of `n` tokens at `p` micro-units per million is `n × p` units of
//! 10⁻¹², i.e. exactly a Decimal128(38, 12) — no division, no rounding, no floats.
//!
//! Not here: currencies conversion, contracts, tiers (a later price book version).

use crate::{Error, Result};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;
use std::collections::HashMap;
use std::str::FromStr;
use tokenmeter_schemas::Buckets;

/// Money at scale 12 (units of 10⁻¹²): the unscaled value of a Decimal128(38, 12).
pub type Money = i128;

/// Decimal places a price may have.
pub const PRICE_SCALE: u32 = 6;

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

/// One price-book entry in force from `effective_from` until the next entry of the same model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceEntry {
    pub provider: String,
    pub model: String,
    pub effective_from: DateTime<Utc>,
    pub rates: Rates,
}

/// A loaded, validated price book.
#[derive(Debug, Clone)]
pub struct PriceBook {
    pub currency: String,
    /// Entries per provider, then model, each list sorted by `effective_from`. Nested maps so a
    /// lookup by `&str` allocates nothing.
    entries: HashMap<String, HashMap<String, Vec<PriceEntry>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    /// ISO 4217 code of every price in the book.
    currency: String,
    #[serde(default)]
    price: Vec<PriceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    provider: String,
    model: String,
    effective_from: toml::Spanned<String>,
    /// Per million uncached input tokens.
    input: toml::Spanned<String>,
    /// Per million cache-read tokens; default: `input`.
    cache_read: Option<toml::Spanned<String>>,
    /// Per million cache-write tokens; default: `input`.
    cache_write: Option<toml::Spanned<String>>,
    /// Per million output tokens (reasoning excluded).
    output: toml::Spanned<String>,
    /// Per million reasoning tokens; default: `output`.
    reasoning: Option<toml::Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parse a per-million price into micro-units, rejecting more than [`PRICE_SCALE`] places.
pub fn parse_price(s: &str) -> std::result::Result<i64, String> {
    let d = Decimal::from_str(s.trim()).map_err(|_| {
        format!("{s:?} is not a decimal number (write prices as strings, e.g. \"2.50\")")
    })?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(format!("{s:?} is negative"));
    }
    let n = d.normalize();
    if n.scale() > PRICE_SCALE {
        return Err(format!(
            "{s:?} has {} decimal places; at most {PRICE_SCALE} are allowed",
            n.scale()
        ));
    }
    n.checked_mul(Decimal::from(1_000_000u32))
        .and_then(|m| m.to_i64())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Format micro-units as a decimal string with 6 places.
pub fn format_micro(v: i64) -> String {
    Decimal::new(v, PRICE_SCALE).to_string()
}

/// Format money (units of 10⁻¹²) as a decimal string with 12 places.
pub fn format_money(v: Money) -> String {
    Decimal::from_i128_with_scale(v, 12).to_string()
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
        let err = |message: String| Error::PriceBook {
            path: origin.to_string(),
            message,
        };
        let file: BookFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let cur = &file.currency;
        if cur.len() != 3 || !cur.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(format!(
                "currency {cur:?} must be an ISO 4217 code like \"USD\" or \"CNY\""
            )));
        }
        let mut entries: HashMap<String, HashMap<String, Vec<PriceEntry>>> = HashMap::new();
        for p in file.price {
            let at = |s: &toml::Spanned<String>| line_of(text, s.span().start);
            let price = |name: &str, s: &toml::Spanned<String>| {
                parse_price(s.get_ref()).map_err(|m| {
                    err(format!(
                        "line {}: {}/{} `{name}` = {m}",
                        at(s),
                        p.provider,
                        p.model
                    ))
                })
            };
            if p.provider.is_empty() || p.model.is_empty() {
                return Err(err(format!(
                    "line {}: provider and model must not be empty",
                    at(&p.input)
                )));
            }
            let input = price("input", &p.input)?;
            let output = price("output", &p.output)?;
            let opt = |name: &str, s: &Option<toml::Spanned<String>>, default: i64| match s {
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
            let effective_from = DateTime::parse_from_rfc3339(p.effective_from.get_ref())
                .map_err(|_| {
                    err(format!(
                        "line {}: effective_from {:?} must be an RFC 3339 time with offset, e.g. \"2025-04-14T00:00:00Z\"",
                        at(&p.effective_from),
                        p.effective_from.get_ref()
                    ))
                })?
                .with_timezone(&Utc);
            let list = entries
                .entry(p.provider.clone())
                .or_default()
                .entry(p.model.clone())
                .or_default();
            if list.iter().any(|e| e.effective_from == effective_from) {
                return Err(err(format!(
                    "line {}: {}/{} has two entries effective from {effective_from}",
                    at(&p.effective_from),
                    p.provider,
                    p.model
                )));
            }
            list.push(PriceEntry {
                provider: p.provider,
                model: p.model,
                effective_from,
                rates,
            });
        }
        for list in entries.values_mut().flat_map(HashMap::values_mut) {
            list.sort_by_key(|e| e.effective_from);
        }
        Ok(Self {
            currency: file.currency,
            entries,
        })
    }

    /// The entry in force at `time`: the latest `effective_from` ≤ `time`.
    pub fn lookup(&self, provider: &str, model: &str, time: DateTime<Utc>) -> Option<&PriceEntry> {
        let list = self.entries.get(provider)?.get(model)?;
        let idx = list.partition_point(|e| e.effective_from <= time);
        idx.checked_sub(1).map(|i| &list[i])
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// Whether the book has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, grouped by model, each group by time.
    pub fn entries(&self) -> impl Iterator<Item = &PriceEntry> {
        self.entries.values().flat_map(HashMap::values).flatten()
    }
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
    }

    #[test]
    fn unknown_keys_and_bad_currency_are_rejected() {
        assert!(PriceBook::parse("currency = \"USD\"\nfoo = 1\n", "x").is_err());
        assert!(PriceBook::parse("currency = \"usd\"\n", "x").is_err());
    }
}
