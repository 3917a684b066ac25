//! The error type of the ingest crate.

/// Errors of Kafka I/O, the generator and the aggregator loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client operation failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The lake or pricing failed.
    #[error(transparent)]
    Aggregate(#[from] tokenmeter_aggregate::Error),
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not usable.
    #[error("configuration: {0}")]
    Config(String),
    /// A step of the budget alerts task could not be done now (it is retried).
    #[error("budget alerts: {0}")]
    Alerts(String),
}

impl Error {
    pub(crate) fn kafka(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        let context = context.into();
        move |source| Error::Kafka { context, source }
    }
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
