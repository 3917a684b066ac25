//! The one error type of the query crate. Every message says what went wrong and what to do
//! about it, because the CLI prints them as they are.
//!
//! Not here: errors of the writer side of the lake (see `tokenmeter-aggregate`).

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;
use std::path::PathBuf;

/// Errors of catalog opening, SQL, reports and output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A commit-state file of the lake could not be read or makes no sense.
    #[error(
        "cannot read the lake's commit state {}: {message}; check that the data directory is a tokenmeter lake written by the aggregator",
        path.display()
    )]
    LakeState { path: PathBuf, message: String },

    /// The data directory exists but is not a directory, or cannot be listed.
    #[error("cannot open the lake at {}: {message}", path.display())]
    LakeRoot { path: PathBuf, message: String },

    /// A statement other than a query was given to the read-only SQL entry point.
    #[error(
        "tokenmeter sql is read-only: {kind} is not allowed (got `{statement}`); query the tables usage_events, usage_hourly and usage_hourly_parts with SELECT, EXPLAIN, SHOW or DESCRIBE"
    )]
    ReadOnly {
        kind: &'static str,
        statement: String,
    },

    /// A report was asked for an empty or reversed date range.
    #[error(
        "the report range is empty: from ({from}) must be before to ({to}); `to` is exclusive, so one day is --from D --to D+1"
    )]
    EmptyRange {
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    },

    /// The rollups cannot answer a report in this time zone over this range.
    #[error(
        "the hourly rollups cannot answer this report: they hold whole UTC hours, but in {tz} the local day {date} starts at {instant}, inside a UTC hour; use the raw events (--source raw / Source::Raw) or let tokenmeter choose (--source auto / Source::Auto)"
    )]
    RollupsNeedWholeHours {
        tz: String,
        date: chrono::NaiveDate,
        instant: String,
    },

    /// Reconciliation by local day needs every local midnight on a UTC hour.
    #[error(
        "reconcile compares hourly rollups, which hold whole UTC hours, but in {tz} the local day {date} starts at {instant}, inside a UTC hour; reconcile in UTC or in a zone with a whole-hour offset (e.g. --tz UTC)"
    )]
    ReconcileNeedsWholeHours {
        tz: String,
        date: chrono::NaiveDate,
        instant: String,
    },

    /// A ClickHouse request failed.
    #[error(
        "ClickHouse: {context}: {message}; check --clickhouse-url and that `tokenmeter clickhouse init` ran"
    )]
    ClickHouse { context: String, message: String },

    /// A word of a report or output option was not recognised.
    #[error("unknown {what} {given:?}: expected one of {expected}")]
    UnknownOption {
        what: &'static str,
        given: String,
        expected: &'static str,
    },

    /// A report parameter is malformed or out of range.
    #[error("invalid {what} {given:?}: {advice}")]
    InvalidParameter {
        what: &'static str,
        given: String,
        advice: &'static str,
    },

    /// Parquet output was asked for without a file to write.
    #[error("Parquet output needs a file: pass an output path (stdout takes table, csv and json)")]
    ParquetNeedsFile,

    /// Parquet output was given no batch at all, so not even the columns are known.
    #[error(
        "nothing to write: there is no batch, so not even the columns are known; pass the batches a tokenmeter query returned (always at least one)"
    )]
    NoBatches,

    /// The per-tenant totals helper was given batches that are not a cost report.
    #[error("cannot add totals: {0}; pass the batches of the cost report unchanged")]
    NotACostReport(String),

    /// Writing the output failed.
    #[error("cannot write {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },

    /// A period (month, close, restatement range) cannot be used as asked.
    #[error("{0}")]
    Period(String),
    /// Pricing or rating failed.
    #[error("{0}")]
    Pricing(#[from] tokenmeter_aggregate::Error),
    /// A DataFusion setting from the environment was rejected (the message names the variable).
    #[error("{0}")]
    Config(String),
    /// DataFusion failed to plan or run a query.
    #[error("query failed: {0}")]
    DataFusion(#[from] DataFusionError),

    /// Arrow failed to format or encode results.
    #[error("cannot encode the results: {0}")]
    Arrow(#[from] ArrowError),

    /// Parquet output failed.
    #[error("cannot write Parquet: {0}")]
    Parquet(#[from] ParquetError),
}

impl Error {
    /// Map a ClickHouse client error, saying what was being done.
    pub fn clickhouse(context: &str) -> impl FnOnce(clickhouse::error::Error) -> Error + '_ {
        move |e| Error::ClickHouse {
            context: context.to_string(),
            message: e.to_string(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
