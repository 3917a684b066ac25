//! The error type of the schemas crate. Validation failures of single events are not errors of
//! this kind: they are [`crate::ValidationError`] values, which the aggregator routes to the
//! dead-letter topic.

/// Errors of the contract crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An event failed to decode or broke a contract rule.
    #[error(transparent)]
    Invalid(#[from] crate::ValidationError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
