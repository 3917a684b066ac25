//! The ClickHouse side of the contract: the DDL of the rollup tables (`schemas/clickhouse/`).
//! Text only; running it is `tokenmeter-aggregate`'s business.

/// DDL of `{{database}}.{{table}}_parts` and the `{{database}}.{{table}}` view, statements
/// separated by lines holding only `;` (see the file's header).
pub const USAGE_HOURLY_DDL: &str = include_str!("../clickhouse/usage_hourly.sql");

/// Whether `name` can be spliced into the DDL and queries as a database or table name: letters,
/// digits and `_`, not starting with a digit, at most 64 characters.
pub fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}
