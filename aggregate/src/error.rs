//! The error type of the aggregate crate.

use std::path::PathBuf;

/// Errors of pricing, the lake and the ClickHouse sink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The price book could not be read or broke a rule.
    #[error("price book {path}: {message}")]
    PriceBook { path: String, message: String },
    /// A LiteLLM price catalog could not be converted (see `litellm`).
    #[error("LiteLLM catalog {origin}: {message}")]
    LiteLlm { origin: String, message: String },
    /// A file-system operation on the lake failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Arrow or Parquet encoding failed.
    #[error("encoding {what}: {message}")]
    Encode { what: &'static str, message: String },
    /// A test fail point was reached: the writer stops as if the process had crashed there.
    #[error("fail point {0:?} reached (simulated crash)")]
    FailPoint(crate::lake::FailPoint),
    /// A ClickHouse request failed.
    #[error("ClickHouse: {context}: {source}")]
    ClickHouse {
        context: String,
        #[source]
        source: clickhouse::error::Error,
    },
    /// No exchange rate converts a currency into another on a day.
    #[error(
        "no exchange rate {from}→{to} in force on {date}: add an [[fx]] entry with from = \"{from}\", to = \"{to}\" and an effective date on or before {date} to {origin}"
    )]
    MissingFx {
        from: String,
        to: String,
        date: chrono::NaiveDate,
        origin: String,
    },
    /// Usage cannot be rated (no price, mixed prices, an amount out of range).
    #[error("{0}")]
    Billing(String),
    /// A setting is not usable as given.
    #[error("{0}")]
    Config(String),
    /// The lake's commit state is not what this version can read.
    #[error("commit state {}: {message}", path.display())]
    State { path: PathBuf, message: String },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
