//! The billing reports — cost by token type and agent share — computed from the raw events or
//! from the hourly rollups with identical results. The SQL lives in `query/sql/`; this module
//! turns report parameters into that SQL's parameters: local day boundaries in the report's time
//! zone become UTC instants (and `date` partition bounds, for pruning) here, in Rust.
//!
//! Rollups hold whole UTC hours, so they answer a report only if every boundary the report needs
//! (the range's ends, and for the agent share every local midnight in it) falls on a UTC hour:
//! [`Source::Rollups`] refuses otherwise (e.g. Asia/Kolkata, +05:30), [`Source::Auto`] falls back
//! to the raw events.
//!
//! Not here: how results are printed (see [`crate::output`]).

use crate::localtime::{day_start, days_inclusive, first_off_hour_day};
use crate::sqlq::{collect_with_schema, read_only_options};
use crate::{Error, Result};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use std::fmt;
use std::str::FromStr;

/// The cost report's SQL template.
pub const COST_REPORT_SQL: &str = include_str!("../sql/cost_report.sql");
/// The agent-share report's SQL template.
pub const AGENT_SHARE_REPORT_SQL: &str = include_str!("../sql/agent_share_report.sql");
/// The raw-event report source.
pub const SOURCE_RAW_SQL: &str = include_str!("../sql/source_raw.sql");
/// The rollup report source.
pub const SOURCE_ROLLUPS_SQL: &str = include_str!("../sql/source_rollups.sql");

/// Where a report reads its rows from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// `usage_events`: always exact, reads every event.
    Raw,
    /// `usage_hourly_parts`: much less to read; refused when a boundary is not on a UTC hour.
    Rollups,
    /// Rollups when they can answer, raw events otherwise.
    #[default]
    Auto,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Raw => "raw",
            Source::Rollups => "rollups",
            Source::Auto => "auto",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Ok(Source::Raw),
            "rollups" | "rollup" => Ok(Source::Rollups),
            "auto" => Ok(Source::Auto),
            _ => Err(Error::UnknownOption {
                what: "source",
                given: s.into(),
                expected: "raw, rollups, auto",
            }),
        }
    }
}

/// The periods of the agent-share report, in the report's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    #[default]
    Day,
    /// ISO week: starts on Monday.
    Week,
    Month,
}

impl Granularity {
    /// The `date_trunc` unit.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "day" | "daily" => Ok(Granularity::Day),
            "week" | "weekly" => Ok(Granularity::Week),
            "month" | "monthly" => Ok(Granularity::Month),
            _ => Err(Error::UnknownOption {
                what: "granularity",
                given: s.into(),
                expected: "day, week, month",
            }),
        }
    }
}

/// What a report covers and where it reads from.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportParams {
    /// First local date of the range.
    pub from: NaiveDate,
    /// First local date after the range (exclusive).
    pub to: NaiveDate,
    /// Only this tenant; `None` for all.
    pub tenant: Option<String>,
    /// The time zone whose midnights bound the days.
    pub tz: Tz,
    pub source: Source,
}

/// The UTC form of a report range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcRange {
    /// First instant of `from` in the report's time zone.
    pub start: DateTime<Utc>,
    /// First instant of `to` (exclusive).
    pub end: DateTime<Utc>,
    /// UTC date of `start`: the lowest `date` partition to read.
    pub first_date: NaiveDate,
    /// UTC date of the last instant before `end`: the highest `date` partition to read.
    pub last_date: NaiveDate,
}

impl ReportParams {
    /// The range as UTC instants and partition bounds; an error if it is empty.
    pub fn utc_range(&self) -> Result<UtcRange> {
        if self.from >= self.to {
            return Err(Error::EmptyRange {
                from: self.from,
                to: self.to,
            });
        }
        let start = day_start(self.tz, self.from);
        let end = day_start(self.tz, self.to);
        Ok(UtcRange {
            start,
            end,
            first_date: start.date_naive(),
            last_date: (end - Duration::microseconds(1)).date_naive(),
        })
    }

    /// The source a report whose periods start on the local `boundaries` reads: `Raw` or
    /// `Rollups`, never `Auto`.
    fn resolve(&self, boundaries: impl IntoIterator<Item = NaiveDate>) -> Result<Source> {
        if self.source == Source::Raw {
            return Ok(Source::Raw);
        }
        match (self.source, first_off_hour_day(self.tz, boundaries)) {
            (_, None) => Ok(Source::Rollups),
            (Source::Rollups, Some((date, instant))) => Err(Error::RollupsNeedWholeHours {
                tz: self.tz.name().to_string(),
                date,
                instant: instant.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            }),
            (_, Some(_)) => Ok(Source::Raw),
        }
    }

    /// The source [`cost_report`] reads with these parameters (`Auto` resolved).
    pub fn cost_report_source(&self) -> Result<Source> {
        self.utc_range()?;
        self.resolve([self.from, self.to])
    }

    /// The source [`agent_share_report`] reads with these parameters (`Auto` resolved): every
    /// local midnight of the range may start a period, so all must be on UTC hours.
    pub fn agent_share_source(&self) -> Result<Source> {
        self.utc_range()?;
        self.resolve(days_inclusive(self.from, self.to))
    }
}

/// Replace each `{{name}}` of `template`.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |sql, (name, value)| {
            sql.replace(&format!("{{{{{name}}}}}"), value)
        })
}

fn source_sql(source: Source) -> &'static str {
    match source {
        Source::Rollups => SOURCE_ROLLUPS_SQL,
        Source::Raw | Source::Auto => SOURCE_RAW_SQL,
    }
}

/// A time-zone name fit to stand inside a SQL string literal. chrono-tz names always are; the
/// check keeps it so if a name ever is not.
fn tz_literal(tz: Tz) -> Result<&'static str> {
    let name = tz.name();
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'+' | b'-'))
    {
        Ok(name)
    } else {
        Err(Error::UnknownOption {
            what: "time zone",
            given: name.into(),
            expected: "an IANA name made of letters, digits, '/', '_', '+', '-'",
        })
    }
}

/// The report query `sql` with the parameters of `params` bound.
async fn frame(ctx: &SessionContext, sql: &str, params: &ReportParams) -> Result<DataFrame> {
    let range = params.utc_range()?;
    let ts = |t: DateTime<Utc>| {
        ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
    };
    let date = |d: NaiveDate| ScalarValue::Date32(Some(d.to_epoch_days()));
    let values = vec![
        ("from_ts", ts(range.start)),
        ("to_ts", ts(range.end)),
        ("from_date", date(range.first_date)),
        ("last_date", date(range.last_date)),
        ("tenant", ScalarValue::Utf8(params.tenant.clone())),
    ];
    Ok(ctx
        .sql_with_options(sql, read_only_options())
        .await?
        .with_param_values(values)?)
}

/// The SQL [`cost_report`] runs with `params` (its source chosen and spliced in); the parameters
/// `$from_ts`, `$to_ts`, `$from_date`, `$last_date` and `$tenant` are left to bind (values from
/// [`ReportParams::utc_range`]). For other engines run on the same files (`tokenmeter bench`).
pub fn cost_report_sql(params: &ReportParams) -> Result<String> {
    let source = params.cost_report_source()?;
    tracing::debug!(%source, "cost report");
    Ok(fill(COST_REPORT_SQL, &[("source", source_sql(source))]))
}

/// The SQL [`agent_share_report`] runs, as [`cost_report_sql`] gives the cost report's.
pub fn agent_share_report_sql(params: &ReportParams, granularity: Granularity) -> Result<String> {
    let source = params.agent_share_source()?;
    tracing::debug!(%source, %granularity, "agent-share report");
    Ok(fill(
        AGENT_SHARE_REPORT_SQL,
        &[
            ("source", source_sql(source)),
            ("tz", tz_literal(params.tz)?),
            ("granularity", granularity.as_str()),
        ],
    ))
}

/// Tokens and cost per tenant, provider, model, currency and token type over the local dates
/// `[from, to)`. Columns `tenant_id, provider, model, currency, token_type, tokens, cost`; see
/// `sql/cost_report.sql`.
pub async fn cost_report(ctx: &SessionContext, params: &ReportParams) -> Result<Vec<RecordBatch>> {
    collect_with_schema(frame(ctx, &cost_report_sql(params)?, params).await?).await
}

/// Agent tokens and cost against the total, per tenant, local period and currency. Columns
/// `tenant_id, period_start, currency, agent_tokens, total_tokens, agent_token_share, agent_cost,
/// total_cost, agent_cost_share`; see `sql/agent_share_report.sql`.
pub async fn agent_share_report(
    ctx: &SessionContext,
    params: &ReportParams,
    granularity: Granularity,
) -> Result<Vec<RecordBatch>> {
    let sql = agent_share_report_sql(params, granularity)?;
    collect_with_schema(frame(ctx, &sql, params).await?).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::open_catalog;
    use crate::testlake::{Ev, Lake};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::assert_batches_eq;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn params(from: &str, to: &str, tz: Tz, source: Source) -> ReportParams {
        ReportParams {
            from: d(from),
            to: d(to),
            tenant: None,
            tz,
            source,
        }
    }

    fn pretty(batches: &[RecordBatch]) -> String {
        pretty_format_batches(batches).unwrap().to_string()
    }

    async fn lake(evs: &[Ev], batches: usize) -> (Lake, SessionContext) {
        let lake = Lake::new();
        lake.write_committed(evs, batches);
        let ctx = open_catalog(lake.path()).await.unwrap();
        (lake, ctx)
    }

    #[tokio::test]
    async fn cost_report_values_match_hand_computation() {
        let evs = [
            // Buckets 70, 20, 10, 45, 5: cost 0.00021, 0.000006, 0.0000375, 0.000675, 0.000075.
            Ev::new("e1", "2026-11-02T10:00:00Z", "t1"),
            Ev::new("e2", "2026-11-02T23:30:00Z", "t1")
                .usage(1000, 0, 0, 0, 0)
                .agent("a1"),
            Ev::new("e3", "2026-11-02T12:00:00Z", "t1")
                .model("anthropic", "claude")
                .usage(10, 4, 0, 0, 0)
                .unpriced(),
            Ev::new("e4", "2026-11-03T00:00:00Z", "t2"),
            Ev::new("e5", "2026-11-01T23:59:59.999999Z", "t1"),
        ];
        let (_lake, ctx) = lake(&evs, 2).await;
        for source in [Source::Raw, Source::Rollups, Source::Auto] {
            let p = params("2026-11-02", "2026-11-03", chrono_tz::UTC, source);
            let batches = cost_report(&ctx, &p).await.unwrap();
            assert_batches_eq!(
                [
                    "+-----------+-----------+--------+----------+----------------+--------+----------------+",
                    "| tenant_id | provider  | model  | currency | token_type     | tokens | cost           |",
                    "+-----------+-----------+--------+----------+----------------+--------+----------------+",
                    "| t1        | anthropic | claude |          | uncached_input | 10     |                |",
                    "| t1        | anthropic | claude |          | output         | 4      |                |",
                    "| t1        | openai    | gpt-x  | USD      | uncached_input | 1070   | 0.003210000000 |",
                    "| t1        | openai    | gpt-x  | USD      | cache_read     | 20     | 0.000006000000 |",
                    "| t1        | openai    | gpt-x  | USD      | cache_write    | 10     | 0.000037500000 |",
                    "| t1        | openai    | gpt-x  | USD      | output         | 45     | 0.000675000000 |",
                    "| t1        | openai    | gpt-x  | USD      | reasoning      | 5      | 0.000075000000 |",
                    "+-----------+-----------+--------+----------+----------------+--------+----------------+",
                ],
                &batches
            );
            let schema = batches[0].schema();
            assert_eq!(
                schema.field_with_name("tokens").unwrap().data_type(),
                &DataType::Int64
            );
            assert_eq!(
                schema.field_with_name("cost").unwrap().data_type(),
                &DataType::Decimal128(38, 12)
            );

            let p = ReportParams {
                tenant: Some("t2".into()),
                ..p
            };
            let batches = cost_report(&ctx, &p).await.unwrap();
            assert_eq!(batches.len(), 1);
            assert_eq!(batches[0].num_rows(), 0);
            assert_eq!(
                batches[0].schema(),
                schema,
                "an empty report keeps its columns"
            );
        }
    }

    #[tokio::test]
    async fn new_york_days_follow_dst_in_both_sources() {
        // DST ends 2026-11-01 at 02:00 EDT: that day has 25 hours.
        let evs = [
            Ev::new("a", "2026-11-01T03:59:59Z", "t1"), // Sat Oct 31 23:59:59 EDT
            Ev::new("b", "2026-11-01T04:00:00Z", "t1").agent("x"), // Sun Nov 1 00:00 EDT
            Ev::new("c", "2026-11-02T04:30:00Z", "t1"), // Sun Nov 1 23:30 EST
            Ev::new("d", "2026-11-02T05:00:00Z", "t1").agent("x"), // Mon Nov 2 00:00 EST
        ];
        let (_lake, ctx) = lake(&evs, 2).await;
        let ny = chrono_tz::America::New_York;
        let header = [
            "+-----------+--------------+----------+--------------+--------------+-------------------+----------------+----------------+------------------+",
            "| tenant_id | period_start | currency | agent_tokens | total_tokens | agent_token_share | agent_cost     | total_cost     | agent_cost_share |",
            "+-----------+--------------+----------+--------------+--------------+-------------------+----------------+----------------+------------------+",
        ];
        let footer = header[0];
        let cases = [
            (
                Granularity::Day,
                vec![
                    "| t1        | 2026-10-31   | USD      | 0            | 150          | 0.000000000000    | 0.000000000000 | 0.001003500000 | 0.000000000000   |",
                    "| t1        | 2026-11-01   | USD      | 150          | 300          | 0.500000000000    | 0.001003500000 | 0.002007000000 | 0.500000000000   |",
                    "| t1        | 2026-11-02   | USD      | 150          | 150          | 1.000000000000    | 0.001003500000 | 0.001003500000 | 1.000000000000   |",
                ],
            ),
            (
                Granularity::Week,
                vec![
                    "| t1        | 2026-10-26   | USD      | 150          | 450          | 0.333333333333    | 0.001003500000 | 0.003010500000 | 0.333333333333   |",
                    "| t1        | 2026-11-02   | USD      | 150          | 150          | 1.000000000000    | 0.001003500000 | 0.001003500000 | 1.000000000000   |",
                ],
            ),
            (
                Granularity::Month,
                vec![
                    "| t1        | 2026-10-01   | USD      | 0            | 150          | 0.000000000000    | 0.000000000000 | 0.001003500000 | 0.000000000000   |",
                    "| t1        | 2026-11-01   | USD      | 300          | 450          | 0.666666666667    | 0.002007000000 | 0.003010500000 | 0.666666666667   |",
                ],
            ),
        ];
        for (granularity, rows) in cases {
            let expected: Vec<&str> = header
                .iter()
                .copied()
                .chain(rows.iter().copied())
                .chain([footer])
                .collect();
            for source in [Source::Raw, Source::Rollups] {
                let p = params("2026-10-31", "2026-11-03", ny, source);
                let batches = agent_share_report(&ctx, &p, granularity).await.unwrap();
                assert_batches_eq!(expected, &batches);
                let schema = batches[0].schema();
                assert_eq!(
                    schema.field_with_name("period_start").unwrap().data_type(),
                    &DataType::Date32
                );
                for share in ["agent_token_share", "agent_cost_share"] {
                    assert_eq!(
                        schema.field_with_name(share).unwrap().data_type(),
                        &DataType::Decimal128(38, 12)
                    );
                }
            }
        }
        // The local day 2026-11-01 is 04:00Z to 05:00Z the next day: b and c.
        for source in [Source::Raw, Source::Rollups] {
            let p = params("2026-11-01", "2026-11-02", ny, source);
            let batches = cost_report(&ctx, &p).await.unwrap();
            let text = pretty(&batches);
            assert!(
                text.contains("| uncached_input | 140    |"),
                "{source}:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn half_hour_zones_need_the_raw_events() {
        let evs = [
            Ev::new("before", "2026-10-31T18:29:59.999999Z", "t1"), // Oct 31 23:59:59.999999 IST
            Ev::new("first", "2026-10-31T18:30:00Z", "t1"),         // Nov 1 00:00 IST
            Ev::new("last", "2026-11-01T18:29:59Z", "t1").agent("x"),
            Ev::new("after", "2026-11-01T18:30:00Z", "t1"),
        ];
        let (_lake, ctx) = lake(&evs, 1).await;
        let kolkata = chrono_tz::Asia::Kolkata;
        let p = params("2026-11-01", "2026-11-02", kolkata, Source::Rollups);
        let e = cost_report(&ctx, &p).await.unwrap_err();
        assert!(matches!(e, Error::RollupsNeedWholeHours { .. }), "{e}");
        assert!(e.to_string().contains("Asia/Kolkata"), "{e}");
        assert!(e.to_string().contains("2026-10-31T18:30:00Z"), "{e}");
        assert!(matches!(
            agent_share_report(&ctx, &p, Granularity::Day).await,
            Err(Error::RollupsNeedWholeHours { .. })
        ));

        let auto = ReportParams {
            source: Source::Auto,
            ..p.clone()
        };
        assert_eq!(auto.cost_report_source().unwrap(), Source::Raw);
        assert_eq!(auto.agent_share_source().unwrap(), Source::Raw);
        let raw = ReportParams {
            source: Source::Raw,
            ..p
        };
        let batches = agent_share_report(&ctx, &auto, Granularity::Day)
            .await
            .unwrap();
        assert_eq!(
            pretty(&batches),
            pretty(
                &agent_share_report(&ctx, &raw, Granularity::Day)
                    .await
                    .unwrap()
            )
        );
        let text = pretty(&batches);
        assert!(text.contains("| t1        | 2026-11-01   | USD      | 150          | 300          | 0.500000000000"), "{text}");

        // Whole-hour zones resolve Auto to the rollups.
        for tz in [
            chrono_tz::UTC,
            chrono_tz::Asia::Shanghai,
            chrono_tz::America::New_York,
        ] {
            let p = params("2026-01-01", "2027-01-01", tz, Source::Auto);
            assert_eq!(p.cost_report_source().unwrap(), Source::Rollups, "{tz}");
            assert_eq!(p.agent_share_source().unwrap(), Source::Rollups, "{tz}");
        }
    }

    /// Events around the midnights of UTC, Shanghai and New York (both DST changes), of two
    /// tenants, agent and not, priced and not.
    fn boundary_events() -> Vec<Ev> {
        let instants = [
            "2026-03-07T16:00:00Z", // Shanghai midnight
            "2026-03-08T00:00:00Z", // UTC midnight
            "2026-03-08T05:00:00Z", // New York midnight, EST (DST starts that night)
            "2026-03-09T04:00:00Z", // New York midnight, EDT
            "2026-03-31T16:00:00Z", // Shanghai, new month
            "2026-04-01T00:00:00Z", // UTC, new month
            "2026-04-01T04:00:00Z", // New York, new month
            "2026-10-31T16:00:00Z",
            "2026-11-01T00:00:00Z",
            "2026-11-01T04:00:00Z", // New York, EDT (DST ends that night)
            "2026-11-02T05:00:00Z", // New York, EST
        ];
        let mut evs = Vec::new();
        for (i, at) in instants.iter().enumerate() {
            let t = DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc);
            for (j, delta) in [-3_600_000_000i64, -1, 0, 1_800_000_000]
                .into_iter()
                .enumerate()
            {
                let time = (t + Duration::microseconds(delta)).to_rfc3339();
                let n = (i * 4 + j) as i64;
                let tenant = if n % 3 == 0 { "t2" } else { "t1" };
                let mut e = Ev::new(&format!("e{n}"), &time, tenant).usage(
                    100 + n,
                    40 + n,
                    n % 7,
                    n % 5,
                    n % 3,
                );
                if n % 2 == 0 {
                    e = e.agent(if n % 4 == 0 { "a1" } else { "a2" });
                }
                if n % 5 == 0 {
                    e = e.unpriced();
                }
                if n % 6 == 0 {
                    e = e.model("anthropic", "claude");
                }
                evs.push(e);
            }
        }
        evs
    }

    #[tokio::test]
    async fn raw_and_rollups_agree() {
        let (_lake, ctx) = lake(&boundary_events(), 3).await;
        let zones = [
            chrono_tz::UTC,
            chrono_tz::Asia::Shanghai,
            chrono_tz::America::New_York,
        ];
        let ranges = [
            ("2026-03-07", "2026-03-10"),
            ("2026-03-08", "2026-03-09"),
            ("2026-01-01", "2027-01-01"),
            ("2026-10-31", "2026-11-02"),
        ];
        for tz in zones {
            for (from, to) in ranges {
                for tenant in [None, Some("t2".to_string())] {
                    let raw = ReportParams {
                        tenant: tenant.clone(),
                        ..params(from, to, tz, Source::Raw)
                    };
                    let rollups = ReportParams {
                        source: Source::Rollups,
                        ..raw.clone()
                    };
                    let what = format!("{tz} {from}..{to} {tenant:?}");
                    let a = cost_report(&ctx, &raw).await.unwrap();
                    let b = cost_report(&ctx, &rollups).await.unwrap();
                    assert!(a.iter().map(|b| b.num_rows()).sum::<usize>() > 0, "{what}");
                    assert_eq!(a[0].schema(), b[0].schema(), "{what}");
                    assert_eq!(pretty(&a), pretty(&b), "cost report {what}");
                    for g in [Granularity::Day, Granularity::Week, Granularity::Month] {
                        let a = agent_share_report(&ctx, &raw, g).await.unwrap();
                        let b = agent_share_report(&ctx, &rollups, g).await.unwrap();
                        assert!(a.iter().map(|b| b.num_rows()).sum::<usize>() > 0, "{what}");
                        assert_eq!(a[0].schema(), b[0].schema(), "{what}");
                        assert_eq!(pretty(&a), pretty(&b), "agent share {g} {what}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn shanghai_months_start_at_local_midnight() {
        let evs = [
            Ev::new("oct", "2026-10-31T15:59:59Z", "t1"), // Oct 31 23:59:59 CST
            Ev::new("nov", "2026-10-31T16:00:00Z", "t1").agent("x"), // Nov 1 00:00 CST
        ];
        let (_lake, ctx) = lake(&evs, 1).await;
        for source in [Source::Raw, Source::Rollups] {
            let p = params(
                "2026-10-01",
                "2026-12-01",
                chrono_tz::Asia::Shanghai,
                source,
            );
            let text = pretty(
                &agent_share_report(&ctx, &p, Granularity::Month)
                    .await
                    .unwrap(),
            );
            assert!(
                text.contains("| t1        | 2026-10-01   | USD      | 0            | 150 "),
                "{text}"
            );
            assert!(
                text.contains("| t1        | 2026-11-01   | USD      | 150          | 150 "),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn unpriced_usage_has_null_costs_and_shares() {
        let evs = [
            Ev::new("a", "2026-11-02T10:00:00Z", "t1")
                .unpriced()
                .agent("x"),
            Ev::new("b", "2026-11-02T11:00:00Z", "t1").unpriced(),
        ];
        let (_lake, ctx) = lake(&evs, 1).await;
        for source in [Source::Raw, Source::Rollups] {
            let p = params("2026-11-02", "2026-11-03", chrono_tz::UTC, source);
            let batches = agent_share_report(&ctx, &p, Granularity::Day)
                .await
                .unwrap();
            assert_batches_eq!(
                [
                    "+-----------+--------------+----------+--------------+--------------+-------------------+------------+------------+------------------+",
                    "| tenant_id | period_start | currency | agent_tokens | total_tokens | agent_token_share | agent_cost | total_cost | agent_cost_share |",
                    "+-----------+--------------+----------+--------------+--------------+-------------------+------------+------------+------------------+",
                    "| t1        | 2026-11-02   |          | 150          | 300          | 0.500000000000    |            |            |                  |",
                    "+-----------+--------------+----------+--------------+--------------+-------------------+------------+------------+------------------+",
                ],
                &batches
            );
        }
    }

    #[tokio::test]
    async fn empty_ranges_and_lakes() {
        let (_lake, ctx) = lake(&[], 1).await;
        let p = params("2026-11-02", "2026-11-02", chrono_tz::UTC, Source::Raw);
        assert!(matches!(
            cost_report(&ctx, &p).await,
            Err(Error::EmptyRange { .. })
        ));
        let p = params("2026-11-02", "2026-11-03", chrono_tz::UTC, Source::Auto);
        let b = agent_share_report(&ctx, &p, Granularity::Week)
            .await
            .unwrap();
        assert_eq!((b.len(), b[0].num_rows(), b[0].num_columns()), (1, 0, 9));
    }

    #[tokio::test]
    async fn reports_read_only_the_partitions_of_their_range() {
        let evs: Vec<Ev> = [
            "2026-10-30",
            "2026-10-31",
            "2026-11-01",
            "2026-11-02",
            "2026-11-03",
        ]
        .iter()
        .map(|day| Ev::new(day, &format!("{day}T12:00:00Z"), "t1"))
        .collect();
        let (_lake, ctx) = lake(&evs, 1).await;
        // 2026-11-01 in Shanghai is 2026-10-31T16:00Z to 2026-11-01T16:00Z.
        let p = params(
            "2026-11-01",
            "2026-11-02",
            chrono_tz::Asia::Shanghai,
            Source::Raw,
        );
        for source in [Source::Raw, Source::Rollups] {
            let p = ReportParams {
                source,
                ..p.clone()
            };
            for sql in [
                cost_report_sql(&p).unwrap(),
                agent_share_report_sql(&p, Granularity::Week).unwrap(),
            ] {
                let plan = frame(&ctx, &sql, &p)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap();
                let text = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(true)
                    .to_string();
                for (day, read) in [
                    ("2026-10-30", false),
                    ("2026-10-31", true),
                    ("2026-11-01", true),
                    ("2026-11-02", false),
                ] {
                    assert_eq!(
                        text.contains(&format!("date={day}")),
                        read,
                        "{source} {day}:\n{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn options_parse() {
        assert_eq!("ROLLUPS".parse::<Source>().unwrap(), Source::Rollups);
        assert_eq!("week".parse::<Granularity>().unwrap(), Granularity::Week);
        let e = "hourly".parse::<Granularity>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown granularity \"hourly\": expected one of day, week, month"
        );
    }
}
