//! Rating: a tenant's usage of one month, priced by its contract, as invoice lines — pure.
//!
//! Input is the tenant's usage in [`Segment`]s: one UTC hour of one (provider, model), priced by
//! one list entry, with the list cost the lake holds for it (after any restatement). Each
//! segment's tokens of each bucket are priced:
//!
//! 1. **Unit price**: the contract's override in force at the hour ([`PriceBook::tenant_price`]),
//!    else the list price, which is the lake's list cost divided by the tokens (exact: the lake
//!    priced them all at one entry);
//! 2. **FX**: converted into the tenant's billing currency at the rate in force on the hour's
//!    UTC date; a missing rate is an error naming pair and date;
//! 3. **Discount**: the contract's most specific percentage discount in force at the hour;
//! 4. **Tier**: the contract's committed-use tier of the bucket, on the month's tokens in
//!    chronological order (graduated) or on the month's total (volume); the tier discount
//!    compounds with the contract discount.
//!
//! Pieces with the same (provider, model, bucket, source, unit price, currency, FX rate,
//! discount, tier band) form one [`Line`]. A line's amount is exact until the end — scale 28:
//! tokens × price (scale 12) × FX (10⁻⁸) × (1 − discount) (10⁻⁴) × (1 − tier discount) (10⁻⁴) —
//! and is rounded half-even to the billing currency's minor unit once, at the line. The total is
//! the sum of the rounded lines.
//!
//! Not here: reading usage from the lake (`tokenmeter-query`'s invoice) and output formats.

use crate::prices::{
    Money, PERCENT_SCALE, PriceBook, PriceSource, Tier, TierMode, format_fx, format_percent,
    minor_units,
};
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tokenmeter_schemas::Buckets;

/// Scale of a line's exact amount: 12 (money) + 8 (FX) + 4 + 4 (two discounts).
pub const EXACT_SCALE: u32 = 28;

/// The list price the lake applied to a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCost {
    pub currency: String,
    pub effective_from: DateTime<Utc>,
    /// Cost per bucket, scale 12.
    pub costs: [Money; 5],
}

/// A tenant's usage of one (provider, model) in one UTC hour, priced by one list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Start of the UTC hour.
    pub hour: DateTime<Utc>,
    pub provider: String,
    pub model: String,
    /// Billable tokens per bucket, `Buckets::NAMES` order.
    pub tokens: [i64; 5],
    /// `None`: no list price covered this usage.
    pub list: Option<ListCost>,
}

/// The band of a tier a line's tokens fell in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TierBand {
    /// The tier's scope, `provider/model` or `provider/*`.
    pub scope: String,
    /// 1-based band number.
    pub band: usize,
    pub from: u64,
    pub up_to: Option<u64>,
    /// Percent off, scale 2.
    pub percent: i64,
    pub volume: bool,
}

impl TierBand {
    /// e.g. `openai/gpt-4.1 band 2 [100000000, ∞) −20%`.
    pub fn label(&self) -> String {
        let up = self.up_to.map_or("∞".to_string(), |u| u.to_string());
        format!(
            "{} {}band {} [{}, {up}) -{}%",
            self.scope,
            if self.volume { "volume " } else { "" },
            self.band,
            self.from,
            format_percent(self.percent)
        )
    }
}

/// What makes two pieces one invoice line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineKey {
    pub provider: String,
    pub model: String,
    /// Index in `Buckets::NAMES`.
    pub bucket: usize,
    pub tier: Option<TierBand>,
    /// Per million tokens, micro-units of `price_currency`.
    pub unit_price: i64,
    pub price_currency: String,
    pub contract_price: bool,
    /// Units of 10⁻⁸; 10⁸ when no conversion.
    pub fx_rate: i64,
    /// Contract discount, percent at scale 2.
    pub discount: i64,
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub key: LineKey,
    pub tokens: i64,
    /// Exact amount at [`EXACT_SCALE`], billing currency.
    pub exact: i128,
    /// Rounded half-even to the minor unit of the billing currency.
    pub amount: i128,
}

impl Line {
    pub fn token_type(&self) -> &'static str {
        Buckets::NAMES[self.key.bucket]
    }
    pub fn unit_price_str(&self) -> String {
        Decimal::new(self.key.unit_price, 6).normalize().to_string()
    }
    pub fn fx_str(&self) -> String {
        format_fx(self.key.fx_rate)
    }
    pub fn discount_str(&self) -> String {
        format_percent(self.key.discount)
    }
}

/// A tenant's rated usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub tenant: String,
    /// Billing currency.
    pub currency: String,
    /// Its minor units: amounts are integers at this scale.
    pub minor: u32,
    pub lines: Vec<Line>,
    /// Sum of the lines' amounts.
    pub total: i128,
}

impl Invoice {
    /// Format an amount of this invoice (integer at `minor` scale).
    pub fn fmt_amount(&self, v: i128) -> String {
        Decimal::from_i128_with_scale(v, self.minor).to_string()
    }
}

/// Round an exact amount (scale [`EXACT_SCALE`]) half-even to `minor` places.
pub fn round_half_even(exact: i128, minor: u32) -> i128 {
    let d = 10i128.pow(EXACT_SCALE - minor);
    let q = exact.div_euclid(d);
    let r = exact.rem_euclid(d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

fn overflow(what: &str) -> Error {
    Error::Billing(format!(
        "{what}: the amount exceeds 10^10 units of the billing currency on one line; split the invoice period"
    ))
}

/// Exact amount of `tokens` at `unit_price` (micro per million), FX and two discounts.
fn exact_amount(tokens: i64, unit: i64, fx: i64, discount: i64, tier: i64) -> Option<i128> {
    let keep = |pct: i64| 10i128.pow(2 + PERCENT_SCALE) - pct as i128;
    (tokens as i128)
        .checked_mul(unit as i128)?
        .checked_mul(fx as i128)?
        .checked_mul(keep(discount))?
        .checked_mul(keep(tier))
}

struct Piece {
    key: LineKey,
    tokens: i64,
    tier: Option<usize>,
}

/// Rate a tenant's usage. Segments may come in any order.
pub fn rate(book: &PriceBook, tenant: &str, segments: &[Segment]) -> Result<Invoice> {
    let currency = book.billing_currency(tenant).to_string();
    let minor = minor_units(&currency).expect("validated on load");
    let contract = book.contract(tenant);
    let mut order: Vec<&Segment> = segments.iter().collect();
    order.sort_by(|a, b| {
        (
            a.hour,
            &a.provider,
            &a.model,
            a.list.as_ref().map(|l| l.effective_from),
        )
            .cmp(&(
                b.hour,
                &b.provider,
                &b.model,
                b.list.as_ref().map(|l| l.effective_from),
            ))
    });
    let mut pieces = Vec::new();
    for s in order {
        for b in 0..5 {
            let n = s.tokens[b];
            if n == 0 {
                continue;
            }
            let (unit, price_currency, contract_price) = match book.tenant_price(
                tenant,
                &s.provider,
                &s.model,
                s.hour,
            ) {
                Some((e, PriceSource::Override)) => (e.rates.0[b], e.currency.clone(), true),
                _ => {
                    let Some(l) = &s.list else {
                        return Err(Error::Billing(format!(
                            "tenant {tenant}: {n} {} tokens of {}/{} in the hour {} have no price: add a list price (or a contract price) for the model to the book, then run `tokenmeter reprice` for the period",
                            Buckets::NAMES[b],
                            s.provider,
                            s.model,
                            s.hour.format("%Y-%m-%d %H:00 UTC")
                        )));
                    };
                    let c = l.costs[b];
                    if c % n as i128 != 0 {
                        return Err(Error::Billing(format!(
                            "tenant {tenant}: the lake holds {}/{} tokens of the hour {} at more than one price under the entry effective from {} (the price book changed without a reprice): run `tokenmeter reprice` for the period",
                            s.provider,
                            s.model,
                            s.hour.format("%Y-%m-%d %H:00 UTC"),
                            l.effective_from
                        )));
                    }
                    ((c / n as i128) as i64, l.currency.clone(), false)
                }
            };
            let fx_rate = book.fx_rate(&price_currency, &currency, s.hour.date_naive())?;
            let discount = contract
                .and_then(|c| c.discount(&s.provider, &s.model, s.hour))
                .map_or(0, |d| d.percent);
            let tier = contract.and_then(|c| {
                c.tiers
                    .iter()
                    .position(|t| t.covers(&s.provider, &s.model, b))
            });
            pieces.push(Piece {
                key: LineKey {
                    provider: s.provider.clone(),
                    model: s.model.clone(),
                    bucket: b,
                    tier: None,
                    unit_price: unit,
                    price_currency,
                    contract_price,
                    fx_rate,
                    discount,
                },
                tokens: n,
                tier,
            });
        }
    }
    let mut lines: BTreeMap<LineKey, (i64, i128)> = BTreeMap::new();
    let mut add = |key: LineKey, tokens: i64, tier_pct: i64| -> Result<()> {
        let exact = exact_amount(tokens, key.unit_price, key.fx_rate, key.discount, tier_pct)
            .ok_or_else(|| overflow(&format!("{}/{}", key.provider, key.model)))?;
        let e = lines.entry(key).or_default();
        e.0 += tokens;
        e.1 = e.1.checked_add(exact).ok_or_else(|| overflow("a line"))?;
        Ok(())
    };
    let tiers: &[Tier] = contract.map_or(&[], |c| c.tiers.as_slice());
    // Month totals per tier, for volume tiers; running positions for graduated ones.
    let mut totals = vec![0u64; tiers.len()];
    for p in &pieces {
        if let Some(t) = p.tier {
            totals[t] += p.tokens as u64;
        }
    }
    let mut used = vec![0u64; tiers.len()];
    for p in pieces {
        let Some(ti) = p.tier else {
            add(p.key, p.tokens, 0)?;
            continue;
        };
        let tier = &tiers[ti];
        let band_at = |pos: u64| {
            tier.bands
                .iter()
                .position(|b| b.up_to.is_none_or(|u| pos < u))
                .expect("the last band is open")
        };
        let band_key = |i: usize| {
            let b = &tier.bands[i];
            TierBand {
                scope: tier.scope(),
                band: i + 1,
                from: b.from,
                up_to: b.up_to,
                percent: b.percent,
                volume: tier.mode == TierMode::Volume,
            }
        };
        match tier.mode {
            TierMode::Volume => {
                // The band of the month's last token.
                let i = band_at(totals[ti].saturating_sub(1));
                let mut key = p.key;
                key.tier = Some(band_key(i));
                add(key, p.tokens, tier.bands[i].percent)?;
            }
            TierMode::Graduated => {
                let mut left = p.tokens as u64;
                while left > 0 {
                    let i = band_at(used[ti]);
                    let room = tier.bands[i].up_to.map_or(u64::MAX, |u| u - used[ti]);
                    let take = left.min(room);
                    let mut key = p.key.clone();
                    key.tier = Some(band_key(i));
                    add(key, take as i64, tier.bands[i].percent)?;
                    used[ti] += take;
                    left -= take;
                }
            }
        }
    }
    let lines: Vec<Line> = lines
        .into_iter()
        .map(|(key, (tokens, exact))| Line {
            key,
            tokens,
            exact,
            amount: round_half_even(exact, minor),
        })
        .collect();
    let total = lines.iter().map(|l| l.amount).sum();
    Ok(Invoice {
        tenant: tenant.to_string(),
        currency,
        minor,
        lines,
        total,
    })
}

/// The lines `after` adds to `before` (usage that arrived after a month was closed): per line
/// key, the difference of tokens and of exact amounts, rounded once. Keys whose tokens and
/// amount do not change are left out.
pub fn delta(before: &Invoice, after: &Invoice) -> Vec<Line> {
    let mut map: BTreeMap<&LineKey, (i64, i128)> = BTreeMap::new();
    for l in &after.lines {
        let e = map.entry(&l.key).or_default();
        e.0 += l.tokens;
        e.1 += l.exact;
    }
    for l in &before.lines {
        let e = map.entry(&l.key).or_default();
        e.0 -= l.tokens;
        e.1 -= l.exact;
    }
    map.into_iter()
        .filter(|(_, (t, x))| *t != 0 || *x != 0)
        .map(|(k, (tokens, exact))| Line {
            key: k.clone(),
            tokens,
            exact,
            amount: round_half_even(exact, after.minor),
        })
        .collect()
}

/// The amount of one event in the tenant's billing currency at scale 12 (half-even): contract
/// or list price, FX of the event's UTC date, contract discount. Tiers are left out (they are
/// monthly): budgets use this, so a budget sees at most the real bill, never less.
pub fn event_amount(
    book: &PriceBook,
    tenant: &str,
    provider: &str,
    model: &str,
    time: DateTime<Utc>,
    buckets: &Buckets,
) -> Result<Option<Money>> {
    let Some((e, _)) = book.tenant_price(tenant, provider, model, time) else {
        return Ok(None);
    };
    let currency = book.billing_currency(tenant);
    let fx = book.fx_rate(&e.currency, currency, time.date_naive())?;
    let discount = book
        .contract(tenant)
        .and_then(|c| c.discount(provider, model, time))
        .map_or(0, |d| d.percent);
    let cost: Money = e.rates.costs(buckets).iter().sum();
    let exact = exact_amount(1, 1, fx, discount, 0)
        .and_then(|m| m.checked_mul(cost))
        .ok_or_else(|| overflow("an event"))?;
    // exact is at scale 12 + 8 + 4 + 4 = 28 (tokens × 1 × 1 carries the cost's 12); to 12.
    Ok(Some(round_half_even(exact, 12)))
}

/// The exact amount of a line key's unit, for explanations: price per million in the billing
/// currency after FX and discounts, as a decimal string.
pub fn effective_unit(key: &LineKey) -> String {
    let tier = key.tier.as_ref().map_or(0, |t| t.percent);
    let exact = exact_amount(1, key.unit_price, key.fx_rate, key.discount, tier).unwrap_or(0);
    // A per-million price in micro-units (scale 6) × FX (8) × two discounts (4 + 4): scale 22.
    Decimal::from_i128_with_scale(exact, 22)
        .normalize()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOOK: &str = r#"
currency = "USD"

[[price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2025-04-14T00:00:00Z"
input = "2"
output = "8"

[[price]]
provider = "deepseek"
model = "deepseek-chat"
currency = "CNY"
effective_from = "2025-01-01T00:00:00Z"
input = "2"
cache_read = "0.2"
output = "3"

[[fx]]
from = "USD"
to = "CNY"
rate = "7.1"
effective = "2026-10-01"

[[fx]]
from = "USD"
to = "CNY"
rate = "7.2"
effective = "2026-10-16"

[[tenant]]
id = "acme"
billing_currency = "CNY"

[[tenant.discount]]
provider = "openai"
percent = "10"

[[tenant.tier]]
provider = "openai"
model = "gpt-4.1"
token_types = ["output"]
bands = [{ up_to = 1000000, discount = "0" }, { discount = "20" }]
"#;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A segment priced the way the lake prices it: list cost = tokens × list rate.
    fn seg(book: &PriceBook, hour: &str, provider: &str, model: &str, tokens: [i64; 5]) -> Segment {
        let hour = t(hour);
        let list = book.lookup(provider, model, hour).map(|e| ListCost {
            currency: e.currency.clone(),
            effective_from: e.effective_from,
            costs: std::array::from_fn(|i| tokens[i] as i128 * e.rates.0[i] as i128),
        });
        Segment {
            hour,
            provider: provider.into(),
            model: model.into(),
            tokens,
            list,
        }
    }

    #[test]
    fn a_hand_computed_invoice() {
        let book = PriceBook::parse(BOOK, "b").unwrap();
        let segs = [
            seg(
                &book,
                "2026-10-05T10:00:00Z",
                "openai",
                "gpt-4.1",
                [500_000, 0, 0, 800_000, 0],
            ),
            seg(
                &book,
                "2026-10-20T10:00:00Z",
                "openai",
                "gpt-4.1",
                [0, 0, 0, 400_000, 0],
            ),
            seg(
                &book,
                "2026-10-20T11:00:00Z",
                "deepseek",
                "deepseek-chat",
                [0, 1_000_000, 0, 0, 0],
            ),
        ];
        let inv = rate(&book, "acme", &segs).unwrap();
        assert_eq!(inv.currency, "CNY");
        let got: Vec<(String, &str, i64, String, String)> = inv
            .lines
            .iter()
            .map(|l| {
                (
                    l.key.model.clone(),
                    l.token_type(),
                    l.tokens,
                    l.fx_str(),
                    inv.fmt_amount(l.amount),
                )
            })
            .collect();
        let s = |v: &str| v.to_string();
        assert_eq!(
            got,
            [
                // 1M cache reads × ¥0.2/M = ¥0.20, no FX, no discount.
                (
                    s("deepseek-chat"),
                    "cache_read",
                    1_000_000,
                    s("1"),
                    s("0.20")
                ),
                // 500k × $2/M = $1 × 7.1 = ¥7.1 × 0.9 = ¥6.39.
                (s("gpt-4.1"), "uncached_input", 500_000, s("7.1"), s("6.39")),
                // Band 1 (first 1M output tokens of the month, at 0 % off):
                // 800k × $8/M = $6.4 × 7.1 × 0.9 = ¥40.896 → ¥40.90 (half-even).
                (s("gpt-4.1"), "output", 800_000, s("7.1"), s("40.90")),
                // 200k × $8/M = $1.6 × 7.2 × 0.9 = ¥10.368 → ¥10.37.
                (s("gpt-4.1"), "output", 200_000, s("7.2"), s("10.37")),
                // Band 2 (−20 %): $1.6 × 7.2 × 0.9 × 0.8 = ¥8.2944 → ¥8.29.
                (s("gpt-4.1"), "output", 200_000, s("7.2"), s("8.29")),
            ]
        );
        assert_eq!(inv.fmt_amount(inv.total), "66.15");
        assert_eq!(inv.lines[4].key.tier.as_ref().unwrap().band, 2);
        assert_eq!(effective_unit(&inv.lines[4].key), "41.472");
    }

    #[test]
    fn volume_tiers_price_every_token_at_the_band_of_the_total() {
        let text = BOOK.replace(
            "token_types = [\"output\"]",
            "token_types = [\"output\"]\nmode = \"volume\"",
        );
        let book = PriceBook::parse(&text, "b").unwrap();
        let segs = [seg(
            &book,
            "2026-10-05T10:00:00Z",
            "openai",
            "gpt-4.1",
            [0, 0, 0, 1_000_000, 0],
        )];
        // Exactly 1M: the last token is in band 1.
        let inv = rate(&book, "acme", &segs).unwrap();
        assert_eq!(inv.lines[0].key.tier.as_ref().unwrap().band, 1);
        let segs = [
            seg(
                &book,
                "2026-10-05T10:00:00Z",
                "openai",
                "gpt-4.1",
                [0, 0, 0, 1_000_000, 0],
            ),
            seg(
                &book,
                "2026-10-05T11:00:00Z",
                "openai",
                "gpt-4.1",
                [0, 0, 0, 1, 0],
            ),
        ];
        let inv = rate(&book, "acme", &segs).unwrap();
        assert!(
            inv.lines
                .iter()
                .all(|l| l.key.tier.as_ref().unwrap().band == 2)
        );
    }

    #[test]
    fn missing_price_and_missing_fx_are_errors_that_say_what_to_do() {
        let book = PriceBook::parse(BOOK, "b").unwrap();
        let e = rate(
            &book,
            "acme",
            &[seg(
                &book,
                "2026-10-05T10:00:00Z",
                "x",
                "y",
                [1, 0, 0, 0, 0],
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x/y") && e.contains("reprice"), "{e}");
        let e = rate(
            &book,
            "acme",
            &[seg(
                &book,
                "2026-09-30T23:00:00Z",
                "openai",
                "gpt-4.1",
                [1, 0, 0, 0, 0],
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("USD→CNY") && e.contains("2026-09-30"), "{e}");
    }

    #[test]
    fn half_even_at_the_line() {
        // 0.125 → 0.12, 0.135 → 0.14, −0.125 → −0.12.
        let x = |v: i128| v * 10i128.pow(EXACT_SCALE - 3);
        assert_eq!(round_half_even(x(125), 2), 12);
        assert_eq!(round_half_even(x(135), 2), 14);
        assert_eq!(round_half_even(x(-125), 2), -12);
        assert_eq!(round_half_even(x(126), 2), 13);
    }

    fn arb_segments() -> impl Strategy<Value = Vec<(u32, bool, [i64; 5])>> {
        proptest::collection::vec(
            (
                0u32..720,
                any::<bool>(),
                proptest::array::uniform5(0i64..3_000_000),
            ),
            1..40,
        )
    }

    fn build(book: &PriceBook, raw: &[(u32, bool, [i64; 5])]) -> Vec<Segment> {
        raw.iter()
            .map(|(h, ds, tokens)| {
                let hour = t("2026-10-01T00:00:00Z") + chrono::Duration::hours(*h as i64);
                let (p, m) = if *ds {
                    ("deepseek", "deepseek-chat")
                } else {
                    ("openai", "gpt-4.1")
                };
                seg(book, &hour.to_rfc3339(), p, m, *tokens)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn totals_are_the_sum_of_lines_and_splitting_usage_changes_nothing(raw in arb_segments(), cut in 0.0f64..1.0) {
            let book = PriceBook::parse(BOOK, "b").unwrap();
            let segs = build(&book, &raw);
            let inv = rate(&book, "acme", &segs).unwrap();
            prop_assert_eq!(inv.total, inv.lines.iter().map(|l| l.amount).sum::<i128>());
            // Every token is on exactly one line.
            for b in 0..5 {
                let want: i64 = segs.iter().map(|s| s.tokens[b]).sum();
                let got: i64 = inv.lines.iter().filter(|l| l.key.bucket == b).map(|l| l.tokens).sum();
                prop_assert_eq!(want, got);
            }
            // Rounding only at the line: the total is within half a minor unit per line of the
            // exact sum.
            let exact: i128 = inv.lines.iter().map(|l| l.exact).sum();
            let unit = 10i128.pow(EXACT_SCALE - inv.minor);
            prop_assert!((inv.total * unit - exact).abs() * 2 <= unit * inv.lines.len() as i128);
            // The same usage cut into two segments per hour rates identically.
            let split: Vec<(u32, bool, [i64; 5])> = raw
                .iter()
                .flat_map(|(h, ds, tk)| {
                    let a = tk.map(|v| (v as f64 * cut) as i64);
                    let b: [i64; 5] = std::array::from_fn(|i| tk[i] - a[i]);
                    [(*h, *ds, a), (*h, *ds, b)]
                })
                .collect();
            let inv2 = rate(&book, "acme", &build(&book, &split)).unwrap();
            prop_assert_eq!(inv.lines, inv2.lines);
        }

        #[test]
        fn without_a_contract_the_invoice_is_the_list_cost(raw in arb_segments()) {
            let book = PriceBook::parse(BOOK, "b").unwrap();
            let segs: Vec<Segment> = build(&book, &raw)
                .into_iter()
                .filter(|s| s.provider == "openai")
                .collect();
            let inv = rate(&book, "nobody", &segs).unwrap();
            let list: i128 = segs.iter().map(|s| s.list.as_ref().unwrap().costs.iter().sum::<i128>()).sum();
            let exact: i128 = inv.lines.iter().map(|l| l.exact).sum();
            prop_assert_eq!(exact, list * 10i128.pow(EXACT_SCALE - 12));
        }
    }
}
