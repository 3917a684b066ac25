//! The anomalies report: two kinds of anomaly over the local dates `[from, to)`, in one result
//! set with a `kind` column, ordered by time.
//!
//! - `large_request`: a raw event whose request size, `input_tokens + output_tokens` as reported
//!   (input includes the cache tokens, output the reasoning), is strictly greater than
//!   [`AnomalyParams::max_tokens`]. Every event counts, priced or not, failed or not. SQL:
//!   `sql/anomalies_large_requests.sql`.
//! - `spend_spike`: a tenant's spend in one UTC hour and currency (rollups summed, unpriced rows
//!   ignored) strictly greater than k × the median of that tenant's hourly spend in the same
//!   currency over the trailing baseline: the [`AnomalyParams::baseline_hours`] hours before it
//!   (`[hour − N h, hour)`). Only hours with priced usage are in the baseline; an hour without
//!   usage is not a zero. With fewer than [`AnomalyParams::min_baseline_hours`] such hours there
//!   is no verdict (no row). The baseline may reach before `from` (those hours are read), but only
//!   hours starting in the range are reported. The hourly sums come from SQL
//!   (`sql/anomalies_spend_spikes.sql`); the median and the verdict are computed here, exactly:
//!   the median of an even count is the mean of the two middle values, and the verdict compares
//!   `2 × spend × 10⁶` with `k × 10⁶ × (a + b)` in 256-bit integers, never rounded.
//!
//! Columns (the ones of the other kind are NULL): `kind, tenant_id, ts, provider, model,
//! agent_id, event_id, tokens, max_tokens, currency, spend, baseline_median, baseline_hours,
//! ratio, factor`. `ts` is the event time or the hour start, typed in the report's time zone (the
//! same instant, shown in local time). Money (`spend`, `baseline_median`) is Decimal128(38, 12);
//! `baseline_median` is rounded half away from zero to 12 places when the mean of the two middle
//! values needs a 13th. `ratio` (spend / median) and `factor` (k) are Decimal128(38, 6), the ratio
//! rounded half away from zero, NULL when the median is 0 (then any positive spend is a spike).
//! Because the ratio is rounded for display, a spike just above k may show a ratio equal to k.
//!
//! Hours belong to the range when they start in it: with a zone whose days do not start on a UTC
//! hour (Asia/Kolkata) the first and last hours straddle the range's ends.
//!
//! Not here: printing (see [`crate::output`]); the cost and agent-share reports (see
//! [`crate::reports`]).

use crate::reports::{ReportParams, Source, UtcRange};
use crate::sqlq::{collect_with_schema, read_only_options};
use crate::{Error, Result};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use datafusion::arrow::compute::{
    SortColumn, cast, concat_batches, lexsort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType, i256,
};
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use tokenmeter_schemas::tables::{COST_PRECISION, COST_SCALE, cost_type};

/// The large-request query.
pub const LARGE_REQUESTS_SQL: &str = include_str!("../sql/anomalies_large_requests.sql");
/// The hourly-spend query behind the spend spikes.
pub const SPEND_SPIKES_SQL: &str = include_str!("../sql/anomalies_spend_spikes.sql");

/// `kind` of a large request.
pub const LARGE_REQUEST: &str = "large_request";
/// `kind` of a spend spike.
pub const SPEND_SPIKE: &str = "spend_spike";

/// Default threshold of a large request, in tokens.
pub const DEFAULT_MAX_TOKENS: i64 = 50_000;
/// Default length of the trailing baseline window, in hours (a week).
pub const DEFAULT_BASELINE_HOURS: u32 = 168;
/// Default number of hours with usage a baseline needs for a verdict (a day's worth).
pub const DEFAULT_MIN_BASELINE_HOURS: u32 = 24;
/// Longest baseline window: a leap year of hours.
pub const MAX_BASELINE_HOURS: u32 = 366 * 24;
/// Decimal places of the spend factor and of the ratio.
pub const FACTOR_SCALE: i8 = 6;

const FACTOR_ONE: i128 = 1_000_000;
const HOUR_US: i64 = 3_600_000_000;

/// The spend factor k: a positive decimal with at most [`FACTOR_SCALE`] places, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpendFactor(i128);

impl SpendFactor {
    /// k × 10⁶, e.g. 2_500_000 for 2.5.
    pub fn units(self) -> i128 {
        self.0
    }
}

impl Default for SpendFactor {
    /// 5.
    fn default() -> Self {
        SpendFactor(5 * FACTOR_ONE)
    }
}

impl FromStr for SpendFactor {
    type Err = Error;
    /// A decimal such as `5`, `2.5` or `0.75`: digits, at most one point, at most 6 places, > 0.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidParameter {
            what: "spend factor",
            given: s.into(),
            advice: "pass a positive decimal with at most 6 decimal places, e.g. --spend-factor 5 or --spend-factor 2.5",
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty())
            || !digits(int)
            || !digits(frac)
            || frac.len() > FACTOR_SCALE as usize
            || int.len() > 24
        {
            return Err(bad());
        }
        let parse = |t: &str| {
            if t.is_empty() {
                Ok(0)
            } else {
                t.parse::<i128>()
            }
        };
        let int = parse(int).map_err(|_| bad())?;
        let frac = parse(&format!("{frac:0<6}")).map_err(|_| bad())?;
        match int * FACTOR_ONE + frac {
            0 => Err(bad()),
            units => Ok(SpendFactor(units)),
        }
    }
}

impl fmt::Display for SpendFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / FACTOR_ONE, self.0 % FACTOR_ONE);
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let frac = format!("{frac:06}");
            write!(f, "{int}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// What the anomalies report covers and its thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyParams {
    /// First local date of the range.
    pub from: NaiveDate,
    /// First local date after the range (exclusive).
    pub to: NaiveDate,
    /// Only this tenant; `None` for all.
    pub tenant: Option<String>,
    /// The time zone whose midnights bound the days, and in which `ts` is shown.
    pub tz: Tz,
    /// A request of more than this many tokens (input + output as reported) is a large request.
    pub max_tokens: i64,
    /// k: an hour whose spend is more than k × the baseline median is a spike.
    pub spend_factor: SpendFactor,
    /// Length of the trailing baseline window in hours: `[hour − N h, hour)`.
    pub baseline_hours: u32,
    /// Hours with usage the baseline must hold for a verdict.
    pub min_baseline_hours: u32,
}

impl AnomalyParams {
    /// The range `[from, to)` in UTC, every tenant, the default thresholds.
    pub fn new(from: NaiveDate, to: NaiveDate) -> Self {
        Self {
            from,
            to,
            tenant: None,
            tz: chrono_tz::UTC,
            max_tokens: DEFAULT_MAX_TOKENS,
            spend_factor: SpendFactor::default(),
            baseline_hours: DEFAULT_BASELINE_HOURS,
            min_baseline_hours: DEFAULT_MIN_BASELINE_HOURS,
        }
    }

    /// The range as UTC instants, after checking every parameter.
    fn checked_range(&self) -> Result<UtcRange> {
        if self.max_tokens < 0 {
            return Err(Error::InvalidParameter {
                what: "max tokens",
                given: self.max_tokens.to_string(),
                advice: "pass a number of tokens, 0 or more, e.g. --max-tokens 50000",
            });
        }
        if !(1..=MAX_BASELINE_HOURS).contains(&self.baseline_hours) {
            return Err(Error::InvalidParameter {
                what: "baseline hours",
                given: self.baseline_hours.to_string(),
                advice: "pass a number of hours from 1 to 8784 (a year), e.g. --baseline-hours 168",
            });
        }
        if !(1..=self.baseline_hours).contains(&self.min_baseline_hours) {
            return Err(Error::InvalidParameter {
                what: "minimum baseline hours",
                given: format!(
                    "{} (with --baseline-hours {})",
                    self.min_baseline_hours, self.baseline_hours
                ),
                advice: "it must be from 1 to --baseline-hours (a window of N hours never holds more than N hours with usage): lower --min-baseline-hours or raise --baseline-hours",
            });
        }
        ReportParams {
            from: self.from,
            to: self.to,
            tenant: None,
            tz: self.tz,
            source: Source::Raw,
        }
        .utc_range()
    }
}

/// The report's columns, `ts` in the time zone `tz`.
pub fn anomalies_schema(tz: Tz) -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let int = |name: &str| Field::new(name, DataType::Int64, true);
    let money = |name: &str| Field::new(name, cost_type(), true);
    let factor = |name: &str| Field::new(name, factor_type(), true);
    Arc::new(Schema::new(vec![
        text("kind", false),
        text("tenant_id", false),
        Field::new("ts", ts_type(tz), false),
        text("provider", true),
        text("model", true),
        text("agent_id", true),
        text("event_id", true),
        int("tokens"),
        int("max_tokens"),
        text("currency", true),
        money("spend"),
        money("baseline_median"),
        int("baseline_hours"),
        factor("ratio"),
        factor("factor"),
    ]))
}

fn ts_type(tz: Tz) -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(tz.name().into()))
}

fn factor_type() -> DataType {
    DataType::Decimal128(COST_PRECISION, FACTOR_SCALE)
}

fn utc_ts(us: i64) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into()))
}

fn date(d: NaiveDate) -> ScalarValue {
    ScalarValue::Date32(Some(d.to_epoch_days()))
}

fn utc_date(us: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(us)
        .expect("an instant of a report range")
        .date_naive()
}

/// Run one of the report's queries with its parameters bound.
async fn query(
    ctx: &SessionContext,
    sql: &str,
    values: Vec<(&str, ScalarValue)>,
) -> Result<Vec<RecordBatch>> {
    let df = ctx
        .sql_with_options(sql, read_only_options())
        .await?
        .with_param_values(values)?;
    collect_with_schema(df).await
}

/// Large requests and spend spikes over `params`' range, ordered by `ts`, then kind, tenant,
/// currency and event id. Always one batch (empty when there is no anomaly); columns of
/// [`anomalies_schema`].
pub async fn anomalies_report(
    ctx: &SessionContext,
    params: &AnomalyParams,
) -> Result<Vec<RecordBatch>> {
    let range = params.checked_range()?;
    let schema = anomalies_schema(params.tz);
    let tenant = ScalarValue::Utf8(params.tenant.clone());
    let (start, end) = (range.start.timestamp_micros(), range.end.timestamp_micros());

    let large = query(
        ctx,
        LARGE_REQUESTS_SQL,
        vec![
            ("from_ts", utc_ts(start)),
            ("to_ts", utc_ts(end)),
            ("from_date", date(range.first_date)),
            ("last_date", date(range.last_date)),
            ("tenant", tenant.clone()),
            ("max_tokens", ScalarValue::Int64(Some(params.max_tokens))),
        ],
    )
    .await?;
    let mut parts = large
        .iter()
        .map(|b| widen(b, &schema))
        .collect::<Result<Vec<_>>>()?;

    // The first hour starting in the range, and the first hour its baseline needs.
    let first_hour = (start + HOUR_US - 1).div_euclid(HOUR_US) * HOUR_US;
    let read_from = first_hour - i64::from(params.baseline_hours) * HOUR_US;
    let hourly = query(
        ctx,
        SPEND_SPIKES_SQL,
        vec![
            ("read_from_ts", utc_ts(read_from)),
            ("to_ts", utc_ts(end)),
            ("from_date", date(utc_date(read_from))),
            ("last_date", date(range.last_date)),
            ("tenant", tenant),
        ],
    )
    .await?;
    let spikes = spend_spikes(&hourly_series(&hourly)?, start, end, params);
    tracing::debug!(
        large_request_batches = large.len(),
        spend_spikes = spikes.len(),
        "anomalies report"
    );
    parts.push(spikes_batch(&spikes, params, &schema)?);

    let all = concat_batches(&schema, &parts)?;
    let sort = ["ts", "kind", "tenant_id", "currency", "event_id"].map(|name| SortColumn {
        values: Arc::clone(all.column_by_name(name).expect("a column of the schema")),
        options: None,
    });
    let order = lexsort_to_indices(&sort, None)?;
    Ok(vec![take_record_batch(&all, &order)?])
}

/// `batch` in the columns of `schema`: its columns by name, cast to the report's types; NULL for
/// the columns it does not have.
fn widen(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => Ok(cast(c, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The priced spend of one tenant in one currency, per UTC hour with usage, in hour order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Series {
    tenant: String,
    currency: String,
    /// (hour start in µs since the epoch, spend in 10⁻¹² units).
    hours: Vec<(i64, i128)>,
}

/// The rows of `sql/anomalies_spend_spikes.sql` (ordered by tenant, currency, hour) as series.
fn hourly_series(batches: &[RecordBatch]) -> Result<Vec<Series>> {
    let mut out: Vec<Series> = Vec::new();
    for b in batches {
        let column = |name: &str, ty: &DataType| -> Result<ArrayRef> {
            Ok(cast(b.column_by_name(name).expect("a query column"), ty)?)
        };
        let tenant = column("tenant_id", &DataType::Utf8)?;
        let currency = column("currency", &DataType::Utf8)?;
        let hour = column("hour", &ts_type(chrono_tz::UTC))?;
        let spend = column("spend", &cost_type())?;
        let (tenant, currency) = (tenant.as_string::<i32>(), currency.as_string::<i32>());
        let hour = hour.as_primitive::<TimestampMicrosecondType>();
        let spend = spend.as_primitive::<Decimal128Type>();
        for r in 0..b.num_rows() {
            let (t, c) = (tenant.value(r), currency.value(r));
            if !out.last().is_some_and(|s| s.tenant == t && s.currency == c) {
                out.push(Series {
                    tenant: t.to_string(),
                    currency: c.to_string(),
                    hours: Vec::new(),
                });
            }
            if spend.is_valid(r) {
                out.last_mut()
                    .expect("pushed")
                    .hours
                    .push((hour.value(r), spend.value(r)));
            }
        }
    }
    Ok(out)
}

/// One spend spike.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spike {
    tenant: String,
    currency: String,
    hour: i64,
    spend: i128,
    /// The median, rounded half away from zero to 12 places.
    median: i128,
    /// Hours with usage in the baseline.
    baseline_hours: usize,
    /// spend / median at 6 places, rounded half away from zero; `None` when the median is not
    /// positive (or the ratio does not fit 38 digits).
    ratio: Option<i128>,
}

/// `n / d` rounded half away from zero; `d > 0`.
fn div_round(n: i256, d: i256) -> i256 {
    let (q, r) = (n / d, n % d);
    if r.wrapping_abs() * i256::from(2) >= d {
        q + n.signum()
    } else {
        q
    }
}

/// `v` if it fits a Decimal128 of 38 digits.
fn fits_38(v: i256) -> Option<i128> {
    let max = i256::from_i128(10i128.pow(38) - 1);
    (v.wrapping_abs() <= max).then(|| v.as_i128())
}

/// The spikes of `series` among the hours starting in `[start, end)` (µs since the epoch).
fn spend_spikes(series: &[Series], start: i64, end: i64, p: &AnomalyParams) -> Vec<Spike> {
    let window = i64::from(p.baseline_hours) * HOUR_US;
    let min = p.min_baseline_hours as usize;
    let k = i256::from_i128(p.spend_factor.units());
    let one = i256::from_i128(FACTOR_ONE);
    let two = i256::from(2);
    let mut out = Vec::new();
    for s in series {
        // The spends of hours[lo..i] — the hours in [hour − window, hour) — sorted.
        let mut sorted: Vec<i128> = Vec::new();
        let mut lo = 0;
        for (i, &(hour, spend)) in s.hours.iter().enumerate() {
            while s.hours[lo].0 < hour - window {
                let old = s.hours[lo].1;
                sorted.remove(sorted.binary_search(&old).expect("in the window"));
                lo += 1;
            }
            let n = sorted.len();
            if hour >= start && hour < end && n >= min {
                // Twice the median: the sum of the two middle values (the middle one twice).
                let twice = i256::from_i128(sorted[(n - 1) / 2]) + i256::from_i128(sorted[n / 2]);
                let spend256 = i256::from_i128(spend);
                // spend > k × median  ⇔  2 × spend × 10⁶ > (k × 10⁶) × (2 × median)
                if two * spend256 * one > k * twice {
                    out.push(Spike {
                        tenant: s.tenant.clone(),
                        currency: s.currency.clone(),
                        hour,
                        spend,
                        median: div_round(twice, two).as_i128(),
                        baseline_hours: n,
                        ratio: twice
                            .is_positive()
                            .then(|| fits_38(div_round(two * spend256 * one, twice)))
                            .flatten(),
                    });
                }
            }
            let at = sorted.partition_point(|v| *v < spend);
            sorted.insert(at, spend);
            debug_assert_eq!(sorted.len(), i + 1 - lo);
        }
    }
    out
}

/// The spikes as rows of the report.
fn spikes_batch(spikes: &[Spike], p: &AnomalyParams, schema: &SchemaRef) -> Result<RecordBatch> {
    let n = spikes.len();
    let text = |f: fn(&Spike) -> &str| -> ArrayRef {
        Arc::new(spikes.iter().map(|s| Some(f(s))).collect::<StringArray>())
    };
    let decimal = |v: Vec<Option<i128>>, scale: i8| -> Result<ArrayRef> {
        Ok(Arc::new(
            Decimal128Array::from(v).with_precision_and_scale(COST_PRECISION, scale)?,
        ))
    };
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(match f.name().as_str() {
                "kind" => Arc::new(StringArray::from(vec![SPEND_SPIKE; n])),
                "tenant_id" => text(|s| &s.tenant),
                "ts" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(spikes.iter().map(|s| s.hour))
                        .with_timezone(p.tz.name()),
                ),
                "currency" => text(|s| &s.currency),
                "spend" => decimal(spikes.iter().map(|s| Some(s.spend)).collect(), COST_SCALE)?,
                "baseline_median" => {
                    decimal(spikes.iter().map(|s| Some(s.median)).collect(), COST_SCALE)?
                }
                "baseline_hours" => Arc::new(Int64Array::from_iter_values(
                    spikes.iter().map(|s| s.baseline_hours as i64),
                )),
                "ratio" => decimal(spikes.iter().map(|s| s.ratio).collect(), FACTOR_SCALE)?,
                "factor" => decimal(vec![Some(p.spend_factor.units()); n], FACTOR_SCALE)?,
                _ => new_null_array(f.data_type(), n),
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::open_catalog;
    use crate::localtime::day_start;
    use crate::testlake::{Ev, Lake};
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::assert_batches_eq;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn params(from: &str, to: &str) -> AnomalyParams {
        AnomalyParams::new(d(from), d(to))
    }

    async fn lake(evs: &[Ev], batches: usize) -> (Lake, SessionContext) {
        let lake = Lake::new();
        lake.write_committed(evs, batches);
        let ctx = open_catalog(lake.path()).await.unwrap();
        (lake, ctx)
    }

    async fn report(ctx: &SessionContext, p: &AnomalyParams) -> Vec<RecordBatch> {
        let batches = anomalies_report(ctx, p).await.unwrap();
        assert_eq!(batches.len(), 1, "always one batch");
        assert_eq!(batches[0].schema(), anomalies_schema(p.tz));
        batches
    }

    /// Each row's `columns`, joined by `|`, NULL as an empty string.
    fn cells(batches: &[RecordBatch], columns: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            for r in 0..b.num_rows() {
                let row: Vec<String> = columns
                    .iter()
                    .map(|name| {
                        let c = b.column_by_name(name).unwrap();
                        if c.is_null(r) {
                            String::new()
                        } else {
                            array_value_to_string(c, r).unwrap()
                        }
                    })
                    .collect();
                out.push(row.join("|"));
            }
        }
        out
    }

    const SPIKE: [&str; 8] = [
        "kind",
        "tenant_id",
        "ts",
        "spend",
        "baseline_median",
        "baseline_hours",
        "ratio",
        "factor",
    ];

    /// Events of `tenant` at `hour` (UTC, RFC 3339) costing `units` × 10⁻¹² USD in all, split in
    /// two events (so the rollups of one hour have several rows to sum).
    fn spend(tenant: &str, hour: DateTime<Utc>, units: i64) -> Vec<Ev> {
        let half = units / 2;
        [("a", half), ("b", units - half)]
            .into_iter()
            .map(|(n, u)| {
                let t =
                    (hour + chrono::Duration::minutes(if n == "a" { 5 } else { 35 })).to_rfc3339();
                let mut e = Ev::new(&format!("{tenant}-{}-{n}", hour.timestamp()), &t, tenant)
                    .usage(u, 0, 0, 0, 0);
                // One 10⁻¹² unit per token: the spend in units is the token count.
                e.rates = Some([1; 5]);
                e
            })
            .collect()
    }

    /// `spend` for each of the `n` hours starting at `first`.
    fn hours(tenant: &str, first: &str, n: i64, units: i64) -> Vec<Ev> {
        (0..n)
            .flat_map(|h| spend(tenant, at(first) + chrono::Duration::hours(h), units))
            .collect()
    }

    /// A deterministic pseudo-random sequence (64-bit LCG), so the test needs no crate.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    #[tokio::test]
    async fn large_requests_match_an_independent_scan_of_the_events() {
        let mut rng = Lcg(7);
        let start = at("2026-10-31T00:00:00Z");
        let evs: Vec<Ev> = (0..600)
            .map(|i| {
                let t = start + chrono::Duration::seconds(rng.below(6 * 86_400) as i64);
                let tenant = ["t1", "t2", "t3"][rng.below(3) as usize];
                let input = rng.below(60_000) as i64;
                let output = rng.below(20_000) as i64;
                let (cr, cw) = (input / (1 + rng.below(4) as i64), input / 8);
                let mut e = Ev::new(&format!("e{i:03}"), &t.to_rfc3339(), tenant).usage(
                    input,
                    output,
                    cr.min(input - cw),
                    cw,
                    output / 3,
                );
                if rng.below(2) == 0 {
                    e = e.agent(&format!("a{}", rng.below(3)));
                }
                if rng.below(5) == 0 {
                    e = e.unpriced().model("anthropic", "claude");
                }
                if rng.below(7) == 0 {
                    e = e.failed();
                }
                e
            })
            .collect();
        let (_lake, ctx) = lake(&evs, 4).await;
        let ny = chrono_tz::America::New_York;
        let mut flagged = 0;
        for (max_tokens, tenant) in [(50_000, None), (30_000, None), (50_000, Some("t2"))] {
            let p = AnomalyParams {
                tz: ny,
                max_tokens,
                tenant: tenant.map(str::to_string),
                ..params("2026-11-01", "2026-11-04")
            };
            let (from, to) = (day_start(ny, p.from), day_start(ny, p.to));
            let mut want: Vec<_> = evs
                .iter()
                .filter(|e| e.time >= from && e.time < to)
                .filter(|e| tenant.is_none_or(|t| e.tenant == t))
                .filter(|e| e.usage[0] + e.usage[1] > max_tokens)
                .map(|e| {
                    let tokens = e.usage[0] + e.usage[1];
                    let agent = e.agent.clone().unwrap_or_default();
                    let (tenant, id) = (&e.tenant, &e.id);
                    let (provider, model) = (&e.provider, &e.model);
                    let row = format!(
                        "large_request|{tenant}|{provider}|{model}|{agent}|{id}|{tokens}|{max_tokens}"
                    );
                    (e.time, tenant.clone(), id.clone(), row)
                })
                .collect();
            want.sort();
            let want: Vec<String> = want.into_iter().map(|(.., r)| r).collect();
            let got = report(&ctx, &p).await;
            let cols = [
                "kind",
                "tenant_id",
                "provider",
                "model",
                "agent_id",
                "event_id",
                "tokens",
                "max_tokens",
            ];
            let got: Vec<String> = cells(&got, &cols)
                .into_iter()
                .filter(|r| r.starts_with(LARGE_REQUEST))
                .collect();
            assert_eq!(got, want, "max_tokens {max_tokens}, tenant {tenant:?}");
            assert!(want.len() >= 10, "the data must hold large requests");
            flagged += want.len();
        }
        assert!(flagged < 3 * 600, "and requests that are not");
    }

    #[tokio::test]
    async fn a_request_of_exactly_max_tokens_is_not_large() {
        let evs = [
            // 40,000 + 10,000: exactly the threshold.
            Ev::new("exact", "2026-11-02T10:00:00Z", "t1").usage(40_000, 10_000, 0, 0, 0),
            // Input as reported includes the cache tokens, output the reasoning: 50,001.
            Ev::new("cached", "2026-11-02T11:00:00Z", "t1")
                .usage(45_000, 5_001, 30_000, 10_000, 5_000)
                .agent("bot"),
            Ev::new("below", "2026-11-02T12:00:00Z", "t1").usage(49_999, 0, 0, 0, 0),
        ];
        let (_lake, ctx) = lake(&evs, 1).await;
        let p = params("2026-11-02", "2026-11-03");
        assert_batches_eq!(
            [
                "+---------------+-----------+----------------------+----------+-------+----------+----------+--------+------------+----------+-------+-----------------+----------------+-------+--------+",
                "| kind          | tenant_id | ts                   | provider | model | agent_id | event_id | tokens | max_tokens | currency | spend | baseline_median | baseline_hours | ratio | factor |",
                "+---------------+-----------+----------------------+----------+-------+----------+----------+--------+------------+----------+-------+-----------------+----------------+-------+--------+",
                "| large_request | t1        | 2026-11-02T11:00:00Z | openai   | gpt-x | bot      | cached   | 50001  | 50000      |          |       |                 |                |       |        |",
                "+---------------+-----------+----------------------+----------+-------+----------+----------+--------+------------+----------+-------+-----------------+----------------+-------+--------+",
            ],
            &report(&ctx, &p).await
        );
        let p = AnomalyParams {
            max_tokens: 49_999,
            ..p
        };
        assert_eq!(
            cells(&report(&ctx, &p).await, &["event_id", "tokens"]),
            ["exact|50000", "cached|50001"]
        );
    }

    /// 30 hours at 1,000 units, then one at 10,000, then 4 more at 1,000; an hour with only
    /// unpriced usage 31 hours before the spike.
    fn thirty_hours_and_a_spike() -> Vec<Ev> {
        let mut evs = hours("t1", "2026-11-01T00:00:00Z", 30, 1_000);
        evs.extend(spend("t1", at("2026-11-02T06:00:00Z"), 10_000));
        evs.extend(hours("t1", "2026-11-02T07:00:00Z", 4, 1_000));
        evs.push(Ev::new("free", "2026-10-31T23:10:00Z", "t1").unpriced());
        evs
    }

    #[tokio::test]
    async fn one_hour_at_ten_times_the_median_is_one_spike() {
        let (_lake, ctx) = lake(&thirty_hours_and_a_spike(), 3).await;
        // By hand: the baseline of 06:00 is the 30 hours from 11-01 00:00 to 11-02 05:00 at
        // 1,000 units (0.000000001 USD) each — the unpriced hour does not count — so the median
        // is 0.000000001000 and 10,000 / 1,000 = 10 > 5. The hours after it have 31 hours of
        // baseline, one of them at 10,000: the median stays 1,000, ratio 1, no spike. The hours
        // of 11-01 are outside the range (and have fewer than 24 baseline hours).
        let p = params("2026-11-02", "2026-11-03");
        let spike =
            "spend_spike|t1|2026-11-02T06:00:00Z|0.000000010000|0.000000001000|30|10.000000";
        assert_eq!(
            cells(&report(&ctx, &p).await, &SPIKE),
            [format!("{spike}|5.000000")]
        );
        for (factor, spikes) in [
            ("9.999999", 1),
            ("10", 0), // exactly k × median is not a spike
            ("10.5", 0),
            ("1", 1), // only the spike: every other hour is exactly the median
        ] {
            let p = AnomalyParams {
                spend_factor: factor.parse().unwrap(),
                ..p.clone()
            };
            let rows = cells(&report(&ctx, &p).await, &SPIKE);
            assert_eq!(rows.len(), spikes, "factor {factor}: {rows:?}");
            if spikes == 1 {
                assert!(rows[0].starts_with(spike), "{rows:?}");
            }
        }
        // The range may start with the spike's hour: its baseline is read from before it.
        let p = AnomalyParams {
            tz: chrono_tz::Etc::GMTMinus6, // UTC+6: the local day 11-02 starts at 11-01 18:00Z
            ..params("2026-11-02", "2026-11-03")
        };
        let rows = cells(&report(&ctx, &p).await, &SPIKE);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(rows[0].contains("|2026-11-02T12:00:00+06:00|"), "{rows:?}");
        let p = AnomalyParams {
            tz: chrono_tz::Etc::GMTPlus6, // UTC−6: the local day 11-02 starts at 11-02 06:00Z
            ..params("2026-11-02", "2026-11-03")
        };
        let rows = cells(&report(&ctx, &p).await, &SPIKE);
        assert!(rows[0].contains("|2026-11-02T00:00:00-06:00|"), "{rows:?}");
    }

    #[tokio::test]
    async fn the_baseline_is_exactly_the_trailing_window() {
        // Spike hour H = 11-03 00:00. t1: 24 hours at 100,000 (H−48 … H−25), then 24 at 1,000
        // (H−24 … H−1), then 10,000 at H. With a 24-hour window the baseline is the last 24
        // hours exactly: median 1,000, ratio 10, a spike. Had the window reached H−25, the
        // baseline would hold 25 hours (still median 1,000): t2 checks that edge.
        // t2: 1,000 at H−25 and at H−23 … H−1 (H−24 missing), 10,000 at H: 23 hours in the
        // window, fewer than 24, so no verdict; a 25-hour window holds 24 and finds the spike.
        let mut evs = hours("t1", "2026-11-01T00:00:00Z", 24, 100_000);
        evs.extend(hours("t1", "2026-11-02T00:00:00Z", 24, 1_000));
        evs.extend(spend("t1", at("2026-11-03T00:00:00Z"), 10_000));
        evs.extend(spend("t2", at("2026-11-01T23:00:00Z"), 1_000));
        evs.extend(hours("t2", "2026-11-02T01:00:00Z", 23, 1_000));
        evs.extend(spend("t2", at("2026-11-03T00:00:00Z"), 10_000));
        let (_lake, ctx) = lake(&evs, 2).await;
        let p = AnomalyParams {
            baseline_hours: 24,
            ..params("2026-11-03", "2026-11-04")
        };
        let tail = "2026-11-03T00:00:00Z|0.000000010000|0.000000001000";
        assert_eq!(
            cells(&report(&ctx, &p).await, &SPIKE),
            [format!("spend_spike|t1|{tail}|24|10.000000|5.000000")]
        );
        let p = AnomalyParams {
            baseline_hours: 25,
            ..p
        };
        assert_eq!(
            cells(&report(&ctx, &p).await, &SPIKE),
            [
                // t1's window now holds H−25 at 100,000: 25 hours, median still 1,000.
                format!("spend_spike|t1|{tail}|25|10.000000|5.000000"),
                format!("spend_spike|t2|{tail}|24|10.000000|5.000000"),
            ]
        );
        // With a minimum of 23 hours, t2's 23-hour baseline gives a verdict too.
        let p = AnomalyParams {
            baseline_hours: 24,
            min_baseline_hours: 23,
            ..p
        };
        assert_eq!(cells(&report(&ctx, &p).await, &["tenant_id"]), ["t1", "t2"]);
        // The default window (168 hours) reaches all of t1's history: 48 hours, half at 100,000,
        // median (1,000 + 100,000) / 2 = 50,500 → 10,000 is no spike.
        let p = params("2026-11-03", "2026-11-04");
        assert_eq!(cells(&report(&ctx, &p).await, &["tenant_id"]), ["t2"]);
    }

    #[tokio::test]
    async fn even_medians_are_exact() {
        // 24 baseline hours, 12 at 3 units and 12 at 4: the median is 3.5 units, shown rounded
        // to 0.000000000004. 18 > 5 × 3.5 = 17.5 is a spike (ratio 18 / 3.5 = 5.142857…);
        // 17 is not (it would be against a median truncated to 3 units, 15).
        let mut evs = Vec::new();
        for (tenant, peak) in [("t1", 18), ("t2", 17)] {
            evs.extend(hours(tenant, "2026-11-01T00:00:00Z", 12, 3));
            evs.extend(hours(tenant, "2026-11-01T12:00:00Z", 12, 4));
            evs.extend(spend(tenant, at("2026-11-02T00:00:00Z"), peak));
        }
        // Free but priced (rates 0): a median of 0 makes any positive spend a spike, ratio NULL.
        for h in 0..24 {
            let t = at("2026-11-01T00:00:00Z") + chrono::Duration::hours(h);
            let mut e = Ev::new(&format!("free{h}"), &t.to_rfc3339(), "t3");
            e.rates = Some([0; 5]);
            evs.push(e);
        }
        evs.extend(spend("t3", at("2026-11-02T00:00:00Z"), 1));
        let (_lake, ctx) = lake(&evs, 1).await;
        assert_eq!(
            cells(
                &report(&ctx, &params("2026-11-02", "2026-11-03")).await,
                &SPIKE
            ),
            [
                "spend_spike|t1|2026-11-02T00:00:00Z|0.000000000018|0.000000000004|24|5.142857|5.000000",
                "spend_spike|t3|2026-11-02T00:00:00Z|0.000000000001|0.000000000000|24||5.000000",
            ]
        );
    }

    #[tokio::test]
    async fn the_tenant_filter_applies_to_both_kinds() {
        let mut evs = Vec::new();
        for tenant in ["t1", "t2"] {
            evs.extend(hours(tenant, "2026-11-01T00:00:00Z", 24, 1_000));
            evs.extend(spend(tenant, at("2026-11-02T03:00:00Z"), 9_000));
            evs.push(
                Ev::new(&format!("{tenant}-big"), "2026-11-02T01:30:00Z", tenant)
                    .usage(60_000, 0, 0, 0, 0)
                    .unpriced(),
            );
        }
        let (_lake, ctx) = lake(&evs, 2).await;
        let cols = ["kind", "tenant_id", "ts"];
        let p = params("2026-11-02", "2026-11-03");
        assert_eq!(
            cells(&report(&ctx, &p).await, &cols),
            [
                "large_request|t1|2026-11-02T01:30:00Z",
                "large_request|t2|2026-11-02T01:30:00Z",
                "spend_spike|t1|2026-11-02T03:00:00Z",
                "spend_spike|t2|2026-11-02T03:00:00Z",
            ]
        );
        let p = AnomalyParams {
            tenant: Some("t2".into()),
            ..p
        };
        assert_eq!(
            cells(&report(&ctx, &p).await, &cols),
            [
                "large_request|t2|2026-11-02T01:30:00Z",
                "spend_spike|t2|2026-11-02T03:00:00Z",
            ]
        );
        let p = AnomalyParams {
            tenant: Some("nobody".into()),
            ..p
        };
        assert_eq!(report(&ctx, &p).await[0].num_rows(), 0);
    }

    /// The physical plan of `sql` with `values` bound, as text.
    async fn plan_text(
        ctx: &SessionContext,
        sql: &str,
        values: Vec<(&'static str, ScalarValue)>,
    ) -> String {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .with_param_values(values)
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string()
    }

    #[tokio::test]
    async fn the_report_reads_only_the_partitions_it_needs() {
        let evs: Vec<Ev> = ["2026-10-24", "2026-10-25", "2026-11-01", "2026-11-02"]
            .iter()
            .map(|day| Ev::new(day, &format!("{day}T12:00:00Z"), "t1"))
            .collect();
        let (lake, _ctx) = lake(&evs, 1).await;
        // Large requests read 11-01 only; the spend query also reads the 168 hours before it.
        let p = params("2026-11-01", "2026-11-02");
        let ctx = open_catalog(lake.path()).await.unwrap();
        let range = p.checked_range().unwrap();
        let us = range.start.timestamp_micros();
        let large = plan_text(
            &ctx,
            LARGE_REQUESTS_SQL,
            vec![
                ("from_ts", utc_ts(us)),
                ("to_ts", utc_ts(range.end.timestamp_micros())),
                ("from_date", date(range.first_date)),
                ("last_date", date(range.last_date)),
                ("tenant", ScalarValue::Utf8(None)),
                ("max_tokens", ScalarValue::Int64(Some(0))),
            ],
        )
        .await;
        let read_from = us - 168 * HOUR_US;
        let spikes = plan_text(
            &ctx,
            SPEND_SPIKES_SQL,
            vec![
                ("read_from_ts", utc_ts(read_from)),
                ("to_ts", utc_ts(range.end.timestamp_micros())),
                ("from_date", date(utc_date(read_from))),
                ("last_date", date(range.last_date)),
                ("tenant", ScalarValue::Utf8(None)),
            ],
        )
        .await;
        for (day, in_large, in_spikes) in [
            ("2026-10-24", false, false),
            ("2026-10-25", false, true),
            ("2026-11-01", true, true),
            ("2026-11-02", false, false),
        ] {
            assert_eq!(
                large.contains(&format!("date={day}")),
                in_large,
                "{day}\n{large}"
            );
            assert_eq!(
                spikes.contains(&format!("date={day}")),
                in_spikes,
                "{day}\n{spikes}"
            );
        }
    }

    #[tokio::test]
    async fn kinds_interleave_by_time_in_the_report_zone() {
        // The local day 11-02 in Shanghai is 11-01 16:00Z to 11-02 16:00Z: its hours before
        // 11-02 00:00Z have fewer than 24 baseline hours; 11-02 02:00Z has 24 (11-01 00:00 …
        // 23:00) at 1,000 units and spends 50,000: ratio 50.
        let mut evs = hours("t1", "2026-11-01T00:00:00Z", 24, 1_000);
        evs.extend(spend("t1", at("2026-11-02T02:00:00Z"), 50_000));
        evs.push(Ev::new("big1", "2026-11-02T01:59:59Z", "t2").usage(50_001, 0, 0, 0, 0));
        // Unpriced: it does not add to t1's spend in the spike's hour.
        evs.push(
            Ev::new("big2", "2026-11-02T02:00:00Z", "t1")
                .usage(0, 50_001, 0, 0, 0)
                .unpriced(),
        );
        evs.push(Ev::new("big3", "2026-11-02T02:00:00Z", "t0").usage(50_001, 0, 0, 0, 0));
        let (_lake, ctx) = lake(&evs, 3).await;
        let p = AnomalyParams {
            tz: chrono_tz::Asia::Shanghai,
            ..params("2026-11-02", "2026-11-03")
        };
        assert_eq!(
            cells(
                &report(&ctx, &p).await,
                &["kind", "tenant_id", "ts", "event_id"]
            ),
            [
                "large_request|t2|2026-11-02T09:59:59+08:00|big1",
                "large_request|t0|2026-11-02T10:00:00+08:00|big3",
                "large_request|t1|2026-11-02T10:00:00+08:00|big2",
                "spend_spike|t1|2026-11-02T10:00:00+08:00|",
            ]
        );
        // The same instants in the output's Parquet/JSON form: ts keeps the zone.
        let b = report(&ctx, &p).await;
        assert_eq!(
            b[0].schema().field_with_name("ts").unwrap().data_type(),
            &ts_type(chrono_tz::Asia::Shanghai)
        );
        let text = pretty_format_batches(&b).unwrap().to_string();
        assert!(
            text.contains(
                "| 0.000000050000 | 0.000000001000  | 24             | 50.000000 | 5.000000 |"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_parameters_are_refused_with_advice() {
        let (_lake, ctx) = lake(&[], 1).await;
        let p = params("2026-11-02", "2026-11-02");
        assert!(matches!(
            anomalies_report(&ctx, &p).await,
            Err(Error::EmptyRange { .. })
        ));
        let ok = params("2026-11-02", "2026-11-03");
        for (p, message) in [
            (
                AnomalyParams {
                    max_tokens: -1,
                    ..ok.clone()
                },
                "invalid max tokens \"-1\": pass a number of tokens, 0 or more, e.g. --max-tokens 50000",
            ),
            (
                AnomalyParams {
                    baseline_hours: 0,
                    ..ok.clone()
                },
                "invalid baseline hours \"0\": pass a number of hours from 1 to 8784 (a year), e.g. --baseline-hours 168",
            ),
            (
                AnomalyParams {
                    baseline_hours: 12,
                    ..ok.clone()
                },
                "invalid minimum baseline hours \"24 (with --baseline-hours 12)\": it must be from 1 to --baseline-hours (a window of N hours never holds more than N hours with usage): lower --min-baseline-hours or raise --baseline-hours",
            ),
        ] {
            let e = anomalies_report(&ctx, &p).await.unwrap_err();
            assert_eq!(e.to_string(), message);
        }
        let b = report(&ctx, &ok).await;
        assert_eq!((b[0].num_rows(), b[0].num_columns()), (0, 15));
    }

    #[test]
    fn spend_factors_parse_exactly() {
        for (text, units, shown) in [
            ("5", 5_000_000, "5"),
            ("2.5", 2_500_000, "2.5"),
            ("0.000001", 1, "0.000001"),
            (".75", 750_000, "0.75"),
            ("10.", 10_000_000, "10"),
            ("007.500", 7_500_000, "7.5"),
        ] {
            let f: SpendFactor = text.parse().unwrap();
            assert_eq!(
                (f.units(), f.to_string().as_str()),
                (units, shown),
                "{text}"
            );
        }
        for text in [
            "",
            ".",
            "0",
            "0.0",
            "-1",
            "+2",
            "1e3",
            "2.5000001",
            "1.2.3",
            " 5",
            "x",
        ] {
            let e = text.parse::<SpendFactor>().unwrap_err();
            assert!(
                e.to_string()
                    .ends_with("pass a positive decimal with at most 6 decimal places, e.g. --spend-factor 5 or --spend-factor 2.5"),
                "{text}: {e}"
            );
        }
        assert_eq!(SpendFactor::default().to_string(), "5");
    }
}
